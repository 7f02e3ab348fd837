"""Handler-test harness: one process context on FastStream's TestKafkaBroker, outputs captured per topic."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from faststream.kafka import KafkaMessage, TestKafkaBroker

from tests.support.callers import TEST_CALLER
from workers.app.context import ProcessContext
from workers.kafka.records import InboundRecord
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings

OUTPUTS = ("keys.material", "keys.events", "kms.audit", "kms.dlq", "spans.signed", "pii.results",
           "keys.rotation-ticks")


@dataclass
class Captured:
    by_topic: dict[str, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)

    def add(self, topic: str, key: bytes, value: bytes | None) -> None:
        self.by_topic.setdefault(topic, []).append((key, value))

    def values(self, topic: str, model: Any = None) -> list[Any]:
        raw = [v for _, v in self.by_topic.get(topic, []) if v]
        return [model.model_validate_json(v) for v in raw] if model else [json.loads(v) for v in raw]

    def counts(self) -> dict[str, int]:
        return {t: len(v) for t, v in self.by_topic.items()}


async def _raw(message: Any) -> None:
    return None


def _capture_into(captured: Captured, context: ProcessContext, topic: str) -> None:
    @context.broker.subscriber(topic, decoder=_raw)
    async def capture(body: Any, message: KafkaMessage) -> None:
        record = message.raw_message
        captured.add(record.topic, record.key, record.value)


@asynccontextmanager
async def handler_harness(groups: list[str], *, kms: Any = None, ledger: Any = None, tenants: Sequence[str] = (),
                          **settings: Any) -> AsyncIterator[tuple[ProcessContext, Any, Captured]]:
    """`(context, broker, captured)`: the groups' handlers on the in-memory broker, each output captured.
    Each of `tenants` is created first (tenants.created, handled before the block starts), so a test file's
    `harness` fixture is `async with handler_harness(GROUPS, tenants=("acme", "globex")) as parts: yield parts`."""
    # the in-memory test broker delivers inline: handle each batch before publish() returns
    # key_table_wait 0: one process, inline delivery, so a tenant unknown now is unknown for good
    config = Settings(kafka_bootstrap="unused:9092", **{"kafka_pipeline_depth": 1, "key_table_wait": 0, **settings})
    context = ProcessContext.build(config, "unused:9092", kms=kms or LocalKms(), ledger=ledger or MemoryLedger(),
                                   follow=False, test_broker=True)
    TEST_CALLER.enrol(context.callers)
    context.register(groups)
    captured = Captured()
    for topic in OUTPUTS:
        _capture_into(captured, context, topic)
    async with TestKafkaBroker(context.broker) as broker:
        for tenant in tenants:
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield context, broker, captured
    await context.aclose()


def tenant_created(tenant: str, **extra: Any) -> bytes:
    body = {"event_id": f"evt-{tenant}", "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat(), **extra}
    return json.dumps(body).encode()


def tick(tick_id: str, **fields: Any) -> bytes:
    """A keys.rotation-ticks value issued now; `fields` add to it or replace what it says (issued_at too)."""
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


def span_job(tenant: str, span: dict | None = None, job_id: str | None = None) -> bytes:
    span = span if span is not None else {"trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16],
                                          "name": "GET /accounts", "attributes": {"http.status_code": 200}}
    return json.dumps({"job_id": job_id or str(uuid.uuid4()), "tenant_id": tenant, "span": span}).encode()


def inbound(topic: str, key: str, value: bytes | None, offset: int, partition: int = 0) -> InboundRecord:
    return InboundRecord(topic, partition, offset, key.encode(), value)



class Placed:
    """Hands records of `topic` to `group`'s handler, each at its own offset of partition 0, as a broker
    places them. The test broker delivers every record at offset 0, and signing and PII transfers derive
    their ids from a record's place: different requests of one key delivered there would claim one transfer.
    Offsets go on from where an earlier `Placed` of the same group's handler left them."""

    _next: ClassVar[dict[tuple[int, str], Iterator[int]]] = {}

    def __init__(self, context: ProcessContext, group: str, topic: str) -> None:
        self._group, self._topic = context.groups[group], topic
        self._offsets = Placed._next.setdefault((id(self._group), topic), itertools.count(1))

    async def publish(self, value: bytes, key: str) -> None:
        await self._group.handle([inbound(self._topic, key, value, offset=next(self._offsets))])
