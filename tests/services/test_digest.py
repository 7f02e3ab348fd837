"""services/digest.py with the group's emitter, over the memory ledger and the local KMS; the "topic" is a list.

The digests the service publishes are what a restarted service reads back, so the tests
exercise the rule that the digest topic is the state.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.messages import SYSTEM_TENANT, KeyEvent, KeyEventType, KeyMaterial, KeyType
from schemas.topics import Topic
from workers.core.digest import digest_sha256, encode, sign_digest
from workers.errors import Unavailable
from workers.groups.audit_digest import digest_record
from workers.groups.base import Emitter
from workers.kafka.letters import DeadLetters
from workers.kafka.material import KafkaMaterialStore
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keys.versions import VersionMaker
from workers.keystore.directory import KeyDirectory
from workers.kms.local import LocalKms
from workers.ledger import LedgerUnavailable, transfer_ok
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import DIGEST_TRANSFER_CODE, RecordedDigest, digest_transfer
from workers.services.digest import (
    AuditRecord,
    DigestKeyUnavailable,
    DigestLogUnavailable,
    DigestService,
    SignedDigest,
)
from workers.settings import Settings
from workers.tools.audit_check import Anchors, Logged, check_chain, compare, ledger_anchors, ledger_digests
from workers.tools.verify import PublicKeyBook


class Topics:
    """A publisher that keeps what it was given per topic, and can be told to fail."""

    def __init__(self) -> None:
        self.records: dict[str, list[Outgoing]] = {}
        self.published = 0
        self.fail_digests = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        records = list(records)
        if self.fail_digests and any(r.topic == Topic.KMS_AUDIT_DIGESTS for r in records):
            self.fail_digests -= 1
            raise Unavailable("broker briefly unreachable")
        for record in records:
            self.records.setdefault(record.topic, []).append(record)
            self.published += 1

    def values(self, topic: str) -> list[bytes | None]:
        return [r.value for r in self.records.get(topic, [])]

    def digests(self) -> list[dict]:
        return [json.loads(v) for v in self.values(Topic.KMS_AUDIT_DIGESTS) if v]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stack:
    """One process: key table, KMS, ledger, emitter, digest service."""

    def __init__(self, topics: Topics, ledger: MemoryLedger | None = None, directory: KeyDirectory | None = None,
                 max_records: int = 10_000) -> None:
        self.topics = topics
        self.clock = Clock()
        self.ledger = ledger or MemoryLedger()
        self.directory = directory or KeyDirectory()
        self.keys = KeyService(self.directory, LocalKms(), self.ledger, SingleFlightCache(ttl=60, max_entries=10))
        self.emit: Emitter[SignedDigest] = Emitter(
            "keyledger-audit-digest", AuditTrail(self.ledger), topics, self.keys,
            DeadLetters.of("keyledger-audit-digest", Settings()), encode=digest_record)

        async def read_digests() -> list[bytes | None]:
            self.reads += 1
            return topics.values(Topic.KMS_AUDIT_DIGESTS)

        self.reads = 0
        self.service = DigestService(self.keys, VersionMaker(self.keys, self.ledger, KafkaMaterialStore(topics)), read_digests,
                                     interval=300, ledger=self.ledger, max_records=max_records,
                                     clock=self.clock)

    async def seal(self) -> list[int]:
        due = self.service.due()
        if due:
            await self.emit((), await self.service.ensure_key(due))
            await self.emit((), await self.service.seal(due))
        return due


def audit(partition: int, offsets: Iterable[int]) -> list[InboundRecord]:
    return [InboundRecord(Topic.KMS_AUDIT.value, partition, o, b"t", json.dumps({"n": o, "p": partition}).encode())
            for o in offsets]


def taken(records: list[InboundRecord]) -> list[AuditRecord]:
    return [(r.source, r.value) for r in records]


async def sealed_stack(records: list[InboundRecord]) -> tuple[Topics, Stack]:
    """A digest service that took `records` and sealed them once the interval passed."""
    topics = Topics()
    stack = Stack(topics)
    await stack.service.take(taken(records))
    stack.clock.now += 300
    await stack.seal()
    return topics, stack


def book_of(topics: Topics) -> PublicKeyBook:
    book = PublicKeyBook()
    for value in topics.values(Topic.KEYS_EVENTS):
        book.learn_raw(value)
    return book


def chain_report(topics: Topics, records: list[InboundRecord]):
    digests = [Logged(0, n, r.key, r.value) for n, r in enumerate(topics.records.get(Topic.KMS_AUDIT_DIGESTS, []))]
    logged = [Logged(r.partition, r.offset, r.key, r.value) for r in records]
    return check_chain(logged, digests, book_of(topics))


async def test_runs_wait_for_the_interval_then_make_one_signed_linked_digest_per_partition():
    topics = Topics()
    stack = Stack(topics)
    records = audit(0, range(3)) + audit(1, range(2))
    await stack.service.take(taken(records))
    assert stack.service.due() == [] and stack.service.held() == {}  # nothing digested: nothing committable
    stack.clock.now += 300
    assert await stack.seal() == [0, 1]
    digests = topics.digests()
    assert [(d["partition"], d["first_offset"], d["last_offset"], d["count"]) for d in digests] == [
        (0, 0, 2, 3), (1, 0, 1, 2)]
    assert stack.service.held() == {0: 3, 1: 2}
    # the digest key was made on first need, like a tenant's: material, ledger account, event, audit
    [event] = [KeyEvent.model_validate_json(v) for v in topics.values(Topic.KEYS_EVENTS)]
    assert (event.tenant_id, event.key_type, event.version, event.type.value) == (SYSTEM_TENANT, KeyType.SIGNING, 1,
                                                                                  "generated")
    assert all(d["key_id"] == event.key_id for d in digests)
    assert [json.loads(v)["tenant_id"] for v in topics.values(Topic.KMS_AUDIT)] == [SYSTEM_TENANT]
    assert await stack.ledger.lookup_accounts([int(event.key_id, 16)])
    report = chain_report(topics, records)
    assert report.intact and report.digests == 2 and report.not_yet_digested == {}


async def test_a_digest_never_covers_more_than_its_record_limit():
    topics = Topics()
    stack = Stack(topics, max_records=3)
    records = audit(0, range(7))
    await stack.service.take(taken(records))
    assert await stack.seal() == [0]  # two full runs are due at once, without waiting for the interval
    assert [(d["first_offset"], d["last_offset"]) for d in topics.digests()] == [(0, 2), (3, 5)]
    assert stack.service.held() == {0: 6}
    stack.clock.now += 300
    await stack.seal()
    report = chain_report(topics, records)
    assert report.intact and report.digests == 3 and report.covered[0] == [(0, 2), (3, 5), (6, 6)]


async def test_a_restart_continues_the_chain_from_the_topic_and_skips_what_is_covered():
    topics = Topics()
    first = Stack(topics)
    await first.service.take(taken(audit(0, range(5))))
    first.clock.now += 300
    await first.seal()

    # a new process, same topics: the redelivered records 0..4 (never committed, say) are skipped
    second = Stack(topics, ledger=first.ledger, directory=_replayed_directory(topics))
    await second.service.take(taken(audit(0, range(8))))
    assert second.reads == 1 and second.service.skipped == 5 and second.service.taken == 3
    assert second.service.held() == {0: 5}
    second.clock.now += 300
    await second.seal()
    report = chain_report(topics, audit(0, range(8)))
    assert report.intact and report.duplicates == 0 and report.covered[0] == [(0, 4), (5, 7)]
    assert len({d["key_id"] for d in topics.digests()}) == 1  # the same digest key, not a second one


async def test_a_failed_publish_is_retried_with_the_same_bytes_and_commits_wait_for_it():
    topics = Topics()
    stack = Stack(topics)
    await stack.service.take(taken(audit(0, range(4))))
    stack.clock.now += 300
    topics.fail_digests = 1
    with pytest.raises(Unavailable):
        await stack.seal()
    assert topics.digests() == [] and stack.service.held() == {}
    failed = stack.service.signed
    await stack.service.take(taken(audit(0, range(4, 6))))  # more records arrive meanwhile
    stack.clock.now += 300
    await stack.seal()
    digests = topics.digests()
    assert failed == 1 and [(d["first_offset"], d["last_offset"]) for d in digests] == [(0, 3), (4, 5)]
    assert stack.service.held() == {0: 6}
    assert chain_report(topics, audit(0, range(6))).intact


async def test_a_byte_identical_republish_counts_once():
    topics, stack = await sealed_stack(audit(0, range(2)))
    topics.records[Topic.KMS_AUDIT_DIGESTS] *= 2
    report = chain_report(topics, audit(0, range(2)))
    assert report.intact and report.digests == 1 and report.duplicates == 1


async def test_a_forgotten_partition_is_read_again_from_the_topic():
    topics, stack = await sealed_stack(audit(0, range(3)))
    await stack.service.take(taken(audit(0, range(3, 5))))
    stack.service.forget([0])
    assert stack.service.held() == {} and stack.service.due() == []
    await stack.service.take(taken(audit(0, range(5))))  # the next owner's view: redelivered from the commit
    assert stack.reads == 2 and stack.service.held() == {0: 3}


async def test_an_unusable_digest_key_makes_records_wait_not_dead_letters():
    topics = Topics()
    first = Stack(topics)
    await first.service.take(taken(audit(0, range(2))))
    first.clock.now += 300
    await first.seal()
    # another process whose ledger never saw the key: unwrapping is refused, so it cannot sign
    stranger = Stack(topics, directory=_replayed_directory(topics))
    await stranger.service.take(taken(audit(0, range(2, 4))))
    stranger.clock.now += 300
    with pytest.raises(DigestKeyUnavailable):
        await stranger.seal()
    assert stranger.service.held() == {0: 2} and stranger.service.due() == [0]


async def test_an_unreadable_digest_topic_makes_records_wait():
    stack = Stack(Topics())

    async def broken() -> list[bytes | None]:
        raise TimeoutError("kms.audit.digests not read to its end")

    stack.service._read_digests = broken
    with pytest.raises(DigestLogUnavailable):
        await stack.service.take(taken(audit(0, range(1))))


def _replayed_directory(topics: Topics) -> KeyDirectory:
    """What a new process's key follower builds from keys.material and keys.events."""
    directory = KeyDirectory()
    for value in topics.values(Topic.KEYS_MATERIAL):
        directory.apply_material(KeyMaterial.model_validate_json(value))
    for value in topics.values(Topic.KEYS_EVENTS):
        directory.apply_event(KeyEvent.model_validate_json(value))
    return directory


