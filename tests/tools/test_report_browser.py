"""The HTML report as a person sees it in headless Chromium: versions, callers, denied rows, verdict colours,
and A4 print at a thousand operations and fifty versions. Skips, saying why, without Chromium."""

from __future__ import annotations

import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.browser import colours, dump_dom, print_pdf, screenshot
from workers.core.report_signature import sign_report
from workers.core.signing import public_key_bytes
from workers.tools.report import BAD, OK, WARN, KeyVersion, Operation, TenantReport, judge, roll_up
from workers.tools.report_html import LEVEL_COLOURS, render_document
from workers.tools.report_signing import check_saved

pytestmark = [pytest.mark.process, pytest.mark.browser]

NS = 1_000_000_000
DAY = 86_400 * NS
CALLER = "c0ffee" + "0" * 26


def history(versions: int, operations: int, *, denied: int) -> TenantReport:
    """`versions` encryption versions rotated daily, `operations` encrypts spread over them, `denied` refusals."""
    t0 = 1_800_000_000 * NS
    report = TenantReport("acme", t0 + versions * DAY, rotation_age_s=10**9, encrypt_limit=10**6)
    for v in range(1, versions + 1):
        last = v == versions
        report.keys.append(KeyVersion(f"{v:032x}", "encryption", v, "active" if last else "rotated",
                                      t0 + (v - 1) * DAY, rotated_ns=None if last else t0 + v * DAY,
                                      replaced_by=None if last else f"{v + 1:032x}", rotation_reason="scheduled",
                                      operations={"encrypt": 1}, usage=1, headroom=10**6 - 1,
                                      age_at_rotation_s=None if last else 86_400.0, late=None if last else False))
    for n in range(operations):
        v = n * versions // operations + 1
        report.operations.append(Operation(f"{n:032x}", f"{v:032x}", "encrypt", 1, False,
                                           t0 + (v - 1) * DAY + n * NS, "pii fields", CALLER,
                                           f"pii.requests[0]@{n}"))
    for n in range(denied):
        report.operations.append(Operation(f"{10**6 + n:032x}", f"{1:032x}", "denied", 1, True, t0 + 5 * NS + n,
                                           "not_allowed", "badbad" + "0" * 26, f"pii.requests[1]@{n}"))
    report.operations.sort(key=lambda o: o.at_ns)
    report.ledger_agrees = report.chain_intact = True
    report.ledger_events = report.tenant_audit_records = report.protected_records = len(report.operations)
    report.chain_digests = 3
    report.rollups = roll_up(report)
    report.verdicts = judge(report)
    return report


def saved(report: TenantReport, tmp_path, name: str):
    private = Ed25519PrivateKey.generate()
    document = json.loads(json.dumps(sign_report(private, report.to_json(), tenant_id="keyledger-system",
                                                 key_id="9" * 32)))
    page = tmp_path / f"{name}.html"
    page.write_text(render_document(document), encoding="utf-8")
    return page, public_key_bytes(private)


def card_colours(report: TenantReport, tmp_path, name: str):
    page, _ = saved(report, tmp_path, name)
    pixels = screenshot(page, tmp_path / f"{name}.png", height=700)
    seen = colours(pixels, 0, 400)  # the heading and the verdict cards
    return {level: seen[colour] for level, colour in LEVEL_COLOURS.items()}


def test_a_person_sees_versions_callers_and_denied_rows(tmp_path):
    report = history(50, 1000, denied=3)
    page, public = saved(report, tmp_path, "big")
    assert check_saved(page.read_text(encoding="utf-8"), public) == []
    dom = dump_dom(page)
    assert all(f"encryption v{v}" in dom for v in (1, 25, 50))
    assert CALLER in dom and "badbad" in dom
    denied_rows = re.findall(r'<tr class="denied"[^>]*>(.*?)</tr>', dom, re.S)
    assert len(denied_rows) >= 2  # the rolled-up row and the listed refusals
    assert all("denied: caller not allowed for this tenant" in row for row in denied_rows)
    levels = dict(re.findall(r'<div class="verdict \w+" data-level="(\w+)"><div>([^<]+)</div>', dom))
    assert {v: k for k, v in levels.items()}["Operations"] == WARN


def test_verdict_cards_show_their_colour(tmp_path):
    green = card_colours(history(3, 30, denied=0), tmp_path, "green")
    assert green[OK] > 200 and green[WARN] == 0 and green[BAD] == 0
    amber = card_colours(history(3, 30, denied=2), tmp_path, "amber")
    assert amber[WARN] > 200 and amber[BAD] == 0


def test_it_prints_on_a4_pages(tmp_path):
    page, _ = saved(history(50, 1000, denied=3), tmp_path, "print")
    assert page.read_text(encoding="utf-8").count('<svg class="timeline"') == 5  # fifty versions, twelve per page
    pdf = print_pdf(page, tmp_path / "report.pdf")
    assert pdf.startswith(b"%PDF")
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert boxes and all(abs(float(w) - 841.89) < 2 and abs(float(h) - 595.28) < 2 for w, h in boxes)  # A4 landscape
    assert len(boxes) > 5  # a thousand operations span pages, headers repeated on each
