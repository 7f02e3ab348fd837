"""The tenant report without a broker: facts from the memory ledger (handler harness), and the HTML itself.

The same facts over a real broker and TigerBeetle, rendered by a real browser, are in
tests/integration/test_report_flow.py.
"""

from __future__ import annotations

import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.harness import handler_harness, inbound, span_job, tenant_created, tick
from workers.core.b64 import b64url_encode
from workers.core.canonical import canonical_json
from workers.core.report_signature import sign_report
from workers.core.signing import public_key_bytes
from workers.tools.audit_check import Logged
from workers.tools.report import (
    BAD,
    OK,
    WARN,
    KeyVersion,
    Operation,
    Period,
    TenantReport,
    UnknownTenant,
    assemble,
    judge,
    roll_up,
)
from workers.tools.report_html import LABEL, WIDTH, render_document, render_html
from workers.tools.report_signing import check_saved
from workers.tools.verify import PublicKeyBook

NS = 1_000_000_000



async def test_facts_come_from_the_ledger_and_keys_events():
    async with handler_harness(["keyledger-keygen", "keyledger-signer", "keyledger-rotation"]) as parts:
        context, broker, captured = parts
        for tenant in ("acme", "globex"):
            await broker.publish(tenant_created(tenant), "tenants.created", key=tenant.encode())
        # straight to the group with distinct offsets: the test broker gives every record the same one
        await context.groups["keyledger-signer"].handle(
            [inbound("spans.to-sign", "acme", span_job("acme"), offset=n) for n in range(3)])
        await broker.publish(tick("t1", tenant_id="acme", key_type="signing", reason="compromise"),
                             "keys.rotation-ticks", key=b"acme")
        await broker.publish(tick("rw", tenant_id="acme", action="rewrap", reason="manual"), "keys.rotation-ticks",
                             key=b"acme")
        audit = [Logged(0, n, k, v) for n, (k, v) in enumerate(captured.by_topic["kms.audit"])]
        events = [v for _, v in captured.by_topic["keys.events"]]
        book = PublicKeyBook()
        report = await assemble(context.ledger, "acme", audit, [], events, book, rotation_age=3600, encrypt_limit=50)

    keys = {(k.key_type, k.version): k for k in report.keys}
    assert sorted(keys) == [("encryption", 1), ("signing", 1), ("signing", 2)]  # globex's keys are not acme's
    assert keys[("signing", 1)].operations == {"generate": 1, "revoke": 1, "rotate": 1, "rewrap": 1, "sign": 3}
    # where each version is wrapped, from its lifecycle audit events: made, then re-wrapped
    for key in keys.values():
        assert [w.op for w in key.wrappings] == ["generate", "rewrap"] and key.kms_provider == "local"
        assert key.kms_key_id == key.wrappings[-1].kms_key_id and key.wrappings[0].at <= key.wrappings[1].at
    assert (keys[("signing", 1)].state, keys[("signing", 1)].rotation_reason) == ("revoked", "compromise")
    assert keys[("signing", 1)].late is False and keys[("signing", 2)].state == "active"
    assert TenantReport.from_json(json.loads(json.dumps(report.to_json()))).to_json() == report.to_json()
    assert keys[("encryption", 1)].headroom == 50 - 2 and keys[("signing", 1)].headroom is None
    # the three spans of one batch and key are one audit event naming three transfers
    assert report.ledger_agrees and len(report.operations) == 11
    assert report.ledger_events == report.tenant_audit_records == 9
    # no digest yet: nothing broken, every record awaits the first digest, and the card says so in amber
    assert report.chain_intact and report.protected_records == 0
    assert report.awaiting_digest == report.tenant_audit_records
    verdicts = {v.name: v for v in report.verdicts}
    assert (verdicts["Digest chain over kms.audit"].level, verdicts["Digest chain over kms.audit"].headline) == (
        WARN, "not yet protected")
    assert verdicts["Ledger vs kms.audit"].level == OK and verdicts["Operations"].level == OK
    signs = [r for r in report.rollups if r.op == "sign"]
    assert sum(r.count for r in signs) == 3 and {r.reason for r in signs} == {"span signed"}
    assert all(r.records and r.records[0].startswith("spans.to-sign[") for r in signs)
    # the one grouped event of the three signings gives each operation its own record, caller and reason
    sign_ops = [o for o in report.operations if o.op == "sign"]
    assert sorted(o.records[-2:] for o in sign_ops if o.records) == ["@0", "@1", "@2"]
    assert {o.reason for o in sign_ops} == {"span signed"} and {o.outcome for o in sign_ops} == {"success"}


async def test_an_unknown_tenant_is_an_error_not_a_green_report():
    async with handler_harness(["keyledger-keygen"]) as parts:
        context, broker, captured = parts
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        audit = [Logged(0, n, k, v) for n, (k, v) in enumerate(captured.by_topic["kms.audit"])]
        with pytest.raises(UnknownTenant):
            await assemble(context.ledger, "nobody", audit, [], [], PublicKeyBook(), rotation_age=3600,
                           encrypt_limit=50)
        # a period before the tenant existed lists nothing and says so
        empty = await assemble(context.ledger, "acme", audit, [], [], PublicKeyBook(), rotation_age=3600,
                               encrypt_limit=50, period=Period(end_ns=1))
    assert empty.keys == [] and empty.operations == []
    assert {v.name: v.level for v in empty.verdicts}["Operations"] == WARN