def test_the_digest_interval_is_a_setting_of_300_seconds_by_default(monkeypatch):
    from workers.settings import Settings

    monkeypatch.delenv("KEYLEDGER_DIGEST_INTERVAL", raising=False)
    assert Settings().limits.digest_interval == 300
    monkeypatch.setenv("KEYLEDGER_DIGEST_INTERVAL", "2")
    assert Settings().limits.digest_interval == 2
    assert "10,000" in Settings.setting_field("digest_interval").description


async def anchored_report(topics: Topics, records: list[InboundRecord], ledger: MemoryLedger, *,
                          digests: list[Logged] | None = None, book: PublicKeyBook | None = None,
                          configured: frozenset[bytes] = frozenset(), cut_ns: int | None = None):
    logged = [Logged(r.partition, r.offset, r.key, r.value) for r in records]
    if digests is None:
        digests = [Logged(0, n, r.key, r.value) for n, r in enumerate(topics.records.get(Topic.KMS_AUDIT_DIGESTS, []))]
    anchors = Anchors(await ledger_anchors(ledger, topics.values(Topic.KEYS_MATERIAL)), configured)
    return check_chain(logged, digests, book or book_of(topics), anchors=anchors, recorded=await ledger_digests(ledger),
                       cut_ns=cut_ns)


