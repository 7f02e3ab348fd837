"""KMS port: wrap and unwrap 32-byte data keys under a KMS key, bound to an encryption context.

Like tink's KmsEnvelopeAead, the KMS is just another AEAD: `generate_data_key`
returns fresh plaintext plus its wrapped form, `decrypt` unwraps it, and the
encryption context (always exactly {"tenant_id", "key_id", "key_type"}) is the
associated data, so a blob moved to another tenant or key never unwraps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.messages import KeyType
from workers.errors import Unavailable

DATA_KEY_BYTES = 32
MAX_WRAPPED_BYTES = 6144  # AWS KMS ciphertext blobs are at most 6 KiB


class KmsError(Exception):
    """A KMS failure; messages never carry key material.

    `detail` is the provider's own explanation (e.g. AWS's "User ... is not authorized to perform kms:Decrypt"):
    for the operator's log only, since it may name accounts and roles; the message travels further (DLQ, results).
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class KmsUnavailable(KmsError, Unavailable):
    """Transient: unreachable, throttled, timed out. Retry with backoff."""


class KmsRefused(KmsError):
    """Permanent for this request: access denied, wrong context, key disabled or pending deletion."""


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: bytes
    kms_key_id: str

    def __post_init__(self) -> None:
        if len(self.plaintext) != DATA_KEY_BYTES:
            raise KmsError("KMS returned a data key of the wrong length")
        if not 0 < len(self.wrapped) <= MAX_WRAPPED_BYTES:
            raise KmsError("KMS returned a wrapped key of an impossible length")


def encryption_context(tenant_id: str, key_id: str, key_type: KeyType) -> dict[str, str]:
    return {"tenant_id": tenant_id, "key_id": key_id, "key_type": KeyType(key_type).value}


class Kms(Protocol):
    default_key_id: str

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey: ...

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes: ...

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None: ...

    async def aclose(self) -> None: ...
