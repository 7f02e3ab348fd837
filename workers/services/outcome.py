"""What a service returns for a batch: results, audited operations, key events, refusals, waiters.

Services decide; they never encode or publish records, build dead letters or name the DLQ. They name
each request by its `Source`; `workers.groups.base.Emitter` encodes the results (with the group's
encoder), maps refusals and waiting requests back to their records, and turns the Outcome into
durable effects in one fixed order (see there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.messages import KeyEvent, RotationTick
from workers.errors import KeyledgerError
from workers.ledger.records import OpRecord
from workers.source import Source

FollowUp = Callable[[], Awaitable[None]]
Refusal = tuple[Source, KeyledgerError]
R = TypeVar("R")


@dataclass(slots=True)
class Outcome(Generic[R]):
    results: list[R] = field(default_factory=list)
    """The group's own results (signed spans, PII results, digests), encoded by the group's encoder."""
    ticks: list[RotationTick] = field(default_factory=list)
    """`keys.rotation-ticks` to ask for (a fan-out's per-tenant ticks, a worn-out key's rotation)."""
    tombstones: list[str] = field(default_factory=list)
    """Key ids whose `keys.material` is deleted, published with the rest (crypto-shredding)."""
    ops: list[OpRecord] = field(default_factory=list)
    """Key operations: each becomes a ledger transfer and a `kms.audit` event with the same id."""
    events: list[KeyEvent] = field(default_factory=list)
    """`keys.events` to announce; this process's key table applies them once they are durable."""
    dead: list[Refusal] = field(default_factory=list)
    """Requests refused with a typed error: each one's record goes to `kms.dlq`."""
    blocked: list[Source] = field(default_factory=list)
    """Requests that must wait (a port is briefly unavailable): retried later, never committed past."""
    then: list[FollowUp] = field(default_factory=list)
    """Work that may only start once everything above is durable (e.g. scheduling a KMS key's deletion)."""

    def refuse(self, source: Source, error: KeyledgerError) -> None:
        self.dead.append((source, error))

    def refuse_all(self, refusals: Iterable[Refusal]) -> Outcome[R]:
        self.dead.extend(refusals)
        return self