async def test_every_digest_is_in_the_ledger_before_it_is_published_and_its_key_is_pinned_there():
    records = audit(0, range(3)) + audit(1, range(2))
    topics, stack = await sealed_stack(records)
    digests = topics.digests()
    assert sorted((d.partition, d.last_offset, d.link) for d in await ledger_digests(stack.ledger)) == sorted(
        (d["partition"], d["last_offset"], RecordedDigest.link_of(digest_sha256(d))) for d in digests)
    pinned = await ledger_anchors(stack.ledger, topics.values(Topic.KEYS_MATERIAL))
    assert set(pinned) == {digests[0]["key_id"]}
    report = await anchored_report(topics, records, stack.ledger)
    assert report.intact and report.anchored and report.recorded == report.digests == 2
    # the compare of kms.audit with the ledger does not expect an audit event for a digest's record
    assert (await compare(stack.ledger, [v for v in topics.values(Topic.KMS_AUDIT) if v])).agrees


async def test_a_digest_the_ledger_does_not_record_stays_unpublished_and_is_recorded_again():
    topics = Topics()
    stack = Stack(topics)
    await stack.service.take(taken(audit(0, range(3))))
    stack.clock.now += 300
    ledger_create = stack.ledger.create_transfers
    refusals = iter([True])

    async def refuse_digests_once(transfers):
        if any(t.code == DIGEST_TRANSFER_CODE for t in transfers) and next(refusals, False):
            raise LedgerUnavailable("TigerBeetle briefly unreachable")
        return await ledger_create(transfers)

    stack.ledger.create_transfers = refuse_digests_once  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await stack.seal()
    assert topics.digests() == [] and stack.service.held() == {}  # nothing published, nothing committable
    await stack.seal()
    [digest] = topics.digests()
    assert [d.link for d in await ledger_digests(stack.ledger)] == [RecordedDigest.link_of(digest_sha256(digest))]
    assert stack.service.held() == {0: 3}


