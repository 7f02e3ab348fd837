"""BatchRunner with a group that holds records: commits stop where the holder says, its timer flushes."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from workers.kafka.consume import BatchRunner, HoldsRecords
from workers.kafka.records import InboundRecord
from workers.settings import Settings


class Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("kms.audit", 0), TopicPartition("kms.audit", 1)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class Holder:
    flush_every = 0.01

    def __init__(self) -> None:
        self.covered: dict[tuple[str, int], int] = {}
        self.flushes = 0
        self.handled: list[int] = []

    def held(self) -> dict[tuple[str, int], int]:
        return dict(self.covered)

    async def flush(self) -> None:
        self.flushes += 1
        if self.flushes == 3:  # the third tick "publishes a digest" covering partition 0 up to offset 4
            self.covered[("kms.audit", 0)] = 5

    def forget(self, partitions) -> None: ...

    async def handle(self, records):
        self.handled += [r.offset for r in records]
        return []


async def test_commits_wait_for_the_holder_and_follow_its_flushes():
    holder = Holder()
    assert isinstance(holder, HoldsRecords)
    consumer = Consumer()
    runner = BatchRunner("keyledger-audit-digest", holder.handle, publisher=None, settings=Settings(), holder=holder)
    runner._consumer = consumer  # what the subscriber hands over with each batch
    records = [InboundRecord("kms.audit", p, o, b"t", b"{}") for p in (0, 1) for o in range(8)]
    await runner(records)
    assert holder.handled == [*range(8), *range(8)] and consumer.commits == []  # handled, yet nothing is covered
    for _ in range(500):
        if consumer.commits:
            break
        await asyncio.sleep(0.01)
    await runner.aclose()
    assert holder.flushes >= 3
    # partition 0 up to what the flush covered (not the 8 records seen); partition 1 not at all
    assert consumer.commits == [{TopicPartition("kms.audit", 0): 5}]
