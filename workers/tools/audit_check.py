"""`keyledger audit verify`: replay `kms.audit`, prove it agrees exactly with TigerBeetle, check its digest chain.

Ledger comparison: both directions are checked: every audit event names a
transfer that exists with the same tenant (debit account), key (credit account), operation,
outcome and count (amount); and every transfer of every tenant account the ledger holds
(and of the tenants seen on the topic; or of the one asked for) appears on the topic, so a
tenant whose every record was cut from kms.audit is still found. Duplicated audit records
(an at-least-once republish) carry the same event id and are counted once. A grouped event (signing,
PII) names a transfer per record of its offset runs; a replay may have grouped the same records
differently, so the topic's account is the union of what its events name (`compare`).

Consistent cut: a worker makes its transfer before it publishes the audit event, so a live
ledger always runs a little ahead of the topic. Transfers younger than the moment the topic
was read minus a grace period are *in flight*, not mismatches; they are re-checked against
the topic until `settle` seconds have passed, and only one still missing then is a mismatch.

Digest chain (`check_chain`): per partition, in the digest topic's order, every digest is
signed by a trusted keyledger digest key, links to the hash of the previous valid digest,
overlaps none and leaves no record between itself and the previous one, and its count and
`records_sha256` match the records now at its offsets. With a ledger, a digest key is trusted
only when its key account pins (through the accepted keys.material record) that public key,
or when the key is configured out of band (`--digest-public-key`); a key announced only on
keys.events is refused and named. Every digest the ledger recorded must be on the topic, so
a dropped digest is a break and what it covered stays protected. Records after the last
digest are "not yet digested", not a break. Byte-identical digests (a republish) count once.
Every break names its partition and offsets. Without a ledger (the chain from the topics
alone) keys.events is trusted as it stands.
"""

from __future__ import annotations

import asyncio
import binascii
import bisect
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.messages import SYSTEM_TENANT, AuditEvent, KeyMaterial, KeyType, Op, Outcome
from schemas.topics import Topic
from workers.core import ids
from workers.core.b64 import b64decode
from workers.core.digest import ZERO_SHA256, digest_sha256, encode, parse_digest, records_sha256, verify_digest
from workers.core.material import latest_accepted
from workers.kafka.tap import read_topic
from workers.keys.audit import named_count, named_transfers
from workers.keys.pins import accepted_chain
from workers.ledger import AccountFilter, AccountFilterFlags, Ledger, QueryFilter, QueryFilterFlags, Transfer
from workers.ledger.records import (
    CALLER_PIN_TRANSFER_CODE,
    DIGEST_TRANSFER_CODE,
    RecordedDigest,
    transfers_with_code,
)
from workers.tools.verify import KeyStatus, PublicKeyBook

PAGE = 8000
GRACE = 10.0
"""Seconds: ledger entries younger than the topic read minus this are in flight (publish lag and clock skew)."""
SETTLE = 30.0
"""Seconds an in-flight difference may take to settle before it counts (the CLI's --settle default)."""


@dataclass
class AuditReport:
    events: int = 0
    transfers: int = 0
    """Distinct ledger transfers the events name (the ledger holds each)."""
    duplicates: int = 0
    tenants: set[str] = field(default_factory=set)
    mismatches: list[str] = field(default_factory=list)
    ledger_tenants: int = 0
    """Tenant accounts compared: those the ledger holds and those seen on the topic."""
    in_flight: dict[int, Transfer] = field(default_factory=dict)
    """Transfers younger than the cut not yet on kms.audit (not mismatches while they settle)."""
    settled: int = 0
    """In-flight transfers whose audit event arrived within the bound."""
    names: dict[int, str] = field(default_factory=dict)
    """Tenant ref -> how mismatches name it (the tenant id when the topic shows it)."""

    @property
    def agrees(self) -> bool:
        return not self.mismatches


