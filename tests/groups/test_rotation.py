"""`keyledger-rotation`: scheduled, manual and compromise rotation, replays and concurrency."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import KeyEvent, RotationTick
from tests.support.harness import handler_harness, inbound, span_job, tenant_created
from workers.core import ids
from workers.core.b64 import b64url_encode
from workers.core.operator_ticks import sign_tick
from workers.core.signing import Verdict
from workers.keystore.directory import KeyState
from workers.tools.verify import PublicKeyBook, verify_signed_span

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-rotation"]
OPERATOR = Ed25519PrivateKey.generate()


def tick(tick_id: str, **fields) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


def signed(tick_id: str, key: Ed25519PrivateKey = OPERATOR, **fields) -> bytes:
    return sign_tick(RotationTick.model_validate_json(tick(tick_id, **fields)), key).to_json()


@pytest.fixture
async def harness():
    operator = b64url_encode(OPERATOR.public_key().public_bytes_raw())
    async with handler_harness(GROUPS, rotation_age=3600, operator_public_key=operator) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield parts


def active(context, tenant, key_type="signing"):
    return context.keys.active(tenant, key_type)


async def test_a_tenant_tick_rotates_now_and_old_signatures_still_verify(harness):
    context, broker, captured = harness
    await broker.publish(span_job("acme", {"n": 1}), "spans.to-sign", key=b"acme")
    await broker.publish(tick("t1", tenant_id="acme", reason="manual"), "keys.rotation-ticks", key=b"acme")
    assert active(context, "acme").version == 2 and active(context, "acme", "encryption").version == 2
    old = context.directory.get(ids.key_id_for("acme", "signing", 1))
    assert old.state is KeyState.ROTATED
    rotated = [e for e in captured.values("keys.events", KeyEvent) if e.type.value == "rotated"]
    assert {(e.version, e.previous_key_id) for e in rotated if e.key_type.value == "signing"} == {(2, old.key_id)}
    book = PublicKeyBook()
    for event in captured.values("keys.events", KeyEvent):
        book.learn(event)
    [before] = captured.values("spans.signed")
    assert verify_signed_span(book, before) is Verdict.VALID
    await broker.publish(span_job("acme", {"n": 2}), "spans.to-sign", key=b"acme")
    after = captured.values("spans.signed")[-1]
    assert after["signature"]["key_id"] == active(context, "acme").key_id
    assert verify_signed_span(book, after) is Verdict.VALID
    assert active(context, "globex").version == 1  # other tenants untouched


async def test_a_replayed_tick_changes_nothing(harness):
    context, broker, captured = harness
    for _ in range(3):
        await broker.publish(tick("t1", tenant_id="acme", key_type="signing"), "keys.rotation-ticks", key=b"acme")
    assert active(context, "acme").version == 2
    assert len([e for e in captured.values("keys.events") if e["type"] == "rotated"]) == 1
    await broker.publish(tick("t2", tenant_id="acme", key_type="signing"), "keys.rotation-ticks", key=b"acme")
    assert active(context, "acme").version == 3  # a new tick is a new rotation


async def test_two_ticks_for_one_tenant_in_one_batch_rotate_in_order(harness):
    context, broker, captured = harness
    service = context.groups["keyledger-rotation"]
    records = [inbound("keys.rotation-ticks", "acme", tick(f"b{i}", tenant_id="acme", key_type="signing"), offset=i)
               for i in range(2)]
    await asyncio.gather(service.handle(records), service.handle(records))
    versions = [e for e in context.directory.versions("acme", "signing") if e.state is KeyState.ACTIVE]
    assert [e.version for e in versions] == [3]  # exactly one active, whatever the interleaving


async def test_compromise_revokes_the_old_key(harness):
    context, broker, captured = harness
    await broker.publish(span_job("acme", {"n": 1}), "spans.to-sign", key=b"acme")
    await broker.publish(tick("c1", tenant_id="acme", reason="compromise"), "keys.rotation-ticks", key=b"acme")
    old = context.directory.get(ids.key_id_for("acme", "signing", 1))
    assert old.state is KeyState.REVOKED
    book = PublicKeyBook()
    for event in captured.values("keys.events", KeyEvent):
        book.learn(event)
    [signed] = captured.values("spans.signed")
    assert verify_signed_span(book, signed) is Verdict.REVOKED_KEY
    ops = sorted(a["op"] for a in captured.values("kms.audit") if a["key_id"] == old.key_id)
    assert ops == ["generate", "revoke", "rotate", "sign"]


async def test_a_scheduled_tick_rotates_only_keys_older_than_the_rotation_age(harness):
    context, broker, captured = harness
    service = context.groups["keyledger-rotation"]

    async def scheduled(tick_id: str) -> None:
        # straight to the service: the per-tenant ticks it fans out are delivered inline by the test broker
        await service.handle([inbound("keys.rotation-ticks", "scheduler", tick(tick_id), offset=0)])

    await scheduled("young")
    assert active(context, "acme").version == 1  # an hour has not passed in ledger time
    service.service.rotation_age = 0  # every key is now older than the age
    await scheduled("old")
    assert {active(context, t, k).version for t in ("acme", "globex") for k in ("signing", "encryption")} == {2}
    await scheduled("old")  # replayed: the same cut-off, so the new keys are not due
    assert {active(context, t, k).version for t in ("acme", "globex") for k in ("signing", "encryption")} == {2}
    rotate_audits = [a for a in captured.values("kms.audit") if a["op"] == "rotate"]
    assert len(rotate_audits) == 4


async def test_rotation_evicts_the_old_key_from_the_cache(harness):
    context, broker, captured = harness
    old_id = active(context, "acme").key_id
    assert context.keys.cached_secret(old_id) is not None
    await broker.publish(tick("t1", tenant_id="acme", key_type="signing"), "keys.rotation-ticks", key=b"acme")
    assert context.keys.cached_secret(old_id) is None


async def test_a_tick_for_an_unknown_tenant_is_dead_lettered(harness):
    context, broker, captured = harness
    await broker.publish(tick("t9", tenant_id="nobody"), "keys.rotation-ticks", key=b"nobody")
    assert [d["error"]["type"] for d in captured.values("kms.dlq")] == ["unknown_tenant"]


async def test_a_manual_fan_out_of_a_200_character_tick_reaches_a_128_character_tenant(harness):
    context, broker, captured = harness
    tenant, parent = "t" + "x" * 127, "p" * 200
    await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
    service = context.groups["keyledger-rotation"]
    await service.handle([inbound("keys.rotation-ticks", "scheduler", signed(parent, reason="manual", key_type="signing"),
                                  offset=0)])
    assert {active(context, t).version for t in ("acme", "globex", tenant)} == {2}
    children = [t for t in captured.values("keys.rotation-ticks") if t.get("parent_tick_id") == parent]
    assert {c["tick_id"] for c in children if c["tenant_id"] == tenant} == {ids.child_tick_id(parent, tenant)}
    assert all(len(c["tick_id"]) <= 200 for c in children)
    assert captured.values("kms.dlq") == []


async def test_kms_refusing_a_new_version_refuses_that_tick_alone(harness):
    context, broker, captured = harness
    byok = "byok"
    await broker.publish(tenant_created(byok, kms_key_id="byok-key"), "tenants.created", key=byok.encode())
    await context.kms.schedule_key_deletion("byok-key", 7)  # the local KMS then refuses GenerateDataKey under it
    service = context.groups["keyledger-rotation"]
    await service.handle([inbound("keys.rotation-ticks", t, tick(f"{t}-m", tenant_id=t, reason="manual"), offset=i)
                          for i, t in enumerate((byok, "acme"))])
    assert active(context, "acme").version == 2 and active(context, byok).version == 1
    [letter] = captured.values("kms.dlq")
    assert (letter["error"]["type"], letter["offset"], letter["attempts"]) == ("kms_refused", 0, 1)


# --- ticks limited to a key, and fan-outs that need the operator (finding 6 of issue 25) ----------------------------


async def fan_out(context, value: bytes, key: str = "ops") -> None:
    """Straight to the group, as a fan-out tick must be here: the test broker delivers the per-tenant
    ticks it publishes inline."""
    await context.groups["keyledger-rotation"].handle([inbound("keys.rotation-ticks", key, value, offset=0)])


def revoked(captured) -> set[str]:
    return {e["key_id"] for e in captured.values("keys.events") if e["type"] == "revoked"}


async def test_a_compromise_tick_naming_one_key_and_no_tenant_revokes_that_key_alone(harness):
    context, broker, captured = harness
    target = active(context, "acme")
    untouched = {t: {k: active(context, t, k).key_id for k in ("signing", "encryption")} for t in ("acme", "globex")}
    await fan_out(context, tick("c1", key_id=target.key_id, reason="compromise"))
    assert revoked(captured) == {target.key_id}
    assert context.directory.get(target.key_id).state is KeyState.REVOKED
    assert active(context, "acme").version == 2
    assert active(context, "acme", "encryption").key_id == untouched["acme"]["encryption"]
    assert {k: active(context, "globex", k).key_id for k in ("signing", "encryption")} == untouched["globex"]
    assert captured.values("kms.dlq") == []


@pytest.mark.parametrize("fields, why", [
    ({"key_id": "f" * 32}, "not a known key"),
    ({"key_id": "<globex signing>", "tenant_id": "acme"}, "not a key of tenant_id"),
    ({"key_id": "<acme signing>", "key_type": "encryption"}, "a signing key, and key_type encryption"),
])
async def test_an_ambiguous_tick_is_refused_typed_and_rotates_nothing(harness, fields, why):
    context, broker, captured = harness
    names = {f"<{t} signing>": active(context, t).key_id for t in ("acme", "globex")}
    fields = {k: names.get(v, v) for k, v in fields.items()}
    await fan_out(context, tick("a1", reason="compromise", **fields), fields.get("tenant_id", "ops"))
    [letter] = captured.values("kms.dlq")
    assert letter["error"]["type"] == "ambiguous_tick" and why in letter["error"]["message"]
    assert revoked(captured) == set() and {active(context, t).version for t in ("acme", "globex")} == {1}


@pytest.mark.parametrize("how", ["unsigned", "another key", "altered after signing"])
async def test_a_compromise_fan_out_without_the_operator_signature_is_refused(harness, how):
    context, broker, captured = harness
    value = {"unsigned": lambda: tick("f1", reason="compromise"),
             "another key": lambda: signed("f1", Ed25519PrivateKey.generate(), reason="compromise"),
             "altered after signing": lambda: json.dumps({**json.loads(signed("f1", reason="manual")),
                                                          "reason": "compromise"}).encode()}[how]()
    await fan_out(context, value)
    assert [d["error"]["type"] for d in captured.values("kms.dlq")] == ["unauthorized_tick"]
    assert revoked(captured) == set() and {active(context, t).version for t in ("acme", "globex")} == {1}


async def test_a_signed_compromise_fan_out_revokes_every_tenant(harness):
    context, broker, captured = harness
    before = {active(context, t).key_id for t in ("acme", "globex")}
    await fan_out(context, signed("f2", reason="compromise", key_type="signing"))
    assert revoked(captured) == before and captured.values("kms.dlq") == []
