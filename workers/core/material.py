"""The 64-bit fingerprint of a `keys.material` record, and which records the ledger accepted.

A key account pins the fingerprint of the record its key was created with; each
`rewrap` transfer on the key account carries (user_data_64) the fingerprint of
the record that rewrap published. Together they are the key's chain of
accepted wrappings, oldest first. A record whose fingerprint is not in the
chain (late, forged, or left behind by a crashed rewrap) is never unwrapped;
of the accepted records a process holds, it uses the one accepted last.

The fingerprint covers what the key is (ids, type, version, public key) and
how it is wrapped (provider, KMS key, wrapped bytes, KEK version). Records
written before `kms_provider`/`kek_version` existed hash exactly as they did,
and `kms_provider: "aws"` hashes like an absent one (absent = aws).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from schemas.messages import KeyMaterial
from workers.core.b64 import b64decode
from workers.core.canonical import canonical_json

_PINNED_FIELDS = ("key_id", "tenant_id", "key_type", "version", "kms_key_id", "wrapped_key", "public_key")
DEFAULT_PROVIDER = "aws"  # a record without kms_provider was wrapped by AWS KMS (design contract)
_VAULT_BLOB = re.compile(rb"vault:v([1-9][0-9]{0,9}):")
_PKCS11_BLOB = b"KLH1"  # then the KEK version (4 bytes, big-endian) whose token object unwraps the rest
T = TypeVar("T")


def material_fingerprint(material: KeyMaterial) -> int:
    pinned: dict[str, Any] = {name: getattr(material, name) for name in _PINNED_FIELDS}
    pinned["key_type"] = material.key_type.value
    if provider_name(material) != DEFAULT_PROVIDER:
        pinned["kms_provider"] = material.kms_provider
    if material.kek_version is not None:
        pinned["kek_version"] = material.kek_version
    digest = hashlib.blake2b(canonical_json(pinned), digest_size=8, person=b"kl-material").digest()
    return int.from_bytes(digest, "big")


def provider_name(material: KeyMaterial) -> str:
    """The provider that wrapped the record (absent = aws)."""
    return material.kms_provider or DEFAULT_PROVIDER


def wrapped_kek_version(material: KeyMaterial) -> int | None:
    """The KEK version read from the wrapped bytes themselves (Vault's `vault:vN:` prefix, the pkcs11
    provider's `KLH1` + version header), else None (gcp, azure: versions the blob does not show).
    The blob, not the `kek_version` field, is what the KMS will judge, so retirement proofs read this."""
    try:
        raw = b64decode(material.wrapped_key)
    except (binascii.Error, ValueError):
        return None
    if provider_name(material) == "pkcs11":
        version = int.from_bytes(raw[4:8], "big") if raw[:4] == _PKCS11_BLOB and len(raw) > 8 else 0
        return version or None
    match = _VAULT_BLOB.match(raw)
    return int(match.group(1)) if match else None


def latest_accepted(chain: Sequence[int], candidates: Iterable[KeyMaterial]) -> KeyMaterial | None:
    """Of `candidates`, the record accepted last in `chain` (the pin, then each rewrap's fingerprint,
    in ledger order); None when no candidate was accepted."""
    return latest_accepted_by(chain, ((material_fingerprint(m), m) for m in candidates))


def latest_accepted_by(chain: Sequence[int], fingerprinted: Iterable[tuple[int, T]]) -> T | None:
    """`latest_accepted` over records whose fingerprints are already known, in whatever form they are held
    (the key table keeps stored bytes): the record of the fingerprint `chain` accepted last, or None."""
    rank = {fingerprint: position for position, fingerprint in enumerate(chain)}
    best: tuple[int, T] | None = None
    for fingerprint, record in fingerprinted:
        position = rank.get(fingerprint)
        if position is not None and (best is None or position > best[0]):
            best = (position, record)
    return best[1] if best else None
