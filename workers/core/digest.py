"""The audit digest chain, pure: record hashes, the signed body, chain links.

A digest covers a run of `kms.audit` records of one partition, in offset order.

`records_sha256` is SHA-256 over, for each covered record in offset order, the bytes

    offset        8 bytes, unsigned big-endian (the record's Kafka offset)
    value length  4 bytes, unsigned big-endian; 0xFFFFFFFF for a null value (tombstone)
    value         the record's value bytes exactly as stored (nothing for a null value)

with nothing between records and nothing before or after. Keys, headers and
timestamps are not covered (an audit record's key repeats its `tenant_id`).

The signed body is every member of the digest except `signature`:
`partition`, `first_offset`, `last_offset`, `count`, `records_sha256`,
`previous_digest_sha256`, `created_at` (RFC 3339 text, UTC, `Z`), `key_id`,
plus any member a later version adds. The signed bytes are the RFC 8785 (JCS)
canonical JSON of that body; `signature` is Ed25519 over them, base64url without
padding. `previous_digest_sha256` is the lowercase hex SHA-256 of the previous
digest's signed bytes (same partition), 64 zeros for a partition's first digest.
The record value on `kms.audit.digests` is the RFC 8785 JSON of body + signature.

Verifying needs nothing but these rules, the topic bytes and the digest key's
public key from `keys.events` (tenant `keyledger-system`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas.messages import AuditDigest
from workers.core.canonical import canonical_json
from workers.core.signing import sign, verify

ZERO_SHA256 = "0" * 64
MAX_RECORDS = 10_000  # a digest never covers more records than this
NULL_LENGTH = 0xFFFFFFFF
SIGNATURE = "signature"


class RecordsHasher:
    """`records_sha256` built one record at a time (no record bytes are kept)."""

    __slots__ = ("_hash", "count")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, offset: int, value: bytes | None) -> None:
        if not 0 <= offset < 2**64:
            raise ValueError(f"offset out of range: {offset}")
        if value is None:
            self._hash.update(offset.to_bytes(8, "big") + NULL_LENGTH.to_bytes(4, "big"))
        else:
            if len(value) >= NULL_LENGTH:
                raise ValueError("a record value of 4 GiB or more cannot be digested")
            self._hash.update(offset.to_bytes(8, "big") + len(value).to_bytes(4, "big"))
            self._hash.update(value)
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def records_sha256(records: Iterable[tuple[int, bytes | None]]) -> str:
    """`records_sha256` of (offset, value) pairs, taken in the order given."""
    hasher = RecordsHasher()
    for offset, value in records:
        hasher.add(offset, value)
    return hasher.hexdigest()


def timestamp(moment: datetime) -> str:
    """`created_at` text: UTC, millisecond precision, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def digest_body(*, partition: int, first_offset: int, last_offset: int, count: int, records_sha256: str,
                previous_digest_sha256: str, created_at: datetime, key_id: str) -> dict[str, Any]:
    return {
        "partition": partition,
        "first_offset": first_offset,
        "last_offset": last_offset,
        "count": count,
        "records_sha256": records_sha256,
        "previous_digest_sha256": previous_digest_sha256,
        "created_at": timestamp(created_at),
        "key_id": key_id,
    }


def signed_bytes(digest: Mapping[str, Any]) -> bytes:
    """RFC 8785 JSON of every member but `signature`: what is signed and what the next link hashes."""
    return canonical_json({name: value for name, value in digest.items() if name != SIGNATURE})


def digest_sha256(digest: Mapping[str, Any]) -> str:
    """The link the next digest of the partition carries as `previous_digest_sha256`."""
    return hashlib.sha256(signed_bytes(digest)).hexdigest()


def sign_digest(private_key: Ed25519PrivateKey, body: Mapping[str, Any]) -> dict[str, Any]:
    """The body with its `signature` (Ed25519 is deterministic: the same body always signs the same)."""
    if SIGNATURE in body:
        raise ValueError("the body to sign already carries a signature")
    return {**body, SIGNATURE: sign(private_key, signed_bytes(body))}


def verify_digest(public_key: bytes, digest: Mapping[str, Any]) -> bool:
    value = digest.get(SIGNATURE)
    return isinstance(value, str) and verify(public_key, signed_bytes(digest), value)


def encode(digest: Mapping[str, Any]) -> bytes:
    """The record value published on `kms.audit.digests`."""
    return canonical_json(dict(digest))


def parse_digest(value: bytes | None) -> dict[str, Any] | None:
    """A digest record as its JSON object (what is signed and hashed), or None when it is not an AuditDigest."""
    if value is None:
        return None
    try:
        data = json.loads(value)
        AuditDigest.model_validate(data)
    except (ValueError, RecursionError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None
