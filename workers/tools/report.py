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
The JSON form holds the same facts as the HTML (report_html.py renders it from the JSON form alone,
so a signed JSON form pins every fact the HTML shows; workers/tools/report_signing.py signs it).

Verdicts are never green without evidence: a tenant the ledger and kms.audit do not know is an
error (UnknownTenant), a denied operation makes the operations verdict amber and a failed one red,
and audit records no verified digest covers yet are "not yet protected" (amber), not "intact".

The period (`--from`/`--to`, ledger time) selects the operations and their counts; a key version's
lifecycle times are always its whole life (a version created before the period is still listed when
it lived into it). The ledger comparison and the digest chain are judged whole.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.messages import AuditEvent, CallerRefusal, KeyEvent, KeyEventType, KeyMaterial, KeyType, Op
from schemas.topics import Topic
from workers.core import ids
from workers.core.digest import parse_digest
from workers.core.policy import NS
from workers.errors import KeyledgerError
from workers.kafka.tap import read_topic
from workers.keys.audit import named_places
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
    readable,
)
from workers.tools.verify import PublicKeyBook

PAGE = 250  # fits a `--development` TigerBeetle's 32 KiB replies; pages continue until one comes back empty
MAX_LISTED = 200  # problems and denied operations listed in full; the counts are always complete
MAX_RANGES = 20  # record ranges listed per rolled-up row; the row's count is always complete
OK, WARN, BAD = "ok", "warn", "bad"  # verdict levels: green only with evidence, amber for attention, red for a fault


class UnknownTenant(KeyledgerError):
    """Neither the ledger nor kms.audit knows the tenant: there is nothing to vouch for."""


def iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / NS, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """RFC 3339 text (a bare date is midnight UTC; no zone is UTC) as nanoseconds since the epoch."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


REFUSALS_IN_WORDS = {
    CallerRefusal.UNKNOWN_CALLER.value: "denied: caller not registered",
    CallerRefusal.BAD_PROOF.value: "denied: caller's proof did not verify",
    CallerRefusal.EXPIRED.value: "denied: caller's proof expired (clock skew or replay)",
    CallerRefusal.NOT_ALLOWED.value: "denied: caller not allowed for this tenant",
    CallerRefusal.REVOKED.value: "denied: caller revoked",
    # the PII worker: the error code of the request's first refused field
    ErrorCode.KEY_NOT_FOUND.value: "denied: the ciphertext names a key this tenant does not own",
    ErrorCode.KEY_DESTROYED.value: "denied: key destroyed",
}
FAILURES_IN_WORDS = {
    ErrorCode.DECRYPT_FAILED.value: "failed: the ciphertext did not authenticate under the key it names",
    ErrorCode.MALFORMED_CIPHERTEXT.value: "failed: the ciphertext is malformed",
    ErrorCode.INVALID_MESSAGE.value: "failed: a field path or value is not valid Unicode",
    ErrorCode.OVERSIZED.value: "failed: a field is larger than a field may be",
}


def reason_in_words(op: str, failed: bool, reason: str) -> str:
    """What an auditor reads for an operation's outcome; the recorded reason text stays in the JSON beside it."""
    if op == Op.DENIED:
        if reason in REFUSALS_IN_WORDS:
            return REFUSALS_IN_WORDS[reason]
        if reason == "refused":  # events written before the PII worker recorded its error codes
            return "denied: the ciphertext names a key this tenant does not own"
        return f"denied: {reason or 'no reason recorded'}"
    if failed:
        if reason in FAILURES_IN_WORDS:
            return FAILURES_IN_WORDS[reason]
        if "destroyed" in reason:
            return "failed: key destroyed"
        if "revoked" in reason:
            return "failed: key revoked"
        if op == Op.DECRYPT and reason == "refused":
            return "failed: the ciphertext did not authenticate under the key it names"
        return f"failed: {reason or 'no reason recorded'}"
    return reason or "done"


