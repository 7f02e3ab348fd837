"""Audit digests: kms.audit -> kms.audit.digests, one signed hash chain per partition.

Each partition's records are taken in offset order into a *run*; a run becomes a
digest (core/digest.py has the byte formats) when its oldest record has waited
`interval` seconds, and a run never holds more than 10,000 records. Every digest
carries the hash of the partition's previous digest and is signed with the
keyledger digest key (tenant `keyledger-system`, a signing key made and wrapped by
KMS like a tenant's, announced on keys.events, rotated by rotation ticks).

The digest topic is the state. When a partition's first record arrives (at start,
or after a rebalance gave it back), the service reads kms.audit.digests and
continues after that partition's last digest that verifies under a digest key;
records at offsets it already covers are skipped, so a replay never digests a
range twice and never forks the chain.

Durability order for a digest (a crash between any two steps loses nothing):
  1. the digest key exists (first need only: material, ledger account, `generate`
     transfer, kms.audit and keys.events, through the group's emitter);
  2. the run is signed and kept as *unpublished*; the partition's chain head moves to it;
  2b. the digest is recorded in the ledger (ledger/records.py digest_transfer: its hash, partition and
     last offset), awaited; a refusal keeps it unpublished and the next flush records it again (same id,
     `exists`). A digest on the topic is thus always in the ledger, and one dropped from the topic is
     still named there, so what it covered stays protected. A crash here leaves a recorded digest
     that is never published; its records are digested again, and the verifier accepts a recorded
     digest whose records a verified digest covers;
  3. publish, awaited (acks=all). A failed publish keeps it unpublished and the next
     flush publishes the very same bytes (created_at was fixed at signing and Ed25519 is
     deterministic), so a publish that did land after all leaves an exact duplicate at
     most, which verifiers count once;
  4. only then its records are done: `held()` moves past them and the runner commits.
A crash before 3 lands loses only in-memory runs: their records were never committed,
so they are redelivered and digested again, chained to the last digest on the topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import SYSTEM_TENANT, KeyEventType, KeyType, Op
from schemas.topics import Topic
from workers.core import ids
from workers.core.b64 import b64decode
from workers.core.digest import (
    MAX_RECORDS,
    ZERO_SHA256,
    RecordsHasher,
    digest_body,
    digest_sha256,
    parse_digest,
    sign_digest,
    verify_digest,
)
from workers.errors import KeyRefused, Unavailable
from workers.keys.service import KeyService
from workers.keys.versions import VersionMaker, VersionPlan
from workers.keystore.directory import KeyState
from workers.ledger import Ledger, transfer_ok
from workers.ledger.records import OpRecord, digest_transfer
from workers.services.outcome import Outcome
from workers.source import Source

log = logging.getLogger("keyledger.digest")

DIGEST_KEY_VERSION = 1
DigestReader = Callable[[], Awaitable[Sequence[bytes | None]]]
"""Every record value of kms.audit.digests, in topic order (per partition, by offset)."""


AuditRecord = tuple[Source, bytes | None]
"""A kms.audit record as the digest takes it: where it is, and its value (hashed as it stands)."""


@dataclass(frozen=True, slots=True)
class SignedDigest:
    """A kms.audit.digests value (core/digest.py writes it) and the kms.audit partition it covers."""

    partition: int
    digest: dict[str, Any]


class DigestKeyUnavailable(Unavailable):
    """The digest key cannot sign right now (refused by KMS or the ledger): records wait, uncommitted."""


class DigestNotRecorded(Unavailable):
    """The ledger did not record a signed digest: it stays unpublished and is recorded again next flush."""


class DigestLogUnavailable(Unavailable):
    """kms.audit.digests could not be read: the chain state is unknown, so nothing is digested yet."""


@dataclass(slots=True)
class Run:
    """Records of one partition taken since the last digest, hashed as they come (no bytes kept)."""

    first_offset: int
    last_offset: int
    opened_at: float
    hasher: RecordsHasher = field(default_factory=RecordsHasher)

    @property
    def count(self) -> int:
        return self.hasher.count


@dataclass(slots=True)
class PartitionChain:
    partition: int
    head: str = ZERO_SHA256
    """digest_sha256 of the last digest signed for the partition (published or not): the next one's link."""
    taken: int = -1
    """Highest offset covered by a digest or taken into a run; records at or below it are skipped."""
    committable: int | None = None
    """The offset after the last *published* digest: the group's commits never pass it."""
    closed: list[Run] = field(default_factory=list)
    open: Run | None = None
    unpublished: list[dict[str, Any]] = field(default_factory=list)


