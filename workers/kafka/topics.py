"""Creates the topics keyledger needs when they are missing."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import Topic
from workers.kafka.security import client_options
from workers.settings import Settings

log = logging.getLogger("keyledger.topics")

# keys.material keeps the latest record of every key forever; keys.events,
# kms.audit and its digest chain are the verifiers' and auditors' history, and kms.dlq.replays the record
# of every dead letter sent back (what makes a replay happen once), so they never expire.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    Topic.KEYS_MATERIAL: {"cleanup.policy": "compact"},
    Topic.KEYS_CALLERS: {"cleanup.policy": "compact"},
    Topic.KEYS_EVENTS: {"retention.ms": "-1"},
    Topic.KMS_AUDIT: {"retention.ms": "-1"},
    Topic.KMS_AUDIT_DIGESTS: {"retention.ms": "-1"},
    Topic.DLQ_REPLAYS: {"retention.ms": "-1"},
}


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
                topic_configs=TOPIC_CONFIGS.get(name, {}),
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
