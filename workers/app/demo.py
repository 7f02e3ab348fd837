"""`keyledger demo`: the embedded stack, driven through the real topics like an outside client would."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.messages import SYSTEM_TENANT, CallerKem, CallerOperation, KeyEvent
from schemas.topics import Topic
from workers.app.context import ProcessContext
from workers.app.runtime import bootstrap_for, running_workers
from workers.client import CallerClient, CallerCredential, CallerKeyPair
from workers.core.b64 import b64url_encode
from workers.core.callers import caller_id_for
from workers.core.results import generate_keypair
from workers.groups import ALL_GROUPS
from workers.kafka.tap import produce, read_topic
from workers.ledger.factory import describe_ledger
from workers.settings import Settings
from workers.tools.audit_check import ChainReport, Logged, check_chain, verify_audit, verify_chain
from workers.tools.callers import caller_add
from workers.tools.report import build_report
from workers.tools.report_html import render_document
from workers.tools.report_signing import check_saved, public_key_of, sign_over_kafka
from workers.tools.verify import PublicKeyBook, load_book, verify_signed_span

TENANTS = ("acme", "globex", "initech")
DEMO_DIGEST_INTERVAL = 2.0  # seconds: the demo's own process digests often, so the chain covers it before the end
DEMO_CALLER = "demo-service"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def demo(settings: Settings) -> int:
    operator = Ed25519PrivateKey.generate()  # the demo is its own operator: it signs its one caller's policy
    settings = settings.updated(digest_interval=min(settings.limits.digest_interval, DEMO_DIGEST_INTERVAL),
                                operator_public_key=b64url_encode(operator.public_key().public_bytes_raw()))
    async with bootstrap_for(settings) as bootstrap, running_workers(settings, bootstrap, ALL_GROUPS) as context:
        _say(f"embedded broker at {bootstrap}; KMS {settings.kms.provider.value}; ledger {settings.ledger.kind.value}")
        events = await onboard(bootstrap)
        await replay_is_idempotent(bootstrap, len(events))
        await sign_and_verify(bootstrap)
        caller = await enrol_caller(bootstrap, context, operator)
        sealed = await protect_pii(bootstrap, caller)
        await rotate_and_migrate(bootstrap, caller, sealed)
        await shred(bootstrap, caller)
        failed = await audit(bootstrap, context)
        failed |= await digest_chain(bootstrap)
        await tenant_report(bootstrap, context, "acme")
        return failed


async def audit(bootstrap: str, context: ProcessContext) -> int:
    _say("\n== 8. audit: replay kms.audit and compare it with the ledger, both ways")
    await asyncio.sleep(0.5)  # the last batch's audit records are in flight a moment longer than its outputs
    report = await verify_audit(bootstrap, context.ledger)
    for problem in report.mismatches[:10]:
        _say(f"MISMATCH {problem}")
    _say(f"{report.events} audit events for {len(report.tenants)} tenants: "
         f"{'agree exactly with' if report.agrees else 'DISAGREE with'} {describe_ledger(context.settings.ledger)}")
    return 0 if report.agrees else 1


def _tenant_created(tenant: str) -> tuple[bytes, bytes]:
    body = {"event_id": str(uuid.uuid4()), "tenant_id": tenant, "occurred_at": datetime.now(UTC).isoformat()}
    return tenant.encode(), json.dumps(body).encode()


async def onboard(bootstrap: str) -> list[KeyEvent]:
    _say("\n== 1. tenant onboarding: tenants.created -> keys.material, keys.events, kms.audit")
    await produce(bootstrap, Topic.TENANTS_CREATED, [_tenant_created(t) for t in TENANTS])
    wanted = 2 * len(TENANTS)
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS, until=lambda r: len(_tenants_only(r)) >= wanted, timeout=60)
    events = [KeyEvent.model_validate_json(r.value) for r in _tenants_only(records)]
    _say(f"{'tenant':<10} {'type':<11} {'v':>2}  {'key_id':<32}  public key")
    for e in sorted(events, key=lambda e: (e.tenant_id, e.key_type)):
        _say(f"{e.tenant_id:<10} {e.key_type.value:<11} {e.version:>2}  {e.key_id}  {e.public_key or '-'}")
    if len(events) < wanted:
        raise SystemExit(f"only {len(events)} of {wanted} keys appeared")
    return events


async def replay_is_idempotent(bootstrap: str, before: int) -> None:
    _say("\n== 2. the same tenants created again: no new keys")
    await produce(bootstrap, Topic.TENANTS_CREATED, [_tenant_created(t) for t in TENANTS])
    audit_before = len(_tenants_only(await read_topic(bootstrap, Topic.KMS_AUDIT)))
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS, until=lambda r: len(_tenants_only(r)) > before, timeout=3)
    audit_after = len(_tenants_only(await read_topic(bootstrap, Topic.KMS_AUDIT)))
    _say(f"keys.events: {before} before, {len(_tenants_only(records))} after; kms.audit: {audit_before} -> {audit_after}"
         " (tenants' records; keyledger's own digest key is tenant keyledger-system)")


def _tenants_only(records: list[Any]) -> list[Any]:
    return [r for r in records if r.value is not None and json.loads(r.value).get("tenant_id") != SYSTEM_TENANT]


async def sign_and_verify(bootstrap: str) -> None:
    _say("\n== 3. span signing: spans.to-sign -> spans.signed, verified with nothing but keys.events")
    spans = [{"trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16], "name": name,
              "attributes": {"http.status_code": code}} for name, code in (("GET /balance", 200), ("POST /pay", 201))]
    jobs = [(t.encode(), json.dumps({"job_id": f"{t}-{i}", "tenant_id": t, "span": span}).encode())
            for t in TENANTS for i, span in enumerate(spans)]
    await produce(bootstrap, Topic.SPANS_TO_SIGN, jobs)
    records = await read_topic(bootstrap, Topic.SPANS_SIGNED, until=lambda r: len(r) >= len(jobs), timeout=60)
    signed = [json.loads(r.value) for r in records]
    book = await load_book(bootstrap)
    for record in signed[:3]:
        sig = record["signature"]
        _say(f"{record['job_id']:<10} key {sig['key_id']}  {sig['value'][:24]}...  {verify_signed_span(book, record).value}")
    public_keys = await _keys(bootstrap)
    independent = sum(_independent_check(public_keys, r) for r in signed)
    _say(f"{len(signed)} spans signed; {independent} verified independently (cryptography's Ed25519 over "
         "sorted compact JSON, no keyledger code)")
    tampered = {**signed[0], "span": {**signed[0]["span"], "name": "DELETE /everything"}}
    _say(f"tampered span -> {verify_signed_span(book, tampered).value}")


async def _keys(bootstrap: str) -> dict[str, bytes]:
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS)
    return {e["key_id"]: base64.b64decode(e["public_key"]) for e in (json.loads(r.value) for r in records)
            if e.get("public_key")}


def _independent_check(public_keys: dict[str, bytes], record: dict[str, Any]) -> bool:
    sig = record["signature"]
    message = json.dumps({"key_id": sig["key_id"], "span": record["span"], "tenant_id": record["tenant_id"]},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        Ed25519PublicKey.from_public_bytes(public_keys[sig["key_id"]]).verify(
            base64.urlsafe_b64decode(sig["value"] + "=" * (-len(sig["value"]) % 4)), message)
    except (InvalidSignature, KeyError):
        return False
    return True


async def enrol_caller(bootstrap: str, context: ProcessContext, operator: Ed25519PrivateKey) -> CallerClient:
    """`keyledger caller add` for the demo's own service: a signed keys.callers record the workers follow."""
    private, public = generate_keypair(CallerKem.X25519)
    with tempfile.TemporaryDirectory() as folder:
        secret = Path(folder) / "demo.secret"
        await caller_add(bootstrap, context.kms, operator, DEMO_CALLER, ledger=context.ledger, tenants="*",
                         operations=[o.value for o in CallerOperation], kem=CallerKem.X25519,
                         caller_public_key=public, secret_out=secret)
        credential = CallerCredential.load(secret)
    for _ in range(1200):  # the workers follow keys.callers: wait (at most a minute) until they know the caller
        if context.callers.get(caller_id_for(DEMO_CALLER)) is not None:
            break
        await asyncio.sleep(0.05)
    return CallerClient(credential, CallerKeyPair(CallerKem.X25519, private, public))


