"""How keyledger facts become TigerBeetle accounts and transfers.

- tenant account: id = tenant_ref, code 1, user_data_128 = tenant_ref
- key account:    id = key_id, code 8, user_data_128 = tenant_ref,
                  user_data_64 = material fingerprint, user_data_32 = key type << 24 | version
- op transfer:    tenant account -> key account, code 8, amount = operations covered,
                  user_data_32 = op code (| failure bit), user_data_64 = source offset,
                  user_data_128 = linked key (the new key of a rotation) or 0
- caller's op:    user_data_128 = the caller id (its 32 hex as 128 bits), also on a `denied`
                  transfer that refused a request naming it; once the proof is authentic
                  (admitted), user_data_64 = the request id's first 64 bits instead of the offset.
                  The id still derives from the record's place: a copy of the request produced
                  again at another offset is a second transfer with the same user_data_64
- rewrap:         user_data_64 = fingerprint of the record it accepted (keys/pins.py),
                  user_data_128 = partition << 64 | offset of the tick that asked (so a replay
                  arriving as another record republishes the very same audit event)
- destroy:        a pending transfer with CLOSING_CREDIT: the key account is closed,
                  so TigerBeetle itself refuses any later operation on it
- audit digest:   system tenant account -> the digest key's account, code 10, amount 0,
                  user_data_128 = the first 128 bits of the digest's SHA-256 (its chain link),
                  user_data_64 = the last kms.audit offset it covers, user_data_32 = the partition;
                  no kms.audit event (it would itself need a digest): `audit verify` reads these
- caller pin:     see `caller_pin_transfer` (code 11)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from schemas.messages import SYSTEM_TENANT, AuditSource, KeyMaterial, KeyType, Op
from workers.core import ids
from workers.ledger import (
    Account,
    Ledger,
    LedgerError,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
    account_ok,
    transfer_ok,
)


def tenant_account(tenant_id: str) -> Account:
    ref = ids.tenant_ref(tenant_id)
    return Account(id=ref, user_data_128=ref, ledger=ids.LEDGER, code=ids.TENANT_ACCOUNT_CODE)


def key_account(tenant_id: str, key_id: str, key_type: KeyType, version: int, fingerprint: int) -> Account:
    return Account(
        id=ids.from_hex(key_id),
        user_data_128=ids.tenant_ref(tenant_id),
        user_data_64=fingerprint,
        user_data_32=ids.pack_key_kind(key_type, version),
        ledger=ids.LEDGER,
        code=ids.KEY_ACCOUNT_CODE,
    )


class Coordinates(Protocol):
    """Where an operation's cause sits: an AuditSource, or the consumed record itself (the hot paths pass
    the record and build no model per operation)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WrapFacts:
    """Where a key version's material is wrapped after a lifecycle operation (generate, rewrap, destroy):
    the audit event records it, so a version's KEK history survives keys.material's compaction."""

    kms_provider: str
    kms_key_id: str
    kek_version: int | None = None
    deletion_pending_days: int | None = None
    """A destroy whose shred schedules this KMS key for deletion: the KMS pending window, in days."""

    @classmethod
    def of(cls, material: KeyMaterial, deletion_pending_days: int | None = None) -> WrapFacts:
        return cls(material.kms_provider or "aws", material.kms_key_id, material.kek_version, deletion_pending_days)


