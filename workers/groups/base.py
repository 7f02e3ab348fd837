"""What every consumer group is built from: explicit dependencies and one emitter of outcomes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from schemas.errors import ErrorCode
from schemas.messages import KeyEvent, RotationTick
from schemas.topics import Topic
from workers.core import ids
from workers.core.callers import CallerTable
from workers.errors import KeyledgerError
from workers.kafka.letters import DeadLetters
from workers.kafka.material import KafkaMaterialStore, tombstones
from workers.kafka.publisher import Outgoing, Publisher, refused_as_too_large
from workers.kafka.records import InboundRecord
from workers.keys.audit import AuditTrail
from workers.keys.service import KeyService
from workers.ledger import Ledger
from workers.ledger.records import Coordinates, OpRecord
from workers.services.callers import CallerGate
from workers.services.outcome import Outcome, Refusal
from workers.settings import Settings
from workers.source import Source

log = logging.getLogger("keyledger.emit")


class EmitObserver(Protocol):
    """Told of every Outcome once it is durable (metrics: dead letters by code, rotations by reason)."""

    def emitted(self, group: str, outcome: Outcome[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything a group may use, built once by the process context."""

    settings: Settings
    keys: KeyService
    ledger: Ledger
    audit: AuditTrail
    publisher: Publisher
    bootstrap: str = ""
    """The Kafka bootstrap, for groups that read a topic themselves (the digest group reads its chain)."""
    observer: EmitObserver | None = None
    callers: CallerTable = field(default_factory=CallerTable)
    """The caller policy table (fed from keys.callers by the process context before any group starts)."""

    def caller_gate(self) -> CallerGate:
        """What admits a request's caller (services/callers.py), per KEYLEDGER_REQUIRE_CALLER."""
        return CallerGate(self.callers, self.keys, self.settings.require_caller,
                          max_skew=self.settings.callers.max_skew)

    @property
    def materials(self) -> KafkaMaterialStore:
        """Where key material and its tombstones are written: `keys.material`, through the publisher."""
        return KafkaMaterialStore(self.publisher, self.keys.tenant_of)

    def emitter(self, group: str, encode: Callable[[R], Outgoing] | None = None) -> Emitter[R]:
        return Emitter(group, self.audit, self.publisher, self.keys, DeadLetters.of(group, self.settings),
                       self.observer, encode)


R = TypeVar("R")


