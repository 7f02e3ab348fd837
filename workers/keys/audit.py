"""The audit trail: every key operation becomes a TigerBeetle transfer and a `kms.audit` event.

Transfers are created first (ids are deterministic, so a replay answers
`exists`), then the caller publishes the events with its other outputs. The
event id is the transfer id, so replaying `kms.audit` against TigerBeetle must
agree exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from schemas.messages import AuditEvent, AuditSource, Outcome
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
        """Create the transfers of `ops`; returns each operation the ledger now holds with its `kms.audit`
        event (JSON) to publish."""
        if not ops:
            return []
        results = await self._ledger.create_transfers([op.to_transfer() for op in ops])
        events = []
        for op, result in zip(ops, results, strict=True):
            if not transfer_ok(result.status) and result.status not in _REFUSED_AS_DESTROYED:
                raise LedgerError(f"ledger refused {op.op.value} transfer: {result.status.name}")
            if result.status in _REFUSED_AS_DESTROYED:
                continue  # not recorded, so not announced: the audit only claims what TigerBeetle holds
            events.append((op, audit_json(op, result.timestamp)))
        return events


def _occurred(timestamp_ns: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ns / 1e9, UTC) if timestamp_ns else datetime.now(UTC)


def audit_json(op: OpRecord, timestamp_ns: int) -> bytes:
    """`audit_event(op, timestamp_ns).model_dump_json(exclude_none=True)`, byte for byte, without building
    the model (one audit event is written per signed span and per PII record). Every value
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
