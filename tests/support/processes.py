"""Workers for tests over a real broker: `keyledger run` as its own process, or a process context in this one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from workers.app.context import ProcessContext
from workers.app.embedded import free_port
from workers.settings import Settings


class WorkerProcesses:
    """Starts `keyledger run` processes against one broker; `stop_all` ends those still running.

    Each process gets its own health/metrics port (several may run at once) and writes its output to
    a log file under `logs`; `base_env` comes before each start's own `env`.
    """

    def __init__(self, bootstrap: str, logs: Path, base_env: dict[str, str]) -> None:
        self.bootstrap = bootstrap
        self.logs = logs
        self.base_env = base_env
        self.started: list[subprocess.Popen] = []

    def start(self, *groups: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = self.logs / f"worker-{len(self.started)}.log"
        args = [sys.executable, "-m", "workers.app.cli", "run"] + [a for g in groups for a in ("--group", g)]
        full_env = {**os.environ, **self.base_env, "KEYLEDGER_KAFKA_BOOTSTRAP": self.bootstrap,
                    "KEYLEDGER_KAFKA_PARTITIONS": "3", "KEYLEDGER_HTTP_PORT": str(free_port()),
                    # an unknown tenant is refused after 5 s, not 30: tests that expect unknown_tenant stay short
                    "KEYLEDGER_KEY_TABLE_WAIT": "5", **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = log_path  # type: ignore[attr-defined]
        proc.http_port = int(full_env["KEYLEDGER_HTTP_PORT"])  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    __call__ = start

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


@asynccontextmanager
async def in_process_workers(bootstrap: str, groups: list[str], *, overrides: dict | None = None,
                             **components) -> AsyncIterator[ProcessContext]:
    """The groups' handlers on a process context of this test's own, started and closed around the block."""
    settings = Settings(**{"kafka_bootstrap": bootstrap, "kafka_partitions": 3, "retry_backoff": 0.05,
                           "retry_backoff_max": 0.2, "key_table_wait": 5, **(overrides or {})})
    context = ProcessContext.build(settings, bootstrap, **components)
    context.register(groups)
    await context.start()
    try:
        yield context
    finally:
        await context.aclose()


Samples = dict[tuple[str, frozenset], float]


def samples(exposition: str) -> Samples:
    """A Prometheus text exposition as {(sample name, labels): value}."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def sample(parsed: Samples, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


async def scrape(port: int) -> Samples:
    """The /metrics of the `keyledger run` process serving on `port`; empty while it does not answer yet."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            return samples(await reply.text()) if reply.status == 200 else {}
    except aiohttp.ClientError:
        return {}
