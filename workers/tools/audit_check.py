"""`keyledger audit verify`: replay `kms.audit`, prove it agrees exactly with TigerBeetle, check its digest chain.

Ledger comparison: both directions are checked: every audit event names a transfer
that exists with the same tenant (debit account), key (credit account), operation,
outcome and count (amount); and every transfer TigerBeetle holds for the tenants seen
(or the one asked for) appears on the topic. Duplicated audit records (an
at-least-once republish) carry the same event id and are counted once.

Digest chain (`check_chain`, from the topics alone): per partition, in the digest
topic's order, every digest is signed by a keyledger digest key (public keys from
`keys.events`, tenant `keyledger-system`), links to the hash of the previous valid
digest, overlaps none and leaves no record between itself and the previous one, and
its count and `records_sha256` match the records now at its offsets. Records after
the last digest are "not yet digested", not a break. Byte-identical digests (a
republish) count once. Every break names its partition and offsets.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas.messages import SYSTEM_TENANT, AuditEvent, Op, Outcome
from schemas.topics import Topic
from workers.core import ids
from workers.core.digest import ZERO_SHA256, digest_sha256, encode, parse_digest, records_sha256, verify_digest
from workers.kafka.tap import read_topic
from workers.ledger import AccountFilter, AccountFilterFlags, Ledger, Transfer
from workers.tools.verify import KeyStatus, PublicKeyBook

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
            if events[event.event_id] != event and not _same_caller_request(events[event.event_id], event):
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


def _same_caller_request(first: AuditEvent, again: AuditEvent) -> bool:
    """A copy of a caller's request produced again lands on the same transfer and republishes its event
    from where the copy was read: the same event but for `source`."""
    return first.caller_id is not None and first.model_copy(update={"source": again.source}) == again


# operations that carry no linked key or origin in user_data_128: there it is the caller id, or 0
_CALLER_OPS = frozenset({Op.SIGN, Op.ENCRYPT, Op.DECRYPT, Op.REENCRYPT, Op.DENIED})


def _caller_of(event: AuditEvent, transfer: Transfer) -> tuple[int | None, int | None]:
    """(expected, actual) caller of a transfer in user_data_128, or (None, None) where it names none."""
    if event.caller_id is not None:
        return ids.from_hex(event.caller_id), transfer.user_data_128
    if event.op in _CALLER_OPS:
        return 0, transfer.user_data_128
    return None, None


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
    expected["caller"], actual["caller"] = _caller_of(event, transfer)
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


# --- the digest chain ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Logged:
    """One record of a topic as read back: where it sits and its bytes."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class ChainReport:
    records: int = 0
    digests: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    not_yet_digested: dict[int, int] = field(default_factory=dict)
    """Per partition: records after its last digest (unprotected until the next one; not a break)."""
    covered: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    """Per partition: offset ranges of digests that verified in every respect."""
    digested_to: dict[int, int] = field(default_factory=dict)
    """Per partition: the highest offset any signed digest claims (records beyond it await a digest)."""
    last_digest_at: dict[int, str] = field(default_factory=dict)
    revoked_signers: set[str] = field(default_factory=set)
    """Digest keys that were later revoked or destroyed (their digests still verify)."""

    @property
    def intact(self) -> bool:
        return not self.problems

    def protects(self, partition: int, offset: int) -> bool:
        """Is this record covered by a digest that verified (signature, link, count and hash)?"""
        return any(first <= offset <= last for first, last in self.covered.get(partition, ()))


async def verify_chain(bootstrap: str, *, audit_topic: str = Topic.KMS_AUDIT.value,
                       digest_topic: str = Topic.KMS_AUDIT_DIGESTS.value, events_topic: str = Topic.KEYS_EVENTS.value,
                       timeout: float = 120) -> ChainReport:
    """Read the three topics to their current end and check the chain (topic names are parameters, so a
    copy of a topic can be checked in place of the original)."""
    audit = await read_topic(bootstrap, audit_topic, timeout=timeout)
    digests = await read_topic(bootstrap, digest_topic, timeout=timeout)
    book = PublicKeyBook()
    for record in await read_topic(bootstrap, events_topic, timeout=timeout):
        book.learn_raw(record.value)
    return check_chain([_logged(r) for r in audit], [_logged(r) for r in digests], book)


