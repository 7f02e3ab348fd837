"""What every consumer group is built from: explicit dependencies and one emitter of outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.topics import Topic
from workers.kafka.letters import DeadLetters
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, Refusal
from workers.keys.audit import AuditTrail
from workers.keys.service import KeyService
from workers.ledger import Ledger
from workers.services.outcome import Outcome
from workers.settings import Settings


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

    def emitter(self, group: str) -> Emitter:
        return Emitter(group, self.audit, self.publisher, self.keys, DeadLetters.of(group, self.settings))


class Emitter:
    """Turns a service's Outcome into durable effects, in this order (a crash between steps loses nothing):

    1. the operations' ledger transfers (deterministic ids: a replay answers `exists`);
    2. one publish, awaited (acks=all), of outputs, key events, audit events and dead letters (bounded,
       redacted: kafka/letters.py; one per record); if it fails, it raises and the runner keeps every
       record of the batch, so a record leaves only once its letter or output has landed;
    3. the key events applied to this process's key table (only now: a failed publish retries the same work);
    4. follow-ups that may only run once all of that is durable.
    Returns the records that must wait; the runner commits nothing past them.
    """

    def __init__(self, group: str, audit: AuditTrail, publisher: Publisher, keys: KeyService,
                 letters: DeadLetters) -> None:
        self._group = group
        self._audit = audit
        self._publisher = publisher
        self._keys = keys
        self._letters = letters

    async def __call__(self, outcome: Outcome) -> Sequence[InboundRecord]:
        audits = await self._audit.record(outcome.ops)
        events = [Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in outcome.events]
        letters = [self._letters.letter(record, error.info()) for record, error in _one_per_record(outcome.dead)]
        await self._publisher.publish([*outcome.outputs, *events, *audits, *letters])
        for event in outcome.events:
            self._keys.directory.apply_event(event)
        for follow_up in outcome.then:
            await follow_up()
        return outcome.blocked


def _one_per_record(dead: Sequence[Refusal]) -> list[Refusal]:
    """The first refusal of each record (a record with two refused keys still gets one letter)."""
    first: dict[tuple[str, int, int], Refusal] = {}
    for record, error in dead:
        first.setdefault((record.topic, record.partition, record.offset), (record, error))
    return list(first.values())
