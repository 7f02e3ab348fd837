"""Publishing a batch's outputs: every record sent at once, then all acks awaited.

One awaited publish per record costs ~1 ms; sending without waiting and
gathering the futures lets the producer pack records into few requests.
Returning means every record is durable (acks=all), so the caller may commit.

`KafkaPublisher` owns its aiokafka producer (idempotent, acks=all, large batches)
and uses only public aiokafka API. `BrokerPublisher` publishes through a
FastStream broker: handler tests run it on FastStream's TestKafkaBroker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from workers.errors import Unavailable
from workers.kafka import compat
from workers.kafka.security import client_options
from workers.settings import Settings

PARTITIONS_TTL = 30.0  # seconds a topic's partition list is trusted before it is asked for again


Header = tuple[str, bytes]


class Outgoing(NamedTuple):
    """One record to publish. A NamedTuple, not a frozen dataclass: two are made per signed span, and a
    frozen dataclass's __init__ costs twice as much."""

    topic: str
    key: bytes
    value: bytes | None  # None is a tombstone
    headers: tuple[Header, ...] = ()
    cause: tuple[str, int, int] | None = None
    """(topic, partition, offset) of the input record this answers: tracing writes that record's trace on it."""

    @classmethod
    def of(cls, topic: str, key: str, message: BaseModel | None, cause: tuple[str, int, int] | None = None) -> Outgoing:
        value = message.model_dump_json(exclude_none=True).encode() if message is not None else None
        return cls(topic, key.encode(), value, cause=cause)


class BrokerUnavailable(Unavailable):
    """The broker did not acknowledge in time or is unreachable: the records wait, no attempt counts."""


class Publisher(Protocol):
    published: int

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        """Returns once every record is acknowledged by the broker (acks=all)."""
        ...


class KafkaPublisher:
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        compat.install()
        durability: dict[str, object] = {"acks": "all", "enable_idempotence": settings.kafka.idempotence}
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="keyledger",
            linger_ms=settings.kafka.linger_ms,
            # one partition's batch per request is in flight at a time: 16 KiB batches (the default) turn
            # a 1,000-record handler batch into several sequential round trips
            max_batch_size=settings.kafka.producer_batch_bytes,
            max_request_size=settings.kafka.producer_max_request_bytes,
            **client_options(settings.kafka.security),
            **durability,
        )
        self._partitioner = DefaultPartitioner()
        self._topics: dict[str, tuple[float, list[int]]] = {}
        self._chosen: dict[tuple[str, bytes], int] = {}
        self._max_request = settings.kafka.producer_max_request_bytes
        self.published = 0

    async def start(self) -> None:
        await self._producer.start()

    async def aclose(self) -> None:
        await self._producer.stop()

    async def _partitions(self, topic: str) -> list[int]:
        """The topic's partitions, asked for again every PARTITIONS_TTL seconds (a topic may grow)."""
        now = time.monotonic()
        known = self._topics.get(topic)
        if known is None or now - known[0] > PARTITIONS_TTL:
            partitions = sorted(await self._producer.partitions_for(topic))
            if known is None or known[1] != partitions:
                self._chosen = {k: p for k, p in self._chosen.items() if k[0] != topic}
            known = self._topics[topic] = (now, partitions)
        return known[1]

    async def _partition(self, topic: str, key: bytes) -> int:
        """The default partitioner's answer, remembered per (topic, key): murmur2 in Python costs ~4 us."""
        chosen = self._chosen.get((topic, key))
        known = self._topics.get(topic)
        if chosen is not None and known is not None and time.monotonic() - known[0] <= PARTITIONS_TTL:
            return chosen
        partitions = await self._partitions(topic)
        chosen = self._chosen.get((topic, key))
        if chosen is None:
            if len(self._chosen) > 100_000:
                self._chosen.clear()
            chosen = self._chosen[(topic, key)] = self._partitioner(key, partitions, partitions)
        return chosen

    async def publish(self, records: Iterable[Outgoing]) -> None:
        """Raises BrokerUnavailable for what waiting cures (timeouts, connections, leader changes);
        any other refusal (a record too large for the broker) as aiokafka raised it."""
        try:
            await self._publish(records)
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, KafkaTimeoutError):
                raise BrokerUnavailable(f"publish: {type(exc).__name__}") from exc
            raise

    async def _publish(self, records: Iterable[Outgoing]) -> None:
        """Records are packed per partition into record batches built here (aiokafka's batch builder, in C)
        and handed over whole: `send` per record costs ~18 us of Python (metadata wait, partitioner,
        accumulator). Order within a partition is the order of `records`. A record too large for any
        request goes through `send`, which refuses it as it always did."""
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        pending: list[asyncio.Future[object]] = []
        for record in records:
            if _size(record) > self._max_request:
                pending.append(await self._producer.send(record.topic, record.value, key=record.key,
                                                         headers=list(record.headers) or None))
                self.published += 1
                continue
            by_partition.setdefault((record.topic, await self._partition(record.topic, record.key)), []).append(record)
        for (topic, partition), batch in by_partition.items():
            pending.extend(await self._send_batches(topic, partition, batch))
        if pending:
            await asyncio.gather(*pending)

    async def _send_batches(self, topic: str, partition: int, records: list[Outgoing]) -> list[asyncio.Future[object]]:
        sent = []
        builder = self._producer.create_batch()
        for record in records:
            headers = list(record.headers)
            if builder.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                sent.append(await self._producer.send_batch(builder, topic, partition=partition))
                builder = self._producer.create_batch()
                builder.append(timestamp=None, key=record.key, value=record.value, headers=headers)
            self.published += 1
        sent.append(await self._producer.send_batch(builder, topic, partition=partition))
        return sent


def _size(record: Outgoing) -> int:
    """Bytes the record takes in a batch, bounded above (varints and attributes: under 64 bytes)."""
    size = 64 + len(record.key) + len(record.value or b"")
    if record.headers:
        size += sum(len(name) * 4 + len(value or b"") for name, value in record.headers)
    return size


class BrokerPublisher:
    """Through FastStream's broker, one awaited publish per record: for handler tests, not for speed."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker
        self.published = 0

    async def start(self) -> None:
        """The broker's own producer starts with the broker."""

    async def aclose(self) -> None:
        """The broker's own producer stops with the broker."""

    async def publish(self, records: Iterable[Outgoing]) -> None:
        for record in records:
            headers = {name: value.decode(errors="replace") for name, value in record.headers} or None
            await self._broker.publish(record.value, record.topic, key=record.key, headers=headers)
            self.published += 1
