"""Results sealed to a caller: RFC 9180 known answers for both KEMs (cryptography-vectors), result keys
opened by an independent HPKE implementation (pycryptodome) from the format description alone, and
tamper cases for every coordinate a sealed field is bound to."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rfc8785
from Crypto.Protocol import HPKE
from Crypto.PublicKey import ECC, Hybrid
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given
from hypothesis import strategies as st

from schemas.messages import CallerKem, SealedResultKey
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import CanonicalizationError, canonical_json
from workers.core.results import (
    PREFIX,
    ResultKeyring,
    ResultSealError,
    field_aad,
    field_key_id,
    generate_keypair,
    hybrid_public_bytes,
    new_result_key,
    open_field,
    open_result_key,
    private_key,
    public_key,
    result_key_info,
    seal_field,
)

CALLER = "fdd2c64be20297092aee9f7c1ccdb1ea"
OTHER_CALLER = "0" * 32
KEMS = list(CallerKem)


def _vectors(name: str) -> list[dict]:
    import cryptography_vectors

    return json.loads((Path(cryptography_vectors.__file__).parent / "HPKE" / name).read_text())


def _decrypt_with_aad():
    """cryptography's HPKE with an AAD, which the RFC 9180 vectors use; only its tests need it (keyledger
    seals with the public single-shot API and an empty AAD, checked against pycryptodome below)."""
    from cryptography.hazmat.bindings._rust import openssl

    found = getattr(openssl.hpke, "_decrypt_with_aad", None)
    if found is None:
        pytest.skip("this cryptography has no _decrypt_with_aad: the RFC 9180 vectors need an AAD")
    return found


def test_rfc9180_known_answer_for_dhkem_x25519_hkdf_sha256_aes_256_gcm():
    vector = next(v for v in _vectors("test-vectors.json")
                  if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == (0, 0x20, 1, 2))
    decrypt = _decrypt_with_aad()
    key = private_key(CallerKem.X25519, bytes.fromhex(vector["skRm"]))
    assert key.public_key().public_bytes_raw() == bytes.fromhex(vector["pkRm"])
    first = vector["encryptions"][0]  # single shot: the first message of the context (sequence 0)
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    opened = decrypt(suite, bytes.fromhex(vector["enc"]) + bytes.fromhex(first["ct"]), key,
                     info=bytes.fromhex(vector["info"]), aad=bytes.fromhex(first["aad"]))
    assert opened == bytes.fromhex(first["pt"])


def test_known_answer_for_the_mlkem768_x25519_hybrid():
    # the hybrid's vectors (draft-ietf-hpke-pq) use ChaCha20-Poly1305; the KEM and the key format are ours
    vector = next(v for v in _vectors("hpke-pq-test-vectors.json")
                  if (v["mode"], v["kem_id"], v["kdf_id"]) == (0, 0x647A, 1))
    seed = bytes.fromhex(vector["skRm"])
    assert hybrid_public_bytes(seed) == bytes.fromhex(vector["pkRm"])
    decrypt = _decrypt_with_aad()
    first = vector["encryptions"][0]
    assert vector["aead_id"] == 3
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    opened = decrypt(suite, bytes.fromhex(vector["enc"]) + bytes.fromhex(first["ct"]),
                     private_key(CallerKem.MLKEM768_X25519, seed), info=bytes.fromhex(vector["info"]),
                     aad=bytes.fromhex(first["aad"]))
    assert opened == bytes.fromhex(first["pt"])


def _independent_receiver(kem: CallerKem, raw_private: bytes):
    if kem is CallerKem.X25519:
        return ECC.construct(curve="Curve25519", seed=raw_private)
    return Hybrid.generate(param_set=Hybrid.MLKEM768_X25519, randfunc=lambda n: raw_private[:n])


@pytest.mark.parametrize("kem", KEMS, ids=str)
def test_an_independent_hpke_opens_a_result_key_from_the_format_description(kem):
    raw_private, raw_public = generate_keypair(kem)
    key = new_result_key(CALLER, kem, raw_public)
    info = b"keyledger result key v1\x00" + CALLER.encode() + b"\x00" + key.id.encode()
    assert result_key_info(CALLER, key.id) == info
    receiver = HPKE.new(receiver_key=_independent_receiver(kem, raw_private), aead_id=HPKE.AEAD.AES256_GCM,
                        enc=b64url_decode(key.sealed.enc), info=info)
    assert receiver.unseal(b64url_decode(key.sealed.sealed_key)) == key.key


@pytest.mark.parametrize("kem", KEMS, ids=str)
def test_a_field_sealed_to_a_caller_opens_with_its_private_key_only(kem):
    raw_private, raw_public = generate_keypair(kem)
    key = new_result_key(CALLER, kem, raw_public)
    sealed = seal_field(key, "acme", "job-1", "user-7", "email", "a@example.com")
    assert sealed.startswith(f"{PREFIX}{key.id}.") and field_key_id(sealed) == key.id
    opened_key = open_result_key(key.sealed, CALLER, private_key(kem, raw_private))
    assert open_field(opened_key, CALLER, "acme", "job-1", "user-7", "email", sealed) == "a@example.com"
    other_private, _ = generate_keypair(kem)
    with pytest.raises(ResultSealError):
        open_result_key(key.sealed, CALLER, private_key(kem, other_private))


@pytest.mark.parametrize("coordinates", [
    pytest.param((CALLER, "globex", "job-1", "user-7", "email"), id="another tenant"),
    pytest.param((CALLER, "acme", "job-2", "user-7", "email"), id="another job"),
    pytest.param((CALLER, "acme", "job-1", "user-8", "email"), id="another record"),
    pytest.param((CALLER, "acme", "job-1", "user-7", "phone"), id="another field"),
    pytest.param((OTHER_CALLER, "acme", "job-1", "user-7", "email"), id="another caller"),
])
def test_a_moved_field_does_not_open(coordinates):
    _, raw_public = generate_keypair(CallerKem.X25519)
    key = new_result_key(CALLER, CallerKem.X25519, raw_public)
    sealed = seal_field(key, "acme", "job-1", "user-7", "email", "a@example.com")
    with pytest.raises(ResultSealError):
        open_field(key.key, *coordinates, sealed)


def test_the_field_aad_is_rfc8785_of_the_five_coordinates():
    assert field_aad(CALLER, "acme", "job-1", "user-7", "email") == (
        b'{"caller":"' + CALLER.encode() + b'","field":"email","job_id":"job-1","record_id":"user-7",'
        b'"tenant_id":"acme"}')


@given(st.lists(st.text(st.characters(blacklist_categories=()), max_size=12), min_size=5, max_size=5))
def test_the_spelled_out_field_aad_is_the_canonical_json_of_the_five_coordinates(coordinates):
    """The writer of the AAD held to its model, RFC 8785 by canonical_json (rfc8785 where that defers):
    the same bytes for any text, the same refusal for text that is not Unicode (a lone surrogate)."""
    caller, tenant, job, record, path = coordinates
    model = {"caller": caller, "field": path, "job_id": job, "record_id": record, "tenant_id": tenant}
    try:
        expected = canonical_json(model)
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            field_aad(caller, tenant, job, record, path)
        return
    assert field_aad(caller, tenant, job, record, path) == expected == rfc8785.dumps(model)


def test_a_field_under_another_result_key_or_tampered_does_not_open():
    _, raw_public = generate_keypair(CallerKem.X25519)
    key, other = (new_result_key(CALLER, CallerKem.X25519, raw_public) for _ in range(2))
    sealed = seal_field(key, "acme", "job-1", "user-7", "email", "a@example.com")
    coordinates = (CALLER, "acme", "job-1", "user-7", "email")
    with pytest.raises(ResultSealError):
        open_field(other.key, *coordinates, sealed)
    body = bytearray(b64url_decode(sealed.rsplit(".", 1)[1]))
    body[-1] ^= 1
    with pytest.raises(ResultSealError):
        open_field(key.key, *coordinates, f"{PREFIX}{key.id}.{b64url_encode(bytes(body))}")
    for malformed in ("kl1.x.y", f"{PREFIX}{key.id}", f"{PREFIX}{key.id}.!!", f"{PREFIX}{key.id}.AAAA", ""):
        with pytest.raises(ResultSealError):
            open_field(key.key, *coordinates, malformed)


@pytest.mark.parametrize("kem", KEMS, ids=str)
def test_a_sealed_result_key_is_bound_to_its_caller_and_its_id(kem):
    raw_private, raw_public = generate_keypair(kem)
    key = new_result_key(CALLER, kem, raw_public)
    mine = private_key(kem, raw_private)
    with pytest.raises(ResultSealError):  # named for another caller
        open_result_key(key.sealed.model_copy(update={"caller": OTHER_CALLER}), OTHER_CALLER, mine)
    with pytest.raises(ResultSealError):  # another id: the info differs
        open_result_key(key.sealed.model_copy(update={"id": "1" * 32}), CALLER, mine)
    with pytest.raises(ResultSealError):
        open_result_key(key.sealed, OTHER_CALLER, mine)
    assert open_result_key(SealedResultKey.model_validate_json(key.sealed.to_json()), CALLER, mine) == key.key


def test_key_encodings_are_checked():
    with pytest.raises(ResultSealError):
        public_key(CallerKem.X25519, bytes(31))
    with pytest.raises(ResultSealError):
        public_key(CallerKem.MLKEM768_X25519, bytes(32))
    with pytest.raises(ResultSealError):
        private_key(CallerKem.MLKEM768_X25519, bytes(96))
    seed = bytes(range(32))
    expanded = hashlib.shake_256(seed).digest(96)
    assert hybrid_public_bytes(seed) == (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).public_key().public_bytes_raw()
        + x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw())


def test_the_keyring_seals_once_per_caller_and_period():
    _, raw_public = generate_keypair(CallerKem.X25519)
    _, new_public = generate_keypair(CallerKem.X25519)
    ring = ResultKeyring(timedelta(minutes=10))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = ring.key_for(CALLER, CallerKem.X25519, raw_public, now)
    assert ring.key_for(CALLER, CallerKem.X25519, raw_public, now + timedelta(minutes=9)) is first
    assert ring.key_for(CALLER, CallerKem.X25519, raw_public, now + timedelta(minutes=10)) is not first
    assert ring.key_for(OTHER_CALLER, CallerKem.X25519, raw_public, now).sealed.caller == OTHER_CALLER
    current = ring.key_for(CALLER, CallerKem.X25519, raw_public, now + timedelta(minutes=10))
    assert ring.key_for(CALLER, CallerKem.X25519, new_public, now + timedelta(minutes=10)) is not current
    ring.forget(CALLER)
    assert ring.key_for(CALLER, CallerKem.X25519, new_public, now + timedelta(minutes=10)) is not current
    assert first.key.hex() not in repr(first)
