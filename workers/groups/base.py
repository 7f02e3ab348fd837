"""What every consumer group is built from: explicit dependencies and one emitter of outcomes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.messages import KeyEvent
from schemas.topics import Topic
from workers.kafka.letters import DeadLetters
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, Refusal
from workers.keys.audit import AuditTrail
from workers.keys.service import KeyService
from workers.ledger import Ledger
from workers.ledger.records import Coordinates
from workers.services.outcome import Outcome
from workers.settings import Settings

log = logging.getLogger("keyledger.emit")


class EmitObserver(Protocol):
    """Told of every Outcome once it is durable (metrics: dead letters by code, rotations by reason)."""

    def emitted(self, group: str, outcome: Outcome) -> None: ...


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

    def emitter(self, group: str) -> Emitter:
        return Emitter(group, self.audit, self.publisher, self.keys, DeadLetters.of(group, self.settings),
                       self.observer)


class Emitter:
    """Turns a service's Outcome into durable effects, in this order (a crash between steps loses nothing):

    1. the operations' ledger transfers (deterministic ids: a replay answers `exists`);
    2. one publish, awaited (acks=all), of outputs, key events, audit events and dead letters (bounded,
       redacted: kafka/letters.py; one per record); if it fails, it raises and the runner keeps every
       record of the batch, so a record leaves only once its letter or output has landed;
    3. the key events applied to this process's key table (only now: a failed publish retries the same work);
    4. follow-ups that may only run once all of that is durable.
    Returns the records that must wait; the runner commits nothing past them.
    Once durable, every dead letter and every key event is logged (one line each: where, what, the code;
    never a value) and the observer, if any, is told.
    """

    def __init__(self, group: str, audit: AuditTrail, publisher: Publisher, keys: KeyService,
                 letters: DeadLetters, observer: EmitObserver | None = None) -> None:
        self._group = group
        self._audit = audit
        self._publisher = publisher
        self._keys = keys
        self._letters = letters
        self._observer = observer

    async def __call__(self, outcome: Outcome) -> Sequence[InboundRecord]:
        audits = await self._audit.record(outcome.ops)
        events = [Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in outcome.events]
        letters = [self._letters.letter(record, error.info()) for record, error in _one_per_record(outcome.dead)]
        await self._publisher.publish([*outcome.outputs, *events, *audits, *letters])
        for event in outcome.events:
            self._keys.directory.apply_event(event)
        self._log(outcome)
        if self._observer is not None:
            self._observer.emitted(self._group, outcome)
        for follow_up in outcome.then:
            await follow_up()
        return outcome.blocked

    def _log(self, outcome: Outcome) -> None:
        for record, error in _one_per_record(outcome.dead):
            log.warning("%s: %s:%d@%d to %s: %s (%s)", self._group, record.topic, record.partition, record.offset,
                        Topic.DLQ.value, error.code.value, error, extra={
                            "group": self._group, "topic": record.topic, "partition": record.partition,
                            "offset": record.offset, "code": error.code.value})
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


def _one_per_record(dead: Sequence[Refusal]) -> list[Refusal]:
    """The first refusal of each record (a record with two refused keys still gets one letter)."""
    first: dict[tuple[str, int, int], Refusal] = {}
    for record, error in dead:
        first.setdefault((record.topic, record.partition, record.offset), (record, error))
    return list(first.values())
