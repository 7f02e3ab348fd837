"""`keyledger audit report --tenant T`: one tenant's key lifecycle, as an auditor reads it.

Sources, and what each one answers:
- TigerBeetle (the system of record): the tenant's key accounts (one `query_accounts` on
  user_data_128 = the tenant's reference) and every transfer on each of them
  (`get_account_transfers`). Creation, rotation, revocation and destruction times are the
  ledger's own timestamps (cluster time); operation counts are transfer amounts; the
  wear-out counter is the account balance the PII worker checks against the limit.
- keys.events: why a version was replaced (`reason` of the rotation tick) and signing
  keys' public keys.
- kms.audit: each operation's reason text, the ledger-vs-topic comparison for this tenant
  (audit_check.compare) and, with kms.audit.digests, the digest chain (audit_check.check_chain):
  how many of this tenant's audit records a verified digest protects.

Policy verdicts: a rotation is *late* when the replaced version was older than
KEYLEDGER_ROTATION_AGE (ledger time); an active key older than that is *overdue* (measured
against this machine's clock at report time, the only "now" a read-only report has);
headroom is KEYLEDGER_ENCRYPT_LIMIT minus the encryption key's usage counter.
The JSON form holds the same facts as the HTML (report_html.py renders it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.messages import AuditEvent, KeyEvent, KeyEventType, KeyType, Op
from schemas.topics import Topic
from workers.core import ids
from workers.core.policy import NS
from workers.kafka.tap import read_topic
from workers.keys.audit import named_transfers
from workers.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    Ledger,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)
from workers.tools.audit_check import (
    GRACE,
    Anchors,
    ChainReport,
    Logged,
    check_chain,
    compare,
    ledger_anchors,
    ledger_digests,
)
from workers.tools.verify import PublicKeyBook

PAGE = 250  # fits a `--development` TigerBeetle's 32 KiB replies; pages continue until one comes back empty
MAX_LISTED = 200  # problems and denied operations listed in full; the counts are always complete


def iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / NS, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Operation:
    """One ledger transfer on one of the tenant's keys."""

    transfer_id: str
    key_id: str
    op: str
    count: int
    failed: bool
    at_ns: int
    reason: str = ""

    @property
    def denied(self) -> bool:
        return self.failed or self.op == Op.DENIED


@dataclass
class KeyVersion:
    key_id: str
    key_type: str
    version: int
    state: str  # active | rotated | revoked | destroyed
    created_ns: int
    rotated_ns: int | None = None
    revoked_ns: int | None = None
    destroyed_ns: int | None = None
    replaced_by: str | None = None
    rotation_reason: str | None = None
    """Why this version was replaced (the rotation tick's reason on keys.events)."""
    public_key: str | None = None
    announced: list[str] = field(default_factory=list)
    """keys.events types seen for this key (generated, rotated, revoked, destroyed)."""
    operations: dict[str, int] = field(default_factory=dict)
    """Successful operations by kind: the sum of transfer amounts."""
    failures: dict[str, int] = field(default_factory=dict)
    usage: int = 0
    """The key's usage counter: credits posted + pending, what the wear-out check reads."""
    headroom: int | None = None
    """Encryption keys: KEYLEDGER_ENCRYPT_LIMIT - usage."""
    age_at_rotation_s: float | None = None
    late: bool | None = None
    """Replaced after the rotation age (None while not replaced)."""
    overdue: bool = False
    """Still active and older than the rotation age now."""


