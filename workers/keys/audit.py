"""The audit trail: every key operation becomes a TigerBeetle transfer and is named by a `kms.audit` event.

Transfers are created first (ids are deterministic, so a replay answers
`exists`), then the caller publishes the events with its other outputs.

Two shapes (docs/contract.md). A lifecycle operation (keygen, rotation, rewrap, shredding) gets an
event of its own whose id is its transfer id. Operations derived per record (`OpRecord.id_parts` set:
signing, PII, a refused caller) are grouped per batch by (tenant, key, op, outcome, caller, reason, id
derivation): one event names the partitions and offset runs whose transfers it covers (an admitted
caller's request too: its transfer derives from its record's place like any other), `count` is the sum of
their amounts, and its id is the transfer id of its first record. `named_transfers` expands an event back
to its transfer ids: the set of a batch's events expands to exactly the transfers of its operations. A
replay may group records differently: events then overlap or share an id with other contents, and `audit
verify` works on the union (audit_check.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from schemas.messages import AuditEvent, AuditRanges, AuditSource, Outcome
from workers.core import ids
from workers.ledger import (
    CreateTransferStatus,
    Ledger,
    LedgerError,
    transfer_ok,
)
from workers.ledger.records import OpRecord

# a closed account refusing a transfer is itself the proof that a key is destroyed; a redelivery of
# that same refused transfer answers ID_ALREADY_FAILED (TigerBeetle burns failed ids), stored neither time
_REFUSED_AS_DESTROYED = {
    CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED,
    CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED,
    CreateTransferStatus.ID_ALREADY_FAILED,
}


class AuditTrail:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def record(self, ops: Sequence[OpRecord]) -> list[tuple[OpRecord, bytes]]:
        """Create the transfers of `ops`; returns the `kms.audit` events (JSON) to publish for those the ledger
        now holds, each with the operation it is published for (a lifecycle operation, or a group's first)."""
        if not ops:
            return []
        results = await self._ledger.create_transfers([op.to_transfer() for op in ops])
        events = []
        groups: dict[tuple[object, ...], Group] = {}
        for op, result in zip(ops, results, strict=True):
            if not transfer_ok(result.status) and result.status not in _REFUSED_AS_DESTROYED:
                raise LedgerError(f"ledger refused {op.op.value} transfer: {result.status.name}")
            if result.status in _REFUSED_AS_DESTROYED:
                continue  # not recorded, so not announced: the audit only claims what TigerBeetle holds
            if op.id_parts is None:
                events.append((op, audit_json(op, result.timestamp)))
                continue
            key = (op.tenant_id, op.key_id, op.op, op.failed, op.caller_id, op.reason, op.id_parts, op.id_wrap)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(op, result.timestamp)
            group.add(op, result.timestamp)
        events += [(group.first, group.event_json()) for group in groups.values()]
        return events


class Group:
    """The operations of one batch that one grouped `kms.audit` event names (same tenant, key, op, outcome,
    caller, reason and id derivation)."""

    __slots__ = ("first", "timestamp", "count", "offsets", "transfers")

    def __init__(self, op: OpRecord, timestamp_ns: int) -> None:
        self.first, self.timestamp = op, timestamp_ns
        """The operation whose transfer id is the event's id (the group's first record), and its ledger time."""
        self.count = 0
        self.offsets: dict[tuple[str, int], list[int]] = {}
        self.transfers: set[int] = set()

    def add(self, op: OpRecord, timestamp_ns: int) -> None:
        if op.transfer_id in self.transfers:
            return  # the same record twice in one batch: one transfer, counted once
        self.transfers.add(op.transfer_id)
        self.count += op.count
        source = op.source
        self.offsets.setdefault((source.topic, source.partition), []).append(source.offset)
        if _place(op) < _place(self.first):
            self.first, self.timestamp = op, timestamp_ns

    def event(self) -> AuditEvent:
        op = self.first
        sources = [AuditRanges(topic=topic, partition=partition, offsets=runs(offsets))
                   for (topic, partition), offsets in sorted(self.offsets.items())]
        return AuditEvent(
            event_id=ids.to_hex(op.transfer_id), tenant_id=op.tenant_id, key_id=op.key_id, op=op.op,
            count=self.count, outcome=Outcome.FAILURE if op.failed else Outcome.SUCCESS, reason=op.reason,
            occurred_at=_occurred(self.timestamp), sources=sources or None, id_parts=list(op.id_parts or ()) or None,
            id_wrap=op.id_wrap, caller_id=op.caller_id)

    def event_json(self) -> bytes:
        return self.event().model_dump_json(exclude_none=True).encode()


def _place(op: OpRecord) -> tuple[str, int, int]:
    """Orders a group's operations by their records: (topic, partition, offset)."""
    return (op.source.topic, op.source.partition, op.source.offset)


def runs(offsets: Iterable[int]) -> list[int | tuple[int, int]]:
    """Distinct offsets, ascending, as single offsets and inclusive [first, last] runs of consecutive ones."""
    found: list[int | tuple[int, int]] = []
    ordered = sorted(set(offsets))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        found.append(ordered[i] if i == j else (ordered[i], ordered[j]))
        i = j + 1
    return found


def named_transfers(event: AuditEvent) -> list[int]:
    """The transfer ids `event` names: its own id for a lifecycle event (one with a `source`), else one per
    offset of every run of `sources` (in that order, each once). An event naming more records than its count
    names none: each transfer counts at least one operation, so it cannot be true, and its runs are not
    expanded (`audit verify` reports it)."""
    return list(named_places(event))


Place = tuple[str, int, int]
"""The Kafka record a transfer derives from: (topic, partition, offset)."""


def named_places(event: AuditEvent) -> dict[int, Place]:
    """`named_transfers(event)`, each with the record it derives from (same order)."""
    if event.source is not None:
        source = event.source
        return {ids.from_hex(event.event_id): (source.topic, source.partition, source.offset)}
    if named_count(event) > event.count:
        return {}
    parts, wrap, op, key_id = tuple(event.id_parts or ()), event.id_wrap, event.op, event.key_id
    named: dict[int, Place] = {}
    for ranges in event.sources or ():
        for run in ranges.offsets:
            first, last = (run, run) if isinstance(run, int) else run
            for offset in range(first, last + 1):
                record = (ranges.topic, ranges.partition, offset)
                named.setdefault(ids.grouped_transfer_id(op, key_id, parts, record, wrap), record)
    return named


def named_count(event: AuditEvent) -> int:
    """How many transfers `event` names, without deriving them (a bound checked before expanding)."""
    if event.source is not None:
        return 1
    total = 0
    for ranges in event.sources or ():
        total += sum(1 if isinstance(run, int) else run[1] - run[0] + 1 for run in ranges.offsets)
    return total


def _occurred(timestamp_ns: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ns / 1e9, UTC) if timestamp_ns else datetime.now(UTC)


def audit_json(op: OpRecord, timestamp_ns: int) -> bytes:
    """`audit_event(op, timestamp_ns).model_dump_json(exclude_none=True)`, byte for byte, without building
    the model. Every value
    is either ours and of a fixed alphabet (hex ids, tenant ids by their pattern, enum values, ints) or
    checked here to need no JSON escaping; anything else takes the model's path
    (tests/keys/test_audit.py holds the two together)."""
    reason, topic = op.reason, op.source.topic
    if op.wrap is not None or not (_plain_text(reason) and _plain_text(topic)):
        return audit_event(op, timestamp_ns).model_dump_json(exclude_none=True).encode()
    stamp = _occurred(timestamp_ns).isoformat()[:-6] + "Z"  # as pydantic writes it: UTC as Z, microseconds if any
    outcome = "failure" if op.failed else "success"
    return (f'{{"event_id":"{op.transfer_id:032x}","tenant_id":"{op.tenant_id}","key_id":"{op.key_id}",'
            f'"op":"{op.op}","count":{op.count},"outcome":"{outcome}","reason":"{reason}",'
            f'"occurred_at":"{stamp}","source":{{"topic":"{topic}","partition":{op.source.partition},'
            f'"offset":{op.source.offset}}}' + (f',"caller_id":"{op.caller_id}"}}' if op.caller_id else '}')).encode()


_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


@functools.lru_cache(maxsize=4096)
def _plain_text(text: str) -> bool:
    """Printable ASCII without a quote or a backslash: JSON text as it stands."""
    return _PLAIN.issuperset(text)


def audit_event(op: OpRecord, timestamp_ns: int) -> AuditEvent:
    occurred = _occurred(timestamp_ns)
    wrap = op.wrap
    pending = wrap.deletion_pending_days if wrap is not None else None
    return AuditEvent(
        event_id=ids.to_hex(op.transfer_id),
        tenant_id=op.tenant_id,
        key_id=op.key_id,
        op=op.op,
        count=op.count,
        outcome=Outcome.FAILURE if op.failed else Outcome.SUCCESS,
        reason=op.reason,
        occurred_at=occurred,
        source=AuditSource(topic=op.source.topic, partition=op.source.partition, offset=op.source.offset),
        caller_id=op.caller_id,
        kms_provider=wrap.kms_provider if wrap is not None else None,
        kms_key_id=wrap.kms_key_id if wrap is not None else None,
        kek_version=wrap.kek_version if wrap is not None else None,
        kms_deletion_date=occurred + timedelta(days=pending) if pending is not None else None,
    )