def synthetic() -> TenantReport:
    t0 = 1_800_000_000 * NS
    report = TenantReport("acme<script>", t0 + 100 * NS, rotation_age_s=30, encrypt_limit=10)
    report.keys = [
        KeyVersion("a" * 32, "encryption", 1, "destroyed", t0, rotated_ns=t0 + 40 * NS, destroyed_ns=t0 + 60 * NS,
                   replaced_by="b" * 32, rotation_reason="manual", operations={"encrypt": 4}, usage=5, headroom=5,
                   age_at_rotation_s=40.0, late=True),
        KeyVersion("b" * 32, "encryption", 2, "active", t0 + 40 * NS, operations={"generate": 1}, usage=1,
                   headroom=9),
    ]
    report.operations = [Operation("c" * 32, "a" * 32, "encrypt", 4, False, t0 + 10 * NS,
                                   records="pii.requests[0]@7"),
                         Operation("d" * 32, "a" * 32, "denied", 1, True, t0 + 20 * NS, reason="<img src=x>",
                                   caller_id="e" * 32, records="pii.requests[1]@9")]
    report.ledger_agrees = report.chain_intact = True
    report.ledger_events = report.tenant_audit_records = report.protected_records = 2
    report.rollups = roll_up(report)
    report.verdicts = judge(report)
    return report


def test_denied_and_failed_operations_colour_their_card_and_link_to_their_rows():
    report = synthetic()
    verdicts = {v.name: v for v in report.verdicts}
    denied = [r for r in report.rollups if r.outcome == "denied"]
    assert verdicts["Operations"].level == WARN and verdicts["Operations"].link == denied[0].anchor
    assert verdicts["Policy"].level == BAD  # v1 was rotated late
    assert denied[0].caller_id == "e" * 32 and denied[0].records == ["pii.requests[1]@9"]
    html = render_html(report)
    assert f'href="#{denied[0].anchor}"' in html and f'id="{denied[0].anchor}"' in html
    report.operations.append(Operation("f" * 32, "a" * 32, "decrypt", 1, True, report.operations[-1].at_ns + 1,
                                       reason="refused"))
    report.rollups = roll_up(report)
    verdicts = {v.name: v for v in judge(report)}
    assert verdicts["Operations"].level == BAD
    assert "failed: the ciphertext did not authenticate under the key it names" in {r.reason for r in report.rollups}


@pytest.mark.parametrize(("reason", "words"), [
    ("not_allowed", "denied: caller not allowed for this tenant"),
    ("unknown_caller", "denied: caller not registered"),
    ("refused", "denied: the ciphertext names a key this tenant does not own"),
    ("key_not_found", "denied: the ciphertext names a key this tenant does not own"),
    ("key_destroyed", "denied: key destroyed"),
])
def test_denied_reasons_are_said_in_words(reason, words):
    assert Operation("c" * 32, "a" * 32, "denied", 1, True, 0, reason=reason).words == words


@pytest.mark.parametrize(("reason", "words"), [
    ("decrypt_failed", "failed: the ciphertext did not authenticate under the key it names"),
    ("malformed_ciphertext", "failed: the ciphertext is malformed"),
])
def test_failed_reasons_are_said_in_words(reason, words):
    assert Operation("c" * 32, "a" * 32, "decrypt", 1, True, 0, reason=reason).words == words


def signed(report: TenantReport, private: Ed25519PrivateKey | None = None) -> tuple[dict, bytes]:
    private = private or Ed25519PrivateKey.generate()
    document = sign_report(private, report.to_json(), tenant_id="keyledger-system", key_id="9" * 32)
    return json.loads(json.dumps(document)), public_key_bytes(private)


def key_whose_text_begins_with_a_dash() -> Ed25519PrivateKey:
    """A signing key whose base64url public key begins with '-' (one in 64): what argparse would take for an option."""
    while True:
        private = Ed25519PrivateKey.generate()
        if b64url_encode(public_key_bytes(private)).startswith("-"):
            return private


def test_a_signed_report_verifies_and_any_edit_fails():
    report = synthetic()
    document, public = signed(report)
    canonical_json(document)  # the JSON form has an RFC 8785 form (no integer beyond 2^53)
    html = render_document(document)
    text = json.dumps(document, indent=2)
    assert check_saved(html, public) == [] and check_saved(text, public) == []
    assert check_saved(html, None, {"9" * 32: public}) == []
    assert TenantReport.from_json(document["report"]).to_json() == document["report"]
    # 1. edit a number: in the JSON, in the HTML's visible table, in the HTML's embedded JSON
    assert check_saved(text.replace('"count": 4', '"count": 3'), public)
    assert ">4<" in html and check_saved(html.replace(">4<", ">3<", 1), public)
    assert check_saved(html.replace("&quot;count&quot;: 4", "&quot;count&quot;: 3"), public)
    # 2. drop a row: a denied row of the HTML, an operation of the JSON
    row = re.search(r'<tr class="denied"[^>]*>.*?</tr>', html)
    assert row is not None and check_saved(html.replace(row.group(0), ""), public)
    dropped = json.loads(text)
    del dropped["report"]["operations"][1]
    assert check_saved(json.dumps(dropped), public)
    # 3. swap the signature or the key: another key's signature, a key given that did not sign
    other, other_public = signed(report)
    swapped = {**document, "signature": other["signature"]}
    assert check_saved(json.dumps(swapped), public) and check_saved(json.dumps(document), other_public)
    resigned = {**document, "signature": {**document["signature"], "public_key": b64url_encode(other_public)}}
    assert check_saved(json.dumps(resigned), other_public)


