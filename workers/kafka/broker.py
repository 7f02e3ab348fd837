"""The one FastStream KafkaBroker of a process: durable producer, quiet logs, the configured transport
security (workers.kafka.security)."""

from __future__ import annotations

import asyncio
import logging

from faststream.kafka import KafkaBroker

from workers.kafka import compat
from workers.kafka.security import ClientSecurity
from workers.settings import KafkaSettings

log = logging.getLogger("keyledger.kafka")


def build_broker(kafka: KafkaSettings, bootstrap: str) -> KafkaBroker:
    compat.install()
    durability: dict[str, object] = (
        {"acks": "all", "enable_idempotence": True} if kafka.idempotence else {"acks": "all"}
    )
    return KafkaBroker(
        bootstrap,
        client_id="keyledger",
        linger_ms=kafka.linger_ms,
        # one partition's batch per request is in flight at a time: 16 KiB batches (the default) turn
        # a 500-record handler batch into several sequential round trips
        max_batch_size=kafka.producer_batch_bytes,
        max_request_size=kafka.producer_max_request_bytes,
        # FastStream logs every message at INFO; per-message logs are DEBUG here
        logger=log,
        log_level=logging.DEBUG,
        **ClientSecurity.build(kafka.security).faststream(),
        **durability,  # type: ignore[arg-type]
    )


async def start_concurrently(broker: KafkaBroker) -> None:
    """Connect, then start every subscriber at once: each consumer's first group join takes seconds,
    and FastStream's own `start()` joins them one after another."""
    await broker.connect()
    await asyncio.gather(*(subscriber.start() for subscriber in broker.subscribers))
    for publisher in broker.publishers:
        await publisher.start()
    broker.running = True