def _logged(record: Any) -> Logged:
    return Logged(record.partition, record.offset, record.key, record.value)


def check_chain(audit: Iterable[Logged], digests: Iterable[Logged], book: PublicKeyBook) -> ChainReport:
    report = ChainReport()
    records: dict[int, list[Logged]] = defaultdict(list)
    for record in audit:
        records[record.partition].append(record)
        report.records += 1
    links: dict[int, list[tuple[Logged, dict[str, Any]]]] = defaultdict(list)
    for where in sorted(digests, key=lambda d: (d.partition, d.offset)):
        body = parse_digest(where.value)
        if body is None:
            report.problems.append(f"digest record {where.partition}@{where.offset}: not a valid audit digest")
            continue
        if where.key != str(body["partition"]).encode():
            report.problems.append(f"partition {body['partition']} offsets {body['first_offset']}..{body['last_offset']}: "
                                   f"digest keyed {where.key!r}, not by its partition")
        links[body["partition"]].append((where, body))
    for partition in sorted(records.keys() | links.keys()):
        in_order = sorted(records.get(partition, []), key=lambda r: r.offset)
        _check_partition(report, partition, in_order, links.get(partition, []), book)
    return report


def _check_partition(report: ChainReport, partition: int, records: Sequence[Logged],
                     links: Sequence[tuple[Logged, dict[str, Any]]], book: PublicKeyBook) -> None:
    offsets = [r.offset for r in records]
    head = ZERO_SHA256
    covered_to = -1
    seen: set[bytes] = set()
    for where, body in links:
        first, last = body["first_offset"], body["last_offset"]
        label = f"partition {partition} offsets {first}..{last}"
        raw = encode(body)
        if raw in seen:
            report.duplicates += 1
            continue
        seen.add(raw)
        refused = _signature_problem(report, book, body)
        if refused:
            report.problems.append(f"{label}: {refused} (digest record {where.partition}@{where.offset})")
            continue
        report.digests += 1
        if body["previous_digest_sha256"] != head:
            report.problems.append(f"{label}: chain broken: previous_digest_sha256 is not the hash of the "
                                   "partition's previous digest (a digest before it was removed, altered or reordered)")
        head = digest_sha256(body)
        if first > last:
            report.problems.append(f"{label}: first offset after last offset")
            continue
        if first <= covered_to:
            report.problems.append(f"{label}: overlaps the digest before it (which covers up to offset {covered_to})")
        gap = offsets[bisect.bisect_right(offsets, covered_to):bisect.bisect_left(offsets, first)]
        if gap:
            report.problems.append(f"partition {partition} offsets {gap[0]}..{gap[-1]}: {len(gap)} records covered by no digest")
        inside = records[bisect.bisect_left(offsets, first):bisect.bisect_right(offsets, last)]
        mismatch = _coverage_problem(body, inside)
        if mismatch:
            report.problems.append(f"{label}: {mismatch}")
        else:
            report.covered[partition].append((first, last))
        covered_to = report.digested_to[partition] = max(covered_to, last)
        report.last_digest_at[partition] = body["created_at"]
    tail = len(offsets) - bisect.bisect_right(offsets, covered_to)
    if tail:
        report.not_yet_digested[partition] = tail


def _signature_problem(report: ChainReport, book: PublicKeyBook, body: dict[str, Any]) -> str | None:
    known = book.lookup(SYSTEM_TENANT, body["key_id"])
    if known is None or known.public_key is None:
        return f"signed by {body['key_id']}, not a keyledger digest key on keys.events"
    if not verify_digest(known.public_key, body):
        return "signature does not verify (the digest was altered or forged)"
    if known.status is not KeyStatus.CURRENT:
        report.revoked_signers.add(known.key_id)
    return None


def _coverage_problem(body: dict[str, Any], inside: Sequence[Logged]) -> str | None:
    if len(inside) != body["count"]:
        return f"the topic holds {len(inside)} records there, the digest counted {body['count']} (records removed or added)"
    if records_sha256((r.offset, r.value) for r in inside) != body["records_sha256"]:
        return "the records there do not hash to the digest (altered, replaced or reordered)"
    return None
