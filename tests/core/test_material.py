"""Material fingerprints (what a key account and its rewrap transfers pin) and the accepted-chain choice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.messages import KeyMaterial, KeyType
from workers.core.b64 import b64encode
from workers.core.material import (
    latest_accepted,
    material_fingerprint,
    provider_name,
    wrapped_kek_version,
)

RECORD = KeyMaterial(key_id="ab" * 16, tenant_id="acme", key_type="signing", version=1, kms_key_id="alias/keyledger",
                     wrapped_key="d3JhcHBlZA==", public_key="cHVibGlj", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_record_written_before_providers_were_named_keeps_its_fingerprint():
    # known answer computed with the fingerprint as it was before rewrapping existed: accounts pinned
    # then still match their records
    assert material_fingerprint(RECORD) == 0x05E1B64F7B41F9DA


def test_aws_named_or_absent_is_the_same_record():
    assert provider_name(RECORD) == "aws"
    assert material_fingerprint(RECORD.model_copy(update={"kms_provider": "aws"})) == material_fingerprint(RECORD)


@pytest.mark.parametrize("change", [
    {"kms_provider": "vault"}, {"kms_provider": "local"}, {"kek_version": 2}, {"wrapped_key": "b3RoZXI="},
    {"kms_key_id": "alias/other"}, {"public_key": "b3RoZXI="}, {"version": 2}, {"tenant_id": "globex"},
    {"key_id": "cd" * 16}, {"key_type": KeyType.ENCRYPTION},
])
def test_every_field_that_says_what_the_key_is_or_how_it_is_wrapped_is_pinned(change):
    assert material_fingerprint(RECORD.model_copy(update=change)) != material_fingerprint(RECORD)


def test_the_creation_time_is_not_pinned():
    later = RECORD.model_copy(update={"created_at": datetime(2027, 1, 1, tzinfo=UTC)})
    assert material_fingerprint(later) == material_fingerprint(RECORD)


def test_the_kek_version_is_read_from_the_wrapped_bytes():
    vault = RECORD.model_copy(update={"wrapped_key": b64encode(b"vault:v12:QUJD"), "kek_version": 3})
    assert wrapped_kek_version(vault) == 12  # the blob, which the KMS judges, not the field
    assert wrapped_kek_version(RECORD) is None
    assert wrapped_kek_version(RECORD.model_copy(update={"wrapped_key": "not base64!"})) is None
    hsm = RECORD.model_copy(update={"kms_provider": "pkcs11", "kek_version": 3,
                                    "wrapped_key": b64encode(b"KLH1\0\0\0\x07" + b"A" * 80)})
    assert wrapped_kek_version(hsm) == 7  # the header selects the token object that unwraps: the KMS judges it
    assert wrapped_kek_version(hsm.model_copy(update={"kms_provider": None})) is None  # an aws blob never has one
    assert wrapped_kek_version(hsm.model_copy(update={"wrapped_key": b64encode(b"KLH1\0\0\0\0")})) is None


def test_the_record_accepted_last_wins_whatever_the_order_of_candidates():
    a, b, c = (RECORD.model_copy(update={"wrapped_key": b64encode(bytes([i]) * 8)}) for i in range(3))
    forged = RECORD.model_copy(update={"wrapped_key": b64encode(b"forged!!")})
    chain = [material_fingerprint(a), material_fingerprint(b), material_fingerprint(c)]
    assert latest_accepted(chain, [c, forged, a, b]) is c
    assert latest_accepted(chain, [b, forged, a]) is b
    assert latest_accepted(chain, [forged]) is None
    assert latest_accepted([], [a]) is None