async def verify_audit(bootstrap: str, ledger: Ledger, tenant: str | None = None, *, grace: float = GRACE,
                       settle: float = SETTLE) -> AuditReport:
    """Compare at a cut (the topic's read time minus `grace`), then settle what was in flight within `settle`
    seconds: a transfer whose event is still missing then is a mismatch."""
    cut_ns = time.time_ns() - int(grace * 1e9)
    records = await read_topic(bootstrap, Topic.KMS_AUDIT, timeout=120)
    report = await compare(ledger, (r.value for r in records if r.value is not None), tenant, cut_ns=cut_ns)
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + settle, 0.5
    while report.in_flight and loop.time() < deadline:
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
        pause = min(pause * 2, 5.0)
        for event in _events(r.value for r in await read_topic(bootstrap, Topic.KMS_AUDIT, timeout=120)):
            if named_count(event) > event.count:
                continue  # named nothing in compare either (reported there)
            for transfer_id in named_transfers(event):
                transfer = report.in_flight.pop(transfer_id, None)
                if transfer is not None:
                    report.settled += 1
                    # a grouped event's count is judged whole in compare; here each transfer's fields
                    problem = _disagreement(event, transfer, count=None if event.source else transfer.amount)
                    if problem:
                        report.mismatches.append(f"{event.event_id}: {problem}")
    for transfer in report.in_flight.values():
        op, _ = ids.unpack_op(transfer.user_data_32)
        report.mismatches.append(f"{ids.to_hex(transfer.id)}: {op.value} transfer of "
                                 f"{report.names.get(transfer.debit_account_id, 'tenant account')} (in flight at the "
                                 f"read, never arrived within {settle:g} s) missing from kms.audit")
    report.in_flight.clear()
    return report


def _events(values: Iterable[bytes | None]) -> Iterable[AuditEvent]:
    for value in values:
        if value is None:
            continue
        try:
            yield AuditEvent.model_validate_json(value)
        except ValidationError:
            continue


# ledger records of the system tenant that are no audited operation: check_chain compares the digests
_NOT_AUDITED = frozenset({DIGEST_TRANSFER_CODE, CALLER_PIN_TRANSFER_CODE})


async def compare(ledger: Ledger, values: Iterable[bytes], tenant: str | None = None, *,
                  cut_ns: int | None = None) -> AuditReport:
    """Both ways. With `cut_ns` (ledger time), a missing transfer younger than it is in flight, not a mismatch.

    A lifecycle event names one transfer (its id); a grouped event names one per record of its ranges
    (keys/audit.py named_transfers), each of which must agree with it, their amounts summing to its
    count. Replays may group records differently, so grouped events are judged one by one and the topic's
    account of the ledger is the union of what they name: overlapping ranges, or two grouped events sharing
    an id, are not mismatches."""
    report = AuditReport()
    events: dict[str, AuditEvent] = {}
    grouped: dict[bytes, AuditEvent] = {}
    for value in values:
        try:
            event = AuditEvent.model_validate_json(value)
        except ValidationError:
            report.mismatches.append("a kms.audit record is not a valid audit event")
            continue
        if tenant is not None and event.tenant_id != tenant:
            continue
        if event.source is None:
            if value in grouped:
                report.duplicates += 1
            grouped[value] = event
            continue
        if event.event_id in events:
            report.duplicates += 1
            if events[event.event_id] != event:
                report.mismatches.append(f"{event.event_id}: two different audit records share this id")
            continue
        events[event.event_id] = event
    report.events = len(events) + len(grouped)
    report.tenants = {e.tenant_id for e in (*events.values(), *grouped.values())} | ({tenant} if tenant else set())
    named: list[tuple[AuditEvent, list[int]]] = []
    for event in (*events.values(), *grouped.values()):
        if named_count(event) > event.count:  # each transfer counts at least one operation
            report.mismatches.append(f"{event.event_id}: names {named_count(event)} records, more than its count "
                                     f"{event.count}")
            continue
        named.append((event, named_transfers(event)))
    wanted = list(dict.fromkeys(i for _, listed in named for i in listed))
    transfers = {t.id: t for t in await ledger.lookup_transfers(wanted)}
    report.transfers = len(transfers)
    for event, listed in named:
        problem = _group_disagreement(event, [transfers.get(i) for i in listed])
        if problem:
            report.mismatches.append(f"{event.event_id}: {problem}")
    names = report.names = {ids.tenant_ref(name): name for name in report.tenants}
    refs = set(names) if tenant is not None else set(names) | set(await _ledger_tenants(ledger))
    report.ledger_tenants = len(refs)
    for ref in sorted(refs):
        name = names.setdefault(ref, f"tenant account {ids.to_hex(ref)} (in the ledger, on no kms.audit record)")
        for transfer in await _tenant_transfers(ledger, ref):
            if transfer.code in _NOT_AUDITED or transfer.id in transfers:
                continue  # a digest's or a caller pin's ledger record has no audit event
            if cut_ns is not None and transfer.timestamp > cut_ns:
                report.in_flight[transfer.id] = transfer
                continue
            op, failed = ids.unpack_op(transfer.user_data_32)
            report.mismatches.append(f"{ids.to_hex(transfer.id)}: {op.value} transfer of {name} missing from kms.audit")
    return report


