"""What every process applies from `keys.material` and `keys.events` to its key table.

The records reach it through `workers.kafka.follow.TopicFollower`, which reads both topics whole at
start (a process never serves before it knows every key) and then follows them: new versions,
rotations, revocations and tombstones, which is how caches are evicted in every process. With
KEYLEDGER_KEY_TABLE_SHARDED, through `workers.kafka.follow.PartitionFollower` instead: only the
partitions a process holds (keystore/shards.py), each read whole before its tenants' records are served.
"""

from __future__ import annotations

import logging

from schemas.topics import Topic
from workers.keystore.directory import KeyDirectory

log = logging.getLogger("keyledger.keystore")

FOLLOWED = (Topic.KEYS_MATERIAL.value, Topic.KEYS_EVENTS.value)


class KeyRecords:
    def __init__(self, directory: KeyDirectory) -> None:
        self._directory = directory
        self.applied = 0

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """One record; a value `KeyMaterial`/`KeyEvent` refuses (or a tombstone key that is not UTF-8)
        changes nothing and is logged."""
        self.applied += 1
        if topic == Topic.KEYS_MATERIAL:
            if value is not None:
                applied = self._directory.apply_material_record(value)
            elif key:
                applied = self._tombstone(key)
            else:
                return
        elif value is not None:
            applied = self._directory.apply_event_record(value)
        else:
            return
        if not applied:
            log.warning("ignored a malformed %s record", topic)

    def _tombstone(self, key: bytes) -> bool:
        try:
            key_id = key.decode()
        except UnicodeDecodeError:
            return False
        self._directory.apply_tombstone(key_id)
        return True
