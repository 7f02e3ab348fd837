"""Running consumer groups in one process until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
from collections.abc import AsyncIterator, Sequence

from workers.app.context import ProcessContext
from workers.app.embedded import EmbeddedBroker
from workers.errors import ConfigError
from workers.kafka.security import connect_errors_named
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

log = logging.getLogger("keyledger")


@contextlib.asynccontextmanager
async def bootstrap_for(settings: Settings) -> AsyncIterator[str]:
    """The configured Kafka, or an embedded broker for the life of the block (dev only)."""
    if settings.kafka.bootstrap:
        yield settings.kafka.bootstrap
        return
    broker = EmbeddedBroker().start()
    log.info("embedded Kafka-compatible broker (tansu) listening on %s", broker.bootstrap)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def running_workers(settings: Settings, bootstrap: str, groups: Sequence[str]) -> AsyncIterator[ProcessContext]:
    """Built first, so that what the settings lack (an AWS region) stops the process before any connection;
    then the topics, the endpoint, the key table and the consumer groups."""
    context = ProcessContext.build(settings, bootstrap)
    try:
        async with connect_errors_named(bootstrap, settings.kafka.security):
            await ensure_topics(bootstrap, settings)
        context.register(groups)
        if await context.serve_http():
            log.info("health and metrics on %s (/healthz, /readyz, /metrics)", context.http_url)
        async with connect_errors_named(bootstrap, settings.kafka.security):
            await context.start()
        log.info("consumer groups running: %s", ", ".join(groups))
        yield context
    finally:
        await context.aclose()


# A record makes a few dozen short-lived objects; at CPython's default (700 allocations) a young
# collection runs every ~20 records, and the older generations it promotes into are walked again and
# again. Reference counting frees these objects anyway; the collector is only for cycles.
GC_THRESHOLDS = (50_000, 50, 100)


def settle_the_heap() -> None:
    """Once started: what exists now (modules, the key table as read so far, clients) is moved out of the
    collector's sight for good (gc.freeze), and collections run less often. bench/signing.py measured
    113 -> 99 us of worker CPU per signed span."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing the batch in hand, committing what was processed")


async def run(settings: Settings, groups: Sequence[str]) -> None:
    """`keyledger run`: without KEYLEDGER_PROFILE, only named, real parts (no local KMS, memory ledger or
    embedded broker); ConfigError naming the settings otherwise."""
    problem = settings.run_problems()
    if problem:
        raise ConfigError(problem)
    async with bootstrap_for(settings) as bootstrap, running_workers(settings, bootstrap, groups) as context:
        settle_the_heap()  # this process is a worker from now on (not in tests: they share their process)
        await until_signalled()
        log.info("stats %s", json.dumps(context.stats()))
