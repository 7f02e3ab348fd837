"""The context-bound envelope of the KMS adapters whose wrap has no associated data (pkcs11, azure).

Key wrap (PKCS#11 C_WrapKey, Key Vault wrapKey) takes no associated data, so the encryption context
travels inside what is wrapped. The payload, byte for byte:

    data key (32) || salt (8, os.urandom) || SHA-256(canonical JSON of {"context", "kms_key_id"}) (32)

`seal` builds it for a wrap; `open_sealed` takes it back from an unwrap and returns the data key only
when the digest matches the caller's key and context (compared in constant time), else KmsRefused.
The salt makes two wraps of one key under one deterministic KEK version (AES-KWP) differ. This is
the envelope with the wrap itself as the authenticator: the wrap (AES-KWP, A256KW, RSA-OAEP) seals
the whole payload, so the digest cannot be changed without the unwrap failing, and a blob moved to
another tenant, key or key type is refused rather than unwrapped to another key. Each adapter frames
the wrapped payload in its own blob (magic and KEK version); this module never changes those bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from workers.core.canonical import canonical_json
from workers.kms import DATA_KEY_BYTES, KmsRefused

SALT_BYTES = 8
DIGEST_BYTES = 32
PAYLOAD_BYTES = DATA_KEY_BYTES + SALT_BYTES + DIGEST_BYTES


def require_data_key(plaintext: bytes, operation: str) -> None:
    """KmsRefused unless `plaintext` is a data key's length (`operation` names the call, e.g. "pkcs11 wrap")."""
    if len(plaintext) != DATA_KEY_BYTES:
        raise KmsRefused(f"{operation}: a data key is 32 bytes")


def context_digest(kms_key_id: str, context: dict[str, str]) -> bytes:
    """SHA-256 of the canonical JSON of {"context": context, "kms_key_id": kms_key_id}."""
    return hashlib.sha256(canonical_json({"context": context, "kms_key_id": kms_key_id})).digest()


def seal(plaintext: bytes, kms_key_id: str, context: dict[str, str], operation: str) -> bytes:
    """The payload to wrap: the data key, a fresh salt, the digest of the key id and context; KmsRefused
    unless `plaintext` is a data key."""
    require_data_key(plaintext, operation)
    return plaintext + os.urandom(SALT_BYTES) + context_digest(kms_key_id, context)


def open_sealed(payload: bytes, kms_key_id: str, context: dict[str, str], operation: str) -> bytes:
    """The data key of an unwrapped payload; KmsRefused when it was sealed under another key or context."""
    if len(payload) != PAYLOAD_BYTES or not hmac.compare_digest(payload[DATA_KEY_BYTES + SALT_BYTES:],
                                                                context_digest(kms_key_id, context)):
        raise KmsRefused(f"{operation}: wrong key or encryption context")
    return payload[:DATA_KEY_BYTES]
