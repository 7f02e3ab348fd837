"""Deterministic 128-bit identifiers for TigerBeetle accounts and transfers.

Every id is BLAKE2b-128 over length-prefixed UTF-8 parts under a purpose label,
so a replayed request derives the same id (TigerBeetle then answers `exists`)
and two different purposes can never collide by concatenation tricks.
`key_id` is the key account id written as 32 lowercase hex characters.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from schemas.messages import KeyType, Op

U128_MAX = 2**128 - 1
LEDGER = 1  # every keyledger account and transfer lives on one TigerBeetle ledger
KEY_ACCOUNT_CODE = 8
TENANT_ACCOUNT_CODE = 1
TRANSFER_CODE = 8
SYSTEM_CODE = 2  # keyledger's own accounts (the ledger clock): never a tenant's, never a key
BUDGET_CODE = 9  # an encryption key's budget of seals (keys/budget.py): accounts and their transfers
MAX_VERSION = 2**24 - 1

KEY_TYPE_CODE = {KeyType.SIGNING: 1, KeyType.ENCRYPTION: 2}
KEY_TYPE_BY_CODE = {v: k for k, v in KEY_TYPE_CODE.items()}

OP_CODE = {
    Op.GENERATE: 1,
    Op.SIGN: 2,
    Op.ENCRYPT: 3,
    Op.DECRYPT: 4,
    Op.REENCRYPT: 5,
    Op.ROTATE: 6,
    Op.REVOKE: 7,
    Op.DESTROY: 8,
    Op.DENIED: 9,
    Op.REWRAP: 10,
}
OP_BY_CODE = {v: k for k, v in OP_CODE.items()}
FAILURE_BIT = 1 << 16  # set in a transfer's user_data_32 when the outcome was a failure


_PERSON = b"keyledger-v1"


def _hash128(label: str, *parts: str | int) -> int:
    """BLAKE2b-128 of `label`, then each part, each as its length in 4 big-endian bytes then its UTF-8
    text (an int as its decimal digits)."""
    state = _EMPTY.copy()
    for part in (label, *parts):
        raw = str(part).encode()
        state.update(_LENGTH(len(raw)))
        state.update(raw)
    value = int.from_bytes(state.digest(), "big")
    # 0 and 2^128-1 are reserved by TigerBeetle; a digest hitting either is all but impossible
    return value if 0 < value < U128_MAX else 1


# the hash with nothing hashed yet, never updated itself: every derivation starts from a copy
_EMPTY = hashlib.blake2b(digest_size=16, person=_PERSON)
_LENGTH = struct.Struct(">I").pack


def tenant_ref(tenant_id: str) -> int:
    """The tenant's 128-bit reference: its account id and its keys' user_data_128."""
    return _hash128("tenant", tenant_id)


def key_account_id(tenant_id: str, key_type: KeyType, version: int) -> int:
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"key version out of range: {version}")
    return _hash128("key", tenant_id, KeyType(key_type).value, version)


def key_id_for(tenant_id: str, key_type: KeyType, version: int) -> str:
    return to_hex(key_account_id(tenant_id, key_type, version))


def transfer_id(op: Op, key_id: str, *source: str | int) -> int:
    """Id of the transfer recording `op` on `key_id` caused by `source` (topic, partition, offset, ...)."""
    return _hash128("transfer", Op(op).value, key_id, *source)


def grouped_transfer_id(op: Op, key_id: str, parts: Sequence[str], origin: Sequence[str | int],
                        wrap: str | None = None) -> int:
    """`transfer_id(op, key_id, *parts, *origin)`, or with `wrap`, `transfer_id(op, key_id, wrap, that id)`:
    how the transfer of each record a grouped `kms.audit` event names derives (keys/audit.py)."""
    inner = transfer_id(op, key_id, *parts, *origin)
    return inner if wrap is None else transfer_id(op, key_id, wrap, inner)


def event_id(kind: str, key_id: str) -> str:
    """Id of the `keys.events` record announcing `kind` for `key_id`: a replay republishes the same id."""
    return to_hex(_hash128("event", kind, key_id))


def to_hex(value: int) -> str:
    return f"{value:032x}"


def from_hex(key_id: str) -> int:
    if len(key_id) != 32 or key_id.lower() != key_id:
        raise ValueError("a key id is 32 lowercase hex characters")
    return int(key_id, 16)


def pack_key_kind(key_type: KeyType, version: int) -> int:
    """user_data_32 of a key account: key type code in the top byte, version below."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"key version out of range: {version}")
    return (KEY_TYPE_CODE[KeyType(key_type)] << 24) | version


def unpack_key_kind(user_data_32: int) -> tuple[KeyType, int]:
    return KEY_TYPE_BY_CODE[user_data_32 >> 24], user_data_32 & MAX_VERSION


def pack_op(op: Op, failed: bool = False) -> int:
    return OP_CODE[Op(op)] | (FAILURE_BIT if failed else 0)


def unpack_op(user_data_32: int) -> tuple[Op, bool]:
    return OP_BY_CODE[user_data_32 & 0xFFFF], bool(user_data_32 & FAILURE_BIT)


def tag64(*parts: str | int) -> int:
    """A 64-bit tag for a transfer's user_data_64 (e.g. which tick made a rotation)."""
    return _hash128("tag", *parts) >> 64


def system_account_id(name: str) -> int:
    return _hash128("system", name)


def system_transfer_id(label: str, name: str) -> int:
    """A transfer between system accounts (e.g. the ledger clock), derived from `name`."""
    return _hash128(label, name)


MAX_EVENT_ID = 200  # schemas.messages.EventId
CHILD_PREFIX = 100
CHILD_HASH_MARK = "~"  # never in a tenant id (schemas.TENANT_ID_PATTERN): the two forms cannot collide


def child_tick_id(parent_tick_id: str, tenant_id: str) -> str:
    """The id of the per-tenant tick a fan-out of `parent_tick_id` publishes; always a valid EventId.

    `<parent>/<tenant>` when that fits in 200 characters (readable, and what earlier versions
    published, so a replayed fan-out keeps its ids); otherwise
    `<first 100 characters of parent>/~<32 hex of BLAKE2b(parent, tenant)>`. Tenant ids hold no `/`
    or `~`, so the part after the last `/` tells the forms apart, and the same (parent, tenant)
    always gives the same id: follow a fan-out by computing its children's ids, never by prefix.
    """
    readable = f"{parent_tick_id}/{tenant_id}"
    if len(readable) <= MAX_EVENT_ID:
        return readable
    return f"{parent_tick_id[:CHILD_PREFIX]}/{CHILD_HASH_MARK}{to_hex(_hash128('child-tick', parent_tick_id, tenant_id))}"


def budget_account_id(key_id: str) -> int:
    """The budget account of encryption key `key_id` (keys/budget.py)."""
    return _hash128("budget", key_id)


def budget_transfer_id(kind: str, key_id: str, *source: str | int) -> int:
    """A budget funding (`fund`) or debit (`seal`) transfer, derived from the key and what caused it."""
    return _hash128("budget-" + kind, key_id, *source)
