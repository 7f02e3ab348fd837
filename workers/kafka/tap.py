"""Reading whole topics without a consumer group: replays for audit, verify, demo and tests."""

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
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                **client_options())
    await started(consumer)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic, timeout))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        ends = await consumer.end_offsets(partitions)
        while True:
            if until is not None and until(records):
                return records
            if until is None and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return records
            if time.monotonic() > deadline:
                if until is None:
                    raise TimeoutError(f"{topic} not read to its end in {timeout}s")
                return records
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
