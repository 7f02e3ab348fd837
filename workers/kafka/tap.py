"""Reading topics without a consumer group: replays for audit, verify, demo and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from workers.kafka.security import client_options

C = TypeVar("C", AIOKafkaConsumer, AIOKafkaProducer)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
    timeout: float = 30.0,
) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning: to its current end, or until `until(records)` holds."""
    return await Tap(bootstrap).read(topic, until=until, timeout=timeout)


class Tap:
    """Reads topics from where it last stopped: every record it has read is kept, each read fetches only
    the records after its position in each partition, so polling a growing topic costs what is new.

    `read` returns the topic's records from the beginning (those kept and those just fetched), in the
    order they arrived. A tap holds no connection between reads: it is a position and the records, so one
    tap may serve reads from different event loops. It belongs to one broker: a broker started afresh on
    the same address needs a new tap.
    """

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._records: dict[str, list[ConsumerRecord]] = {}
        self._positions: dict[TopicPartition, int] = {}

    def kept(self, topic: str) -> list[ConsumerRecord]:
        """The records of `topic` read so far, without asking the broker."""
        return list(self._records.get(topic, []))

    async def read(
        self,
        topic: str,
        *,
        until: Callable[[list[ConsumerRecord]], bool] | None = None,
        timeout: float = 30.0,
    ) -> list[ConsumerRecord]:
        """`topic` from the beginning: to its current end, or until `until(records)` holds (then as far as
        read when `timeout` runs out; without `until`, a topic not read to its end in time raises)."""
        records = self._records.setdefault(topic, [])
        if until is not None and until(records):
            return list(records)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **client_options())
        await started(consumer)
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic, timeout))]
            consumer.assign(partitions)
            for tp in partitions:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout
            ends = await consumer.end_offsets(partitions)
            while True:
                for tp in partitions:
                    self._positions[tp] = await consumer.position(tp)
                if until is not None and until(records):
                    return list(records)
                if until is None and all(self._positions[tp] >= end for tp, end in ends.items()):
                    return list(records)
                if time.monotonic() > deadline:
                    if until is None:
                        raise TimeoutError(f"{topic} not read to its end in {timeout}s")
                    return list(records)
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        finally:
            await consumer.stop()


async def started(client: C) -> C:
    """`client.start()`, stopping it again when the start fails (else aiokafka warns "Unclosed ..." at exit)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not found")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return set(found)


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """A plain producer, as any outside client would write (key, value) records."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **client_options())
    await started(producer)
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