@dataclass(slots=True)
class OpRecord:
    """One audited operation: becomes one transfer and one `kms.audit` event with the same id.
    Not frozen, yet never changed once made: one is made per signed span, and a frozen dataclass's
    __init__ (object.__setattr__ per field) costs five times as much."""

    transfer_id: int
    tenant_id: str
    key_id: str
    op: Op
    source: Coordinates
    count: int = 1
    failed: bool = False
    reason: str = ""
    linked_key_id: str | None = None
    closing: bool = False
    tag: int | None = None  # user_data_64 instead of the source offset (e.g. the tick that rotated)
    origin: int | None = None  # user_data_128 when no key is linked (a rewrap: where its tick was)
    caller_id: str | None = None  # user_data_128 of a caller's operation (never with a linked key or origin)
    id_parts: tuple[str, ...] | None = None
    """Set on an operation whose transfer id is derived per record (signing, PII, a refused caller):
    `ids.grouped_transfer_id(op, key_id, id_parts, (topic, partition, offset), id_wrap)`; its `kms.audit`
    event then names it among a group (keys/audit.py). None: a lifecycle operation, announced by an event
    of its own."""
    id_wrap: str | None = None
    wrap: WrapFacts | None = None  # on the audit event only (lifecycle operations); the transfer is unchanged

    def to_transfer(self) -> Transfer:
        flags = TransferFlags.PENDING | TransferFlags.CLOSING_CREDIT if self.closing else TransferFlags.NONE
        return Transfer(
            id=self.transfer_id,
            debit_account_id=ids.tenant_ref(self.tenant_id),
            credit_account_id=ids.from_hex(self.key_id),
            amount=self.count,
            user_data_128=(ids.from_hex(self.caller_id) if self.caller_id else
                           ids.from_hex(self.linked_key_id) if self.linked_key_id else (self.origin or 0)),
            user_data_64=self.tag if self.tag is not None else max(self.source.offset, 0),
            user_data_32=ids.pack_op(self.op, self.failed),
            ledger=ids.LEDGER,
            code=ids.TRANSFER_CODE,
            flags=flags,
        )


DIGEST_TRANSFER_CODE = 10  # an audit digest recorded in the ledger; never an audited key operation


@dataclass(frozen=True, slots=True)
class RecordedDigest:
    """An audit digest as the ledger holds it: enough to find it on kms.audit.digests and to know
    which records it covered, so a digest dropped from the topic is noticed."""

    partition: int
    last_offset: int
    link: int
    """The first 128 bits of the digest's SHA-256 (core/digest.py digest_sha256)."""
    timestamp: int = 0

    @staticmethod
    def link_of(digest_sha256: str) -> int:
        return int(digest_sha256[:32], 16)

    @classmethod
    def of(cls, transfer: Transfer) -> RecordedDigest:
        return cls(transfer.user_data_32, transfer.user_data_64, transfer.user_data_128, transfer.timestamp)


def digest_transfer(key_id: str, partition: int, last_offset: int, digest_sha256: str) -> Transfer:
    """The ledger record of one signed digest; a republish of the same digest derives the same id."""
    return Transfer(
        id=ids.system_transfer_id("audit-digest", digest_sha256),
        debit_account_id=ids.tenant_ref(SYSTEM_TENANT),
        credit_account_id=ids.from_hex(key_id),
        amount=0,
        user_data_128=RecordedDigest.link_of(digest_sha256),
        user_data_64=last_offset,
        user_data_32=partition,
        ledger=ids.LEDGER,
        code=DIGEST_TRANSFER_CODE,
        flags=TransferFlags.NONE,
    )


def pack_origin(source: Coordinates) -> int:
    """A record's place (partition, offset) in one 128-bit value; the topic is implied by the op."""
    return (source.partition << 64) | max(source.offset, 0)


def unpack_origin(topic: str, origin: int) -> AuditSource:
    return AuditSource(topic=topic, partition=origin >> 64, offset=origin & (2**64 - 1))


def request_tag(request_id: str) -> int:
    """user_data_64 of an admitted caller's operation: the request id's first 64 bits, the same on every
    copy of the request, so two transfers sharing it are one request performed twice."""
    return int(request_id[:16], 16)


# --- records read back by code -----------------------------------------------------------------------

PAGE = 8000  # transfers per query: TigerBeetle's largest batch