def _group_disagreement(event: AuditEvent, transfers: Sequence[Transfer | None]) -> str | None:
    """What is wrong between `event` and the transfers it names (in `named_transfers` order), if anything."""
    if event.source is not None:
        return _disagreement(event, transfers[0])
    missing = sum(1 for t in transfers if t is None)
    if missing:
        return f"names {missing} of its {len(transfers)} records whose transfer is not in the ledger"
    for transfer in transfers:
        assert transfer is not None
        problem = _disagreement(event, transfer, count=transfer.amount)
        if problem:
            return f"transfer {ids.to_hex(transfer.id)} {problem}"
    total = sum(t.amount for t in transfers if t is not None)
    if total != event.count:
        return f"differs in count: its {len(transfers)} transfers count {total} operations, the event {event.count}"
    return None


async def _ledger_tenants(ledger: Ledger) -> list[int]:
    """Every tenant account of the ledger (their ids are tenant refs; the names are not in the ledger)."""
    found: list[int] = []
    timestamp_min = 0
    while True:
        page = await ledger.query_accounts(QueryFilter(
            user_data_128=0, user_data_64=0, user_data_32=0, ledger=ids.LEDGER, code=ids.TENANT_ACCOUNT_CODE,
            timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE, flags=QueryFilterFlags.NONE))
        found += [a.id for a in page]
        if len(page) < PAGE:
            return found
        timestamp_min = page[-1].timestamp + 1


# operations that carry no linked key or origin in user_data_128: there it is the caller id, or 0
_CALLER_OPS = frozenset({Op.SIGN, Op.ENCRYPT, Op.DECRYPT, Op.REENCRYPT, Op.DENIED})


def _caller_of(event: AuditEvent, transfer: Transfer) -> tuple[int | None, int | None]:
    """(expected, actual) caller of a transfer in user_data_128, or (None, None) where it names none."""
    if event.caller_id is not None:
        return ids.from_hex(event.caller_id), transfer.user_data_128
    if event.op in _CALLER_OPS:
        return 0, transfer.user_data_128
    return None, None


def _disagreement(event: AuditEvent, transfer: Transfer | None, *, count: int | None = None) -> str | None:
    """`count`: the amount expected of this transfer (a grouped event's count is its transfers' sum)."""
    if transfer is None:
        return "no such transfer in the ledger"
    op, failed = ids.unpack_op(transfer.user_data_32)
    expected = {
        "tenant": ids.tenant_ref(event.tenant_id),
        "key": ids.from_hex(event.key_id),
        "op": event.op,
        "failed": event.outcome is Outcome.FAILURE,
        "count": event.count if count is None else count,
    }
    actual = {"tenant": transfer.debit_account_id, "key": transfer.credit_account_id, "op": op,
              "failed": failed, "count": transfer.amount}
    expected["caller"], actual["caller"] = _caller_of(event, transfer)
    differing = [name for name in expected if expected[name] != actual[name]]
    return f"differs in {', '.join(differing)}" if differing else None


