"""Reading a real broker's topics as a test does: from where the last read stopped, never the whole topic again.

Each broker has one `Tap` for the session (`tap_of`): a read fetches only what arrived since the previous
read of that topic, so a test polling a topic that earlier tests filled costs what is new. A fixture that
stops a broker calls `forget` so a later broker on the same address starts with a fresh tap.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from workers.kafka.tap import Tap

_taps: dict[str, Tap] = {}


def tap_of(bootstrap: str) -> Tap:
    """The session's tap on the broker at `bootstrap`."""
    if bootstrap not in _taps:
        _taps[bootstrap] = Tap(bootstrap)
    return _taps[bootstrap]


def forget(bootstrap: str) -> None:
    """The broker at `bootstrap` is gone: what its tap kept no longer describes that address."""
    _taps.pop(bootstrap, None)


async def read(bootstrap: str, topic: str, *, until: Callable[[list[ConsumerRecord]], bool] | None = None,
               timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning, as `workers.kafka.tap.read_topic`, through the broker's tap."""
    return await tap_of(bootstrap).read(topic, until=until, timeout=timeout)


def unique_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tenant_created(tenant: str, event_id: str | None = None, **extra) -> bytes:
    """A tenants.created value with an event id of its own (unless given): each call is a new event."""
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat(), **extra}).encode()


def json_object(value: bytes | None) -> dict | None:
    """A record's JSON object, or None: input topics also hold the hostile records tests send."""
    try:
        decoded = json.loads(value) if value is not None else None
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None


async def records_for(bootstrap: str, topic: str, tenant: str, want: int = 0, timeout: float = 30.0) -> list[dict]:
    """The JSON values of `topic` keyed by `tenant` or naming it (waits until `want` are there)."""
    def mine(records: list[ConsumerRecord]) -> list[dict]:
        values = [(r.key, json_object(r.value)) for r in records]
        return [v for key, v in values if v is not None and (key == tenant.encode() or v.get("tenant_id") == tenant)]

    records = await read(bootstrap, topic, until=(lambda rs: len(mine(rs)) >= want) if want else None,
                         timeout=timeout)
    return mine(records)


async def last_record(bootstrap: str, topic: str, key: str) -> ConsumerRecord:
    """The latest record of `topic` under `key` (read to the topic's current end)."""
    return [r for r in await read(bootstrap, topic) if r.key == key.encode()][-1]


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    # an unsubscribed consumer only fetches the group's offsets; it never joins the group
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, partition))
        return committed if committed is not None else -1
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, topic: str, partition: int, past: int, timeout: float = 30.0) -> None:
    """Wait until `group` committed beyond offset `past`: it processed that record and everything before."""
    deadline = time.monotonic() + timeout
    while await committed_offset(bootstrap, group, topic, partition) <= past:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{group} did not commit past {topic}[{partition}]@{past}")
        await asyncio.sleep(0.2)


async def wait_processed(bootstrap: str, group: str, topic: str, key: str, timeout: float = 30.0) -> ConsumerRecord:
    """Wait until `group` committed past the latest record of `topic` under `key`; returns that record.
    The proof a negative assertion needs: the record was handled, whatever it led to is out."""
    record = await last_record(bootstrap, topic, key)
    await wait_committed(bootstrap, group, topic, record.partition, record.offset, timeout=timeout)
    return record


async def wait_drained(bootstrap: str, group: str, topic: str, timeout: float = 60.0) -> None:
    """Wait until `group` committed every record of `topic`, and no record came in the meantime: what it
    was given is handled, and what it wrote back to `topic` (a fan-out) is handled too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    deadline = time.monotonic() + timeout
    try:
        await consumer.topics()  # the cluster's metadata, so the topic's partitions are known
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"no topic {topic}"
        while True:
            ends = await consumer.end_offsets(partitions)
            committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
            if all(committed[tp] >= end for tp, end in ends.items()) and ends == await consumer.end_offsets(partitions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} did not commit {topic} to its end: {committed} of {ends}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


# the first members of a group on tansu: their session is what later joins of that group wait on
_WARMING = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 100}


async def warm_groups(bootstrap: str, groups: Sequence[str], topic: str = "tenants.created") -> None:
    """Join each consumer group twice, all at once, with members of a short session, committing nothing.

    tansu makes the second member ever to join a group wait out the first one's session, and every join
    wait in proportion to the session of the group's first members: after this, a worker joining (or
    re-joining after a restart) waits a fraction of what it would on a group it is the first to join."""
    async def join_and_leave() -> None:
        consumers = [AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                      **_WARMING) for group in groups]
        try:
            await asyncio.gather(*(consumer.start() for consumer in consumers))
            while not all(consumer.assignment() for consumer in consumers):
                await asyncio.gather(*(consumer.getmany(timeout_ms=100) for consumer in consumers))
        finally:
            await asyncio.gather(*(consumer.stop() for consumer in consumers))

    for _ in range(2):
        await join_and_leave()


async def until(check: Callable[[], object], what: str, timeout: float = 60.0, every: float = 0.2) -> object:
    """The first truthy answer of `check` (a coroutine function or a plain one), asked every `every` s."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if asyncio.iscoroutine(answer):
            answer = await answer
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(every)
