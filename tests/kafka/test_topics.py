"""kafka/topics.py: keys.material is created with a bound on how long a shredded key's record survives."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.topics import Topic
from workers.kafka.topics import shred_bound, topic_configs
from workers.settings import Settings


def test_keys_material_settings_follow_the_shred_window():
    settings = Settings(kafka_bootstrap="unused:9092", shred_window=3600)
    configs = topic_configs(Topic.KEYS_MATERIAL, settings)
    assert configs == {"cleanup.policy": "compact", "segment.ms": "1800000", "max.compaction.lag.ms": "1800000",
                       "delete.retention.ms": "3600000"}
    # a record is in the active segment at most segment.ms, then compacted within max.compaction.lag.ms
    assert int(configs["segment.ms"]) + int(configs["max.compaction.lag.ms"]) == 3600 * 1000
    assert topic_configs(Topic.KEYS_EVENTS, settings) == {"retention.ms": "-1"}
    assert Settings(kafka_bootstrap="unused:9092").limits.shred_window == 86_400


@pytest.mark.integration
async def test_the_broker_takes_the_shred_bound_as_the_topics_configuration(kafka_bootstrap):
    name = f"keys.material.shred-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=shred_bound(7200))])
        [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        configs = {entry[0]: entry[1] for resource in described.resources for entry in resource[4]}
        await admin.delete_topics([name])
    finally:
        await admin.close()
    assert {k: configs[k] for k in shred_bound(7200)} == shred_bound(7200)