async def _tenant_transfers(ledger: Ledger, tenant_ref: int) -> list[Transfer]:
    found: list[Transfer] = []
    timestamp_min = 0
    while True:
        page = await ledger.get_account_transfers(AccountFilter(
            account_id=tenant_ref, user_data_128=0, user_data_64=0, user_data_32=0, code=0,
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


@dataclass(frozen=True, slots=True)
class Anchors:
    """The digest keys an auditor trusts, found outside Kafka: a key is only as trustworthy as its anchor."""

    pinned: Mapping[str, bytes] = field(default_factory=dict)
    """Key id -> the public key of the keys.material record the key's ledger account accepted."""
    configured: frozenset[bytes] = frozenset()
    """Public keys configured out of band (`--digest-public-key`)."""

    def keys_for(self, key_id: str) -> list[bytes]:
        pinned = self.pinned.get(key_id)
        return ([pinned] if pinned is not None else []) + sorted(self.configured)


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
    """Per partition: the highest offset any signed digest claims, or the ledger records a digest of
    (records beyond it await a digest)."""
    last_digest_at: dict[int, str] = field(default_factory=dict)
    revoked_signers: set[str] = field(default_factory=set)
    """Digest keys that were later revoked or destroyed (their digests still verify)."""
    anchored: bool = False
    """Digest keys were judged by trust anchors outside Kafka (the ledger, configured keys)."""
    recorded: int = 0
    """Digests the ledger recorded (each must be on the topic)."""
    signed: set[tuple[int, int, int]] = field(default_factory=set)
    """(partition, last offset, link) of every digest whose signature verified under a trusted key."""
    in_flight: list[RecordedDigest] = field(default_factory=list)
    superseded: int = 0
    """Digests the ledger recorded that never reached the topic, whose records a verified digest covers."""
    """Digests the ledger recorded after the cut and the topic did not hold yet (not breaks while they settle)."""

    @property
    def intact(self) -> bool:
        return not self.problems

    def protects(self, partition: int, offset: int) -> bool:
        """Is this record covered by a digest that verified (signature, link, count and hash)?"""
        return any(first <= offset <= last for first, last in self.covered.get(partition, ()))


async def verify_chain(bootstrap: str, *, ledger: Ledger | None = None, configured: Iterable[bytes] = (),
                       audit_topic: str = Topic.KMS_AUDIT.value, digest_topic: str = Topic.KMS_AUDIT_DIGESTS.value,
                       events_topic: str = Topic.KEYS_EVENTS.value, material_topic: str = Topic.KEYS_MATERIAL.value,
                       timeout: float = 120, grace: float = GRACE, settle: float = SETTLE) -> ChainReport:
    """Read the topics to their current end and check the chain (topic names are parameters, so a copy
    of a topic can be checked in place of the original). With a `ledger`, digest keys must be anchored
    (pinned by the ledger or `configured`) and every digest the ledger recorded must be on the topic.

    Read order makes the cut consistent: the ledger's digest records first, then the digests, then
    kms.audit (so every record a digest read covers is read too)."""
    cut_ns = time.time_ns() - int(grace * 1e9)
    anchors: Anchors | None = None
    recorded: list[RecordedDigest] | None = None
    configured = frozenset(configured)
    if ledger is not None:
        recorded = await ledger_digests(ledger)
        materials = await read_topic(bootstrap, material_topic, timeout=timeout)
        anchors = Anchors(await ledger_anchors(ledger, [r.value for r in materials]), configured)
    elif configured:
        anchors = Anchors({}, configured)
    digests = await read_topic(bootstrap, digest_topic, timeout=timeout)
    audit = await read_topic(bootstrap, audit_topic, timeout=timeout)
    book = PublicKeyBook()
    for record in await read_topic(bootstrap, events_topic, timeout=timeout):
        book.learn_raw(record.value)
    report = check_chain([_logged(r) for r in audit], [_logged(r) for r in digests], book, anchors=anchors,
                         recorded=recorded, cut_ns=cut_ns)
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + settle, 0.5
    while report.in_flight and loop.time() < deadline:
        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
        pause = min(pause * 2, 5.0)
        arrived = _signed_links((r.value for r in await read_topic(bootstrap, digest_topic, timeout=timeout)),
                                book, anchors)
        report.in_flight = [d for d in report.in_flight if (d.partition, d.last_offset, d.link) not in arrived]
    if report.in_flight:  # the bound passed: judge on the topics as they are now, with nothing in flight
        digests = await read_topic(bootstrap, digest_topic, timeout=timeout)
        audit = await read_topic(bootstrap, audit_topic, timeout=timeout)
        report = check_chain([_logged(r) for r in audit], [_logged(r) for r in digests], book, anchors=anchors,
                             recorded=recorded)
    return report


def _signed_links(values: Iterable[bytes | None], book: PublicKeyBook,
                  anchors: Anchors | None) -> set[tuple[int, int, int]]:
    found = set()
    for value in values:
        body = parse_digest(value)
        if body is not None and _signature_problem(ChainReport(), book, body, anchors) is None:
            found.add((body["partition"], body["last_offset"], RecordedDigest.link_of(digest_sha256(body))))
    return found


async def ledger_digests(ledger: Ledger) -> list[RecordedDigest]:
    """Every audit digest the ledger recorded (ledger/records.py digest_transfer), in ledger order."""
    return [RecordedDigest.of(t) for t in await transfers_with_code(ledger, DIGEST_TRANSFER_CODE)]


Record = TypeVar("Record", bound=BaseModel)


def readable(model: type[Record], values: Iterable[bytes | None]) -> Iterator[Record]:
    """The record values that parse as `model`; tombstones and records it refuses are skipped (a bad record on
    a topic must not stop a check of the rest)."""
    for value in values:
        if value is None:
            continue
        try:
            yield model.model_validate_json(value)
        except ValidationError:
            continue


async def ledger_anchors(ledger: Ledger, material_values: Iterable[bytes | None]) -> dict[str, bytes]:
    """Digest key id -> public key, for every keyledger-system signing key whose keys.material record
    its ledger account accepted (the pin, or a rewrap's fingerprint: keys/pins.py). A record of a key the
    ledger never made, or one that does not match its pin, anchors nothing."""
    candidates: dict[str, list[KeyMaterial]] = defaultdict(list)
    for material in readable(KeyMaterial, material_values):
        if material.tenant_id == SYSTEM_TENANT and material.key_type is KeyType.SIGNING and material.public_key:
            candidates[material.key_id].append(material)
    if not candidates:
        return {}
    pinned: dict[str, bytes] = {}
    system = ids.tenant_ref(SYSTEM_TENANT)
    for account in await ledger.lookup_accounts([ids.from_hex(k) for k in candidates]):
        if account.user_data_128 != system or account.code != ids.KEY_ACCOUNT_CODE:
            continue
        key_id = ids.to_hex(account.id)
        chosen = latest_accepted(await accepted_chain(ledger, account), candidates[key_id])
        if chosen is not None and chosen.public_key:
            try:
                pinned[key_id] = b64decode(chosen.public_key)
            except (binascii.Error, ValueError):
                continue
    return pinned


def _logged(record: Any) -> Logged:
    return Logged(record.partition, record.offset, record.key, record.value)


def check_chain(audit: Iterable[Logged], digests: Iterable[Logged], book: PublicKeyBook, *,
                anchors: Anchors | None = None, recorded: Sequence[RecordedDigest] | None = None,
                cut_ns: int | None = None) -> ChainReport:
    """The chain as the topics hold it. `anchors`: trust only anchored digest keys (else every
    keyledger-system key on keys.events). `recorded`: the digests the ledger holds, each of which must be
    on the topic; one recorded after `cut_ns` (ledger time) and absent is in flight, not a break."""
    report = ChainReport(anchored=anchors is not None, recorded=len(recorded or ()))
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
    claimed: dict[int, list[RecordedDigest]] = defaultdict(list)
    for entry in recorded or ():
        claimed[entry.partition].append(entry)
    for partition in sorted(records.keys() | links.keys() | claimed.keys()):
        in_order = sorted(records.get(partition, []), key=lambda r: r.offset)
        _check_partition(report, partition, in_order, links.get(partition, []), book, anchors)
        _check_recorded(report, partition, in_order, sorted(claimed.get(partition, []), key=lambda d: d.last_offset),
                        cut_ns)
    return report


def _check_partition(report: ChainReport, partition: int, records: Sequence[Logged],
                     links: Sequence[tuple[Logged, dict[str, Any]]], book: PublicKeyBook,
                     anchors: Anchors | None) -> None:
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
        refused = _signature_problem(report, book, body, anchors)
        if refused:
            report.problems.append(f"{label}: {refused} (digest record {where.partition}@{where.offset})")
            continue
        report.digests += 1
        report.signed.add((partition, last, RecordedDigest.link_of(digest_sha256(body))))
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


def _check_recorded(report: ChainReport, partition: int, records: Sequence[Logged],
                    claimed: Sequence[RecordedDigest], cut_ns: int | None) -> None:
    """Every digest the ledger recorded is on the topic; what a missing one covered stays claimed (a record
    once digested is never "not yet digested" again); then the partition's tail awaits a digest."""
    previous = -1
    for entry in claimed:
        span = f"partition {partition} offsets {previous + 1}..{entry.last_offset}"
        previous = max(previous, entry.last_offset)
        if (partition, entry.last_offset, entry.link) in report.signed:
            continue
        if report.protects(partition, entry.last_offset):
            # signed and recorded, then lost in a crash before it was published: the records it covered were
            # digested again, and that digest verified in every respect, so nothing it covered is unprotected
            report.superseded += 1
            continue
        if cut_ns is not None and entry.timestamp > cut_ns:
            report.in_flight.append(entry)
            continue
        report.problems.append(f"{span}: the ledger recorded a digest ending at offset {entry.last_offset} that is "
                               "not on the digest topic under a trusted key (dropped or replaced): those records "
                               "are not protected by what the topic holds")
        report.digested_to[partition] = max(report.digested_to.get(partition, -1), entry.last_offset)
    offsets = [r.offset for r in records]
    tail = len(offsets) - bisect.bisect_right(offsets, report.digested_to.get(partition, -1))
    if tail:
        report.not_yet_digested[partition] = tail


def _signature_problem(report: ChainReport, book: PublicKeyBook, body: dict[str, Any],
                       anchors: Anchors | None) -> str | None:
    key_id = body["key_id"]
    known = book.lookup(SYSTEM_TENANT, key_id)
    if anchors is None:
        if known is None or known.public_key is None:
            return f"signed by {key_id}, not a keyledger digest key on keys.events"
        trusted = [known.public_key]
    else:
        trusted = anchors.keys_for(key_id)
        if not trusted:
            where = "announced on keys.events only" if known is not None else "announced nowhere"
            return (f"signed by untrusted digest key {key_id}: the ledger pins no such key and none is "
                    f"configured (--digest-public-key); {where}")
    if not any(verify_digest(public_key, body) for public_key in trusted):
        return "signature does not verify (the digest was altered or forged)"
    if known is not None and known.status is not KeyStatus.CURRENT:
        report.revoked_signers.add(known.key_id)
    return None


def _coverage_problem(body: dict[str, Any], inside: Sequence[Logged]) -> str | None:
    if len(inside) != body["count"]:
        return f"the topic holds {len(inside)} records there, the digest counted {body['count']} (records removed or added)"
    if records_sha256((r.offset, r.value) for r in inside) != body["records_sha256"]:
        return "the records there do not hash to the digest (altered, replaced or reordered)"
    return None
