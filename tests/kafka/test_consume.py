"""BatchRunner: a record leaves the waiting set only once its dead letter has landed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from schemas.messages import DeadLetter
from workers.kafka.consume import BatchRunner
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.settings import Settings

SETTINGS = Settings(retry_attempts=2, retry_backoff=0.01, retry_backoff_max=0.02)


class Broker:
    """Accepts records like a broker does, or refuses them all while `refusing` names an error."""

    def __init__(self) -> None:
        self.refusing: Exception | None = None
        self.refused = 0
        self.records: list[Outgoing] = []
        self.published = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        batch = list(records)
        if self.refusing is not None:
            self.refused += 1
            raise self.refusing
        self.records += batch
        self.published += len(batch)


def record(offset: int, value: bytes = b"{}") -> InboundRecord:
    return InboundRecord("spans.to-sign", 0, offset, b"acme", value)


async def handle(records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
    if any(r.value == b"poison" for r in records):
        raise RuntimeError("cannot handle this one")
    return []


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_letter_that_cannot_be_published_keeps_its_record_waiting_until_it_lands():
    broker = Broker()
    runner = BatchRunner("keyledger-signer", handle, broker, SETTINGS)
    broker.refusing = MessageSizeTooLargeError()
    await runner([record(0), record(1, b"poison"), record(2)])
    await until(lambda: broker.refused >= 3)  # the last attempt's letter was tried, and tried again
    assert runner.waiting == 1 and runner.dead == 0 and runner.records == 2
    assert runner._retry_task is not None and not runner._retry_task.done()  # the retry loop goes on
    broker.refusing = None
    await until(lambda: runner.waiting == 0)
    [letter] = [DeadLetter.model_validate_json(r.value) for r in broker.records if r.topic == "kms.dlq"]
    assert letter.offset == 1 and letter.error.type.value == "processing_failed" and runner.dead == 1
    await runner.aclose()


async def test_a_broker_outage_while_dead_lettering_loses_nothing():
    broker = Broker()
    runner = BatchRunner("keyledger-signer", handle, broker, SETTINGS)
    broker.refusing = KafkaConnectionError()
    await runner([record(5, b"poison")])
    await until(lambda: broker.refused >= 2)
    assert runner.waiting == 1 and runner.dead == 0
    broker.refusing = None
    await until(lambda: runner.dead == 1)
    assert runner.waiting == 0 and [r.topic for r in broker.records] == ["kms.dlq"]
    await runner.aclose()