@dataclass
class Operation:
    """One ledger transfer on one of the tenant's keys, with what kms.audit says of it."""

    transfer_id: str
    key_id: str
    op: str
    count: int
    failed: bool
    at_ns: int
    reason: str = ""
    caller_id: str | None = None
    records: str | None = None
    """The Kafka records that caused it, as `topic[partition]@first..last` (kms.audit's `source`)."""

    @property
    def denied(self) -> bool:
        return self.failed or self.op == Op.DENIED

    @property
    def outcome(self) -> str:
        return "denied" if self.op == Op.DENIED else "failed" if self.failed else "success"

    @property
    def words(self) -> str:
        return reason_in_words(self.op, self.failed, self.reason)


@dataclass(frozen=True)
class Audited:
    """What kms.audit says of one operation (the ledger transfer its event names)."""

    caller_id: str | None
    reason: str
    records: str
    wrapping: Wrapping | None = None
    """Lifecycle events: where the version is wrapped after the operation."""


@dataclass
class Wrapping:
    """Where a key version was wrapped from a lifecycle operation on (its kms.audit event, or keys.material)."""

    at: str | None
    op: str
    kms_provider: str
    kms_key_id: str
    kek_version: int | None = None
    kms_deletion_date: str | None = None
    """A destroy whose shred scheduled this KMS key for deletion: the earliest the key is gone."""
    records: str | None = None


def audited_operations(mine: Sequence[tuple[Logged, AuditEvent]]) -> dict[str, Audited]:
    """Transfer id -> what the tenant's kms.audit events say of it. The one place the report reads an audit
    event's per-operation shape: a lifecycle event names its own transfer and source record; a grouped event
    names one transfer per record of its offset runs (keys/audit.named_places), each with the group's caller
    and reason."""
    found = {}
    for _, event in mine:
        for transfer_id, (topic, partition, offset) in named_places(event).items():
            records = f"{topic}[{partition}]@{offset}"
            wrapping = None
            if event.kms_provider is not None and event.kms_key_id is not None:
                deletion = event.kms_deletion_date
                wrapping = Wrapping(None, event.op.value, event.kms_provider, event.kms_key_id, event.kek_version,
                                    _text(deletion) if deletion is not None else None, records)
            found[ids.to_hex(transfer_id)] = Audited(event.caller_id, event.reason, records, wrapping)
    return found


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """Successful operations by kind in the period: the sum of transfer amounts."""
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
    kms_provider: str | None = None
    kms_key_id: str | None = None
    kek_version: int | None = None
    """Where the version is wrapped now (its last lifecycle event that says, else keys.material)."""
    wrappings: list[Wrapping] = field(default_factory=list)
    """Its generate, every rewrap and migration, and its destroy, each with where it was wrapped, in ledger order."""
    destroyed_by: str | None = None
    """The record that caused its destruction (the tenant's deletion event on tenants.deleted)."""
    kms_deletion_date: str | None = None


@dataclass
class Rollup:
    """Operations of one day (UTC, ledger time), key, kind, outcome, caller and reason, added up."""

    day: str
    key_id: str
    key: str
    """`signing v2`: the key as a person names it."""
    op: str
    outcome: str
    caller_id: str | None
    reason: str
    """The reason in words (reason_in_words)."""
    count: int
    transfers: int
    first_at: str | None
    last_at: str | None
    records: list[str] = field(default_factory=list)
    """The Kafka records the audit events name (at most MAX_RANGES; `transfers` is complete)."""
    anchor: str = ""
    """The HTML id of the row, which verdicts link to."""


@dataclass
class Verdict:
    name: str
    level: str
    """ok (green: evidence that all is well), warn (amber: look here), bad (red: a fault)."""
    headline: str
    detail: str
    link: str | None = None
    """The HTML id of the first row that made it amber or red."""
    problems: list[str] = field(default_factory=list)


@dataclass
class Source:
    """One evidence source read for the report, with the offsets read per partition."""

    name: str
    partitions: dict[str, list[int]] = field(default_factory=dict)
    """Partition -> [first offset, last offset, records] read (Kafka topics only)."""


