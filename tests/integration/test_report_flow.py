"""`keyledger audit report`: the facts of a scripted history, over a real broker and a real TigerBeetle.

History of tenant T: onboard, sign 5 spans, encrypt 2 fields, present another tenant's
ciphertext (denied), manual rotation, sign 3 spans, compromise of the encryption key,
deletion. The report must tell exactly that story from the ledger and keys.events, and its
HTML must render in a real headless browser where one is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.isolated import wait_for_chain
from tests.support.browser import colours, screenshot
from tests.support.callers import RegisteredCaller, register_caller
from tests.support.harness import span_job
from tests.support.kafka import read, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.kafka.tap import produce
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.tools.report import build_report
from workers.tools.report_html import render_html

pytestmark = pytest.mark.integration

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation", "keyledger-audit-digest"]


async def events_of(bootstrap: str, tenant: str, kind: str, want: int) -> list[dict]:
    def mine(records):
        return [e for e in (json.loads(r.value) for r in records if r.value) if e["tenant_id"] == tenant
                and e["type"] == kind]

    return mine(await read(bootstrap, "keys.events", timeout=60, until=lambda rs: len(mine(rs)) >= want))


async def pii(bootstrap: str, tenant: str, operation: str, fields: dict, job_id: str,
              caller: RegisteredCaller | None = None) -> dict:
    """An encrypt as producers send it without a caller; a decrypt proved by `caller`."""
    body = {"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation, "fields": fields}
    value = caller.pii(tenant, operation, fields, job_id=job_id) if caller else json.dumps(body).encode()
    await produce(bootstrap, "pii.requests", [(tenant.encode(), value)])

    def found(records):
        return [v for v in (json.loads(r.value) for r in records) if v.get("job_id") == job_id]

    return found(await read(bootstrap, "pii.results", timeout=60, until=lambda rs: bool(found(rs))))[0]


async def sign(bootstrap: str, tenant: str, count: int, total: int) -> None:
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant)) for _ in range(count)])
    await read(bootstrap, "spans.signed", timeout=60, until=lambda rs: sum(
        json.loads(r.value)["tenant_id"] == tenant for r in rs) >= total)


async def tick(bootstrap: str, tenant: str, tick_id: str, **fields) -> None:
    body = {"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), "tenant_id": tenant, **fields}
    await produce(bootstrap, "keys.rotation-ticks", [(tenant.encode(), json.dumps(body).encode())])


async def scripted_history(bootstrap: str, tenant: str, other: str, caller: RegisteredCaller) -> None:
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in (tenant, other)])
    await events_of(bootstrap, tenant, "generated", 2)
    await events_of(bootstrap, other, "generated", 2)
    await sign(bootstrap, tenant, 5, 5)
    await pii(bootstrap, tenant, "encrypt", {"email": "a@example.com", "phone": "+1 555 0100"}, "enc-1")
    theirs = await pii(bootstrap, other, "encrypt", {"ssn": "078-05-1120"}, "enc-other")
    refused = await pii(bootstrap, tenant, "decrypt", theirs["fields"], "steal", caller)
    assert refused["errors"]["ssn"]["type"] == "key_not_found"
    await tick(bootstrap, tenant, "rotate-1", reason="manual")
    await events_of(bootstrap, tenant, "rotated", 2)
    await sign(bootstrap, tenant, 3, 8)
    await tick(bootstrap, tenant, "compromise-1", reason="compromise", key_type="encryption")
    await events_of(bootstrap, tenant, "revoked", 1)
    deleted = {"event_id": "bye", "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat()}
    await produce(bootstrap, "tenants.deleted", [(tenant.encode(), json.dumps(deleted).encode())])
    await events_of(bootstrap, tenant, "destroyed", 5)


async def test_the_report_tells_the_scripted_history(own_broker, own_tigerbeetle, monkeypatch, tmp_path):
    bootstrap = own_broker
    monkeypatch.setenv("KEYLEDGER_DIGEST_INTERVAL", "0.5")
    tenant, other = unique_tenant("rep"), unique_tenant("oth")
    operator, caller = await register_caller(bootstrap, tmp_path, f"rep-{tenant.lower()}"[:60], tenants=[tenant])
    async with in_process_workers(bootstrap, GROUPS, ledger=TigerBeetleLedger(own_tigerbeetle),
                                  overrides={"operator_public_key": operator.public}) as context:
        await scripted_history(bootstrap, tenant, other, caller)
        await wait_for_chain(bootstrap, min_records=1)
        report = await build_report(bootstrap, context.ledger, tenant, rotation_age=0, encrypt_limit=100)
        relaxed = await build_report(bootstrap, context.ledger, tenant, rotation_age=10**9, encrypt_limit=100)

    keys = {(k.key_type, k.version): k for k in report.keys}
    assert sorted(keys) == [("encryption", 1), ("encryption", 2), ("encryption", 3), ("signing", 1), ("signing", 2)]
    assert {k.state for k in report.keys} == {"destroyed"}
    assert {k: v.operations for k, v in keys.items()} == {
        ("signing", 1): {"destroy": 1, "generate": 1, "rotate": 1, "sign": 5},
        ("signing", 2): {"destroy": 1, "generate": 1, "sign": 3},
        ("encryption", 1): {"destroy": 1, "encrypt": 2, "generate": 1, "rotate": 1},
        ("encryption", 2): {"destroy": 1, "generate": 1, "revoke": 1, "rotate": 1},
        ("encryption", 3): {"destroy": 1, "generate": 1},
    }
    assert keys[("encryption", 1)].failures == {"denied": 1}
    # where each version was wrapped, and the deletion that destroyed it (a shared KMS key: nothing scheduled)
    for key in report.keys:
        assert [w.op for w in key.wrappings] == ["generate", "destroy"] and key.kms_provider == "local"
        assert key.destroyed_by.startswith("tenants.deleted[") and key.kms_deletion_date is None
    # the refusal is said in words, with the caller the request named and the record that carried it (a
    # caller's request is named by its record's place, like any other)
    [refusal] = [r for r in report.rollups if r.outcome == "denied"]
    assert refusal.reason == "denied: the ciphertext names a key this tenant does not own"
    assert refusal.caller_id == caller.caller_id and refusal.records[0].startswith("pii.requests[")
    assert all(r.records[0].startswith("pii.requests[") for r in report.rollups if r.op == "encrypt")
    assert {v.name: v.level for v in report.verdicts} == {"Ledger vs kms.audit": "ok",
                                                          "Digest chain over kms.audit": "ok",
                                                          "Operations": "warn", "Policy": "bad"}
    assert [(o.op, o.count, o.key_id, o.reason) for o in report.denied] == [
        ("denied", 1, keys[("encryption", 1)].key_id, "key_not_found")]
    # lifecycle times, in ledger time and in order
    enc1, enc2, enc3, sig1 = keys[("encryption", 1)], keys[("encryption", 2)], keys[("encryption", 3)], keys[("signing", 1)]
    assert enc1.created_ns < enc1.rotated_ns < enc2.rotated_ns < enc2.revoked_ns < enc1.destroyed_ns  # one batch: rotate, then revoke
    assert enc3.rotated_ns is None and enc3.revoked_ns is None and enc1.revoked_ns is None
    assert (enc1.replaced_by, enc2.replaced_by) == (enc2.key_id, enc3.key_id)
    assert (sig1.rotation_reason, enc1.rotation_reason, enc2.rotation_reason) == ("manual", "manual", "compromise")
    assert all(set(k.announced) >= {"destroyed"} for k in report.keys) and sig1.public_key
    # policy: every rotation is late against a zero age and none against a long one
    assert {(k.key_type, k.version) for k in report.late_rotations} == {("signing", 1), ("encryption", 1),
                                                                          ("encryption", 2)}
    assert relaxed.late_rotations == [] and all(k.late is False for k in relaxed.keys if k.rotated_ns)
    for key in report.keys:  # the usage counter is every operation's amount; headroom is what is left of the limit
        assert key.usage == sum(key.operations.values()) + sum(key.failures.values())
        assert key.headroom == (100 - key.usage if key.key_type == "encryption" else None)
    # verification verdicts for this tenant
    # (one transfer per operation, one kms.audit event per batch, key and operation, naming its transfers; how
    # spans were batched is the broker's business)
    transfers = len(report.operations)
    assert transfers >= 17 and report.ledger_agrees and report.ledger_events == report.tenant_audit_records
    assert report.chain_intact and 0 < report.tenant_audit_records <= transfers
    assert report.protected_records == report.tenant_audit_records and report.awaiting_digest == 0

    facts = json.loads(json.dumps(report.to_json()))
    assert [(k["key_type"], k["version"], k["state"]) for k in facts["keys"]] == [
        (k.key_type, k.version, k.state) for k in report.keys]
    assert facts["denied_total"] == 1 and facts["totals"]["sign"] == 8 and len(facts["rotations"]) == 3
    assert facts["verification"]["digest_chain"]["protected_by_a_verified_digest"] == report.tenant_audit_records

    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "@media print" in html
    assert not any(tag in html for tag in ("<script", "<link", "src=", "<img", "url("))  # nothing external
    assert all(k.key_id in html for k in report.keys) and "late" in html and "denied" in html
    assert "tenants.deleted[" in html and "Tenant deleted" in html
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")

    env = {**os.environ, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap, "KEYLEDGER_LEDGER": "tigerbeetle",
           "KEYLEDGER_TB_ADDRESSES": own_tigerbeetle, "KEYLEDGER_ROTATION_AGE": "1000000000",
           "KEYLEDGER_ENCRYPT_LIMIT": "100"}
    cli = await keyledger(env, "audit", "report", "--tenant", tenant, "--format", "json", "--out",
                          str(tmp_path / "report.json"))
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads((tmp_path / "report.json").read_text())
    assert from_cli["report"]["keys"] == json.loads(json.dumps(relaxed.to_json()))["keys"]
    assert "Digest chain over kms.audit: intact" in cli.stderr
    # signed by the keyledger-system key the ledger anchors, and the signing is itself an audited operation
    signer = from_cli["signature"]
    assert signer["tenant_id"] == "keyledger-system"
    signings = [e for e in (json.loads(r.value) for r in await read(bootstrap, "kms.audit", timeout=30))
                if e.get("tenant_id") == "keyledger-system" and e.get("op") == "sign"]
    assert [e["key_id"] for e in signings] == [signer["key_id"]] and tenant in signings[0]["reason"]
    audited = await keyledger(env, "audit", "verify", "--tenant", "keyledger-system", "--settle", "5")
    assert audited.returncode == 0 and "agrees with" in audited.stdout, audited.stdout + audited.stderr
    html = await keyledger(env, "audit", "report", "--tenant", tenant, "--out", str(tmp_path / "report.html"))
    assert html.returncode == 0, html.stderr
    checked = await keyledger(env, "audit", "report", "verify", str(tmp_path / "report.html"))  # key: keys.events
    assert checked.returncode == 0, checked.stdout + checked.stderr
    offline = await keyledger({**os.environ}, "audit", "report", "verify", str(tmp_path / "report.json"),
                              "--public-key", signer["public_key"])
    assert offline.returncode == 0, offline.stdout + offline.stderr
    edited = tmp_path / "edited.json"
    edited.write_text((tmp_path / "report.json").read_text().replace('"sign": 8', '"sign": 9'))
    refused = await keyledger({**os.environ}, "audit", "report", "verify", str(edited), "--public-key",
                              signer["public_key"])
    assert refused.returncode == 1 and "NOT VERIFIED" in refused.stdout
    # a tenant nobody knows is no green report
    nobody = await keyledger(env, "audit", "report", "--tenant", "nobody-at-all", "--out", str(tmp_path / "no.html"))
    assert nobody.returncode == 1 and "nobody-at-all" in nobody.stderr and not (tmp_path / "no.html").exists()
    _screenshot(tmp_path / "report.html", tmp_path / "report.png")  # last: it skips where no Chromium is installed


async def keyledger(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "workers.app.cli", *argv], env=env,
                                   capture_output=True, text=True, timeout=120)


def _screenshot(page: Path, png: Path) -> None:
    rows = screenshot(page, png, height=900)
    assert len(rows) == 900 and len(colours(rows)) > 20  # a rendered page, not an empty canvas
