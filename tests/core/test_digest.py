"""workers/core/digest.py: the byte formats against hand-built bytes, signatures checked by an independent library."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from nacl.signing import VerifyKey

from workers.core.b64 import b64url_decode
from workers.core.digest import (
    ZERO_SHA256,
    RecordsHasher,
    digest_body,
    digest_sha256,
    encode,
    parse_digest,
    records_sha256,
    sign_digest,
    signed_bytes,
    verify_digest,
)
from workers.core.signing import private_key_from_seed, public_key_bytes

# RFC 8032 7.1 TEST 1
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def body(**changes):
    values = dict(partition=2, first_offset=10, last_offset=12, count=3, records_sha256="ab" * 32,
                  previous_digest_sha256=ZERO_SHA256, created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                  key_id="0123456789abcdef0123456789abcdef")
    return digest_body(**{**values, **changes})


def test_records_hash_is_offset_length_value_in_order():
    expected = hashlib.sha256(
        bytes.fromhex("0000000000000000") + bytes.fromhex("00000001") + b"a"
        + bytes.fromhex("0000000000000007") + bytes.fromhex("ffffffff")          # a null value: no bytes follow
        + bytes.fromhex("0000010000000000") + bytes.fromhex("00000000")          # an empty value
        + bytes.fromhex("0000010000000001") + bytes.fromhex("00000003") + b'{"}'
    ).hexdigest()
    assert records_sha256([(0, b"a"), (7, None), (2**40, b""), (2**40 + 1, b'{"}')]) == expected


def test_no_records_hash_to_sha256_of_nothing():
    assert records_sha256([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_hash_depends_on_order_offset_and_value():
    base = records_sha256([(0, b"x"), (1, b"y")])
    assert records_sha256([(0, b"y"), (1, b"x")]) != base
    assert records_sha256([(1, b"x"), (2, b"y")]) != base
    assert records_sha256([(0, b"x"), (1, b"Y")]) != base
    # the length prefix keeps record boundaries: moving a byte across records changes the hash
    assert records_sha256([(0, b"xy"), (1, b"")]) != records_sha256([(0, b"x"), (1, b"y")])


def test_incremental_hash_counts_records():
    hasher = RecordsHasher()
    for offset, value in [(3, b"a"), (4, b"b")]:
        hasher.add(offset, value)
    assert hasher.count == 2 and hasher.hexdigest() == records_sha256([(3, b"a"), (4, b"b")])
    with pytest.raises(ValueError):
        hasher.add(-1, b"")


def test_signed_bytes_are_rfc8785_of_the_body_without_signature():
    expected = (b'{"count":3,"created_at":"2026-01-02T03:04:05.678Z","first_offset":10,'
                b'"key_id":"0123456789abcdef0123456789abcdef","last_offset":12,"partition":2,'
                b'"previous_digest_sha256":"' + b"0" * 64 + b'","records_sha256":"' + b"ab" * 32 + b'"}')
    assert signed_bytes(body()) == expected
    assert signed_bytes({**body(), "signature": "anything"}) == expected
    assert digest_sha256(body()) == hashlib.sha256(expected).hexdigest()


def test_a_digest_signature_verifies_with_an_independent_ed25519():
    key = private_key_from_seed(SEED)
    assert public_key_bytes(key) == PUBLIC
    digest = sign_digest(key, body())
    VerifyKey(PUBLIC).verify(signed_bytes(digest), b64url_decode(digest["signature"]))  # raises if bad
    assert verify_digest(PUBLIC, digest)
    assert sign_digest(key, body()) == digest  # deterministic: a republish is byte-identical
    assert json.loads(encode(digest)) == digest


@pytest.mark.parametrize("change", [
    {"count": 4}, {"first_offset": 9}, {"last_offset": 13}, {"partition": 3}, {"records_sha256": "cd" * 32},
    {"previous_digest_sha256": "11" * 32}, {"created_at": "2026-01-02T03:04:05.679Z"},
    {"key_id": "f" * 32}, {"extra": 1},
])
def test_any_altered_member_breaks_the_signature(change):
    digest = sign_digest(private_key_from_seed(SEED), body())
    assert not verify_digest(PUBLIC, {**digest, **change})


def test_a_forged_or_missing_signature_does_not_verify():
    digest = sign_digest(private_key_from_seed(SEED), body())
    other = sign_digest(private_key_from_seed(bytes(32)), body())
    assert not verify_digest(PUBLIC, {**digest, "signature": other["signature"]})
    assert not verify_digest(PUBLIC, {k: v for k, v in digest.items() if k != "signature"})
    assert not verify_digest(PUBLIC, {**digest, "signature": "not base64url!"})
    assert not verify_digest(b"short", digest)
    with pytest.raises(ValueError):
        sign_digest(private_key_from_seed(SEED), digest)


def test_parse_digest_accepts_only_audit_digests():
    digest = sign_digest(private_key_from_seed(SEED), body())
    assert parse_digest(encode(digest)) == digest
    for bad in (None, b"", b"[]", b"\xff", json.dumps({**digest, "count": 0}).encode(),
                json.dumps({k: v for k, v in digest.items() if k != "records_sha256"}).encode()):
        assert parse_digest(bad) is None
