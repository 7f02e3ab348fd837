"""CallerPolicies: what a keys.callers record does to the table (no broker: the follower's loop only feeds it)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas.messages import CallerKem
from workers.core.b64 import b64encode, b64url_encode
from workers.core.callers import CallerTable, Change, caller_id_for, secret_context, sign_policy
from workers.core.canonical import canonical_json
from workers.core.results import ResultKeyring
from workers.keystore.callers import CallerPolicies
from workers.kms.local import LocalKms

OPERATOR = Ed25519PrivateKey.generate()
CALLER_ID = caller_id_for("billing")


async def record(kms: LocalKms, version: int = 1, *, key: Ed25519PrivateKey = OPERATOR, caller_id: str = CALLER_ID,
                 **changes: Any) -> tuple[bytes, bytes]:
    data_key = await kms.generate_data_key(None, secret_context(caller_id))
    fields = {"caller_id": caller_id, "name": "billing", "tenants": "*", "operations": ["decrypt"], "kem": "x25519",
              "public_key": b64url_encode(bytes(32)), "wrapped_secret": b64encode(data_key.wrapped),
              "kms_key_id": data_key.kms_key_id, "kms_provider": "local", "created_at": "2026-01-01T00:00:00Z",
              "revoked": False, "version": version, **changes}
    return caller_id.encode(), canonical_json(sign_policy(fields, key))


@pytest.fixture
def kms() -> LocalKms:
    return LocalKms()


@pytest.fixture
def policies(kms: LocalKms) -> CallerPolicies:
    return CallerPolicies(CallerTable(), kms, OPERATOR.public_key())


async def test_a_signed_record_installs_the_caller_with_its_secret_unwrapped(kms, policies):
    assert await policies.apply(*await record(kms)) is Change.NEWER
    held = policies.table.get(CALLER_ID)
    assert held is not None and held.secret is not None and len(held.secret) == 32


async def test_a_forged_record_grants_nothing_and_is_logged_with_the_caller_id(kms, policies, caplog):
    with caplog.at_level(logging.WARNING, logger="keyledger.callers"):
        assert await policies.apply(*await record(kms, key=Ed25519PrivateKey.generate())) is None
    assert policies.table.get(CALLER_ID) is None and policies.refused == 1
    assert f"refused a keys.callers record for caller {CALLER_ID}" in caplog.text


async def test_a_secret_wrapped_for_another_caller_does_not_unwrap(kms, policies, caplog):
    key, value = await record(kms)
    other = await record(kms, caller_id=caller_id_for("auditor"))
    # the auditor's record re-signed with billing's wrapped secret: the KMS context refuses it
    moved = json.loads(other[1])
    moved["wrapped_secret"] = json.loads(value)["wrapped_secret"]
    moved = sign_policy(moved, OPERATOR)
    assert await policies.apply(other[0], canonical_json(moved)) is Change.NEWER
    held = policies.table.get(caller_id_for("auditor"))
    assert held is not None and held.secret is None
    assert "does not unwrap" in caplog.text


async def test_tombstones_and_records_keyed_under_another_id_change_nothing(kms, policies):
    await policies.apply(*await record(kms))
    assert await policies.apply(CALLER_ID.encode(), None) is None
    assert policies.table.get(CALLER_ID) is not None
    _, value = await record(kms, 2, revoked=True)
    assert await policies.apply(b"another-key", value) is None
    assert not policies.table.get(CALLER_ID).policy.revoked  # type: ignore[union-attr]


async def test_versions_decide_revocations_stick_and_ties_grant_nothing(kms, policies):
    first = await record(kms, 1)
    await policies.apply(*first)
    assert await policies.apply(*first) is Change.SAME
    assert await policies.apply(*await record(kms, 2, revoked=True)) is Change.NEWER
    assert await policies.apply(*first) is Change.STALE
    held = policies.table.get(CALLER_ID)
    assert held is not None and held.policy.revoked and held.secret is None
    await policies.apply(*await record(kms, 3))
    assert await policies.apply(*await record(kms, 3, tenants=["acme"])) is Change.TIE
    assert policies.table.get(CALLER_ID).secret is None  # type: ignore[union-attr]


async def test_a_revocation_or_tie_drops_the_callers_result_key_and_nothing_else_does(kms, policies):
    keyring = ResultKeyring()
    policies.table.watch(keyring.forget)
    now = datetime.now(UTC)
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def held_key() -> str:
        return keyring.key_for(CALLER_ID, CallerKem.X25519, public, now).id

    assert await policies.apply(*await record(kms)) is Change.NEWER
    first = held_key()
    assert held_key() == first  # the same key for the period
    assert await policies.apply(*await record(kms, 1, revoked=True)) is Change.TIE
    tied = held_key()
    assert tied != first
    assert await policies.apply(*await record(kms, 2, revoked=True)) is Change.NEWER
    revoked = held_key()
    assert revoked != tied
    assert await policies.apply(*await record(kms, 1)) is Change.STALE
    assert held_key() == revoked  # a stale record changes nothing


async def test_a_record_rolled_back_below_the_ledger_pin_is_refused_counted_and_logged(kms, policies, caplog):
    policies.table.pin({CALLER_ID: 2})
    with caplog.at_level(logging.WARNING, logger="keyledger.callers"):
        assert await policies.apply(*await record(kms, 1)) is None  # the topic's whole read: maybe history
        assert policies.refused == 0
        policies.read_done()  # no record at the pin followed: rolled back
    assert policies.table.get(CALLER_ID) is None and policies.refused == 1
    assert (f"refused a keys.callers record for caller {CALLER_ID}: rolled back: version 1, the ledger pins 2"
            in caplog.text)
    assert await policies.apply(*await record(kms, 2)) is Change.NEWER
    assert await policies.apply(*await record(kms, 3)) is Change.NEWER
    assert await policies.apply(*await record(kms, 1)) is None and policies.refused == 2
    held = policies.table.get(CALLER_ID)
    assert held is not None and held.policy.version == 3 and held.secret is not None


async def test_without_a_pin_an_older_record_is_stale_as_before(kms, policies):
    assert await policies.apply(*await record(kms, 2)) is Change.NEWER
    assert await policies.apply(*await record(kms, 1)) is Change.STALE and policies.refused == 0


async def test_versions_below_the_pin_on_an_uncompacted_topic_are_history_not_a_rollback(kms, policies, caplog):
    policies.table.pin({CALLER_ID: 2})
    with caplog.at_level(logging.WARNING, logger="keyledger.callers"):
        assert await policies.apply(*await record(kms, 1)) is None  # read before the pinned version arrives
        assert await policies.apply(*await record(kms, 2)) is Change.NEWER
        policies.read_done()
    held = policies.table.get(CALLER_ID)
    assert held is not None and held.policy.version == 2 and policies.refused == 0
    assert "rolled back" not in caplog.text
