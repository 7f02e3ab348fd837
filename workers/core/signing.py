"""Span signatures: Ed25519 over RFC 8785 canonical JSON of {"key_id", "span", "tenant_id"}.

Anyone holding the public key (from `keys.events`) can verify with any Ed25519
library and any RFC 8785 implementation; the value is base64url without padding.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import canonical_json

ALG = "Ed25519"
SEED_BYTES = 32
SIGNATURE_BYTES = 64


class Verdict(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN_KEY = "unknown key"
    REVOKED_KEY = "revoked key"


def signing_input(tenant_id: str, key_id: str, span: dict[str, Any], *, known_plain: bool = False) -> bytes:
    # tenant and key ids are ASCII by their patterns, so the span alone decides plainness
    return canonical_json({"key_id": key_id, "span": span, "tenant_id": tenant_id}, known_plain=known_plain)


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """The KMS data key's 32 plaintext bytes are the Ed25519 private seed (RFC 8032)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    return b64url_encode(private_key.sign(message))


def verify(public_key: bytes, message: bytes, signature: str) -> bool:
    """Whether `signature` (unpadded base64url) is `public_key`'s Ed25519 signature of `message`."""
    try:
        raw = b64url_decode(signature)
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return verify_raw(key, message, raw)


def verify_raw(public_key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    """`verify` for a key object made once and a signature already decoded: a verifier of many spans
    under few keys skips rebuilding the key and decoding the value twice. Anything but 64
    bytes is no signature."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