def test_the_html_is_self_contained_escaped_and_drawn_inside_its_frame():
    html = render_html(synthetic())
    assert "acme&lt;script&gt;" in html and "&lt;img src=x&gt;" in html and "<img" not in html
    assert "<script" not in html and "<link" not in html and "@media print" in html
    svg = html[html.index("<svg"):html.index("</svg>")]
    bars = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)]
    assert len(bars) == 3  # v1 active then rotated, v2 active
    assert all(x >= LABEL and x + w <= WIDTH for x, w in bars)
    assert svg.count("<line x1") >= 2 and ">late<" in html and ">overdue<" not in html


async def test_a_period_selects_operations_and_says_so_at_the_top():
    async with handler_harness(["keyledger-keygen", "keyledger-signer"]) as parts:
        context, broker, captured = parts
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        await context.groups["keyledger-signer"].handle(
            [inbound("spans.to-sign", "acme", span_job("acme"), offset=n) for n in range(2)])
        audit = [Logged(0, n, k, v) for n, (k, v) in enumerate(captured.by_topic["kms.audit"])]
        whole = await assemble(context.ledger, "acme", audit, [], [], PublicKeyBook(), rotation_age=3600,
                               encrypt_limit=50)
        signed_at = [o.at_ns for o in whole.operations if o.op == "sign"]
        after = await assemble(context.ledger, "acme", audit, [], [], PublicKeyBook(), rotation_age=3600,
                               encrypt_limit=50, period=Period(start_ns=min(signed_at)))
    assert {o.op for o in whole.operations} == {"generate", "sign"}
    assert {o.op for o in after.operations} == {"sign"} and len(after.keys) == len(whole.keys)
    signing = next(k for k in after.keys if k.key_type == "signing")
    assert "generate" not in signing.operations and signing.created_ns < min(signed_at)  # lifecycle stays whole
    assert after.coverage.period_from is not None and after.coverage.period_to is None
    assert "the report time" in render_html(after)


def test_the_report_key_is_the_newest_anchored_live_system_key():
    from datetime import UTC, datetime

    from schemas.messages import KeyEvent, KeyMaterial
    from workers.core.b64 import b64encode
    from workers.tools.report_signing import ReportNotSigned, report_key

    def material(version: int, public: bytes) -> KeyMaterial:
        return KeyMaterial(key_id=f"{version:032x}", tenant_id="keyledger-system", key_type="signing", version=version,
                           kms_key_id="k", wrapped_key=b64encode(b"w" * 40), public_key=b64encode(public),
                           created_at=datetime.now(UTC))

    publics = {v: public_key_bytes(Ed25519PrivateKey.generate()) for v in (1, 2, 3)}
    records = [material(v, p).model_dump_json().encode() for v, p in publics.items()]
    revoked = KeyEvent(event_id="e" * 32, type="revoked", tenant_id="keyledger-system", key_id=f"{3:032x}",
                       key_type="signing", version=3, occurred_at=datetime.now(UTC)).model_dump_json().encode()
    anchors = {f"{v:032x}": p for v, p in publics.items()}
    assert report_key(records, anchors, []).material.version == 3
    assert report_key(records, anchors, [revoked]).material.version == 2  # a revoked key signs nothing
    lying = {**anchors, f"{2:032x}": publics[1]}  # keys.material says another public key than the ledger pins
    assert report_key(records, lying, [revoked]).material.version == 1
    with pytest.raises(ReportNotSigned):
        report_key(records, {}, [])  # nothing the ledger anchors


def test_report_verify_from_the_command_line_offline(tmp_path):
    from workers.app.cli import main

    document, public = signed(synthetic(), key_whose_text_begins_with_a_dash())
    saved = tmp_path / "report.html"
    saved.write_text(render_document(document), encoding="utf-8")
    key = b64url_encode(public)
    with pytest.raises(SystemExit) as done:
        main(["audit", "report", "verify", str(saved), "--public-key", key])
    assert done.value.code == 0
    saved.write_text(saved.read_text(encoding="utf-8").replace("acme&lt;script&gt;", "acme2&lt;script&gt;", 1),
                     encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        main(["audit", "report", "verify", str(saved), "--public-key", key])
    assert done.value.code == 1
    with pytest.raises(SystemExit) as done:
        main(["audit", "report", "verify"])  # no file
    assert done.value.code == 2