@dataclass
class TenantReport:
    tenant: str
    generated_at_ns: int
    rotation_age_s: int
    encrypt_limit: int
    keys: list[KeyVersion] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    ledger_agrees: bool = False
    ledger_events: int = 0
    ledger_mismatches: list[str] = field(default_factory=list)
    chain_intact: bool = False
    chain_problems: list[str] = field(default_factory=list)
    chain_digests: int = 0
    tenant_audit_records: int = 0
    protected_records: int = 0
    awaiting_digest: int = 0

    @property
    def denied(self) -> list[Operation]:
        return [o for o in self.operations if o.denied]

    @property
    def late_rotations(self) -> list[KeyVersion]:
        return [k for k in self.keys if k.late]

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for key in self.keys:
            for op, count in key.operations.items():
                totals[op] += count
        return dict(sorted(totals.items()))

    def to_json(self) -> dict[str, Any]:
        """Every fact of the report, times as RFC 3339 UTC text next to the ledger's nanoseconds."""
        keys = []
        for key in self.keys:
            facts = asdict(key)
            for name in ("created", "rotated", "revoked", "destroyed"):
                facts[f"{name}_at"] = iso(facts[f"{name}_ns"])
            keys.append(facts)
        return {
            "tenant": self.tenant,
            "generated_at": iso(self.generated_at_ns),
            "policy": {"rotation_age_s": self.rotation_age_s, "encrypt_limit": self.encrypt_limit},
            "keys": keys,
            "totals": self.totals(),
            "rotations": [{"key_id": k.key_id, "key_type": k.key_type, "version": k.version,
                           "replaced_by": k.replaced_by, "rotated_at": iso(k.rotated_ns),
                           "age_s": k.age_at_rotation_s, "late": k.late, "reason": k.rotation_reason}
                          for k in self.keys if k.rotated_ns is not None],
            "overdue": [k.key_id for k in self.keys if k.overdue],
            "wear_out": [{"key_id": k.key_id, "version": k.version, "usage": k.usage, "limit": self.encrypt_limit,
                          "headroom": k.headroom} for k in self.keys if k.key_type == KeyType.ENCRYPTION],
            "denied": [{**asdict(o), "at": iso(o.at_ns)} for o in self.denied[:MAX_LISTED]],
            "denied_total": sum(o.count for o in self.denied),
            "operations": [{**asdict(o), "at": iso(o.at_ns)} for o in self.operations],
            "verification": {
                "ledger_vs_topic": {"agrees": self.ledger_agrees, "events": self.ledger_events,
                                    "mismatches": self.ledger_mismatches[:MAX_LISTED]},
                "digest_chain": {"intact": self.chain_intact, "digests": self.chain_digests,
                                 "problems": self.chain_problems[:MAX_LISTED],
                                 "tenant_audit_records": self.tenant_audit_records,
                                 "protected_by_a_verified_digest": self.protected_records,
                                 "awaiting_a_digest": self.awaiting_digest},
            },
        }


# --- gathering ------------------------------------------------------------------------


async def build_report(bootstrap: str, ledger: Ledger, tenant: str, *, rotation_age: int, encrypt_limit: int,
                       audit_topic: str = Topic.KMS_AUDIT.value, digest_topic: str = Topic.KMS_AUDIT_DIGESTS.value,
                       events_topic: str = Topic.KEYS_EVENTS.value, material_topic: str = Topic.KEYS_MATERIAL.value,
                       timeout: float = 120) -> TenantReport:
    # the digest verdict as `audit verify` reaches it: keys anchored by the ledger, the ledger's digest records
    # (those younger than the read are in flight), digests read before the records they cover
    cut_ns = time.time_ns() - int(GRACE * 1e9)
    materials = await read_topic(bootstrap, material_topic, timeout=timeout)
    anchors = Anchors(await ledger_anchors(ledger, [r.value for r in materials]))
    digests = [_logged(r) for r in await read_topic(bootstrap, digest_topic, timeout=timeout)]
    audit = [_logged(r) for r in await read_topic(bootstrap, audit_topic, timeout=timeout)]
    events = await read_topic(bootstrap, events_topic, timeout=timeout)
    book = PublicKeyBook()
    for record in events:
        book.learn_raw(record.value)
    return await assemble(ledger, tenant, audit, digests, [r.value for r in events], book,
                          rotation_age=rotation_age, encrypt_limit=encrypt_limit, anchors=anchors, cut_ns=cut_ns)


def _logged(record: Any) -> Logged:
    return Logged(record.partition, record.offset, record.key, record.value)


