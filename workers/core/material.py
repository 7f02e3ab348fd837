"""The 64-bit fingerprint a key account pins of its `keys.material` record.

A material record whose fingerprint does not match its TigerBeetle account is
ignored (first writer wins), so a late or forged record can never replace a key.
"""

from __future__ import annotations

import hashlib

from schemas.messages import KeyMaterial
from workers.core.canonical import canonical_json

_PINNED_FIELDS = ("key_id", "tenant_id", "key_type", "version", "kms_key_id", "wrapped_key", "public_key")


def material_fingerprint(material: KeyMaterial) -> int:
    pinned = {name: getattr(material, name) for name in _PINNED_FIELDS}
    pinned["key_type"] = material.key_type.value
    digest = hashlib.blake2b(canonical_json(pinned), digest_size=8, person=b"kl-material").digest()
    return int.from_bytes(digest, "big")