class DigestService:
    def __init__(self, keys: KeyService, versions: VersionMaker, read_digests: DigestReader, interval: float,
                 *, ledger: Ledger, max_records: int = MAX_RECORDS, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if interval <= 0 or not 1 <= max_records <= MAX_RECORDS:
            raise ValueError("digest interval must be positive and a digest covers 1..10,000 records")
        self._keys = keys
        self._versions = versions
        self._read_digests = read_digests
        self._ledger = ledger
        self.interval = interval
        self._max_records = max_records
        self._clock = clock
        self._now = now
        self._chains: dict[int, PartitionChain] = {}
        self.taken = 0
        self.skipped = 0
        self.signed = 0
        self.published = 0

    # --- records in --------------------------------------------------------------

    async def take(self, records: Sequence[AuditRecord]) -> None:
        """Add `kms.audit` records to their partitions' runs; offsets already covered or taken are skipped."""
        audit = [(source, value) for source, value in records if source.topic == Topic.KMS_AUDIT]
        unknown = {source.partition for source, _ in audit} - self._chains.keys()
        if unknown:
            await self._load(unknown)
        for source, value in audit:
            self._take(self._chains[source.partition], source.offset, value)

    def _take(self, chain: PartitionChain, offset: int, value: bytes | None) -> None:
        if offset <= chain.taken:
            self.skipped += 1
            return
        run = chain.open
        if run is None:
            run = chain.open = Run(offset, offset, self._clock())
        run.hasher.add(offset, value)
        run.last_offset = chain.taken = offset
        self.taken += 1
        if run.count >= self._max_records:
            chain.closed.append(run)
            chain.open = None

    def due(self) -> list[int]:
        """Partitions with a digest to sign or publish now."""
        return sorted(p for p, chain in self._chains.items()
                      if chain.closed or chain.unpublished or self._ripe(chain.open))

    def _ripe(self, run: Run | None) -> bool:
        return run is not None and self._clock() - run.opened_at >= self.interval

    def held(self) -> dict[int, int]:
        """Per partition with a published digest: the first offset no published digest covers."""
        return {p: chain.committable for p, chain in self._chains.items() if chain.committable is not None}

    def forget(self, partitions: Iterable[int]) -> None:
        """A rebalance took these partitions: their runs are dropped (uncommitted, the next owner redoes them)."""
        for partition in partitions:
            self._chains.pop(partition, None)

    # --- the chain as published ------------------------------------------------------

    async def _load(self, partitions: set[int]) -> None:
        try:
            values = await self._read_digests()
        except Exception as exc:  # the topic unreachable or missing: nothing can be chained yet
            raise DigestLogUnavailable(f"cannot read {Topic.KMS_AUDIT_DIGESTS.value}: {type(exc).__name__}") from exc
        last: dict[int, dict[str, Any]] = {}
        for value in values:
            digest = parse_digest(value)
            if digest is None or digest["partition"] not in partitions:
                continue
            if self._verifies(digest):
                last[digest["partition"]] = digest
            else:
                log.error("a digest of partition %d (offsets %s..%s) does not verify under a keyledger digest key; "
                          "the chain continues from the last one that does", digest["partition"],
                          digest["first_offset"], digest["last_offset"])
        for partition in partitions:
            found = last.get(partition)
            chain = PartitionChain(partition)
            if found is not None:
                chain.head = digest_sha256(found)
                chain.taken = found["last_offset"]
                chain.committable = found["last_offset"] + 1
            self._chains[partition] = chain
            if found is None:
                log.info("kms.audit[%d]: no digest yet, the chain starts at the first record", partition)
            else:
                log.info("kms.audit[%d]: the chain continues after offset %d", partition, chain.taken)

    def _verifies(self, digest: dict[str, Any]) -> bool:
        entry = self._keys.directory.get(digest["key_id"])
        if entry is None or entry.tenant_id != SYSTEM_TENANT or not entry.public_key:
            return False
        return verify_digest(b64decode(entry.public_key), digest)

    # --- the digest key ------------------------------------------------------------

    async def ensure_key(self, partitions: Sequence[int]) -> Outcome[SignedDigest]:
        """The digest key's first version, made on first need like a tenant's first key."""
        outcome = Outcome[SignedDigest]()
        versions = self._keys.directory.versions(SYSTEM_TENANT, KeyType.SIGNING)
        if any(e.state is not KeyState.PENDING for e in versions) or not partitions:
            return outcome
        chain = self._chains.get(partitions[0])
        offset = chain.taken if chain is not None and chain.taken >= 0 else 0
        cause = Source(Topic.KMS_AUDIT.value, partitions[0], offset)
        plan = VersionPlan(cause, SYSTEM_TENANT, KeyType.SIGNING, DIGEST_KEY_VERSION, None)
        todo, refused = await self._versions.make_durable([plan])
        if refused:
            raise DigestKeyUnavailable(f"digest key not made: {refused[0][1]}")
        outcome.ops += [OpRecord(ids.transfer_id(Op.GENERATE, p.key_id), SYSTEM_TENANT, p.key_id, Op.GENERATE,
                                 cause, reason="audit digest key created", wrap=self._versions.wrap_of(p))
                        for p in todo]
        outcome.events += [self._versions.announcement(p, KeyEventType.GENERATED) for p in todo]
        log.info("audit digest key %s created", plan.key_id)
        return outcome

    async def _signer(self) -> tuple[str, Ed25519PrivateKey]:
        try:
            entry = self._keys.active(SYSTEM_TENANT, KeyType.SIGNING)
            secret = await self._keys.secret(entry)
        except KeyRefused as exc:
            log.error("the audit digest key cannot sign (%s); rotate it: keyledger rotate --tenant %s "
                      "--key-type signing", exc, SYSTEM_TENANT)
            raise DigestKeyUnavailable(f"digest key refused: {exc}") from None
        if not isinstance(secret, Ed25519PrivateKey):
            raise DigestKeyUnavailable(f"digest key {entry.key_id} is not an Ed25519 key")
        return entry.key_id, secret

    # --- digests out -----------------------------------------------------------------

    async def seal(self, partitions: Sequence[int]) -> Outcome[SignedDigest]:
        """Sign the due runs of `partitions` and return every unpublished digest of them to publish."""
        outcome = Outcome[SignedDigest]()
        signer: tuple[str, Ed25519PrivateKey] | None = None
        sent: list[tuple[PartitionChain, list[dict[str, Any]]]] = []
        for partition in partitions:
            chain = self._chains.get(partition)
            if chain is None:
                continue  # forgotten by a rebalance meanwhile
            runs = chain.closed + ([chain.open] if chain.open is not None and self._ripe(chain.open) else [])
            if runs and signer is None:
                signer = await self._signer()  # before any state changes: a refusal leaves the runs as they were
            for run in runs:
                assert signer is not None
                chain.unpublished.append(self._sign(chain, run, *signer))
            chain.closed = []
            if chain.open is not None and chain.open in runs:
                chain.open = None
            if chain.unpublished:
                batch = list(chain.unpublished)
                sent.append((chain, batch))
                outcome.results += [SignedDigest(partition, d) for d in batch]
        if sent:
            await self._record([d for _, batch in sent for d in batch])
            outcome.then.append(partial(self._published, sent))
        return outcome

    async def _record(self, digests: Sequence[dict[str, Any]]) -> None:
        """Step 2b: every digest about to be published is in the ledger first."""
        transfers = [digest_transfer(d["key_id"], d["partition"], d["last_offset"], digest_sha256(d)) for d in digests]
        try:
            results = await self._ledger.create_transfers(transfers)
        except Exception as exc:  # any ledger failure: the digests stay unpublished, the records uncommitted
            raise DigestNotRecorded(f"digests not recorded in the ledger: {type(exc).__name__}") from exc
        refused = [r.status for r in results if not transfer_ok(r.status)]
        if refused:
            raise DigestNotRecorded(f"the ledger refused a digest record: {refused[0].name}")

    def _sign(self, chain: PartitionChain, run: Run, key_id: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
        body = digest_body(partition=chain.partition, first_offset=run.first_offset, last_offset=run.last_offset,
                           count=run.count, records_sha256=run.hasher.hexdigest(), previous_digest_sha256=chain.head,
                           created_at=self._now(), key_id=key_id)
        digest = sign_digest(private_key, body)
        chain.head = digest_sha256(digest)
        self.signed += 1
        return digest

    async def _published(self, sent: list[tuple[PartitionChain, list[dict[str, Any]]]]) -> None:
        for chain, digests in sent:
            chain.unpublished = [d for d in chain.unpublished if all(d is not p for p in digests)]
            chain.committable = max(d["last_offset"] for d in digests) + 1
            self.published += len(digests)
            for d in digests:
                log.info("kms.audit[%d] offsets %d..%d (%d records) digested", chain.partition, d["first_offset"],
                         d["last_offset"], d["count"])