async def assemble(ledger: Ledger, tenant: str, audit: Sequence[Logged], digests: Sequence[Logged],
                   key_events: Sequence[bytes | None], book: PublicKeyBook, *, rotation_age: int, encrypt_limit: int,
                   now_ns: int | None = None, anchors: Anchors | None = None, cut_ns: int | None = None) -> TenantReport:
    """With `anchors`, digest keys must be anchored and the ledger's digest records must be on the topic
    (audit_check.check_chain); without, the chain is judged from the topics alone."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    report = TenantReport(tenant, now_ns, rotation_age, encrypt_limit)
    mine = _tenant_audit(audit, tenant)
    reasons = {ids.to_hex(transfer_id): event.reason for _, event in mine for transfer_id in named_transfers(event)}
    for account in await _key_accounts(ledger, tenant):
        transfers = await _transfers_to(ledger, account.id)
        report.keys.append(_version(account, transfers, encrypt_limit))
        report.operations += [_operation(t, reasons) for t in transfers]
    report.keys.sort(key=lambda k: (k.key_type, k.version))
    report.operations.sort(key=lambda o: o.at_ns)
    _apply_events(report, key_events)
    _apply_policy(report, now_ns)
    await _verify_ledger(report, ledger, [r.value for r, _ in mine if r.value is not None])
    recorded = await ledger_digests(ledger) if anchors is not None else None
    chain = check_chain(audit, digests, book, anchors=anchors, recorded=recorded, cut_ns=cut_ns)
    _verify_chain(report, chain, [r for r, _ in mine])
    return report


def _tenant_audit(audit: Sequence[Logged], tenant: str) -> list[tuple[Logged, AuditEvent]]:
    found = []
    for record in audit:
        if record.value is None:
            continue
        try:
            event = AuditEvent.model_validate_json(record.value)
        except ValidationError:
            continue
        if event.tenant_id == tenant:
            found.append((record, event))
    return found


async def _key_accounts(ledger: Ledger, tenant: str) -> list[Account]:
    found: list[Account] = []
    timestamp_min = 0
    while True:
        page = await ledger.query_accounts(QueryFilter(
            user_data_128=ids.tenant_ref(tenant), user_data_64=0, user_data_32=0, ledger=ids.LEDGER,
            code=ids.KEY_ACCOUNT_CODE, timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE,
            flags=QueryFilterFlags.NONE))
        found += page
        if not page:
            return found
        timestamp_min = page[-1].timestamp + 1


async def _transfers_to(ledger: Ledger, account_id: int) -> list[Transfer]:
    found: list[Transfer] = []
    timestamp_min = 0
    while True:
        page = await ledger.get_account_transfers(AccountFilter(
            account_id=account_id, user_data_128=0, user_data_64=0, user_data_32=0, code=ids.TRANSFER_CODE,
            timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE, flags=AccountFilterFlags.CREDITS))
        found += page
        if not page:
            return found
        timestamp_min = page[-1].timestamp + 1


def _operation(transfer: Transfer, reasons: dict[str, str]) -> Operation:
    op, failed = ids.unpack_op(transfer.user_data_32)
    transfer_id = ids.to_hex(transfer.id)
    return Operation(transfer_id, ids.to_hex(transfer.credit_account_id), op.value, transfer.amount, failed,
                     transfer.timestamp, reasons.get(transfer_id, ""))


def _version(account: Account, transfers: Sequence[Transfer], encrypt_limit: int) -> KeyVersion:
    key_type, version = ids.unpack_key_kind(account.user_data_32)
    key = KeyVersion(ids.to_hex(account.id), key_type.value, version, "active", account.timestamp,
                     usage=account.credits_posted + account.credits_pending)
    operations: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    for transfer in transfers:
        op, failed = ids.unpack_op(transfer.user_data_32)
        (failures if failed else operations)[op.value] += transfer.amount
        if op is Op.ROTATE and not failed:
            key.rotated_ns = transfer.timestamp
            key.replaced_by = ids.to_hex(transfer.user_data_128) if transfer.user_data_128 else None
        elif op is Op.REVOKE and not failed:
            key.revoked_ns = transfer.timestamp
        elif op is Op.DESTROY and transfer.flags & TransferFlags.PENDING:
            key.destroyed_ns = transfer.timestamp
    key.operations, key.failures = dict(sorted(operations.items())), dict(sorted(failures.items()))
    if key.destroyed_ns is not None or account.flags & AccountFlags.CLOSED:
        key.state = "destroyed"
    elif key.revoked_ns is not None:
        key.state = "revoked"
    elif key.rotated_ns is not None:
        key.state = "rotated"
    if key_type is KeyType.ENCRYPTION:
        key.headroom = encrypt_limit - key.usage
    return key


def _apply_events(report: TenantReport, values: Sequence[bytes | None]) -> None:
    keys = {k.key_id: k for k in report.keys}
    for value in values:
        if value is None:
            continue
        try:
            event = KeyEvent.model_validate_json(value)
        except ValidationError:
            continue
        if event.tenant_id != report.tenant:
            continue
        key = keys.get(event.key_id)
        if key is None:
            continue
        if event.type.value not in key.announced:
            key.announced.append(event.type.value)
        key.public_key = key.public_key or event.public_key
        previous = keys.get(event.previous_key_id or "")
        if event.type is KeyEventType.ROTATED and previous is not None and event.reason is not None:
            previous.rotation_reason = event.reason.value


def _apply_policy(report: TenantReport, now_ns: int) -> None:
    for key in report.keys:
        if key.rotated_ns is not None:
            key.age_at_rotation_s = (key.rotated_ns - key.created_ns) / NS
            key.late = key.age_at_rotation_s > report.rotation_age_s
        elif key.state == "active":
            key.overdue = (now_ns - key.created_ns) / NS > report.rotation_age_s


async def _verify_ledger(report: TenantReport, ledger: Ledger, values: list[bytes]) -> None:
    verdict = await compare(ledger, values, report.tenant)
    report.ledger_agrees, report.ledger_events = verdict.agrees, verdict.events
    report.ledger_mismatches = verdict.mismatches


def _verify_chain(report: TenantReport, chain: ChainReport, mine: Sequence[Logged]) -> None:
    report.chain_intact, report.chain_problems, report.chain_digests = chain.intact, chain.problems, chain.digests
    report.tenant_audit_records = len(mine)
    report.protected_records = sum(chain.protects(r.partition, r.offset) for r in mine)
    report.awaiting_digest = sum(r.offset > chain.digested_to.get(r.partition, -1) for r in mine)
