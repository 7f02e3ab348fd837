"""`local` KMS provider: a development KEK held in the process. Refused by the production profile.

Wrapped key format (all lengths fixed):

    b"KLK1" || nonce (12) || AES-256-GCM(KEK, nonce, data key, aad) (32 + 16 tag)

with aad = RFC 8785 JSON of {"context": <encryption context>, "kms_key_id": <id>},
so the context is enforced exactly as AWS KMS enforces it.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from workers.core.canonical import canonical_json
from workers.kms import DATA_KEY_BYTES, DataKey, Kms, KmsCapabilities, KmsRefused

MAGIC = b"KLK1"
NONCE_BYTES = 12
WRAPPED_BYTES = len(MAGIC) + NONCE_BYTES + DATA_KEY_BYTES + 16
DEFAULT_KEY_ID = "local/keyledger-dev"


def dev_kek() -> bytes:
    """A fixed, public development KEK: fine for `keyledger dev`, never for production."""
    return hashlib.sha256(b"keyledger development KEK - not a secret").digest()


class LocalKms(Kms):
    """One KEK, no versions, no batch API: the port's defaults do batches, and rewrap is unwrap + wrap
    under the same KEK with a fresh nonce."""

    capabilities = KmsCapabilities("local")

    def __init__(self, kek: bytes | None = None, default_key_id: str = DEFAULT_KEY_ID) -> None:
        kek = kek if kek is not None else dev_kek()
        if len(kek) != 32:
            raise ValueError("the local KEK must be 32 bytes")
        self._aead = AESGCM(kek)
        self.default_key_id = default_key_id
        self._pending_deletion: set[str] = set()
        self._calls = 0

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        key_id = kms_key_id or self.default_key_id
        self._refuse_deleted(key_id)
        self._calls += 1
        if len(plaintext) != DATA_KEY_BYTES:
            raise KmsRefused("ValidationException: a data key is 32 bytes")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _aad(key_id, context))
        return DataKey(plaintext=plaintext, wrapped=MAGIC + nonce + sealed, kms_key_id=key_id)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        self._refuse_deleted(kms_key_id)
        self._calls += 1
        if len(wrapped) != WRAPPED_BYTES or not wrapped.startswith(MAGIC):
            raise KmsRefused("InvalidCiphertextException: not a local-KMS wrapped key")
        nonce = wrapped[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, wrapped[len(MAGIC) + NONCE_BYTES :], _aad(kms_key_id, context))
        except InvalidTag:
            raise KmsRefused("InvalidCiphertextException: wrong key or encryption context") from None

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        # stricter than moto: a key pending deletion unwraps nothing
        self._pending_deletion.add(kms_key_id)

    async def describe_key(self, kms_key_id: str) -> str:
        """Local keys have one name each (no aliases): the name is the identity."""
        return f"local:{kms_key_id}"

    def _refuse_deleted(self, kms_key_id: str) -> None:
        if kms_key_id in self._pending_deletion:
            raise KmsRefused(f"KMSInvalidStateException: {kms_key_id} is pending deletion")


def _aad(kms_key_id: str, context: dict[str, str]) -> bytes:
    return canonical_json({"context": context, "kms_key_id": kms_key_id})
