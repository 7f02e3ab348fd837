"""`keyledger-pii`: encrypt, decrypt, reencrypt, per-field errors, isolation, wear-out."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from Crypto.Cipher import AES

from schemas.messages import KeyType, PiiResult
from tests.support.callers import TEST_CALLER
from tests.support.harness import handler_harness, inbound, tenant_created
from workers.core import ids
from workers.kms import encryption_context
from workers.tools.audit_check import compare

GROUPS = ["keyledger-keygen", "keyledger-pii", "keyledger-rotation"]
SECRET = "4111 1111 1111 1111"


def request(tenant: str, operation: str, fields: dict, record_id: str = "r1", job_id: str = "j1") -> bytes:
    """An encrypt as producers send it today (no caller); a decrypt or reencrypt proved by the test caller."""
    if operation != "encrypt":
        return TEST_CALLER.pii(tenant, operation, fields, record_id, job_id)
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": record_id, "operation": operation,
                       "fields": fields}).encode()


def tick(tenant: str, reason: str, tick_id: str) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), "tenant_id": tenant,
                       "key_type": "encryption", "reason": reason}).encode()


@pytest.fixture
async def harness():
    async with handler_harness(GROUPS) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        yield parts


async def call(broker, captured, tenant: str, operation: str, fields: dict, **kw) -> dict:
    await broker.publish(request(tenant, operation, fields, **kw), "pii.requests", key=tenant.encode())
    return TEST_CALLER.open(captured.values("pii.results")[-1])


async def test_encrypt_then_decrypt_round_trips_per_field(harness):
    context, broker, captured = harness
    fields = {"card": SECRET, "email": "a@example.com", "name": "Zoë \"Q\" O'Brien"}
    sealed = await call(broker, captured, "acme", "encrypt", fields)
    assert sealed["key_id"] == context.keys.active("acme", KeyType.ENCRYPTION).key_id
    assert all(v.startswith(f"kl1.{sealed['key_id']}.") for v in sealed["fields"].values())
    opened = await call(broker, captured, "acme", "decrypt", sealed["fields"])
    assert opened["fields"] == fields and "errors" not in opened
    for result in captured.values("pii.results"):
        PiiResult.model_validate(result)  # every result is of the contract's shape


async def test_a_third_party_decrypts_with_the_data_key_and_the_format_alone(harness):
    context, broker, captured = harness
    sealed = await call(broker, captured, "acme", "encrypt", {"card": SECRET}, record_id="rec-9")
    _, key_id, body = sealed["fields"]["card"].split(".")
    material = context.directory.get(key_id).material
    data_key = await context.kms.decrypt(base64.b64decode(material.wrapped_key), material.kms_key_id,
                                         encryption_context("acme", key_id, KeyType.ENCRYPTION))
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    aad = json.dumps({"field": "card", "key_id": key_id, "record_id": "rec-9", "tenant_id": "acme"},
                     sort_keys=True, separators=(",", ":")).encode()
    cipher = AES.new(data_key, AES.MODE_GCM, nonce=raw[:12])
    cipher.update(aad)
    assert cipher.decrypt_and_verify(raw[12:-16], raw[-16:]).decode() == SECRET


async def test_one_bad_field_fails_alone(harness):
    context, broker, captured = harness
    sealed = await call(broker, captured, "acme", "encrypt", {"a": "x", "b": "y"})
    b = sealed["fields"]["b"]
    middle = len(b) - 10
    flipped = b[:middle] + ("A" if b[middle] != "A" else "B") + b[middle + 1:]
    mixed = {"a": sealed["fields"]["a"], "b": flipped, "c": "not a ciphertext",
             "moved": sealed["fields"]["a"]}
    opened = await call(broker, captured, "acme", "decrypt", mixed)
    assert opened["fields"] == {"a": "x"}
    assert {k: v["type"] for k, v in opened["errors"].items()} == {
        "b": "decrypt_failed", "c": "malformed_ciphertext", "moved": "decrypt_failed"}


async def test_another_record_or_tenant_cannot_open_it(harness):
    context, broker, captured = harness
    sealed = await call(broker, captured, "acme", "encrypt", {"a": SECRET})
    other_record = await call(broker, captured, "acme", "decrypt", sealed["fields"], record_id="r2")
    assert other_record["errors"]["a"]["type"] == "decrypt_failed"
    stolen = await call(broker, captured, "globex", "decrypt", sealed["fields"])
    assert stolen["fields"] == {} and stolen["errors"]["a"]["type"] == "key_not_found"
    denied = [a for a in captured.values("kms.audit") if a["op"] == "denied"]
    assert [(a["tenant_id"], a["outcome"]) for a in denied] == [("globex", "failure")]
    assert denied[0]["key_id"] == context.keys.active("globex", KeyType.ENCRYPTION).key_id
    # each audited refusal says why in the code its result gives (the auditor's report words it)
    assert denied[0]["reason"] == "key_not_found"
    failed = [a for a in captured.values("kms.audit") if a["op"] == "decrypt" and a["outcome"] == "failure"]
    assert [a["reason"] for a in failed] == ["decrypt_failed"]


async def test_after_rotation_old_ciphertexts_decrypt_and_reencrypt_to_the_new_key(harness):
    context, broker, captured = harness
    sealed = await call(broker, captured, "acme", "encrypt", {"a": SECRET})
    await broker.publish(tick("acme", "manual", "t1"), "keys.rotation-ticks", key=b"acme")
    new_key = context.keys.active("acme", KeyType.ENCRYPTION).key_id
    assert new_key != sealed["key_id"]
    assert (await call(broker, captured, "acme", "decrypt", sealed["fields"]))["fields"] == {"a": SECRET}
    moved = await call(broker, captured, "acme", "reencrypt", sealed["fields"])
    assert moved["key_id"] == new_key and moved["fields"]["a"].startswith(f"kl1.{new_key}.")
    assert (await call(broker, captured, "acme", "decrypt", moved["fields"]))["fields"] == {"a": SECRET}


async def test_after_a_compromise_old_ciphertexts_only_reencrypt(harness):
    context, broker, captured = harness
    sealed = await call(broker, captured, "acme", "encrypt", {"a": SECRET})
    await broker.publish(tick("acme", "compromise", "c1"), "keys.rotation-ticks", key=b"acme")
    refused = await call(broker, captured, "acme", "decrypt", sealed["fields"])
    assert refused["errors"]["a"]["type"] == "key_revoked" and refused["fields"] == {}
    migrated = await call(broker, captured, "acme", "reencrypt", sealed["fields"])
    assert (await call(broker, captured, "acme", "decrypt", migrated["fields"]))["fields"] == {"a": SECRET}


async def test_a_spent_key_seals_up_to_exactly_its_limit_then_requests_wait_for_the_next_version():
    groups = ["keyledger-keygen", "keyledger-pii", "keyledger-rotation"]
    async with handler_harness(groups, encrypt_limit=5) as (context, broker, captured):
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        v1 = context.keys.active("acme", KeyType.ENCRYPTION).key_id
        pii = context.groups["keyledger-pii"]
        records = [inbound("pii.requests", "acme", request("acme", "encrypt", fields, job_id=job), offset=n)
                   for n, (job, fields) in enumerate([("j1", {"a": "1", "b": "2", "c": "3"}),
                                                      ("j2", {"a": "1", "b": "2", "c": "3"}),  # 3 > the 2 left
                                                      ("j3", {"a": "1", "b": "2"})])]          # exactly the 2 left
        blocked = await pii.handle(records)
        assert [r.offset for r in blocked] == [1]  # it waits: never answered key_worn_out
        results = {r["job_id"]: r for r in captured.values("pii.results")}
        assert sorted(results) == ["j1", "j3"] and {r["key_id"] for r in results.values()} == {v1}
        [wear_out] = captured.values("keys.rotation-ticks")
        assert (wear_out["tenant_id"], wear_out["cause"], wear_out["key_id"]) == ("acme", "wear_out", v1)
        v2 = context.keys.active("acme", KeyType.ENCRYPTION).key_id  # the tick was handled: a new version
        assert v2 != v1
        assert await pii.handle(blocked) == []
        results = {r["job_id"]: r for r in captured.values("pii.results")}
        assert results["j2"]["key_id"] == v2 and all("error" not in r and "errors" not in r for r in results.values())
        [v1_account] = await context.ledger.lookup_accounts([ids.from_hex(v1)])
        seals = [a for a in captured.values("kms.audit") if a["key_id"] == v1 and a["op"] == "encrypt"]
        assert sum(a["count"] for a in seals) == 5 == v1_account.credits_posted - 2  # besides: generate, rotate
        rotations = [a for a in captured.values("kms.audit") if a["op"] == "rotate"]
        assert [a["reason"] for a in rotations] == ["wear_out rotation"]


async def test_plaintexts_never_reach_logs_or_the_dlq(harness, caplog):
    context, broker, captured = harness
    caplog.set_level(logging.DEBUG)
    sealed = await call(broker, captured, "acme", "encrypt", {"card": SECRET})
    await call(broker, captured, "acme", "decrypt", sealed["fields"])
    await call(broker, captured, "globex", "decrypt", sealed["fields"])
    await broker.publish(b'{"job_id": "x", "tenant_id": "acme", "fields": {"card": "' + SECRET.encode() + b'"}}',
                         "pii.requests", key=b"acme")
    assert SECRET not in caplog.text
    for letter in captured.values("kms.dlq"):
        assert SECRET not in json.dumps({k: v for k, v in letter.items() if k != "payload"})


async def test_a_batch_seals_with_nonces_drawn_by_the_block_and_no_nonce_twice(harness, monkeypatch):
    import workers.core.envelope as envelope

    context, broker, captured = harness
    drawn: list[int] = []
    real = envelope.os.urandom  # counted where the seals draw it, not for the whole process
    monkeypatch.setattr(envelope, "os", SimpleNamespace(urandom=lambda size: drawn.append(size) or real(size)))
    records = [inbound("pii.requests", "acme", request("acme", "encrypt", {"a": "1", "b": "2", "c": "3"},
                                                       record_id=f"r{n}", job_id=f"j{n}"), offset=n)
               for n in range(50)]
    assert await context.groups["keyledger-pii"].handle(records) == []
    results = captured.values("pii.results")[-50:]
    assert sorted(r["record_id"] for r in results) == sorted(f"r{n}" for n in range(50))
    nonces = {base64.urlsafe_b64decode(t.split(".")[2] + "==")[:12] for r in results for t in r["fields"].values()}
    assert len(nonces) == 150
    assert len(drawn) == 2 and sum(drawn) >= 150 * 12  # 150 nonces in two draws, not one a record


async def test_a_batch_is_audited_by_one_event_per_key_operation_and_outcome_naming_every_transfer(harness):
    context, broker, captured = harness
    before = len(captured.values("kms.audit"))
    records = [inbound("pii.requests", tenant, request(tenant, "encrypt", {"a": "1", "b": "2"}, record_id=f"r{n}",
                                                       job_id=f"j{n}"), offset=n)
               for n, tenant in enumerate(["acme", "globex", "acme"] * 20)]
    opens = [inbound("pii.requests", "acme", request("acme", "decrypt", {"a": "kl1.garbage"}, record_id="x",
                                                     job_id="bad"), offset=100)]
    assert await context.groups["keyledger-pii"].handle([*records, *opens]) == []
    events = captured.values("kms.audit")[before:]
    encrypts = sorted((e["tenant_id"], e["count"]) for e in events if e["op"] == "encrypt")
    assert encrypts == [("acme", 80), ("globex", 40)]  # two fields a record
    assert all("source" not in e and e["id_parts"] == ["ok"] for e in events if e["op"] == "encrypt")
    report = await compare(context.ledger, [v for _, v in captured.by_topic["kms.audit"] if v])
    assert report.agrees, report.mismatches
