"""Creates the topics keyledger needs when they are missing."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import Topic
from workers.kafka.security import client_options
from workers.settings import Settings

log = logging.getLogger("keyledger.topics")

# keys.material keeps the latest record of every key forever, and a destroyed key's record no longer than
# KEYLEDGER_SHRED_WINDOW (shred_bound); keys.events,
# kms.audit and its digest chain are the verifiers' and auditors' history, and kms.dlq.replays the record
# of every dead letter sent back (what makes a replay happen once), so they never expire.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    Topic.KEYS_CALLERS: {"cleanup.policy": "compact"},
    Topic.KEYS_EVENTS: {"retention.ms": "-1"},
    Topic.KMS_AUDIT: {"retention.ms": "-1"},
    Topic.KMS_AUDIT_DIGESTS: {"retention.ms": "-1"},
    Topic.DLQ_REPLAYS: {"retention.ms": "-1"},
}


def shred_bound(shred_window: int) -> dict[str, str]:
    """keys.material settings under which a tombstoned key's record is gone within `shred_window` seconds.

    Compaction never touches the active segment, so a segment rolls after half the window
    (`segment.ms`), and a closed segment holding a superseded record is compacted no later than
    half the window after it closed (`max.compaction.lag.ms`). `delete.retention.ms` keeps the
    tombstone itself for the window, long enough for a rebuilding reader to see the deletion.
    """
    half_ms = str(shred_window * 1000 // 2)
    return {"cleanup.policy": "compact", "segment.ms": half_ms, "max.compaction.lag.ms": half_ms,
            "delete.retention.ms": str(shred_window * 1000)}


def topic_configs(name: str, settings: Settings) -> dict[str, str]:
    if name == Topic.KEYS_MATERIAL:
        return shred_bound(settings.limits.shred_window)
    return TOPIC_CONFIGS.get(name, {})


async def ensure_topics(bootstrap: str, settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create missing topics; returns the names it created."""
    wanted = topics or [t.value for t in Topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="keyledger-admin",
                                **client_options(settings.kafka.security))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                settings.kafka.partitions,
                settings.kafka.replication,
                topic_configs=topic_configs(name, settings),
            )
            for name in wanted
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()