async def _pii(bootstrap: str, caller: CallerClient, tenant: str, operation: str, fields: dict[str, Any],
               job_id: str) -> dict[str, Any]:
    """One request proved by the demo's caller; its result as the caller reads it (sealed fields opened)."""
    body = caller.pii_request(tenant, operation, fields, record_id="customer-42", job_id=job_id)
    await produce(bootstrap, Topic.PII_REQUESTS, [(tenant.encode(), json.dumps(body).encode())])
    records = await read_topic(bootstrap, Topic.PII_RESULTS, timeout=60,
                               until=lambda rs: any(json.loads(r.value).get("job_id") == job_id for r in rs))
    result = next(json.loads(r.value) for r in records if json.loads(r.value).get("job_id") == job_id)
    return {**result, "fields": caller.open_result(result)}


def _short(value: str) -> str:
    return value if len(value) < 60 else value[:56] + "..."


async def protect_pii(bootstrap: str, caller: CallerClient) -> dict[str, Any]:
    _say(f"\n== 5. PII: caller {DEMO_CALLER} encrypts a record's fields and decrypts them back (values shown are "
         "demo data; the decrypt's result is sealed to the caller)")
    record = {"email": "jane@example.com", "phone": "+1 555 0100", "address.street": "1 Infinite Loop"}
    sealed = await _pii(bootstrap, caller, "acme", "encrypt", record, "demo-enc")
    for path, value in sealed["fields"].items():
        _say(f"  {path:<15} {_short(value)}")
    opened = await _pii(bootstrap, caller, "acme", "decrypt", sealed["fields"], "demo-dec")
    _say(f"decrypted back to the original: {opened['fields'] == record}; key {sealed['key_id']}")
    stolen = await _pii(bootstrap, caller, "globex", "decrypt", sealed["fields"], "demo-steal")
    _say(f"globex presenting acme's ciphertexts: {sorted({e['type'] for e in stolen['errors'].values()})}")
    return sealed


