"""KafkaPublisher's own parts, no broker: partition choice and its memo, the record batches it builds, the
size bound that sends a record aiokafka would refuse through `send`.

The producer's network calls (`partitions_for`, `send_batch`, `send`) are replaced by `Wire`; its batch
builder (`create_batch`) is aiokafka's own, so batches fill and split as they do on a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.kafka import publisher as publisher_module
from workers.kafka.publisher import PARTITIONS_TTL, KafkaPublisher, Outgoing, _size
from workers.settings import Settings

TOPIC = "spans.signed"
SETTINGS = Settings(kafka_producer_batch_bytes=16_384, max_message_bytes=1024)  # requests of at most 32 KiB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """What the publisher hands the producer's network side: batches per partition, records `send` gets."""

    def __init__(self, publisher: KafkaPublisher, partitions: int = 6) -> None:
        self.partitions = {TOPIC: partitions}
        self.asked: list[str] = []
        self.batches: list[tuple[str, int, list[tuple[bytes, bytes | None, list[Any]]]]] = []
        self.sent: list[tuple[str, bytes | None, bytes, Any]] = []
        producer = publisher._producer
        create_batch = producer.create_batch

        def recording_batch() -> Any:
            builder = create_batch()
            appended: list[tuple[bytes, bytes | None, list[Any]]] = []
            append = builder.append

            def record_append(*, timestamp: Any, key: bytes, value: bytes | None, headers: list[Any]) -> Any:
                metadata = append(timestamp=timestamp, key=key, value=value, headers=headers)
                if metadata is not None:
                    appended.append((key, value, list(headers)))
                return metadata

            builder.append = record_append
            builder.appended = appended
            return builder

        producer.create_batch = recording_batch
        producer.partitions_for = self.partitions_for
        producer.send_batch = self.send_batch
        producer.send = self.send

    async def partitions_for(self, topic: str) -> set[int]:
        self.asked.append(topic)
        return set(range(self.partitions[topic]))

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        self.batches.append((topic, partition, builder.appended))
        return _done()

    async def send(self, topic: str, value: bytes | None, key: bytes, headers: Any = None) -> asyncio.Future[object]:
        self.sent.append((topic, value, key, headers))
        return _done()

    def partition_of(self) -> dict[bytes, set[int]]:
        where: dict[bytes, set[int]] = {}
        for _, partition, records in self.batches:
            for key, _, _ in records:
                where.setdefault(key, set()).add(partition)
        return where


def _done() -> asyncio.Future[object]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def scenario(test: Callable[[KafkaPublisher, Wire, Clock], Awaitable[None]], partitions: int = 6) -> None:
    """Run `test` on a fresh publisher (aiokafka's producer is built inside a running loop)."""

    async def run() -> None:
        clock = Clock()
        publisher = KafkaPublisher("127.0.0.1:9", SETTINGS, clock=clock)  # never started: nothing connects
        try:
            await test(publisher, Wire(publisher, partitions), clock)
        finally:
            await publisher.aclose()

    asyncio.run(run())


keys = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30, unique=True)


@settings(max_examples=100, deadline=None)
@given(keys=keys, partitions=st.integers(1, 16))
def test_each_key_goes_to_the_partition_aiokafkas_default_partitioner_chooses(keys: list[bytes], partitions: int) -> None:
    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        await publisher.publish(Outgoing(TOPIC, key, b"{}") for key in keys)
        await publisher.publish(Outgoing(TOPIC, key, b"{}") for key in reversed(keys))  # from the memo now
        every = list(range(partitions))
        assert wire.partition_of() == {key: {DefaultPartitioner()(key, every, every)} for key in keys}

    scenario(test, partitions)


