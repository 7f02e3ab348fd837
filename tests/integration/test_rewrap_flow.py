"""KEK rotation + `keyledger rewrap` against OpenBao, and `keyledger migrate` moto -> OpenBao -> moto, over a
real broker with TigerBeetle as the system of record (so workers can be killed and replaced).

Each test has a broker of its own: the CLI runs over every key on the topics, and the session broker holds
other tests' keys, whose ledgers died with their workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from schemas.messages import AuditEvent, KeyEvent, KeyMaterial
from tests.support.callers import RegisteredCaller, register_caller
from tests.support.harness import span_job, tick
from tests.support.kafka import read, records_for, tenant_created, unique_tenant
from workers.core.b64 import b64decode
from workers.core.signing import Verdict
from workers.kafka.tap import produce
from workers.tools.verify import PublicKeyBook, verify_signed_span

pytestmark = pytest.mark.integration

GROUPS = ("keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation")


@pytest.fixture
def env(own_broker, openbao, own_tigerbeetle) -> dict[str, str]:
    """Both providers' settings (moto and a Transit key of this test's own), a TigerBeetle and a broker of this
    test's own: `audit verify` without --tenant compares every tenant the ledger holds with this broker's
    kms.audit, so a ledger shared with other tests' brokers would disagree, as it should."""
    return {"KEYLEDGER_KAFKA_BOOTSTRAP": own_broker, "KEYLEDGER_LEDGER": "tigerbeetle",
            "KEYLEDGER_TB_ADDRESSES": own_tigerbeetle, "KEYLEDGER_VAULT_ADDR": openbao.addr,
            "KEYLEDGER_VAULT_TOKEN": openbao.token, "KEYLEDGER_VAULT_KEY": f"kl-{uuid.uuid4().hex[:8]}"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def pii(tenant: str, operation: str, fields: dict, job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


async def populate(bootstrap: str, tenants: list[str]) -> dict[str, dict]:
    """Each tenant: keys, two signed spans, one encrypted field; returns the ciphertexts."""
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    for t in tenants:
        await records_for(bootstrap, "keys.events", t, want=2, timeout=120)
    await produce(bootstrap, "spans.to-sign", [(t.encode(), span_job(t)) for t in tenants for _ in range(2)])
    await produce(bootstrap, "pii.requests", [(t.encode(), pii(t, "encrypt", {"ssn": f"078-{t}"}, f"e-{t}"))
                                              for t in tenants])
    sealed = {}
    for t in tenants:
        await records_for(bootstrap, "spans.signed", t, want=2, timeout=120)
        [result] = await records_for(bootstrap, "pii.results", t, want=1, timeout=120)
        sealed[t] = result["fields"]
    return sealed


async def same_keys_work(bootstrap: str, tenants: list[str], sealed: dict[str, dict], round_id: str,
                         caller: RegisteredCaller) -> None:
    """A fresh worker (cold cache) signs with the same keys and decrypts the old ciphertexts (as `caller`)."""
    await produce(bootstrap, "spans.to-sign", [(t.encode(), span_job(t, job_id=f"{round_id}-{t}")) for t in tenants])
    await produce(bootstrap, "pii.requests", [(t.encode(), caller.pii(t, "decrypt", sealed[t], job_id=f"{round_id}-{t}"))
                                              for t in tenants])
    book = PublicKeyBook()
    for record in await read(bootstrap, "keys.events"):
        book.learn(KeyEvent.model_validate_json(record.value))
    for t in tenants:
        signed = await records_for(bootstrap, "spans.signed", t, timeout=120)
        while not any(s["job_id"] == f"{round_id}-{t}" for s in signed):
            await asyncio.sleep(0.5)
            signed = await records_for(bootstrap, "spans.signed", t, timeout=120)
        assert {verify_signed_span(book, s) for s in signed} == {Verdict.VALID}
        results = [r for r in await records_for(bootstrap, "pii.results", t, timeout=120) if r["job_id"] == f"{round_id}-{t}"]
        while not results:
            await asyncio.sleep(0.5)
            results = [r for r in await records_for(bootstrap, "pii.results", t) if r["job_id"] == f"{round_id}-{t}"]
        assert caller.client.open_result(results[0]) == {"ssn": f"078-{t}"}, results[0]


async def latest_materials(bootstrap: str) -> dict[str, KeyMaterial]:
    latest = {}
    for record in await read(bootstrap, "keys.material"):
        if record.value is not None:
            material = KeyMaterial.model_validate_json(record.value)
            latest[material.key_id] = material
    return latest


async def rewrap_audits(bootstrap: str) -> list[AuditEvent]:
    return [a for r in await read(bootstrap, "kms.audit")
            if (a := AuditEvent.model_validate_json(r.value)).op.value == "rewrap"]


def stop(worker: subprocess.Popen, hard: bool = False) -> None:
    worker.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    worker.wait(timeout=30)


def rewrap_tick(tick_id: str, **fields) -> bytes:
    return tick(tick_id, issued_at="2026-11-22T10:00:00Z", action="rewrap", **fields)


async def test_kek_rotation_rewrap_and_retire_over_a_real_broker_across_kill_9(own_broker, env, openbao,
                                                                               worker_process, tmp_path, aws_env):
    bootstrap, key = own_broker, env["KEYLEDGER_VAULT_KEY"]
    vault = {**env, "KEYLEDGER_KMS_PROVIDER": "vault"}
    tenants = [unique_tenant("kek") for _ in range(20)]
    # one tick per batch, so the kill below lands between tenants of the run
    worker = worker_process(*GROUPS, env={**vault, "KEYLEDGER_KAFKA_BATCH_MAX": "1"})
    sealed = await populate(bootstrap, tenants)
    openbao.admin("POST", f"transit/keys/{key}/rotate", {})

    # a scheduled pass, killed -9 as soon as its first re-wrapped record is out
    await produce(bootstrap, "keys.rotation-ticks", [(b"ops", rewrap_tick("first-pass"))])
    await read(bootstrap, "keys.material", timeout=120,
                     until=lambda rs: any(r.value and b'"kek_version":2' in r.value for r in rs))
    stop(worker, hard=True)
    worker = worker_process(*GROUPS, env=vault)
    # one of the pass's per-tenant ticks delivered again, as Kafka redelivers what was not committed
    replayed = tenants[0]
    await produce(bootstrap, "keys.rotation-ticks", [(replayed.encode(), rewrap_tick(
        f"first-pass/{replayed}", tenant_id=replayed, parent_tick_id="first-pass"))])

    done = await asyncio.to_thread(cli, vault, "rewrap", "--all")
    assert done.returncode == 0, done.stdout + done.stderr + worker.log_path.read_text()[-3000:]
    assert "tenants: 20/20" in done.stderr  # plain lines: stderr is no TTY
    latest = await latest_materials(bootstrap)
    assert len(latest) == 40
    assert {b64decode(m.wrapped_key)[:9] for m in latest.values()} == {b"vault:v2:"}
    assert openbao.admin("GET", f"transit/keys/{key}")["data"]["min_decryption_version"] == 2

    # every key was re-wrapped exactly once, whichever run did it; the replay only republished its audits
    audits = await rewrap_audits(bootstrap)
    per_key: dict[str, set[str]] = {}
    for audit in audits:
        per_key.setdefault(audit.key_id, set()).add(audit.event_id)
    assert sorted(per_key) == sorted(latest) and {len(ids) for ids in per_key.values()} == {1}
    assert len([a for a in audits if a.tenant_id == replayed]) > 2  # the replayed tick ran: same ids again

    stop(worker)
    # a caller registered now: its secret is wrapped under the KEK version the retire above left usable
    operator, caller = await register_caller(bootstrap, tmp_path, "kek-reader", {**aws_env, **vault})
    worker_process(*GROUPS, env={**vault, "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public})  # a cold cache unwraps the v2 wrappings
    await same_keys_work(bootstrap, tenants, sealed, "after-rewrap", caller)

    # the scheduled variant (a CronJob's `rewrap --all --scheduled`): one pass re-wraps, the next retires
    openbao.admin("POST", f"transit/keys/{key}/rotate", {})
    first = await asyncio.to_thread(cli, vault, "rewrap", "--all", "--scheduled")
    assert first.returncode == 0, first.stdout + first.stderr
    await read(bootstrap, "keys.material", timeout=120, until=lambda rs: len(
        {r.key for r in rs if r.value and b'"kek_version":3' in r.value}) == 40)
    assert openbao.admin("GET", f"transit/keys/{key}")["data"]["min_decryption_version"] == 2  # not yet
    second = await asyncio.to_thread(cli, vault, "rewrap", "--all", "--scheduled")
    assert second.returncode == 0, second.stdout + second.stderr
    assert openbao.admin("GET", f"transit/keys/{key}")["data"]["min_decryption_version"] == 3
    report = await asyncio.to_thread(cli, vault, "audit", "verify")
    assert report.returncode == 0 and "agrees with TigerBeetle" in report.stdout, report.stdout


async def test_migration_from_moto_to_openbao_and_back_keeps_every_signature_and_ciphertext(own_broker, env,
                                                                                           worker_process, tmp_path, aws_env):
    bootstrap = own_broker
    tenants = [unique_tenant("mig") for _ in range(3)]
    hybrid_aws = {**env, "KEYLEDGER_KMS_PROVIDER": "aws", "KEYLEDGER_KMS_PROVIDERS": "aws,vault"}
    worker = worker_process(*GROUPS, env={**env, "KEYLEDGER_KMS_PROVIDER": "aws"})
    sealed = await populate(bootstrap, tenants)
    assert {m.kms_provider for m in (await latest_materials(bootstrap)).values()} == {"aws"}
    stop(worker)

    # hybrid period: both providers configured, then every key moves to OpenBao
    worker = worker_process(*GROUPS, env=hybrid_aws)
    moved = await asyncio.to_thread(cli, hybrid_aws, "migrate", "--to", "vault")
    assert moved.returncode == 0, moved.stdout + moved.stderr + worker.log_path.read_text()[-3000:]
    assert "0 keys remain under another provider" in moved.stdout
    assert {(m.kms_provider, m.kms_key_id) for m in (await latest_materials(bootstrap)).values()} == \
        {("vault", env["KEYLEDGER_VAULT_KEY"])}
    again = await asyncio.to_thread(cli, hybrid_aws, "migrate", "--to", "vault")  # resumable: nothing left to do
    assert again.returncode == 0 and "0 live keys of 0 tenants are not under vault" in again.stdout
    stop(worker)

    # AWS removed: OpenBao alone serves every key (and the caller's secret: it is wrapped there)
    on_vault = {**env, "KEYLEDGER_KMS_PROVIDER": "vault"}
    operator, caller = await register_caller(bootstrap, tmp_path, "mig-vault-reader", {**aws_env, **on_vault})
    worker = worker_process(*GROUPS, env={**on_vault, "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public})
    await same_keys_work(bootstrap, tenants, sealed, "on-vault", caller)
    stop(worker)

    # and back
    worker = worker_process(*GROUPS, env=hybrid_aws)
    back = await asyncio.to_thread(cli, hybrid_aws, "migrate", "--to", "aws")
    assert back.returncode == 0, back.stdout + back.stderr
    assert {m.kms_provider for m in (await latest_materials(bootstrap)).values()} == {"aws"}
    stop(worker)
    on_aws = {**env, "KEYLEDGER_KMS_PROVIDER": "aws"}
    operator, caller = await register_caller(bootstrap, tmp_path, "mig-aws-reader", {**aws_env, **on_aws})
    worker_process(*GROUPS, env={**on_aws, "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public})
    await same_keys_work(bootstrap, tenants, sealed, "on-aws-again", caller)

    audits = await rewrap_audits(bootstrap)
    assert sorted(a.reason for a in audits) == ["migration to aws"] * 6 + ["migration to vault"] * 6
    report = await asyncio.to_thread(cli, env, "audit", "verify")
    assert report.returncode == 0 and "agrees with TigerBeetle" in report.stdout, report.stdout


async def test_a_migration_under_onboarding_and_rotation_moves_the_keys_made_while_it_ran(own_broker, env,
                                                                                          worker_process):
    """Issue 25 finding 8: during the hybrid period new keys land under the workers' default provider (still the
    old one); a later pass moves what the previous pass had not seen, and the run ends with every key moved."""
    bootstrap = own_broker
    tenants = [unique_tenant("mt") for _ in range(4)]
    hybrid_aws = {**env, "KEYLEDGER_KMS_PROVIDER": "aws", "KEYLEDGER_KMS_PROVIDERS": "aws,vault"}
    worker_process(*GROUPS, env=hybrid_aws)
    await populate(bootstrap, tenants)
    newcomers = [unique_tenant("mn") for _ in range(4)]

    async def traffic() -> None:
        await asyncio.sleep(0.5)  # while the first pass runs
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in newcomers])
        await produce(bootstrap, "keys.rotation-ticks", [
            (t.encode(), json.dumps({"tick_id": f"rot-{t}", "issued_at": "2026-11-22T10:00:00Z", "tenant_id": t,
                                     "reason": "manual"}).encode()) for t in tenants])
        for t in newcomers:
            await records_for(bootstrap, "keys.events", t, want=2, timeout=120)

    moving = asyncio.create_task(asyncio.to_thread(cli, hybrid_aws, "migrate", "--to", "vault"))
    await traffic()
    moved = await moving
    latest = await latest_materials(bootstrap)
    assert {m.tenant_id for m in latest.values()} >= set(tenants + newcomers)
    if moved.returncode != 0:  # traffic outlasted the passes: the command says why, and a rerun converges
        assert "KEYLEDGER_KMS_PROVIDER is aws, not vault" in moved.stdout or "run the same command again" in \
            moved.stdout, moved.stdout
        moved = await asyncio.to_thread(cli, hybrid_aws, "migrate", "--to", "vault")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    latest = await latest_materials(bootstrap)
    assert {m.kms_provider for m in latest.values()} == {"vault"}, moved.stdout
    rotated = [m for m in latest.values() if m.tenant_id in tenants and m.version == 2]
    assert len(rotated) == 2 * len(tenants)  # the keys the rotation made during the migration moved too