async def rotate_and_migrate(bootstrap: str, caller: CallerClient, sealed: dict[str, Any]) -> None:
    _say("\n== 6. rotation: acme's keys rotate; old signatures still verify, old ciphertexts re-encrypt")
    tick = {"tick_id": "demo-rotation", "issued_at": datetime.now(UTC).isoformat(), "tenant_id": "acme",
            "reason": "manual"}
    await produce(bootstrap, Topic.ROTATION_TICKS, [(b"acme", json.dumps(tick).encode())])
    records = await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=60, until=lambda rs: sum(
        json.loads(r.value)["type"] == "rotated" for r in rs if r.value) >= 2)
    for e in (json.loads(r.value) for r in records if r.value):
        if e["type"] == "rotated":
            _say(f"  {e['key_type']:<11} v{e['version']} {e['key_id']} replaces {e['previous_key_id']}")
    book = await load_book(bootstrap)
    old_signed = [json.loads(r.value) for r in await read_topic(bootstrap, Topic.SPANS_SIGNED)]
    acme_old = [s for s in old_signed if s["tenant_id"] == "acme"]
    _say(f"acme's spans signed before the rotation: "
         f"{sorted({verify_signed_span(book, s).value for s in acme_old})}")
    moved = await _pii(bootstrap, caller, "acme", "reencrypt", sealed["fields"], "demo-reenc")
    _say(f"re-encrypted from {sealed['key_id']} to {moved['key_id']}: {len(moved['fields'])} fields")


