"""Follows `keys.material` and `keys.events` in every process (no consumer group).

At start it reads both topics from the beginning to their end offsets, so a
process never serves before it knows every key; afterwards a background task
keeps applying new records (new versions, rotations, revocations, tombstones),
which is how caches are evicted in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import Topic
from workers.kafka.security import client_options
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
            **client_options(),
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
        started = time.monotonic()
        with _bulk_load():
            while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
                if time.monotonic() > deadline:
                    raise TimeoutError("keys.material/keys.events not read to their end in time")
                await self._poll(timeout_ms=200)
        log.info("key table loaded: %d keys from %d records in %.1fs", len(self._directory), self.applied,
                 time.monotonic() - started)

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

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@contextlib.contextmanager
def _bulk_load() -> Iterator[None]:
    """The cyclic collector paused while the table loads.

    Loading a million keys allocates millions of tracked objects (entries, records, tenants) that all
    live on: each collection they trigger walks them again for nothing (bench/keytable.py shows the
    difference). The table holds no cycles, so nothing it drops waits for the collector. Moving the
    loaded heap out of the collector's sight is the runtime's, once the worker has started
    (app/runtime.py `settle_the_heap`; not in a process that tests share)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
