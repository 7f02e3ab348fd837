"""The caller side against the worker side's own code: a proved request is admitted, a sealed result
opens for its caller only, a signed span verifies; the files the CLI writes load back."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import CallerKem, CallerPolicy
from workers.client import (
    CallerClient,
    CallerCredential,
    CallerKeyPair,
    ResultSealError,
    load_public_key,
    verify_signed_span,
    write_private_file,
)
from workers.core.b64 import b64url_encode
from workers.core.callers import CallerTable, CallerVerifier, caller_id_for, sign_policy
from workers.core.results import ResultKeyring, generate_keypair, seal_field
from workers.core.signing import sign, signing_input

NOW = datetime(2026, 1, 2, tzinfo=UTC)
SECRET = os.urandom(32)


def client(name: str = "billing", kem: CallerKem = CallerKem.X25519) -> tuple[CallerClient, bytes]:
    private, public = generate_keypair(kem)
    return CallerClient(CallerCredential(caller_id_for(name), name, SECRET), CallerKeyPair(kem, private, public),
                        clock=lambda: NOW), public


def table_for(caller: CallerClient, public: bytes) -> CallerTable:
    operator = Ed25519PrivateKey.generate()
    record = sign_policy({"caller_id": caller.caller_id, "name": caller.credential.name, "tenants": ["acme"],
                          "operations": ["decrypt", "sign"], "kem": "x25519", "public_key": b64url_encode(public),
                          "wrapped_secret": "AAAA", "kms_key_id": "k", "created_at": "2026-01-01T00:00:00Z",
                          "version": 1}, operator)
    table = CallerTable()
    table.install(CallerPolicy.model_validate(record), SECRET)
    return table


def test_a_request_the_client_builds_is_admitted_by_the_workers_verifier():
    caller, public = client()
    verifier = CallerVerifier(table_for(caller, public))
    decrypt = caller.pii_request("acme", "decrypt", {"email": "kl1.x"}, record_id="user-7")
    span = caller.span_request("acme", {"name": "GET /"})
    assert verifier.check(decrypt, "acme", "decrypt", NOW).refusal is None
    assert verifier.check(span, "acme", "sign", NOW).refusal is None
    with pytest.raises(ValueError):
        caller.pii_request("acme", "sign", {}, record_id="r")


@pytest.mark.parametrize("kem", list(CallerKem), ids=str)
def test_a_sealed_result_opens_for_its_caller_only(kem):
    caller, public = client(kem=kem)
    key = ResultKeyring().key_for(caller.caller_id, kem, public, NOW)
    result = {"job_id": "j", "tenant_id": "acme", "record_id": "r", "operation": "decrypt",
              "fields": {"email": seal_field(key, "acme", "j", "r", "email", "a@example.com")},
              "result_key": key.sealed.model_dump(mode="json")}
    assert caller.open_result(result) == {"email": "a@example.com"}
    assert caller.open_result(result) == {"email": "a@example.com"}  # the opened key is kept by id
    other, _ = client("auditor", kem)
    with pytest.raises(ResultSealError):
        other.open_result(result)
    with pytest.raises(ResultSealError):
        caller.open_result({**result, "record_id": "r2"})
    with pytest.raises(ResultSealError):
        caller.open_result({k: v for k, v in result.items() if k != "result_key"})
    ciphertexts = {"email": "kl1.abc"}
    assert caller.open_result({**result, "fields": ciphertexts}) == ciphertexts  # encrypt results: as they are


def test_a_signed_span_verifies_with_the_public_key_only():
    key = Ed25519PrivateKey.generate()
    key_id, span = "a" * 32, {"name": "GET /", "trace_id": "t"}
    signed = {"job_id": "j", "tenant_id": "acme", "span": span,
              "signature": {"alg": "Ed25519", "key_id": key_id, "value": sign(key, signing_input("acme", key_id, span)),
                            "signed_at": "2026-01-01T00:00:00Z"}}
    public = key.public_key().public_bytes_raw()
    assert verify_signed_span(signed, public)
    assert not verify_signed_span({**signed, "tenant_id": "globex"}, public)
    assert not verify_signed_span({**signed, "span": {**span, "name": "POST /"}}, public)
    assert not verify_signed_span({**signed, "signature": "x"}, public)
    assert not verify_signed_span(signed, Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def test_the_files_are_private_never_overwritten_and_load_back(tmp_path: Path):
    credential = CallerCredential(caller_id_for("billing"), "billing", SECRET)
    path = tmp_path / "billing.secret"
    write_private_file(path, credential.to_json())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert CallerCredential.load(path) == credential
    assert SECRET.hex() not in repr(credential) and b64url_encode(SECRET) not in repr(credential)
    with pytest.raises(FileExistsError):
        write_private_file(path, "again")
    private, public = generate_keypair(CallerKem.MLKEM768_X25519)
    keys = CallerKeyPair(CallerKem.MLKEM768_X25519, private, public)
    write_private_file(tmp_path / "caller.key", keys.private_json())
    (tmp_path / "caller.pub").write_text(keys.public_json())
    assert CallerKeyPair.load(tmp_path / "caller.key").private == private
    assert load_public_key(tmp_path / "caller.pub") == (CallerKem.MLKEM768_X25519, public)
    (tmp_path / "junk").write_text("[]")
    for loader in (CallerCredential.load, CallerKeyPair.load, load_public_key):
        with pytest.raises(ValueError):
            loader(tmp_path / "junk")
