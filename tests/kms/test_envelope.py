"""The context-bound envelope of the pkcs11 and azure providers: its bytes are the wire format of every
blob they have wrapped, so a payload sealed before this module existed still opens."""

from __future__ import annotations

import hashlib
import json

import pytest

from workers.kms import KmsRefused, encryption_context
from workers.kms.envelope import PAYLOAD_BYTES, SALT_BYTES, context_digest, open_sealed, require_data_key, seal

CONTEXT = encryption_context("tenant-a", "key-1", "encryption")


def test_the_payload_is_key_salt_and_the_digest_of_key_id_and_context() -> None:
    data_key = bytes(range(32))
    payload = seal(data_key, "kek", CONTEXT, "test wrap")
    canonical = json.dumps({"context": CONTEXT, "kms_key_id": "kek"}, sort_keys=True, separators=(",", ":"))
    assert len(payload) == PAYLOAD_BYTES == 32 + SALT_BYTES + 32
    assert payload[:32] == data_key
    assert payload[32 + SALT_BYTES:] == context_digest("kek", CONTEXT) == hashlib.sha256(canonical.encode()).digest()
    assert seal(data_key, "kek", CONTEXT, "test wrap") != payload  # a fresh salt every wrap


def test_a_payload_sealed_the_old_way_opens() -> None:
    data_key = bytes(range(32))
    canonical = json.dumps({"context": CONTEXT, "kms_key_id": "kek"}, sort_keys=True, separators=(",", ":"))
    payload = data_key + b"\x00" * SALT_BYTES + hashlib.sha256(canonical.encode()).digest()
    assert open_sealed(payload, "kek", CONTEXT, "test unwrap") == data_key


@pytest.mark.parametrize(("kms_key_id", "context"), [
    ("other-kek", CONTEXT),
    ("kek", encryption_context("tenant-b", "key-1", "encryption")),
    ("kek", encryption_context("tenant-a", "key-1", "signing")),
])
def test_another_key_or_context_is_refused(kms_key_id: str, context: dict[str, str]) -> None:
    payload = seal(bytes(32), "kek", CONTEXT, "test wrap")
    with pytest.raises(KmsRefused, match="test unwrap: wrong key or encryption context"):
        open_sealed(payload, kms_key_id, context, "test unwrap")


def test_a_truncated_payload_is_refused() -> None:
    with pytest.raises(KmsRefused):
        open_sealed(seal(bytes(32), "kek", CONTEXT, "test wrap")[:-1], "kek", CONTEXT, "test unwrap")


def test_only_a_data_key_is_sealed() -> None:
    with pytest.raises(KmsRefused, match="test wrap: a data key is 32 bytes"):
        require_data_key(bytes(31), "test wrap")
    with pytest.raises(KmsRefused, match="test wrap: a data key is 32 bytes"):
        seal(bytes(33), "kek", CONTEXT, "test wrap")
