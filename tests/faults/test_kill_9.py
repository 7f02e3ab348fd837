"""kill -9 of each worker mid-batch, over a real broker, moto's KMS and a real TigerBeetle: the restarted
worker finishes the work, every input is accounted for, and the invariants hold (tests/faults/invariants.py)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from schemas.messages import AuditEvent, KeyType, Op
from schemas.topics import Topic
from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.callers import register_caller
from tests.support.kafka import read, tenant_created, unique_tenant
from workers.client import ResultSealError
from workers.core import ids
from workers.kafka.tap import produce
from workers.keys.audit import named_transfers

pytestmark = pytest.mark.integration

TENANTS = 60
CALLER_REQUESTS = 200  # per tenant: the warm-up's encrypts, then as many decrypts and new encrypts


@pytest.fixture
def tb_env(tigerbeetle_address: str) -> dict[str, str]:
    return {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address,
            "KEYLEDGER_KAFKA_BATCH_MAX": "20"}  # small batches: the kill lands between batches, not after all


def counting(topic_filter: Callable[[dict], bool]) -> Callable[[list], int]:
    """Distinct keys.events (key, type) that pass the filter: a republished event counts once."""
    def count(records: list) -> int:
        return len({(v.get("key_id"), v.get("type")) for v in (json.loads(r.value) for r in records if r.value)
                    if topic_filter(v)})
    return count


async def kill_when(bootstrap: str, process, topic: str, seen: Callable[[list], int], at_least: int,
                    total: int) -> None:
    """SIGKILL once `at_least` outputs are out; proves the kill landed mid-way (not after everything)."""
    await read(bootstrap, topic, until=lambda rs: seen(rs) >= at_least, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = seen(await read(bootstrap, topic, timeout=60))
    assert at_least <= done < total, f"the kill came after {done} of {total}: it proves nothing"


def deletion(tenant: str) -> bytes:
    return json.dumps({"event_id": f"del-{tenant}", "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat()}).encode()


async def onboard(bootstrap: str, worker_process, env: dict[str, str], tenants: list[str]) -> None:
    worker = worker_process("keyledger-keygen", env=env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    generated = counting(lambda v: v.get("tenant_id") in set(tenants) and v.get("type") == "generated")
    await read(bootstrap, "keys.events", until=lambda rs: generated(rs) >= 2 * len(tenants), timeout=120)
    worker.terminate()
    worker.wait()


async def test_keygen_killed_mid_batch_makes_every_key_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-gen") for _ in range(TENANTS)]
    wanted = set(tenants)
    generated = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "generated")
    first = worker_process("keyledger-keygen", env=tb_env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    await kill_when(bootstrap, first, "keys.events", generated, at_least=10, total=2 * TENANTS)
    worker_process("keyledger-keygen", env=tb_env)
    await read(bootstrap, "keys.events", until=lambda rs: generated(rs) >= 2 * TENANTS, timeout=120)
    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, tb_env, tenants[::15])


async def test_rotation_killed_mid_fan_out_rotates_each_key_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-rot") for _ in range(TENANTS)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    wanted = set(tenants)
    rotated = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "rotated")
    first = worker_process("keyledger-rotation", env=tb_env)
    ticks = [(t.encode(), json.dumps({"tick_id": f"k9-{t}", "issued_at": datetime.now(UTC).isoformat(),
                                      "tenant_id": t, "reason": "manual"}).encode()) for t in tenants]
    await produce(bootstrap, "keys.rotation-ticks", ticks)
    await kill_when(bootstrap, first, "keys.events", rotated, at_least=10, total=2 * TENANTS)
    worker_process("keyledger-rotation", env=tb_env)
    await read(bootstrap, "keys.events", until=lambda rs: rotated(rs) >= 2 * TENANTS, timeout=120)
    directory = await assert_key_invariants(bootstrap, tenants)
    assert {e.version for t in tenants for e in directory.tenant_keys(t) if e.state.value == "active"} == {2}
    assert_audit_agrees(bootstrap, tb_env, tenants[::15])


async def test_shredding_killed_mid_batch_destroys_every_key(topics_ready, worker_process, tb_env):
    # shredding is quick: many small batches, so the kill lands while most are still to come
    count, env = 4 * TENANTS, {**tb_env, "KEYLEDGER_KAFKA_BATCH_MAX": "4"}
    bootstrap, tenants = topics_ready, [unique_tenant("k9-del") for _ in range(count)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    wanted = set(tenants)
    destroyed = counting(lambda v: v.get("tenant_id") in wanted and v.get("type") == "destroyed")
    first = worker_process("keyledger-keygen", env=env)
    await produce(bootstrap, "tenants.deleted", [(t.encode(), deletion(t)) for t in tenants])
    await kill_when(bootstrap, first, "keys.events", destroyed, at_least=2, total=2 * count)
    worker_process("keyledger-keygen", env=env)
    await read(bootstrap, "keys.events", until=lambda rs: destroyed(rs) >= 2 * count, timeout=120)
    await assert_key_invariants(bootstrap, tenants, destroyed=True)
    assert_audit_agrees(bootstrap, tb_env, tenants[::60])


async def test_pii_killed_mid_stream_answers_every_request_and_counts_each_once(topics_ready, worker_process, tb_env):
    bootstrap, tenants = topics_ready, [unique_tenant("k9-pii") for _ in range(3)]
    await onboard(bootstrap, worker_process, tb_env, tenants)
    requests = [(t.encode(), json.dumps({"job_id": f"{t}-{n}", "tenant_id": t, "record_id": f"r{n}",
                                         "operation": "encrypt", "fields": {"a": f"v{n}", "b": "w"}}).encode())
                for n in range(600) for t in tenants]
    wanted = set(tenants)

    def answered(records: list) -> int:
        return len({v["job_id"] for v in (json.loads(r.value) for r in records if r.value)
                    if v.get("tenant_id") in wanted})

    first = worker_process("keyledger-pii", env=tb_env)
    await produce(bootstrap, "pii.requests", requests)
    await kill_when(bootstrap, first, "pii.results", answered, at_least=100, total=len(requests))
    worker_process("keyledger-pii", env=tb_env)
    results = await read(bootstrap, "pii.results", until=lambda rs: answered(rs) >= len(requests), timeout=180)
    assert answered(results) == len(requests)
    assert not [v for v in (json.loads(r.value) for r in results if r.value)
                if v.get("tenant_id") in wanted and ("error" in v or "errors" in v)]
    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, tb_env, tenants)


async def test_pii_killed_mid_stream_answers_each_callers_request_once(topics_ready, worker_process, tb_env,
                                                                       aws_env, tmp_path):
    """A registered caller's proved encrypts and decrypts, the PII worker killed -9 mid-stream: each request
    is answered, each lands on one transfer per operation derived from its record's place (a redelivery
    after the kill, at the same offset, lands on it again), each decrypt opens for its caller alone, and no
    plaintext reaches any other topic."""
    bootstrap, tenants = topics_ready, [unique_tenant("k9-call") for _ in range(2)]
    suffix = uuid.uuid4().hex[:8]
    operator, billing = await register_caller(bootstrap, tmp_path, f"k9-billing-{suffix}", aws_env)
    _, other = await register_caller(bootstrap, tmp_path, f"k9-other-{suffix}", aws_env, operator=operator)
    env = {**tb_env, "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public, "KEYLEDGER_REQUIRE_CALLER": "all"}
    await onboard(bootstrap, worker_process, env, tenants)
    secrets = {(t, n): f"k9-secret-{suffix}-{t}-{n}" for t in tenants for n in range(2 * CALLER_REQUESTS)}

    def answers(records: list, prefix: str) -> dict[str, dict]:
        values = (json.loads(r.value) for r in records if r.value)
        return {v["job_id"]: v for v in values if v.get("tenant_id") in set(tenants) and v["job_id"].startswith(prefix)}

    # warm-up: the ciphertexts the stream decrypts
    first = worker_process("keyledger-pii", env=env)
    warm = [(t, n, billing.pii(t, "encrypt", {"ssn": secrets[t, n]}, job_id=f"warm-{t}-{n}"))
            for t in tenants for n in range(CALLER_REQUESTS)]
    await produce(bootstrap, "pii.requests", [(t.encode(), value) for t, _, value in warm])
    results = await read(bootstrap, "pii.results", timeout=120,
                         until=lambda rs: len(answers(rs, "warm-")) >= len(warm))
    ciphertexts = {job_id: v["fields"]["ssn"] for job_id, v in answers(results, "warm-").items()}
    # the stream: a decrypt of each and as many new encrypts, interleaved
    stream = []
    for t in tenants:
        for n in range(CALLER_REQUESTS):
            stream.append((t, "decrypt", billing.pii(t, "decrypt", {"ssn": ciphertexts[f"warm-{t}-{n}"]},
                                                     job_id=f"dec-{t}-{n}"), secrets[t, n]))
            m = CALLER_REQUESTS + n
            stream.append((t, "encrypt", billing.pii(t, "encrypt", {"ssn": secrets[t, m]}, job_id=f"enc-{t}-{m}"),
                           secrets[t, m]))
    await produce(bootstrap, "pii.requests", [(t.encode(), value) for t, _, value, _ in stream])

    def answered(records: list) -> int:
        return len(answers(records, "dec-")) + len(answers(records, "enc-"))

    await kill_when(bootstrap, first, "pii.results", answered, at_least=50, total=len(stream))
    worker_process("keyledger-pii", env=env)
    results = await read(bootstrap, "pii.results", until=lambda rs: answered(rs) >= len(stream), timeout=180)

    # every request answered; each decrypt opens for its caller and for no other
    decrypts, encrypts = answers(results, "dec-"), answers(results, "enc-")
    assert len(decrypts) + len(encrypts) == len(stream)
    assert not [v for v in (*decrypts.values(), *encrypts.values()) if "error" in v or "errors" in v]
    for (t, n), secret in secrets.items():
        if n < CALLER_REQUESTS:
            result = decrypts[f"dec-{t}-{n}"]
            assert result["fields"]["ssn"].startswith("klr1.")
            assert billing.client.open_result(result) == {"ssn": secret}
            with pytest.raises(ResultSealError):
                other.client.open_result(result)
        else:
            assert encrypts[f"enc-{t}-{n}"]["fields"]["ssn"].startswith("kl1.")

    # one transfer per request and operation, derived from the record's place: what the ledger holds (audit verify)
    directory = await assert_key_invariants(bootstrap, tenants)
    active = {t: next(e.key_id for e in directory.tenant_keys(t)
                      if e.key_type is KeyType.ENCRYPTION and e.state.value == "active") for t in tenants}
    placed = {r.value: (r.partition, r.offset) for r in await read(bootstrap, "pii.requests", timeout=60) if r.value}
    expected = {ids.to_hex(ids.transfer_id(Op(op), active[t], "ok", "pii.requests", *placed[value]))
                for t, op, value, _ in [*stream, *((t, "encrypt", value, None) for t, _, value in warm)]}
    audits = [json.loads(r.value) for r in await read(bootstrap, "kms.audit", timeout=120) if r.value]
    mine = [e for e in audits if e["tenant_id"] in set(tenants) and e["op"] in ("encrypt", "decrypt")]
    named = [named_transfers(AuditEvent.model_validate(e)) for e in mine]
    assert {ids.to_hex(i) for listed in named for i in listed} == expected and len(expected) == len(stream) + len(warm)
    assert {(e["caller_id"], e["outcome"]) for e in mine} == {(billing.caller_id, "success")}
    assert all(e["count"] == len(listed) for e, listed in zip(mine, named, strict=True))  # one field a request
    assert_audit_agrees(bootstrap, env, tenants)

    # no plaintext on any topic but the encrypt requests that carried it
    for topic in Topic:
        for record in await read(bootstrap, topic.value, timeout=60):
            value = record.value or b""
            if [s for s in secrets.values() if s.encode() in value]:
                assert topic is Topic.PII_REQUESTS and json.loads(value)["operation"] == "encrypt", topic
