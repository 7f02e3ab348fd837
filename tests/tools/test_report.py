"""The tenant report without a broker: facts from the memory ledger (handler harness), and the HTML itself.

The same facts over a real broker and TigerBeetle, rendered by a real browser, are in
tests/integration/test_report_flow.py.
"""

from __future__ import annotations

import re

from tests.support.harness import handler_harness, inbound, span_job, tenant_created, tick
from workers.tools.audit_check import Logged
from workers.tools.report import KeyVersion, Operation, TenantReport, assemble
from workers.tools.report_html import LABEL, WIDTH, render_html
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
        audit = [Logged(0, n, k, v) for n, (k, v) in enumerate(captured.by_topic["kms.audit"])]
        events = [v for _, v in captured.by_topic["keys.events"]]
        book = PublicKeyBook()
        report = await assemble(context.ledger, "acme", audit, [], events, book, rotation_age=3600, encrypt_limit=50)

    keys = {(k.key_type, k.version): k for k in report.keys}
    assert sorted(keys) == [("encryption", 1), ("signing", 1), ("signing", 2)]  # globex's keys are not acme's
    assert keys[("signing", 1)].operations == {"generate": 1, "revoke": 1, "rotate": 1, "sign": 3}
    assert (keys[("signing", 1)].state, keys[("signing", 1)].rotation_reason) == ("revoked", "compromise")
    assert keys[("signing", 1)].late is False and keys[("signing", 2)].state == "active"
    assert keys[("encryption", 1)].headroom == 50 - 1 and keys[("signing", 1)].headroom is None
    # the three spans of one batch and key are one audit event naming three transfers
    assert report.ledger_agrees and len(report.operations) == 8
    assert report.ledger_events == report.tenant_audit_records == 6
    # no digest yet: nothing broken, every record awaits the first digest
    assert report.chain_intact and report.protected_records == 0
    assert report.awaiting_digest == report.tenant_audit_records


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
    report.operations = [Operation("c" * 32, "a" * 32, "encrypt", 4, False, t0 + 10 * NS),
                         Operation("d" * 32, "a" * 32, "denied", 1, True, t0 + 20 * NS, reason="<img src=x>")]
    report.ledger_agrees = report.chain_intact = True
    return report


def test_the_html_is_self_contained_escaped_and_drawn_inside_its_frame():
    html = render_html(synthetic())
    assert "acme&lt;script&gt;" in html and "&lt;img src=x&gt;" in html and "<img" not in html
    assert "<script" not in html and "<link" not in html and "@media print" in html
    svg = html[html.index("<svg"):html.index("</svg>")]
    bars = [(float(x), float(w)) for x, w in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', svg)]
    assert len(bars) == 3  # v1 active then rotated, v2 active
    assert all(x >= LABEL and x + w <= WIDTH for x, w in bars)
    assert svg.count("<line x1") >= 2 and ">late<" in html and ">overdue<" not in html
