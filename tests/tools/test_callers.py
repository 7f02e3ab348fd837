"""Operator tooling without a broker: key files (0600, never overwritten), the verbs' arguments, and the
order in which `caller add` and `revoke` pin a version in the ledger and publish it (the topic stood in for)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import CallerKem
from tests.support.callers import SharedMemoryLedger
from workers.client import CallerKeyPair, load_public_key
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.callers import operator_public_key
from workers.core.results import generate_keypair
from workers.errors import ConfigError
from workers.kms.local import LocalKms
from workers.ledger.records import CALLER_PIN_TRANSFER_CODE, CallerPin, pinned_versions, transfers_with_code
from workers.tools import callers as callers_module
from workers.tools.callers import (
    caller_add,
    caller_keygen,
    caller_revoke,
    load_operator_key,
    operator_keygen,
    parse_operations,
    parse_tenants,
    read_caller_public_key,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_operator_keygen_writes_a_private_key_and_the_settings_value(tmp_path: Path):
    private, public = operator_keygen(tmp_path / "ops")
    assert mode(private) == mode(public) == 0o600
    key = load_operator_key(private)
    assert operator_public_key(public.read_text()).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(ConfigError, match="never overwrites"):
        operator_keygen(tmp_path / "ops")
    (tmp_path / "bad.key").write_text("{}")
    with pytest.raises(ConfigError, match="not an operator key file"):
        load_operator_key(tmp_path / "bad.key")
    with pytest.raises(ConfigError, match="cannot read"):
        load_operator_key(tmp_path / "missing.key")


@pytest.mark.parametrize("kem", list(CallerKem), ids=str)
def test_caller_keygen_writes_a_pair_add_reads_back(tmp_path: Path, kem: CallerKem):
    private, public = caller_keygen(tmp_path, kem)
    assert mode(private) == 0o600
    assert CallerKeyPair.load(private).kem is kem
    assert read_caller_public_key(public, None) == load_public_key(public)
    assert read_caller_public_key(public, kem)[0] is kem
    other = CallerKem.X25519 if kem is CallerKem.MLKEM768_X25519 else CallerKem.MLKEM768_X25519
    with pytest.raises(ConfigError, match="not"):
        read_caller_public_key(public, other)


def test_a_raw_public_key_needs_its_kem_and_the_right_length(tmp_path: Path):
    _, public = caller_keygen(tmp_path, CallerKem.X25519)
    raw = b64url_decode(json.loads(public.read_text())["public_key"])
    (tmp_path / "raw.pub").write_text(b64url_encode(raw) + "\n")
    assert read_caller_public_key(tmp_path / "raw.pub", None) == (CallerKem.X25519, raw)
    with pytest.raises(ConfigError, match="not a caller public key"):
        read_caller_public_key(tmp_path / "raw.pub", CallerKem.MLKEM768_X25519)


def test_tenants_and_operations():
    assert parse_tenants("*") == "*"
    assert parse_tenants(" globex, acme ,acme") == ["acme", "globex"]
    assert parse_operations("sign,decrypt") == ["decrypt", "sign"]
    for wrong in ("", ",", "acme,bad tenant"):
        with pytest.raises(ConfigError, match="--tenants"):
            parse_tenants(wrong)
    for wrong in ("", "destroy", "decrypt,rotate"):
        with pytest.raises(ConfigError, match="--operations"):
            parse_operations(wrong)


async def test_add_and_revoke_pin_each_version_before_publishing_it_and_write_above_the_pin(tmp_path: Path,
                                                                                           monkeypatch):
    ledger, topic = SharedMemoryLedger(), []

    async def read_topic(_bootstrap: str, _topic: str, timeout: float = 60.0) -> list[SimpleNamespace]:
        return list(topic)

    async def produce(_bootstrap: str, _topic: str, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:  # a published record is already pinned
            assert (await pinned_versions(ledger))[key.decode()] == json.loads(value)["version"]
            topic.append(SimpleNamespace(key=key, value=value))

    monkeypatch.setattr(callers_module, "read_topic", read_topic)
    monkeypatch.setattr(callers_module, "produce", produce)
    operator = Ed25519PrivateKey.generate()
    _, public = generate_keypair(CallerKem.X25519)
    added = await caller_add("unused", LocalKms(), operator, "billing", ledger=ledger, tenants="*",
                             operations=["decrypt"], kem=CallerKem.X25519, caller_public_key=public,
                             secret_out=tmp_path / "billing.secret")
    revoked = await caller_revoke("unused", operator, "billing", ledger=ledger)
    assert (added.version, revoked.version) == (1, 2)
    pins = [CallerPin.of(t) for t in await transfers_with_code(ledger, CALLER_PIN_TRANSFER_CODE)]
    assert [(p.version, p.record_tag) for p in pins] == [
        (json.loads(r.value)["version"], int.from_bytes(hashlib.sha256(r.value).digest()[:4])) for r in topic]
    del topic[1:]  # compaction kept only the version-1 record, re-published by an insider
    assert (await caller_revoke("unused", operator, "billing", ledger=ledger)).version == 3  # above the pin