class Emitter(Generic[R]):
    """Turns a service's Outcome into durable effects, in this order (a crash between steps loses nothing):

    0. the results encoded; a request whose result is larger than a record may be (the letters' limit,
       kafka/letters.py) gets no result but a `too_large` dead letter, and its operations are recorded as
       failed (a transfer of their own, outcome `failure`), so the ledger and `kms.audit` agree that no
       result was delivered (the groups refuse such requests before the service when they can:
       `signed_bound`, `result_bound`); should the broker refuse a result as too large all the same (its
       own limit below the settings'), a batch of one record (the runner isolates a failing batch) has
       its letter (`too_large`) published with its audit events, which then describe what the ledger
       holds, so the two logs agree and the record does not go round its retries;
    1. the operations' ledger transfers (deterministic ids: a replay answers `exists`);
    2. one publish, awaited (acks=all), of the results (encoded by the group's `encode`), rotation ticks,
       tombstones, key events, audit events and dead letters (bounded, redacted: kafka/letters.py; one per
       record); if it fails, it raises and the runner keeps every record of the batch, so a record leaves
       only once its letter or output has landed;
    3. the key events applied to this process's key table (only now: a failed publish retries the same work);
    4. follow-ups that may only run once all of that is durable.
    Returns the records (of `records`, the batch the Outcome answers) that must wait; the runner commits
    nothing past them. Once durable, every dead letter and every key event is logged (one line each:
    where, what, the code; never a value) and the observer, if any, is told.
    """

    def __init__(self, group: str, audit: AuditTrail, publisher: Publisher, keys: KeyService,
                 letters: DeadLetters, observer: EmitObserver | None = None,
                 encode: Callable[[R], Outgoing] | None = None) -> None:
        self._group = group
        self._audit = audit
        self._publisher = publisher
        self._keys = keys
        self._letters = letters
        self._observer = observer
        self._encode = encode

    async def __call__(self, records: Sequence[InboundRecord], outcome: Outcome[R]) -> list[InboundRecord]:
        outputs = self._outputs(outcome)
        if outcome.results:
            outputs = self._refuse_too_large(records, outcome, outputs)
        audits = [Outgoing(Topic.KMS_AUDIT.value, op.tenant_id.encode(), value,
                           cause=(op.source.topic, op.source.partition, op.source.offset))
                  for op, value in await self._audit.record(outcome.ops)]
        dead = _one_per_record(outcome.dead)
        at = {r.source: r for r in records} if dead or outcome.blocked else {}
        letters = [self._letters.letter(at[source], error.info()) for source, error in dead]
        try:
            await self._publisher.publish([*outputs, *self._events(outcome), *audits, *letters])
        except Exception as exc:
            if not (refused_as_too_large(exc) and len(records) == 1 and outcome.results):
                raise
            await self._refused_by_broker(records[0], outputs, outcome, audits)
            dead = _one_per_record(outcome.dead)
        for event in outcome.events:
            self._keys.directory.apply_event(event)
        self._log(dead, outcome)
        if self._observer is not None:
            self._observer.emitted(self._group, outcome)
        for follow_up in outcome.then:
            await follow_up()
        return [at[source] for source in outcome.blocked]

    def _outputs(self, outcome: Outcome[R]) -> list[Outgoing]:
        outputs = []
        if outcome.results:
            assert self._encode is not None, f"{self._group} has results but no encoder"
            outputs = [self._encode(result) for result in outcome.results]
        outputs += [_tick(tick) for tick in outcome.ticks]
        outputs += [record for key_id in outcome.tombstones for record in tombstones(key_id, self._keys.tenant_of(key_id))]
        return outputs

    def _refuse_too_large(self, records: Sequence[InboundRecord], outcome: Outcome[R],
                          outputs: list[Outgoing]) -> list[Outgoing]:
        """`outputs` less the results over the letters' limit; each one's request refused `too_large` and its
        operations turned into failed ones (before any of them reaches the ledger)."""
        limit = self._letters.max_bytes
        over = {o.cause for o in outputs if o.cause is not None and _record_bytes(o) > limit}
        if not over:
            return outputs
        sources = {(r.source.topic, r.source.partition, r.source.offset): r.source for r in records}
        for cause in over:
            if cause in sources:
                outcome.refuse(sources[cause], KeyledgerError(
                    f"its output is larger than the {limit} bytes a written record may have", ErrorCode.TOO_LARGE))
        outcome.ops = [_failed_too_large(op) if (op.source.topic, op.source.partition, op.source.offset) in over
                       else op for op in outcome.ops]
        return [o for o in outputs if o.cause not in over]

    async def _refused_by_broker(self, record: InboundRecord, outputs: list[Outgoing], outcome: Outcome[R],
                                 audits: list[Outgoing]) -> None:
        """The broker refused `record`'s result as too large after its operations reached the ledger: its
        letter goes out with everything else the outcome holds but that result."""
        source = record.source
        cause = (source.topic, source.partition, source.offset)
        error = KeyledgerError("its output was refused by the broker as too large", ErrorCode.TOO_LARGE)
        await self._publisher.publish([*(o for o in outputs if o.cause != cause), *self._events(outcome), *audits,
                                       self._letters.letter(record, error.info())])
        outcome.refuse(source, error)

    @staticmethod
    def _events(outcome: Outcome[R]) -> list[Outgoing]:
        return [Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in outcome.events]

    def _log(self, dead: list[Refusal], outcome: Outcome[R]) -> None:
        for source, error in dead:
            log.warning("%s: %s:%d@%d to %s: %s (%s)", self._group, source.topic, source.partition, source.offset,
                        Topic.DLQ.value, error.code.value, error, extra={
                            "group": self._group, "topic": source.topic, "partition": source.partition,
                            "offset": source.offset, "code": error.code.value})
        if outcome.events:
            sources = {op.key_id: op.source for op in outcome.ops}
            for event in outcome.events:
                self._log_event(event, sources.get(event.key_id))

    def _log_event(self, event: KeyEvent, source: Coordinates | None) -> None:
        where = {"topic": source.topic, "partition": source.partition, "offset": source.offset} if source else {}
        log.info("%s: key %s %s (tenant %s, %s v%d)", self._group, event.key_id, event.type.value, event.tenant_id,
                 event.key_type.value, event.version, extra={
                     "group": self._group, **where, "event": event.type.value, "key_id": event.key_id,
                     "key_type": event.key_type.value, "tenant_id": event.tenant_id})


def _record_bytes(record: Outgoing) -> int:
    return len(record.value or b"") + len(record.key or b"") + sum(len(n) + len(v or b"") for n, v in record.headers)


def _failed_too_large(op: OpRecord) -> OpRecord:
    """`op` as a failed operation of its own id (derived from the successful one's: a replay under the same
    limit lands on the same transfer)."""
    return dataclasses.replace(op, transfer_id=ids.transfer_id(op.op, op.key_id, TOO_LARGE, op.transfer_id),
                               failed=True, reason="output too large",
                               id_wrap=TOO_LARGE if op.id_parts is not None else None)


TOO_LARGE = "too_large"


def _tick(tick: RotationTick) -> Outgoing:
    assert tick.tenant_id is not None, "a tick a service asks for names its tenant (the record's key)"
    return Outgoing.of(Topic.ROTATION_TICKS, tick.tenant_id, tick)


def _one_per_record(dead: Sequence[Refusal]) -> list[Refusal]:
    """The first refusal of each request (a request with two refused keys still gets one letter)."""
    first: dict[Source, Refusal] = {}
    for source, error in dead:
        first.setdefault(source, (source, error))
    return list(first.values())