@dataclass
class Coverage:
    """What the report covers, stated at its top."""

    period_from: str | None
    period_to: str | None
    ledger: str
    """The ledger read, with its cluster id."""
    sources: list[Source] = field(default_factory=list)
    chain_first_digest_at: str | None = None
    chain_last_digest_at: str | None = None
    chain_span: dict[str, list[int]] = field(default_factory=dict)
    """Partition -> [first offset, last offset] of kms.audit the signed digests cover."""


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
    coverage: Coverage = field(default_factory=lambda: Coverage(None, None, "unknown"))
    rollups: list[Rollup] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

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
        """Every fact of the report, times as RFC 3339 UTC text next to the ledger's nanoseconds.
        `from_json` reads it back whole: the HTML is rendered from this form alone."""
        keys = []
        for key in self.keys:
            facts = asdict(key)
            for name in ("created", "rotated", "revoked", "destroyed"):
                facts[f"{name}_at"] = iso(facts[f"{name}_ns"])
            keys.append(_wire(facts))
        return {
            "tenant": self.tenant,
            "generated_at": iso(self.generated_at_ns),
            "generated_at_ns": str(self.generated_at_ns),
            "coverage": asdict(self.coverage),
            "verdicts": [asdict(v) for v in self.verdicts],
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
            "denied": [_operation_json(o) for o in self.denied[:MAX_LISTED]],
            "denied_total": sum(o.count for o in self.denied),
            "operations": [_operation_json(o) for o in self.operations],
            "operations_by_day": [asdict(r) for r in self.rollups],
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

    @classmethod
    def from_json(cls, facts: dict[str, Any]) -> TenantReport:
        """The report `to_json` wrote (lists are as long as they were written)."""
        policy, verification = facts["policy"], facts["verification"]
        ledger, chain = verification["ledger_vs_topic"], verification["digest_chain"]
        coverage = dict(facts["coverage"])
        coverage["sources"] = [Source(**s) for s in coverage["sources"]]
        return cls(
            tenant=facts["tenant"], generated_at_ns=int(facts["generated_at_ns"]),
            rotation_age_s=policy["rotation_age_s"], encrypt_limit=policy["encrypt_limit"],
            keys=[_key_version(k) for k in facts["keys"]],
            operations=[_made(Operation, _unwire(o)) for o in facts["operations"]],
            ledger_agrees=ledger["agrees"], ledger_events=ledger["events"], ledger_mismatches=ledger["mismatches"],
            chain_intact=chain["intact"], chain_problems=chain["problems"], chain_digests=chain["digests"],
            tenant_audit_records=chain["tenant_audit_records"],
            protected_records=chain["protected_by_a_verified_digest"], awaiting_digest=chain["awaiting_a_digest"],
            coverage=Coverage(**coverage), rollups=[Rollup(**r) for r in facts["operations_by_day"]],
            verdicts=[Verdict(**v) for v in facts["verdicts"]],
        )


def _operation_json(operation: Operation) -> dict[str, Any]:
    return _wire({**asdict(operation), "at": iso(operation.at_ns), "outcome": operation.outcome,
                  "in_words": operation.words})


def _wire(facts: dict[str, Any]) -> dict[str, Any]:
    """Ledger nanoseconds as decimal text: RFC 8785 (what signs the report) has exact numbers only to 2^53."""
    return {name: str(value) if name.endswith("_ns") and value is not None else value for name, value in facts.items()}


def _unwire(facts: dict[str, Any]) -> dict[str, Any]:
    return {name: int(value) if name.endswith("_ns") and value is not None else value for name, value in facts.items()}


def _key_version(facts: dict[str, Any]) -> KeyVersion:
    key: KeyVersion = _made(KeyVersion, _unwire(facts))
    key.wrappings = [Wrapping(**w) for w in facts["wrappings"]]
    return key


def _made(kind: Any, facts: dict[str, Any]) -> Any:
    names = {f.name for f in fields(kind)}
    return kind(**{name: value for name, value in facts.items() if name in names})


# --- gathering ------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Ledger time, both ends included; None is open."""

    start_ns: int | None = None
    end_ns: int | None = None

    def holds(self, ns: int) -> bool:
        return (self.start_ns is None or ns >= self.start_ns) and (self.end_ns is None or ns <= self.end_ns)


async def build_report(bootstrap: str, ledger: Ledger, tenant: str, *, rotation_age: int, encrypt_limit: int,
                       audit_topic: str = Topic.KMS_AUDIT.value, digest_topic: str = Topic.KMS_AUDIT_DIGESTS.value,
                       events_topic: str = Topic.KEYS_EVENTS.value, material_topic: str = Topic.KEYS_MATERIAL.value,
                       timeout: float = 120, period: Period = Period(), ledger_name: str = "ledger") -> TenantReport:
    # the digest verdict as `audit verify` reaches it: keys anchored by the ledger, the ledger's digest records
    # (those younger than the read are in flight), digests read before the records they cover
    cut_ns = time.time_ns() - int(GRACE * 1e9)
    materials = await read_topic(bootstrap, material_topic, timeout=timeout)
    anchors = Anchors(await ledger_anchors(ledger, [r.value for r in materials]))
    digest_records = await read_topic(bootstrap, digest_topic, timeout=timeout)
    audit_records = await read_topic(bootstrap, audit_topic, timeout=timeout)
    events = await read_topic(bootstrap, events_topic, timeout=timeout)
    book = PublicKeyBook()
    for record in events:
        book.learn_raw(record.value)
    sources = [_source(name, records) for name, records in ((audit_topic, audit_records),
                                                            (digest_topic, digest_records),
                                                            (events_topic, events), (material_topic, materials))]
    return await assemble(ledger, tenant, [_logged(r) for r in audit_records], [_logged(r) for r in digest_records],
                          [r.value for r in events], book, rotation_age=rotation_age, encrypt_limit=encrypt_limit,
                          anchors=anchors, cut_ns=cut_ns, period=period, ledger_name=ledger_name, sources=sources,
                          materials=[r.value for r in materials])


def _source(topic: str, records: Sequence[Any]) -> Source:
    spans: dict[str, list[int]] = {}
    for record in records:
        span = spans.setdefault(str(record.partition), [record.offset, record.offset, 0])
        span[0], span[1], span[2] = min(span[0], record.offset), max(span[1], record.offset), span[2] + 1
    return Source(topic, dict(sorted(spans.items(), key=lambda item: int(item[0]))))


def _logged(record: Any) -> Logged:
    return Logged(record.partition, record.offset, record.key, record.value)


async def assemble(ledger: Ledger, tenant: str, audit: Sequence[Logged], digests: Sequence[Logged],
                   key_events: Sequence[bytes | None], book: PublicKeyBook, *, rotation_age: int, encrypt_limit: int,
                   now_ns: int | None = None, anchors: Anchors | None = None, cut_ns: int | None = None,
                   period: Period = Period(), ledger_name: str = "ledger",
                   sources: Sequence[Source] = (), materials: Sequence[bytes | None] = ()) -> TenantReport:
    """With `anchors`, digest keys must be anchored and the ledger's digest records must be on the topic
    (audit_check.check_chain); without, the chain is judged from the topics alone.
    Raises UnknownTenant when neither the ledger nor kms.audit knows `tenant`."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    report = TenantReport(tenant, now_ns, rotation_age, encrypt_limit)
    report.coverage = Coverage(iso(period.start_ns), iso(period.end_ns), ledger_name, list(sources))
    mine = _tenant_audit(audit, tenant)
    accounts = await _key_accounts(ledger, tenant)
    if not accounts and not mine:
        raise UnknownTenant(f"tenant {tenant!r} has no key in the ledger and no record on kms.audit")
    audited = audited_operations(mine)
    lives: dict[str, list[Transfer]] = {}
    for account in accounts:
        transfers = lives[ids.to_hex(account.id)] = await _transfers_to(ledger, account.id)
        if period.end_ns is not None and account.timestamp > period.end_ns:
            continue  # created after the period
        during = [t for t in transfers if period.holds(t.timestamp)]
        key = _version(account, transfers, during, encrypt_limit)
        if key.destroyed_ns is not None and period.start_ns is not None and key.destroyed_ns < period.start_ns:
            continue  # gone before the period
        report.keys.append(key)
        report.operations += [_operation(t, audited) for t in during]
    report.keys.sort(key=lambda k: (k.key_type, k.version))
    report.operations.sort(key=lambda o: o.at_ns)
    _apply_events(report, key_events)
    _apply_wrappings(report, lives, audited, materials)
    _apply_policy(report, now_ns)
    await _verify_ledger(report, ledger, [r.value for r, _ in mine if r.value is not None])
    recorded = await ledger_digests(ledger) if anchors is not None else None
    chain = check_chain(audit, digests, book, anchors=anchors, recorded=recorded, cut_ns=cut_ns)
    _verify_chain(report, chain, [r for r, _ in mine])
    _chain_span(report.coverage, digests)
    report.rollups = roll_up(report)
    report.verdicts = judge(report)
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


def _operation(transfer: Transfer, audited: dict[str, Audited]) -> Operation:
    op, failed = ids.unpack_op(transfer.user_data_32)
    transfer_id = ids.to_hex(transfer.id)
    said = audited.get(transfer_id)
    return Operation(transfer_id, ids.to_hex(transfer.credit_account_id), op.value, transfer.amount, failed,
                     transfer.timestamp, said.reason if said else "", said.caller_id if said else None,
                     said.records if said else None)


def _version(account: Account, transfers: Sequence[Transfer], during: Sequence[Transfer],
             encrypt_limit: int) -> KeyVersion:
    key_type, version = ids.unpack_key_kind(account.user_data_32)
    key = KeyVersion(ids.to_hex(account.id), key_type.value, version, "active", account.timestamp,
                     usage=account.credits_posted + account.credits_pending)
    operations: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    for transfer in during:
        op, failed = ids.unpack_op(transfer.user_data_32)
        (failures if failed else operations)[op.value] += transfer.amount
    for transfer in transfers:
        op, failed = ids.unpack_op(transfer.user_data_32)
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
    for event in readable(KeyEvent, values):
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


def _apply_wrappings(report: TenantReport, lives: dict[str, list[Transfer]], audited: dict[str, Audited],
                     materials: Sequence[bytes | None]) -> None:
    """Each version's wrappings from its lifecycle events (the whole life, whatever the period), and where it is
    wrapped now; keys.material's last record fills in where the events predate these facts."""
    latest: dict[str, KeyMaterial] = {}
    for material in readable(KeyMaterial, materials):
        if material.tenant_id == report.tenant:
            latest[material.key_id] = material
    for key in report.keys:
        for transfer in lives[key.key_id]:
            said = audited.get(ids.to_hex(transfer.id))
            if said is None:
                continue
            if ids.unpack_op(transfer.user_data_32)[0] is Op.DESTROY:
                key.destroyed_by = said.records
            if said.wrapping is not None:
                wrapping = Wrapping(**{**asdict(said.wrapping), "at": iso(transfer.timestamp)})
                key.wrappings.append(wrapping)
                key.kms_deletion_date = key.kms_deletion_date or wrapping.kms_deletion_date
        now = key.wrappings[-1] if key.wrappings else None
        recorded = latest.get(key.key_id)
        if now is not None:
            key.kms_provider, key.kms_key_id, key.kek_version = now.kms_provider, now.kms_key_id, now.kek_version
        elif recorded is not None:
            key.kms_provider, key.kms_key_id = recorded.kms_provider or "aws", recorded.kms_key_id
            key.kek_version = recorded.kek_version


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


def _chain_span(coverage: Coverage, digests: Sequence[Logged]) -> None:
    """The span of kms.audit the digests on the topic claim (check_chain says which of them verify)."""
    times = []
    for record in digests:
        body = parse_digest(record.value)
        if body is None:
            continue
        times.append(body["created_at"])
        span = coverage.chain_span.setdefault(str(body["partition"]), [body["first_offset"], body["last_offset"]])
        span[0], span[1] = min(span[0], body["first_offset"]), max(span[1], body["last_offset"])
    coverage.chain_span = dict(sorted(coverage.chain_span.items(), key=lambda item: int(item[0])))
    if times:
        coverage.chain_first_digest_at, coverage.chain_last_digest_at = min(times), max(times)


# --- rolled up, judged -------------------------------------------------------------------


def roll_up(report: TenantReport) -> list[Rollup]:
    """One row per day (UTC), key, kind, outcome, caller and reason; denied and failed rows carry anchors."""
    names = {k.key_id: f"{k.key_type} v{k.version}" for k in report.keys}
    rows: dict[tuple[str, str, str, str, str, str], Rollup] = {}
    for o in report.operations:
        day = (iso(o.at_ns) or "")[:10]
        slot = (day, o.key_id, o.op, o.outcome, o.caller_id or "", o.words)
        row = rows.get(slot)
        if row is None:
            row = rows[slot] = Rollup(day, o.key_id, names.get(o.key_id, o.key_id[:8]), o.op, o.outcome, o.caller_id,
                                      o.words, 0, 0, iso(o.at_ns), None)
        row.count += o.count
        row.transfers += 1
        row.last_at = iso(o.at_ns)
        if o.records and len(row.records) < MAX_RANGES:
            row.records.append(o.records)
    ordered = sorted(rows.values(), key=lambda r: (r.day, r.key, r.op, r.outcome, r.caller_id or "", r.reason))
    for n, row in enumerate(ordered):
        row.anchor = f"ops-{n + 1}"
    return ordered


def judge(report: TenantReport) -> list[Verdict]:
    """The verdict cards, each green only with evidence for it."""
    return [_ledger_verdict(report), _chain_verdict(report), _operations_verdict(report), _policy_verdict(report)]


def _ledger_verdict(report: TenantReport) -> Verdict:
    name = "Ledger vs kms.audit"
    if not report.ledger_agrees:
        return Verdict(name, BAD, "DISAGREE", f"{len(report.ledger_mismatches):,} mismatches between this tenant's "
                       "kms.audit events and TigerBeetle", problems=report.ledger_mismatches[:MAX_LISTED])
    if report.ledger_events == 0:
        return Verdict(name, WARN, "no evidence", "no audit event of this tenant to compare with TigerBeetle")
    return Verdict(name, OK, "agree", f"{report.ledger_events:,} audit events of this tenant compared with "
                   "TigerBeetle both ways")


def _chain_verdict(report: TenantReport) -> Verdict:
    name = "Digest chain over kms.audit"
    counts = (f"{report.chain_digests:,} signed digests; {report.protected_records:,} of this tenant's "
              f"{report.tenant_audit_records:,} audit records protected")
    if not report.chain_intact:
        return Verdict(name, BAD, "BROKEN", counts, problems=report.chain_problems[:MAX_LISTED])
    unprotected = report.tenant_audit_records - report.protected_records
    if report.tenant_audit_records == 0:
        return Verdict(name, WARN, "no evidence", "no audit record of this tenant to protect")
    if unprotected:
        return Verdict(name, WARN, "not yet protected",
                       f"{counts}; {unprotected:,} not yet protected (awaiting the next digest: "
                       f"{report.awaiting_digest:,})")
    return Verdict(name, OK, "intact", counts)


def _operations_verdict(report: TenantReport) -> Verdict:
    name = "Operations"
    failed = [r for r in report.rollups if r.outcome == "failed"]
    denied = [r for r in report.rollups if r.outcome == "denied"]
    total = sum(o.count for o in report.operations)
    counts = (f"{total:,} operations in {len(report.operations):,} ledger transfers; "
              f"{sum(r.count for r in denied):,} denied, {sum(r.count for r in failed):,} failed")
    if failed:
        return Verdict(name, BAD, "failed operations", counts, link=failed[0].anchor)
    if denied:
        return Verdict(name, WARN, "denied operations", counts, link=denied[0].anchor)
    if not report.operations:
        return Verdict(name, WARN, "no operations", "no ledger operation of this tenant in the period")
    return Verdict(name, OK, "none denied", counts)


def _policy_verdict(report: TenantReport) -> Verdict:
    late = len(report.late_rotations)
    overdue = sum(k.overdue for k in report.keys)
    detail = f"{late} late rotation(s), {overdue} overdue key(s) against a rotation age of {report.rotation_age_s:,} s"
    if late or overdue:
        return Verdict("Policy", BAD, "out of policy", detail, link="rotations")
    if not report.keys:
        return Verdict("Policy", WARN, "no evidence", "no key version in the period")
    return Verdict("Policy", OK, "within policy", detail)