async def test_a_dropped_digest_is_a_break_and_what_it_covered_stays_protected():
    records = audit(0, range(3))
    topics, stack = await sealed_stack(records)
    records += audit(0, range(3, 5))
    await stack.service.take(taken(records[3:]))
    stack.clock.now += 300
    await stack.seal()
    kept = [Logged(0, 0, r.key, r.value) for r in topics.records[Topic.KMS_AUDIT_DIGESTS][:1]]
    edited = records[:4] + [InboundRecord(Topic.KMS_AUDIT.value, 0, 4, b"t", b'{"edited": true}')]
    assert chain_report_of(edited, kept, book_of(topics)).intact  # from the topics alone: the old blind spot
    report = await anchored_report(topics, edited, stack.ledger, digests=kept)
    assert not report.intact and any("partition 0 offsets 3..4: the ledger recorded a digest" in p
                                     for p in report.problems)
    assert report.not_yet_digested == {} and report.digested_to[0] == 4
    young = await anchored_report(topics, edited, stack.ledger, digests=kept, cut_ns=0)
    assert young.intact and [d.last_offset for d in young.in_flight] == [4]  # recorded after the cut: in flight


async def test_a_digest_key_announced_only_on_keys_events_is_refused_unless_configured():
    records = audit(0, range(3))
    topics, stack = await sealed_stack(records)
    [genuine] = topics.digests()
    insider, insider_key = Ed25519PrivateKey.generate(), "cd" * 16
    raw_public = insider.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    forged = sign_digest(insider, {**{k: v for k, v in genuine.items() if k != "signature"}, "key_id": insider_key})
    book = book_of(topics)
    book.learn(KeyEvent(event_id="forged-announcement", type=KeyEventType.GENERATED, tenant_id=SYSTEM_TENANT,
                        key_id=insider_key, key_type=KeyType.SIGNING, version=2, occurred_at=datetime.now(UTC),
                        public_key=base64.b64encode(raw_public).decode()))
    digests = [Logged(0, 0, b"0", encode(forged))]
    assert chain_report_of(records, digests, book).intact  # keys.events alone trusts it
    refused = await anchored_report(topics, records, stack.ledger, digests=digests, book=book)
    assert any(f"untrusted digest key {insider_key}" in p and "keys.events only" in p for p in refused.problems)
    vouched = await anchored_report(topics, records, stack.ledger, digests=digests, book=book,
                                    configured=frozenset({raw_public}))
    assert not any("untrusted" in p for p in vouched.problems)


def chain_report_of(records: list[InboundRecord], digests: list[Logged], book: PublicKeyBook):
    return check_chain([Logged(r.partition, r.offset, r.key, r.value) for r in records], digests, book)


async def test_a_recorded_digest_lost_in_a_crash_before_publishing_is_no_break_once_its_records_are_digested_again():
    records = audit(0, range(3))
    topics, stack = await sealed_stack(records)
    [digest] = topics.digests()
    # the first worker signed and recorded another digest of 0..2 (another created_at), then died unpublished
    orphan = digest_transfer(digest["key_id"], 0, 2, "ef" * 32)
    assert all(transfer_ok(r.status) for r in await stack.ledger.create_transfers([orphan]))
    report = await anchored_report(topics, records, stack.ledger)
    assert report.intact and report.superseded == 1 and report.recorded == 2
