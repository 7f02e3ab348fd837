"""`keyledger audit verify`: replay `kms.audit` and prove it agrees exactly with TigerBeetle.

Both directions are checked: every audit event names a transfer that exists
with the same tenant (debit account), key (credit account), operation, outcome
and count (amount); and every transfer TigerBeetle holds for the tenants seen
(or the one asked for) appears on the topic. Duplicated audit records (an
at-least-once republish) carry the same event id and are counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from schemas.messages import AuditEvent, Outcome
from schemas.topics import Topic
from workers.core import ids
from workers.kafka.tap import read_topic
from workers.ledger import AccountFilter, AccountFilterFlags, Ledger, Transfer

PAGE = 8000


@dataclass
class AuditReport:
    events: int = 0
    duplicates: int = 0
    tenants: set[str] = field(default_factory=set)
    mismatches: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.mismatches


async def verify_audit(bootstrap: str, ledger: Ledger, tenant: str | None = None) -> AuditReport:
    records = await read_topic(bootstrap, Topic.KMS_AUDIT, timeout=120)
    return await compare(ledger, (r.value for r in records if r.value is not None), tenant)


async def compare(ledger: Ledger, values: Iterable[bytes], tenant: str | None = None) -> AuditReport:
    report = AuditReport()
    events: dict[str, AuditEvent] = {}
    for value in values:
        try:
            event = AuditEvent.model_validate_json(value)
        except ValidationError:
            report.mismatches.append("a kms.audit record is not a valid audit event")
            continue
        if tenant is not None and event.tenant_id != tenant:
            continue
        if event.event_id in events:
            report.duplicates += 1
            if events[event.event_id] != event:
                report.mismatches.append(f"{event.event_id}: two different audit records share this id")
            continue
        events[event.event_id] = event
    report.events = len(events)
    report.tenants = {e.tenant_id for e in events.values()} | ({tenant} if tenant else set())
    transfers = {t.id: t for t in await ledger.lookup_transfers([ids.from_hex(e) for e in events])}
    for event in events.values():
        problem = _disagreement(event, transfers.get(ids.from_hex(event.event_id)))
        if problem:
            report.mismatches.append(f"{event.event_id}: {problem}")
    for tenant_id in sorted(report.tenants):
        for transfer in await _tenant_transfers(ledger, tenant_id):
            if ids.to_hex(transfer.id) not in events:
                op, failed = ids.unpack_op(transfer.user_data_32)
                report.mismatches.append(f"{ids.to_hex(transfer.id)}: {op.value} transfer of {tenant_id} missing from kms.audit")
    return report


def _disagreement(event: AuditEvent, transfer: Transfer | None) -> str | None:
    if transfer is None:
        return "no such transfer in the ledger"
    op, failed = ids.unpack_op(transfer.user_data_32)
    expected = {
        "tenant": ids.tenant_ref(event.tenant_id),
        "key": ids.from_hex(event.key_id),
        "op": event.op,
        "failed": event.outcome is Outcome.FAILURE,
        "count": event.count,
    }
    actual = {"tenant": transfer.debit_account_id, "key": transfer.credit_account_id, "op": op,
              "failed": failed, "count": transfer.amount}
    differing = [name for name in expected if expected[name] != actual[name]]
    return f"differs in {', '.join(differing)}" if differing else None


async def _tenant_transfers(ledger: Ledger, tenant_id: str) -> list[Transfer]:
    found: list[Transfer] = []
    timestamp_min = 0
    while True:
        page = await ledger.get_account_transfers(AccountFilter(
            account_id=ids.tenant_ref(tenant_id), user_data_128=0, user_data_64=0, user_data_32=0, code=0,
            timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE, flags=AccountFilterFlags.DEBITS))
        found.extend(page)
        if len(page) < PAGE:
            return found
        timestamp_min = page[-1].timestamp + 1
