"""Publishing a batch's outputs: every record sent at once, then all acks awaited.

Awaiting each record's acknowledgement before sending the next would wait a
round trip per record; sending them all and then gathering the futures lets the
producer pack records into few requests. Returning means every record is
durable (acks=all), so the caller may commit.

`KafkaPublisher` owns its aiokafka producer (idempotent, acks=all, large batches)
and uses only public aiokafka API: it builds each partition's record batches
itself (`create_batch`, `send_batch`), choosing partitions with aiokafka's own
`DefaultPartitioner`, so a key lands where `send` would have put it.
tests/kafka/test_publisher.py checks the partition choice, the batches and the
record size bound without a broker. `BrokerPublisher` publishes through a
FastStream broker: handler tests run it on FastStream's TestKafkaBroker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from workers.errors import Unavailable
from workers.kafka import compat
from workers.kafka.security import client_options
from workers.settings import Settings

PARTITIONS_TTL = 30.0  # seconds a topic's partition list is trusted before it is asked for again
CHOSEN_MAX = 100_000  # (topic, key) partition choices remembered; past it the memo starts again


Header = tuple[str, bytes]



def refused_as_too_large(exc: BaseException) -> bool:
    """Whether a publish failed because a record is larger than the broker (or the producer) takes: a
    permanent refusal, which retrying the same records cannot cure."""
    return isinstance(exc, MessageSizeTooLargeError)

class Outgoing(NamedTuple):
    """One record to publish. A NamedTuple, not a frozen dataclass: two are made per signed span, and a
    tuple is the cheaper of the two to build."""

    topic: str
    key: bytes
    value: bytes | None  # None is a tombstone
    headers: tuple[Header, ...] = ()
    cause: tuple[str, int, int] | None = None
    """(topic, partition, offset) of the input record this answers: tracing writes that record's trace on it."""
    placed_by: bytes | None = None
    """The bytes its partition is chosen from when not `key` (a `keys.material` record: its tenant id, so
    a tenant's key records share the partition of its other records; workers/kafka/partitioning.py)."""

    @classmethod
    def of(cls, topic: str, key: str, message: BaseModel | None, cause: tuple[str, int, int] | None = None) -> Outgoing:
        value = message.model_dump_json(exclude_none=True).encode() if message is not None else None
        return cls(topic, key.encode(), value, cause=cause)


class BrokerUnavailable(Unavailable):
    """The broker did not acknowledge in time or is unreachable: the records wait, no attempt counts."""

    setting = "KEYLEDGER_KAFKA_BOOTSTRAP and that the broker is up"


class Publisher(Protocol):
    published: int

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        """Returns once every record is acknowledged by the broker (acks=all)."""
        ...


class KafkaPublisher:
    def __init__(self, bootstrap: str, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
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
            **durability,
            **client_options(settings.kafka.security),
        )
        self._partitioner = DefaultPartitioner()
        self._topics: dict[str, tuple[float, list[int]]] = {}
        self._chosen: dict[tuple[str, bytes], int] = {}
        self._max_request = settings.kafka.producer_max_request_bytes
        self._clock = clock
        self.published = 0

    async def start(self) -> None:
        await self._producer.start()

    async def aclose(self) -> None:
        await self._producer.stop()

    async def _partitions(self, topic: str) -> list[int]:
        """The topic's partitions, asked for again every PARTITIONS_TTL seconds (a topic may grow)."""
        now = self._clock()
        known = self._topics.get(topic)
        if known is None or now - known[0] > PARTITIONS_TTL:
            partitions = sorted(await self._producer.partitions_for(topic))
            if known is None or known[1] != partitions:
                self._chosen = {k: p for k, p in self._chosen.items() if k[0] != topic}
            known = self._topics[topic] = (now, partitions)
        return known[1]

    async def _partition(self, topic: str, key: bytes) -> int:
        """The default partitioner's answer, remembered per (topic, key) while the topic's partition list is
        trusted (murmur2 is computed in Python, on every output record's path); a changed partition list
        drops the topic's answers, so a key follows the partitioner as the topic grows."""
        chosen = self._chosen.get((topic, key))
        known = self._topics.get(topic)
        if chosen is not None and known is not None and self._clock() - known[0] <= PARTITIONS_TTL:
            return chosen
        partitions = await self._partitions(topic)
        chosen = self._chosen.get((topic, key))
        if chosen is None:
            if len(self._chosen) > CHOSEN_MAX:
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
        and handed over whole, where `send` would run its metadata wait, partitioner and accumulator in
        Python for each record. Order within a partition is the order of `records`. A record that may be
        too large for any request (`_size`) goes through `send`, which refuses it as it always did."""
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        pending: list[asyncio.Future[object]] = []
        for record in records:
            if _size(record) > self._max_request:
                placed = {} if record.placed_by is None else {
                    "partition": await self._partition(record.topic, record.placed_by)}
                pending.append(await self._producer.send(record.topic, record.value, key=record.key,
                                                         headers=list(record.headers) or None, **placed))
                self.published += 1
                continue
            placed_by = record.key if record.placed_by is None else record.placed_by
            by_partition.setdefault((record.topic, await self._partition(record.topic, placed_by)), []).append(record)
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
    """An upper bound of aiokafka's own estimate of the record's size (`estimate_size_in_bytes`: a batch
    header and the record), which `send` compares with max_request_size: whatever `send` would refuse is
    sent through it. The constant covers the batch header, the record's overhead and the key's, value's and
    header count's varints; each header its two varints and at most four UTF-8 bytes a character of its name."""
    size = 100 + len(record.key) + len(record.value or b"")
    if record.headers:
        size += sum(len(name) * 4 + 10 + len(value or b"") for name, value in record.headers)
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
