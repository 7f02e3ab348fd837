"""The one FastStream KafkaBroker of a process: durable producer, quiet logs."""

from __future__ import annotations

import logging

from faststream.kafka import KafkaBroker

from workers.kafka import compat
from workers.settings import Settings

log = logging.getLogger("keyledger.kafka")


def build_broker(settings: Settings, bootstrap: str) -> KafkaBroker:
    compat.install()
    durability: dict[str, object] = (
        {"acks": "all", "enable_idempotence": True} if settings.kafka_idempotence else {"acks": "all"}
    )
    return KafkaBroker(
        bootstrap,
        client_id="keyledger",
        linger_ms=settings.kafka_linger_ms,
        max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
        # FastStream logs every message at INFO; per-message logs are DEBUG here
        logger=log,
        log_level=logging.DEBUG,
        **durability,  # type: ignore[arg-type]
    )