def test_the_partition_list_is_asked_for_once_a_ttl_and_a_grown_topic_moves_keys_with_the_partitioner():
    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        tenants = [f"tenant-{i}".encode() for i in range(50)]
        await publisher.publish(Outgoing(TOPIC, key, b"{}") for key in tenants)
        clock.now += PARTITIONS_TTL
        await publisher.publish(Outgoing(TOPIC, key, b"{}") for key in tenants)
        assert wire.asked == [TOPIC]  # still trusted at the TTL itself
        clock.now += 1
        wire.partitions[TOPIC] = 12
        wire.batches.clear()
        await publisher.publish(Outgoing(TOPIC, key, b"{}") for key in tenants)
        assert wire.asked == [TOPIC, TOPIC]
        every = list(range(12))
        assert wire.partition_of() == {key: {DefaultPartitioner()(key, every, every)} for key in tenants}

    scenario(test, partitions=3)


def test_the_partition_memo_starts_again_past_its_bound(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(publisher_module, "CHOSEN_MAX", 3)

    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        for i in range(10):
            await publisher.publish([Outgoing(TOPIC, f"k{i}".encode(), b"{}")])
            assert len(publisher._chosen) <= 4
        every = list(range(6))
        assert wire.partition_of() == {f"k{i}".encode(): {DefaultPartitioner()(f"k{i}".encode(), every, every)}
                                       for i in range(10)}

    scenario(test)


def test_batches_keep_each_partitions_order_and_headers_and_split_when_full():
    headers = (("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
               ("binary", bytes(range(256))), ("empty", b""))
    records = [Outgoing(TOPIC, f"tenant-{i % 7}".encode(), b"x" * 900 + str(i).encode(), headers)
               for i in range(120)]
    records += [Outgoing(TOPIC, b"tenant-0", None), Outgoing("kms.audit", b"tenant-0", b"{}")]  # a tombstone

    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        wire.partitions["kms.audit"] = 2
        await publisher.publish(records)
        assert publisher.published == len(records) and wire.sent == []
        landed: dict[tuple[str, int], list[tuple[bytes, bytes | None, list[Any]]]] = {}
        for topic, partition, batch in wire.batches:
            assert batch, "no empty batch is sent"
            landed.setdefault((topic, partition), []).extend(batch)
        expected: dict[tuple[str, int], list[tuple[bytes, bytes | None, list[Any]]]] = {}
        for r in records:
            every = list(range(wire.partitions[r.topic]))
            partition = DefaultPartitioner()(r.key, every, every)
            expected.setdefault((r.topic, partition), []).append((r.key, r.value, list(r.headers)))
        assert landed == expected
        # 120 records of about 1.3 KB cannot share one 16 KiB batch: the builder filled and a new one began
        assert len(wire.batches) > len(expected)

    scenario(test)


def test_a_record_aiokafka_would_refuse_goes_through_send_which_refuses_it():
    big = Outgoing(TOPIC, b"tenant-1", b"x" * SETTINGS.kafka.producer_max_request_bytes, (("traceparent", b"00"),))
    small = Outgoing(TOPIC, b"tenant-1", b"{}")

    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        await publisher.publish([small, big, small])
        assert wire.sent == [(TOPIC, big.value, big.key, [("traceparent", b"00")])]
        assert [len(batch) for _, _, batch in wire.batches] == [2] and publisher.published == 3

    scenario(test)


header_names = st.text(min_size=0, max_size=12)
header_values = st.none() | st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=300), value=st.none() | st.binary(max_size=70_000),
       headers=st.lists(st.tuples(header_names, header_values), max_size=8))
def test_the_size_bound_is_never_under_aiokafkas_own_estimate(key: bytes, value: bytes | None,
                                                             headers: list[tuple[str, bytes | None]]) -> None:
    record = Outgoing(TOPIC, key, value, tuple(headers))  # type: ignore[arg-type]
    assert _size(record) >= DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)


def test_a_record_placed_by_its_tenant_lands_on_the_tenants_partition_whatever_its_key():
    async def test(publisher: KafkaPublisher, wire: Wire, clock: Clock) -> None:
        wire.partitions["keys.material"] = 12
        tenants = [f"tenant-{i}" for i in range(40)]
        await publisher.publish(Outgoing("keys.material", f"key-of-{t}".encode(), b"{}", placed_by=t.encode())
                                for t in tenants)
        every = list(range(12))
        assert wire.partition_of() == {f"key-of-{t}".encode(): {DefaultPartitioner()(t.encode(), every, every)}
                                       for t in tenants}

    scenario(test)