async def shred(bootstrap: str, caller: CallerClient) -> None:
    _say("\n== 7. crypto-shredding: tenants.deleted for initech")
    enc = await _pii(bootstrap, caller, "initech", "encrypt", {"ssn": "078-05-1120"}, "demo-initech")
    deleted = {"event_id": "demo-delete", "tenant_id": "initech", "occurred_at": datetime.now(UTC).isoformat()}
    await produce(bootstrap, Topic.TENANTS_DELETED, [(b"initech", json.dumps(deleted).encode())])
    await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=60, until=lambda rs: sum(
        json.loads(r.value)["type"] == "destroyed" for r in rs if r.value) >= 2)
    tombstones = [r for r in await read_topic(bootstrap, Topic.KEYS_MATERIAL) if r.value is None]
    after = await _pii(bootstrap, caller, "initech", "decrypt", enc["fields"], "demo-after")
    _say(f"{len(tombstones)} tombstones on keys.material; decrypting initech's data now: "
         f"{sorted({e['type'] for e in after['errors'].values()})}")


async def digest_chain(bootstrap: str) -> int:
    _say("\n== 9. tamper evidence: the signed digest chain over kms.audit (kms.audit.digests)")
    deadline = time.monotonic() + 30
    chain = await verify_chain(bootstrap)
    while chain.not_yet_digested and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # the last records wait at most the digest interval
        chain = await verify_chain(bootstrap)
    _say(f"{chain.digests} signed digests cover {chain.records} audit records in {len(chain.covered)} partitions: "
         f"{'intact' if chain.intact else 'BROKEN'}; not yet digested: {sum(chain.not_yet_digested.values())}")
    for problem in chain.problems[:10]:
        _say(f"CHAIN {problem}")
    await _show_tampering(bootstrap)
    return 0 if chain.intact else 1


async def _show_tampering(bootstrap: str) -> None:
    """The same check over altered copies of the topics (in memory: the broker's topics stay as they are)."""
    audit = [Logged(r.partition, r.offset, r.key, r.value) for r in await read_topic(bootstrap, Topic.KMS_AUDIT)]
    digests = [Logged(r.partition, r.offset, r.key, r.value)
               for r in await read_topic(bootstrap, Topic.KMS_AUDIT_DIGESTS)]
    book = PublicKeyBook()
    for record in await read_topic(bootstrap, Topic.KEYS_EVENTS):
        book.learn_raw(record.value)
    victim = audit[len(audit) // 2]
    inflated = {**json.loads(victim.value or b"{}"), "count": json.loads(victim.value or b"{}").get("count", 0) + 1}
    altered = [r if r is not victim else Logged(r.partition, r.offset, r.key, json.dumps(inflated).encode())
               for r in audit]
    cases: list[tuple[str, ChainReport]] = [
        (f"one audit record's count raised by one (partition {victim.partition} offset {victim.offset})",
         check_chain(altered, digests, book)),
        ("the same record deleted", check_chain([r for r in audit if r is not victim], digests, book)),
        ("the first digest dropped", check_chain(audit, digests[1:], book)),
    ]
    for what, report in cases:
        first = report.problems[0] if report.problems else "NOT DETECTED"
        _say(f"  {what}: {len(report.problems)} break(s), e.g. {first}")


async def tenant_report(bootstrap: str, context: ProcessContext, tenant: str) -> None:
    _say(f"\n== 10. {tenant}'s key lifecycle report for an auditor (keyledger audit report --tenant {tenant})")
    settings = context.settings
    report = await build_report(bootstrap, context.ledger, tenant, rotation_age=settings.limits.rotation_age,
                                encrypt_limit=settings.limits.encrypt_limit,
                                ledger_name=f"{describe_ledger(settings.ledger)} (in this process)")
    document = await sign_over_kafka(bootstrap, report.to_json(), kms=context.kms, ledger=context.ledger)
    path = Path(tempfile.mkdtemp(prefix="keyledger-demo-")) / f"report-{tenant}.html"
    html = render_document(document)
    await asyncio.to_thread(path.write_text, html, encoding="utf-8")
    _say(f"{len(report.keys)} key versions, {len(report.operations)} ledger operations; "
         + ", ".join(f"{v.name}: {v.headline}" for v in report.verdicts))
    signer = document["signature"]
    unchanged = check_saved(html, public_key_of(signer["public_key"])) == []
    _say(f"HTML report: {path}, signed by {SYSTEM_TENANT} key {signer['key_id']} (the signing is audited); "
         f"keyledger audit report verify: {'verified' if unchanged else 'NOT VERIFIED'}")
