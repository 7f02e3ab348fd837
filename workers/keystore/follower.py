"""Follows `keys.material` and `keys.events` in every process (no consumer group).

At start it reads both topics from the beginning to their end offsets, so a
process never serves before it knows every key; afterwards a background task
keeps applying new records (new versions, rotations, revocations, tombstones),
which is how caches are evicted in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.messages import KeyEvent, KeyMaterial
from schemas.topics import Topic
from workers.keystore.directory import KeyDirectory

log = logging.getLogger("keyledger.keystore")

FOLLOWED = (Topic.KEYS_MATERIAL.value, Topic.KEYS_EVENTS.value)


class KeyFollower:
    def __init__(self, bootstrap: str, directory: KeyDirectory, *, startup_timeout: float = 60.0) -> None:
        self._directory = directory
        self._startup_timeout = startup_timeout
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="keyledger-keystore",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._task: asyncio.Task[None] | None = None
        self.applied = 0

    async def start(self) -> None:
        await self._consumer.start()
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        await self._catch_up(partitions)
        self._task = asyncio.create_task(self._follow(), name="keyledger-keystore")

    async def _partitions(self) -> list[TopicPartition]:
        deadline = time.monotonic() + self._startup_timeout
        while True:
            found = [
                TopicPartition(topic, p)
                for topic in FOLLOWED
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            topics_found = {tp.topic for tp in found}
            if topics_found == set(FOLLOWED):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics missing: {sorted(set(FOLLOWED) - topics_found)}")
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)

    async def _catch_up(self, partitions: list[TopicPartition]) -> None:
        ends = await self._consumer.end_offsets(partitions)
        deadline = time.monotonic() + self._startup_timeout
        while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise TimeoutError("keys.material/keys.events not read to their end in time")
            await self._poll(timeout_ms=200)
        log.info("key table loaded: %d keys from %d records", len(self._directory), self.applied)

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following through broker hiccups
                log.warning("key follower: %s", type(exc).__name__)
                await asyncio.sleep(1)

    async def _poll(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        for records in batches.values():
            for record in records:
                self.apply(record.topic, record.key, record.value)

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.applied += 1
        try:
            if topic == Topic.KEYS_MATERIAL:
                if value is None:
                    if key:
                        self._directory.apply_tombstone(key.decode())
                    return
                self._directory.apply_material(KeyMaterial.model_validate_json(value))
            else:
                if value is not None:
                    self._directory.apply_event(KeyEvent.model_validate_json(value))
        except (ValidationError, UnicodeDecodeError):
            log.warning("ignored a malformed %s record", topic)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
