"""Reads topics whole at start, then follows them: how every process holds its small global tables.

No consumer group: each process reads every partition itself (assigned, from the beginning). `start`
returns only once every partition is read to the end offset it had when start began, so a process
never serves before it knows every record written before it started; afterwards a background task
hands each new record to the same `apply`. `apply` sees records in partition order; what it does with
a bad record (ignore and log) is its own business: the follower never stops following.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from workers.kafka.security import client_options

log = logging.getLogger("keyledger.follow")

Apply = Callable[[str, bytes | None, bytes | None], Awaitable[None] | None]
"""(topic, key, value) of one record; may be a coroutine function."""


class _Follower:
    """What both followers share: a consumer without a group reading from the beginning, a catch-up read to
    the end offsets a read began with, a background task that polls through broker hiccups, and closing."""

    def __init__(self, bootstrap: str, topics: Sequence[str], apply: Apply, *, client_id: str,
                 startup_timeout: float, max_records: int) -> None:
        self._topics = tuple(topics)
        self._apply = apply
        self._timeout = startup_timeout
        self._max_records = max_records
        self._name = client_id
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id,
                                          enable_auto_commit=False, auto_offset_reset="earliest",
                                          **client_options())
        self._task: asyncio.Task[None] | None = None

    async def _read_to_end(self, partitions: list[TopicPartition], what: str, *, bulk_load: bool) -> None:
        """Poll until every one of `partitions` is read to the end offset it has now (TimeoutError naming
        `what` after the startup timeout)."""
        ends = await self._consumer.end_offsets(partitions)
        deadline = time.monotonic() + self._timeout
        with _collector_paused(bulk_load):
            while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} not read to the end in time")
                await self._poll(timeout_ms=200)

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following through broker hiccups
                log.warning("%s: %s", self._name, type(exc).__name__)
                await asyncio.sleep(1)

    async def _follow_once(self) -> None:
        raise NotImplementedError

    async def _poll(self, timeout_ms: int) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


class TopicFollower(_Follower):
    def __init__(self, bootstrap: str, topics: Sequence[str], apply: Apply, *, client_id: str,
                 startup_timeout: float = 60.0, bulk_load: bool = False, max_records: int = 5000) -> None:
        """`bulk_load`: pause the cyclic collector while the catch-up read runs (a large table of objects
        that all live on gains nothing from collections triggered by its own allocations)."""
        super().__init__(bootstrap, topics, apply, client_id=client_id, startup_timeout=startup_timeout,
                         max_records=max_records)
        self._bulk_load = bulk_load
        self.read = 0

    async def start(self) -> None:
        await self._consumer.start()
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        await self._read_to_end(partitions, ", ".join(self._topics), bulk_load=self._bulk_load)
        self._task = asyncio.create_task(self._follow(), name=self._name)

    async def _partitions(self) -> list[TopicPartition]:
        return await _partitions_of(self._consumer, self._topics, self._timeout)

    async def _follow_once(self) -> None:
        await self._poll(timeout_ms=500)

    async def _poll(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self._max_records)
        for records in batches.values():
            for record in records:
                self.read += 1
                applied = self._apply(record.topic, record.key, record.value)
                if applied is not None:
                    await applied

class PartitionFollower(_Follower):
    """Follows chosen partition numbers of topics (the same numbers on each): the reader of a sharded key
    table (workers/keystore/shards.py: `PartitionReader`). No consumer group, as `TopicFollower`.

    `read` returns once the new partitions are read from the beginning to the end offsets they had when it
    began, and they are followed from then on; `stop_following` returns once no record of those partitions
    will be applied any more. Both, and every poll, take turns (one lock): a partition's records reach
    `apply` in order, and never while its set of partitions changes."""

    def __init__(self, bootstrap: str, topics: Sequence[str], apply: Apply, *, client_id: str,
                 startup_timeout: float = 60.0, max_records: int = 5000) -> None:
        super().__init__(bootstrap, topics, apply, client_id=client_id, startup_timeout=startup_timeout,
                         max_records=max_records)
        self._numbers: frozenset[int] = frozenset()
        self._only: dict[int, frozenset[bytes]] = {}  # partitions followed for these tenants' records alone
        self._turn = asyncio.Lock()
        self._reading: frozenset[int] = frozenset()  # partitions being read whole from the start
        self.read_records = 0

    async def start(self) -> int:
        """Connect; the partition count the topics share (ValueError when they differ: a tenant's records
        would then not share one partition number)."""
        await self._consumer.start()
        found = await _partitions_of(self._consumer, self._topics, self._timeout)
        counts = {topic: sum(1 for tp in found if tp.topic == topic) for topic in self._topics}
        if len(set(counts.values())) != 1:
            raise ValueError(f"a sharded key table needs one partition count on {', '.join(self._topics)}: {counts}")
        self._task = asyncio.create_task(self._follow(), name=self._name)
        return next(iter(counts.values()))

    async def read(self, numbers: frozenset[int]) -> None:
        """Every record of these partitions (one followed for some tenants alone is read again, whole)."""
        async with self._turn:
            await self._read_from_start(numbers - self._numbers)
            self._numbers |= numbers

    async def read_tenants(self, number: int, tenants: frozenset[str]) -> None:
        """The records of `tenants` alone in partition `number`, read to its end and followed: a `keys.events`
        record by its key, a `keys.material` record when the tenant id's bytes are in its value (a record of
        another tenant whose value holds them too is applied as well; a tombstone always is: it changes only a
        key already held)."""
        async with self._turn:
            self._only[number] = frozenset(t.encode() for t in tenants)
            if number not in self._numbers:
                await self._read_from_start(frozenset([number]), whole=False)

    async def _read_from_start(self, numbers: frozenset[int], *, whole: bool = True) -> None:
        """Read `numbers` from their beginning to their end offsets now: every record when `whole`, else
        those their tenant filter lets through."""
        read = [TopicPartition(topic, n) for topic in self._topics for n in sorted(numbers)]
        if not read:
            return
        assigned = self._consumer.assignment()
        await self._reassign([*assigned, *(tp for tp in read if tp not in assigned)])
        await self._consumer.seek_to_beginning(*read)
        reading, self._reading = self._reading, (numbers if whole else frozenset())
        try:
            await self._read_to_end(read, f"partitions {sorted(numbers)} of {', '.join(self._topics)}", bulk_load=True)
        finally:
            self._reading = reading

    async def stop_following(self, numbers: frozenset[int]) -> None:
        """A partition also followed for some tenants alone (`read_tenants`) goes back to those."""
        async with self._turn:
            self._numbers -= numbers
            await self._reassign([tp for tp in self._consumer.assignment()
                                  if tp.partition not in numbers or tp.partition in self._only])

    async def _reassign(self, partitions: list[TopicPartition]) -> None:
        """Assign `partitions`, those already followed staying where they were (`assign` forgets positions)."""
        positions = {tp: await self._consumer.position(tp) for tp in self._consumer.assignment()}
        self._consumer.assign(partitions)
        for tp in partitions:
            if tp in positions:
                self._consumer.seek(tp, positions[tp])

    async def _follow_once(self) -> None:
        if not self._numbers and not self._only:
            await asyncio.sleep(0.2)
            return
        async with self._turn:
            await self._poll(timeout_ms=200)

    async def _poll(self, timeout_ms: int) -> None:
        if not self._consumer.assignment():
            return
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self._max_records)
        for tp, records in batches.items():
            whole = tp.partition in self._numbers or tp.partition in self._reading
            only = None if whole else self._only.get(tp.partition)
            if not whole and only is None:
                continue  # fetched before it stopped being followed
            for record in records:
                self.read_records += 1
                if only is not None and not _names(record.key, record.value, only):
                    continue
                applied = self._apply(record.topic, record.key, record.value)
                if applied is not None:
                    await applied



def _names(key: bytes | None, value: bytes | None, tenants: frozenset[bytes]) -> bool:
    """Whether a key record may be one of `tenants`': keyed by one (keys.events), a tombstone, or a value
    holding one's id (keys.material, keyed by key id)."""
    return key in tenants or value is None or any(tenant in value for tenant in tenants)


async def _partitions_of(consumer: AIOKafkaConsumer, topics: Sequence[str], timeout: float) -> list[TopicPartition]:
    """Every partition of `topics`, once the metadata names them all (TimeoutError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or ())]
        missing = set(topics) - {tp.topic for tp in found}
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics missing: {sorted(missing)}")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def _collector_paused(paused: bool) -> Iterator[None]:
    """The cyclic collector paused while a table loads (nothing it loads forms cycles). Moving the loaded
    heap out of the collector's sight is the runtime's, once the worker has started (app/runtime.py)."""
    enabled = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused and enabled:
            gc.enable()
