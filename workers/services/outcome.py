"""What a service returns for a batch: outputs, audited operations, key events, refusals, waiters.

Services decide; they never publish results, build dead letters or name the DLQ.
`workers.groups.emit.Emitter` turns an Outcome into durable effects in one fixed
order (see there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from schemas.messages import KeyEvent
from workers.errors import KeyledgerError
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord, Refusal
from workers.ledger.records import OpRecord

FollowUp = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Outcome:
    outputs: list[Outgoing] = field(default_factory=list)
    """Records for the group's output topics (signed spans, PII results, ticks, tombstones)."""
    ops: list[OpRecord] = field(default_factory=list)
    """Key operations: each becomes a ledger transfer and a `kms.audit` event with the same id."""
    events: list[KeyEvent] = field(default_factory=list)
    """`keys.events` to announce; this process's key table applies them once they are durable."""
    dead: list[Refusal] = field(default_factory=list)
    """Records refused with a typed error: each goes to `kms.dlq`."""
    blocked: list[InboundRecord] = field(default_factory=list)
    """Records that must wait (a port is briefly unavailable): retried later, never committed past."""
    then: list[FollowUp] = field(default_factory=list)
    """Work that may only start once everything above is durable (e.g. scheduling a KMS key's deletion)."""

    def refuse(self, record: InboundRecord, error: KeyledgerError) -> None:
        self.dead.append((record, error))

    def refuse_all(self, refusals: Iterable[Refusal]) -> Outcome:
        self.dead.extend(refusals)
        return self