async def transfers_with_code(ledger: Ledger, code: int) -> list[Transfer]:
    """Every transfer of `code` (audit digests, caller pins), in ledger order, one page at a time."""
    found: list[Transfer] = []
    timestamp_min = 0
    while True:
        page = await ledger.query_transfers(QueryFilter(
            user_data_128=0, user_data_64=0, user_data_32=0, ledger=ids.LEDGER, code=code,
            timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE, flags=QueryFilterFlags.NONE))
        found += page
        if len(page) < PAGE:
            return found
        timestamp_min = page[-1].timestamp + 1


# --- caller policy pins ------------------------------------------------------------------------------

CALLER_PIN_TRANSFER_CODE = 11  # a caller's policy version pinned in the ledger; never an audited key operation
CALLER_POLICIES_ACCOUNT = ids.system_account_id("caller-policies")


@dataclass(frozen=True, slots=True)
class CallerPin:
    """A caller's policy version as the ledger pins it: nothing read from `keys.callers` is a trust anchor,
    so a process refuses a signed record of a lower version than its caller's highest pin (an older record
    re-published, which compaction would leave as the only one)."""

    caller_id: str
    version: int
    record_tag: int
    """The first 32 bits of the SHA-256 of the signed record's bytes (as published)."""
    timestamp: int = 0

    @classmethod
    def of(cls, transfer: Transfer) -> CallerPin:
        return cls(ids.to_hex(transfer.user_data_128), transfer.user_data_64, transfer.user_data_32,
                   transfer.timestamp)


def caller_pin_accounts() -> list[Account]:
    """The accounts a pin moves between: the system tenant's and the caller policies' system account,
    created before every pin (`exists` is success)."""
    return [tenant_account(SYSTEM_TENANT),
            Account(id=CALLER_POLICIES_ACCOUNT, ledger=ids.LEDGER, code=ids.SYSTEM_CODE)]


def caller_pin_transfer(caller_id: str, version: int, record: bytes) -> Transfer:
    """The pin of one signed `keys.callers` record (`record`: its bytes as published): system tenant ->
    caller policies account, code 11, amount 0, user_data_128 = the caller id, user_data_64 = the policy
    version, user_data_32 = the first 32 bits of the record's SHA-256. The id derives from that SHA-256,
    so pinning the same record again is `exists`. No kms.audit event: a pin is no key operation."""
    record_sha256 = hashlib.sha256(record).hexdigest()
    return Transfer(
        id=ids.system_transfer_id("caller-pin", record_sha256),
        debit_account_id=ids.tenant_ref(SYSTEM_TENANT),
        credit_account_id=CALLER_POLICIES_ACCOUNT,
        amount=0,
        user_data_128=ids.from_hex(caller_id),
        user_data_64=version,
        user_data_32=int(record_sha256[:8], 16),
        ledger=ids.LEDGER,
        code=CALLER_PIN_TRANSFER_CODE,
        flags=TransferFlags.NONE,
    )


async def pin_caller_policy(ledger: Ledger, caller_id: str, version: int, record: bytes) -> None:
    """Pins `record` (LedgerError when the ledger refuses; LedgerUnavailable, transient, when out of reach)."""
    if not all(account_ok(r.status) for r in await ledger.create_accounts(caller_pin_accounts())):
        raise LedgerError("the caller pin accounts were refused")
    [result] = await ledger.create_transfers([caller_pin_transfer(caller_id, version, record)])
    if not transfer_ok(result.status):
        raise LedgerError(f"caller pin refused: {result.status.name}")


def highest_pins(pins: Iterable[CallerPin]) -> dict[str, int]:
    """The highest pinned version of each caller."""
    highest: dict[str, int] = {}
    for pin in pins:
        highest[pin.caller_id] = max(pin.version, highest.get(pin.caller_id, 0))
    return highest


async def pinned_versions(ledger: Ledger) -> dict[str, int]:
    """Every caller's highest pinned policy version. On a ledger that is not `shared` (memory) no other
    process's pin is ever here: a reader asks `ledger.shared` first."""
    return highest_pins(CallerPin.of(t) for t in await transfers_with_code(ledger, CALLER_PIN_TRANSFER_CODE))
