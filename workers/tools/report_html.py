"""The tenant report as one self-contained HTML file: inline CSS, an inline SVG timeline, no external assets.

Readable on screen and printed (A4: @media print, black on white but the verdict colours, table
headers repeated on every page, rows never split, the timeline scaled to the page). Every text
from the topics or the ledger is escaped.

`render_document` renders a signed report (report_signing.py) from its JSON form alone and carries
that JSON and its signature in a `<pre>` data block, so `keyledger audit report verify` can render
the signed JSON again and compare: an edit of the HTML, of the JSON or of the signature fails.
"""

from __future__ import annotations

import json
from html import escape, unescape
from typing import Any

from workers.core.policy import NS
from workers.tools.report import BAD, OK, WARN, KeyVersion, Operation, TenantReport, Verdict, iso

DATA_ID = "keyledger-signed-report"
_DATA_OPEN = f'<pre id="{DATA_ID}" hidden>'
LEVEL_COLOURS = {OK: "#276749", WARN: "#b7791f", BAD: "#c53030"}

OP_COLOURS = {
    "generate": "#2b6cb0", "sign": "#2f855a", "encrypt": "#805ad5", "decrypt": "#d69e2e", "reencrypt": "#319795",
    "rotate": "#4a5568", "rewrap": "#718096", "revoke": "#c05621", "destroy": "#1a202c", "denied": "#e53e3e",
}
STATE_COLOURS = {"active": "#68d391", "rotated": "#a0aec0", "revoked": "#f6ad55", "destroyed": "#2d3748"}

CSS = """
:root { --ink: #1a202c; --muted: #4a5568; --line: #e2e8f0; --ok: #276749; --warn: #b7791f; --bad: #c53030; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0 0 16px; }
.verdicts { display: grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap: 12px; }
.verdict { border: 1px solid var(--line); border-left: 6px solid var(--ok); border-radius: 4px; padding: 10px 12px; }
.verdict.ok { border-left-color: var(--ok); background: #f0fff4; }
.verdict.warn { border-left-color: var(--warn); background: #fffaf0; }
.verdict.bad { border-left-color: var(--bad); background: #fff5f5; }
.verdict b.ok { color: var(--ok); } .verdict b.warn { color: var(--warn); } .verdict b.bad { color: var(--bad); }
.covers td:first-child { white-space: nowrap; color: var(--muted); width: 14em; }
tr.denied td { background: #fffaf0; } tr.failed td { background: #fff5f5; }
tr:target td { outline: 2px solid var(--warn); }
details summary { cursor: pointer; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f7fafc; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.flag { color: var(--bad); font-weight: 600; } .fine { color: var(--ok); }
.legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
.timeline { width: 100%; height: auto; border: 1px solid var(--line); }
.problems li { font-family: ui-monospace, monospace; font-size: 12px; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 9pt; color: #000; }
  h2 { break-after: avoid; } .verdict, .timeline, tr { break-inside: avoid; }
  thead { display: table-header-group; } table { font-size: 8pt; }
  th { background: none; } .timeline { border: none; }
  a { color: #000; text-decoration: none; }
  details::details-content { content-visibility: visible; } details > summary { list-style: none; }
  .verdicts { grid-template-columns: repeat(2, 1fr); }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def render_html(report: TenantReport, document: dict[str, Any] | None = None) -> str:
    """The report as one HTML file; with `document` (the signed JSON form), that document is embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>keyledger key lifecycle: {escape(report.tenant)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Key lifecycle report: tenant <code>{escape(report.tenant)}</code></h1>",
        f'<p class="meta">generated {_when(report.generated_at_ns)} (this machine\'s clock) · key and operation times '
        "are TigerBeetle cluster time (UTC) · "
        f"rotation age {report.rotation_age_s:,} s · encryption limit {report.encrypt_limit:,} per key</p>",
        _verdicts(report),
        "<h2>What this report covers</h2>", _coverage(report, document),
        "<h2>Timeline</h2>",
        f"<figure>{_timeline(report)}{_legend()}</figure>",
        "<h2>Keys and versions</h2>", _keys_table(report),
        '<h2 id="wrapping">KMS wrapping per version: re-wraps, migrations, deletion</h2>', _wrapping_table(report),
        _deletion(report),
        "<h2>Operations per key</h2>", _operations_table(report),
        '<h2 id="operations">Operations by day, key, caller and outcome</h2>', _rollup_table(report),
        '<h2 id="rotations">Rotation cadence</h2>', _rotations_table(report),
        "<h2>Wear-out headroom (encryption keys)</h2>", _wear_table(report),
        '<h2 id="denied">Denied and failed operations</h2>', _denied_table(report),
        '<p class="meta">Sources: TigerBeetle accounts and transfers (code 8), keys.events, kms.audit and '
        "kms.audit.digests. Re-check with <code>keyledger audit verify</code>; check this file with "
        "<code>keyledger audit report verify FILE</code>.</p>",
    ]
    if document is not None:
        parts.append(_DATA_OPEN + escape(json.dumps(document, sort_keys=True, ensure_ascii=True)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_document(document: dict[str, Any]) -> str:
    """The HTML of a signed report document ({"report": ..., "signature": ...}), from its JSON form alone."""
    return render_html(TenantReport.from_json(document["report"]), document)


def embedded_document(html: str) -> dict[str, Any] | None:
    """The signed document an HTML report carries, or None when it carries none."""
    start = html.find(_DATA_OPEN)
    if start < 0:
        return None
    start += len(_DATA_OPEN)
    end = html.find("</pre>", start)
    if end < 0:
        return None
    found = json.loads(unescape(html[start:end]))
    return found if isinstance(found, dict) else None


def _when(ns: int | None) -> str:
    text = iso(ns)
    return escape(text.replace("T", " ").replace("Z", " UTC")) if text else "—"


def _text_time(text: str | None) -> str:
    return escape(text.replace("T", " ").replace("Z", " UTC")) if text else "—"


def _verdicts(report: TenantReport) -> str:
    return '<div class="verdicts">' + "".join(_card(v) for v in report.verdicts) + "</div>"


def _card(verdict: Verdict) -> str:
    link = f' · <a href="#{escape(verdict.link)}">see the rows</a>' if verdict.link else ""
    return (f'<div class="verdict {escape(verdict.level)}" data-level="{escape(verdict.level)}">'
            f"<div>{escape(verdict.name)}</div><b class=\"{escape(verdict.level)}\">{escape(verdict.headline)}</b>: "
            f"{escape(verdict.detail)}{link}{_problems(verdict.problems)}</div>")


def _coverage(report: TenantReport, document: dict[str, Any] | None) -> str:
    covers = report.coverage
    period = (f"{_text_time(covers.period_from) if covers.period_from else 'the beginning'} to "
              f"{_text_time(covers.period_to) if covers.period_to else 'the report time'} (ledger time)")
    rows = [["period", period], ["generated", _when(report.generated_at_ns) + " (this machine's clock)"],
            ["ledger", escape(covers.ledger)]]
    for source in covers.sources:
        spans = ", ".join(f"partition {p}: offsets {a:,}–{b:,} ({n:,} records)" for p, (a, b, n) in
                          source.partitions.items()) or "empty"
        rows.append([f"topic <code>{escape(source.name)}</code>", escape(spans)])
    chain = ", ".join(f"partition {p}: offsets {a:,}–{b:,}" for p, (a, b) in covers.chain_span.items()) or "no digest yet"
    rows.append(["digest chain span", escape(chain) + (f"; digests from {_text_time(covers.chain_first_digest_at)} to "
                                                       f"{_text_time(covers.chain_last_digest_at)}"
                                                       if covers.chain_first_digest_at else "")])
    signature = (document or {}).get("signature")
    if isinstance(signature, dict):
        rows.append(["signed by", f"report key <code>{escape(str(signature.get('key_id')))}</code> of tenant "
                     f"<code>{escape(str(signature.get('tenant_id')))}</code>, Ed25519 public key "
                     f"<code>{escape(str(signature.get('public_key')))}</code>"])
    else:
        rows.append(["signed by", '<span class="flag">unsigned</span>'])
    body = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in rows)
    return f'<table class="covers"><tbody>{body}</tbody></table>'


def _problems(problems: list[str]) -> str:
    if not problems:
        return ""
    shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:20])
    more = f"<li>… and {len(problems) - 20} more</li>" if len(problems) > 20 else ""
    return f'<ul class="problems">{shown}{more}</ul>'


# --- timeline --------------------------------------------------------------------------

WIDTH, LABEL, ROW, TOP, AXIS = 1100, 190, 38, 14, 34
TIMELINE_ROWS = 12  # versions per timeline part: one part fits an A4 landscape page


def _timeline(report: TenantReport) -> str:
    """One SVG per TIMELINE_ROWS versions on one shared time axis, so each part fits a printed page."""
    keys = report.keys
    if not keys:
        return "<p>No key accounts for this tenant in the ledger.</p>"
    start = min(k.created_ns for k in keys)
    # live keys' bars run to the report's time, destroyed ones stop at their destruction
    live = [report.generated_at_ns for k in keys if k.destroyed_ns is None]
    end = max([start + NS, *live, *(_end(k, report) for k in keys), *(o.at_ns for o in report.operations)])
    return "".join(_timeline_part(report, keys[n:n + TIMELINE_ROWS], start, end - start)
                   for n in range(0, len(keys), TIMELINE_ROWS))


def _timeline_part(report: TenantReport, keys: list[KeyVersion], start: int, span: int) -> str:
    plot = WIDTH - LABEL - 16

    def x(ns: int) -> float:
        return LABEL + plot * (ns - start) / span

    height = TOP + ROW * len(keys) + AXIS
    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'aria-label="key versions over time with their operations">',
           '<style>text{font:12px system-ui,sans-serif;fill:#1a202c}.axis{fill:#4a5568;font-size:11px}</style>']
    rows = {k.key_id: i for i, k in enumerate(keys)}
    for i, key in enumerate(keys):
        y = TOP + i * ROW
        out.append(f'<text x="4" y="{y + 19}">{escape(key.key_type)} v{key.version} · {escape(key.key_id[:8])}</text>')
        for state, begin, stop in _segments(key, report):
            out.append(f'<rect x="{x(begin):.1f}" y="{y + 10}" width="{max(x(stop) - x(begin), 1.5):.1f}" height="12" '
                       f'fill="{STATE_COLOURS[state]}"><title>{state} {_when(begin)} – {_when(stop)}</title></rect>')
        if key.destroyed_ns is not None:
            cx = x(key.destroyed_ns)
            out.append(f'<path d="M{cx - 5:.1f} {y + 8} l10 16 m0 -16 l-10 16" stroke="#000" stroke-width="2"/>')
    for op in report.operations:
        row = rows.get(op.key_id)
        if row is None:
            continue
        colour = OP_COLOURS["denied"] if op.denied else OP_COLOURS.get(op.op, "#000")
        y = TOP + row * ROW
        # done operations above the bar, denied and failed ones below it: a refusal never hides among successes
        top = y + 22 if op.denied else y
        out.append(f'<line x1="{x(op.at_ns):.1f}" x2="{x(op.at_ns):.1f}" y1="{top}" y2="{top + 10}" stroke="{colour}" '
                   f'stroke-width="{4 if op.denied else 3}"><title>{escape(op.op)} ×{op.count} {escape(op.words)} '
                   f"{_when(op.at_ns)}</title></line>")
    axis_y = TOP + ROW * len(keys) + 4
    out.append(f'<line x1="{LABEL}" x2="{LABEL + plot}" y1="{axis_y}" y2="{axis_y}" stroke="#4a5568"/>')
    for n in range(5):
        at = start + span * n // 4
        anchor = "start" if n == 0 else "end" if n == 4 else "middle"
        out.append(f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#4a5568"/>'
                   f'<text class="axis" x="{x(at):.1f}" y="{axis_y + 17}" text-anchor="{anchor}">'
                   f"{escape(_tick_label(at, span))}</text>")
    out.append("</svg>")
    return "".join(out)


def _end(key: KeyVersion, report: TenantReport) -> int:
    return key.destroyed_ns or max([key.created_ns, *(o.at_ns for o in report.operations if o.key_id == key.key_id)])


def _segments(key: KeyVersion, report: TenantReport) -> list[tuple[str, int, int]]:
    """(state, from, to) bars: active until rotated, rotated until revoked, revoked until destroyed."""
    marks = [("active", key.created_ns), ("rotated", key.rotated_ns), ("revoked", key.revoked_ns)]
    stop = key.destroyed_ns if key.destroyed_ns is not None else max(report.generated_at_ns, _end(key, report))
    known = sorted([(at, state) for state, at in marks if at is not None])
    bars = []
    for n, (at, state) in enumerate(known):
        until = known[n + 1][0] if n + 1 < len(known) else stop
        bars.append((state, at, max(until, at)))
    return bars


def _tick_label(ns: int, span: int) -> str:
    text = iso(ns) or ""
    if span < 86_400 * NS:
        return text[11:23] if span < 60 * NS else text[11:19]
    return text[:16].replace("T", " ")


def _legend() -> str:
    states = "".join(f'<span><i class="swatch" style="background:{c}"></i>{s}</span>' for s, c in STATE_COLOURS.items())
    ops = "".join(f'<span><i class="swatch" style="background:{c}"></i>{o}</span>' for o, c in OP_COLOURS.items())
    return (f'<figcaption class="legend">bars: {states} ✕ destroyed<br>ticks above a bar (operations done), '
            f"below it (denied or failed): {ops}</figcaption>")


# --- tables ----------------------------------------------------------------------------


def _row(n: int, classes: list[str] | None, ids: list[str] | None) -> str:
    attributes = ""
    if classes is not None:
        attributes += f' class="{escape(classes[n])}"'
    if ids is not None:
        attributes += f' id="{escape(ids[n])}"'
    return f"<tr{attributes}>"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, empty: str = "none",
           classes: list[str] | None = None, ids: list[str] | None = None) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(_row(n, classes, ids) + "".join(f'<td{" class=num" if i in numeric else ""}>{cell}</td>'
                                                   for i, cell in enumerate(row)) + "</tr>"
                   for n, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _keys_table(report: TenantReport) -> str:
    rows = [[f"<code>{escape(k.key_id)}</code>", escape(k.key_type), k.version, escape(k.state), _when(k.created_ns),
             _when(k.rotated_ns), _when(k.revoked_ns), _when(k.destroyed_ns), escape(k.rotation_reason or "—"),
             escape(", ".join(k.announced) or "—")] for k in report.keys]
    return _table(["key id", "type", "v", "state", "created", "rotated", "revoked", "destroyed", "replaced because",
                   "keys.events"], rows, {2}, "no keys")


def _wrapping_table(report: TenantReport) -> str:
    rows = []
    for k in report.keys:
        history = "<br>".join(
            f"{_text_time(w.at)} {escape(w.op)}: {escape(w.kms_provider)} <code>{escape(w.kms_key_id)}</code>"
            + (f" KEK v{w.kek_version}" if w.kek_version is not None else "") for w in k.wrappings) or "—"
        moves = sum(w.op == "rewrap" for w in k.wrappings)
        rows.append([f"{escape(k.key_type)} v{k.version}", escape(k.kms_provider or "—"),
                     f"<code>{escape(k.kms_key_id or '—')}</code>",
                     str(k.kek_version) if k.kek_version is not None else "—", f"{moves:,}", history,
                     _when(k.destroyed_ns), escape(k.destroyed_by or "—"), _text_time(k.kms_deletion_date)])
    return _table(["version", "provider", "KMS key", "KEK version", "re-wraps", "wrapped (ledger time)",
                   "destroyed", "by record", "KMS key deleted at the earliest"], rows, {4}, "no keys")


def _deletion(report: TenantReport) -> str:
    destroyed = [k for k in report.keys if k.destroyed_ns is not None]
    if not destroyed or len(destroyed) < len(report.keys):
        return ""
    by = sorted({k.destroyed_by for k in destroyed if k.destroyed_by})
    dates = sorted({k.kms_deletion_date for k in destroyed if k.kms_deletion_date})
    deletion = (f"; the KMS deletes the tenant's own key at the earliest {_text_time(dates[-1])}" if dates else
                "; its keys were wrapped under a shared KMS key, nothing scheduled for deletion")
    return (f'<p class="meta">Tenant deleted: every key version destroyed by {_when(max(k.destroyed_ns or 0 for k in destroyed))}'
            f" (ledger time), caused by {escape(', '.join(by) or 'an unrecorded event')}{deletion}.</p>")


def _operations_table(report: TenantReport) -> str:
    kinds = sorted({op for k in report.keys for op in [*k.operations, *k.failures]})
    rows = []
    for k in report.keys:
        cells = [f"{k.operations.get(op, 0):,}" + (f' <span class="flag">+{k.failures[op]:,} failed</span>'
                                                   if op in k.failures else "") for op in kinds]
        rows.append([f"{escape(k.key_type)} v{k.version}", *cells])
    totals = report.totals()
    rows.append(["<b>all keys</b>", *[f"<b>{totals.get(op, 0):,}</b>" for op in kinds]])
    return _table(["key", *kinds], rows, set(range(1, len(kinds) + 1)))


def _rotations_table(report: TenantReport) -> str:
    rows = []
    for k in report.keys:
        if k.rotated_ns is not None:
            verdict = '<span class="flag">late</span>' if k.late else '<span class="fine">on time</span>'
            rows.append([f"{escape(k.key_type)} v{k.version} → v{k.version + 1}", _when(k.rotated_ns),
                         _duration(k.age_at_rotation_s), escape(k.rotation_reason or "—"), verdict])
        elif k.state == "active":
            verdict = '<span class="flag">overdue</span>' if k.overdue else '<span class="fine">within policy</span>'
            rows.append([f"{escape(k.key_type)} v{k.version} (active)", "—",
                         _duration((report.generated_at_ns - k.created_ns) / NS) + " so far", "—", verdict])
    return _table(["version", "rotated", "age", "reason", f"vs {report.rotation_age_s:,} s policy"], rows,
                  empty="no rotations")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def _wear_table(report: TenantReport) -> str:
    rows = []
    for k in report.keys:
        if k.headroom is None:
            continue
        used = k.usage / report.encrypt_limit if report.encrypt_limit else 1.0
        bar = (f'<svg width="120" height="10" xmlns="http://www.w3.org/2000/svg"><rect width="120" height="10" '
               f'fill="#edf2f7"/><rect width="{min(used, 1.0) * 120:.1f}" height="10" '
               f'fill="{"#e53e3e" if used > 0.9 else "#805ad5"}"/></svg>')
        rows.append([f"encryption v{k.version}", escape(k.state), f"{k.usage:,}", f"{k.headroom:,}",
                     _percent(used), bar])
    return _table(["key", "state", "usage counter", "headroom", "used", ""], rows, {2, 3, 4}, "no encryption keys")


def _percent(fraction: float) -> str:
    if fraction == 0:
        return "0%"
    return "<0.01%" if fraction < 0.0001 else f"{fraction:.2%}"


def _denied_table(report: TenantReport) -> str:
    denied: list[Operation] = report.denied
    rows = [[_when(o.at_ns), f"<code>{escape(o.key_id[:12])}…</code>", escape(o.op), f"{o.count:,}",
             escape(o.caller_id or "—"), escape(o.words), escape(o.records or "—"),
             f"<code>{escape(o.transfer_id)}</code>"] for o in denied[:200]]
    return _table(["when", "key", "operation", "count", "caller", "outcome", "caused by record",
                   "transfer / event id"], rows, {3}, "no denied or failed operations",
                  [o.outcome for o in denied[:200]])


def _rollup_table(report: TenantReport) -> str:
    rows, classes, ids = [], [], []
    for r in report.rollups:
        records = ""
        if r.records:
            listed = "<br>".join(escape(x) for x in r.records)
            more = "" if len(r.records) >= r.transfers else f"<br>… {r.transfers - len(r.records):,} more in the JSON"
            records = f"<details><summary>{len(r.records)} of {r.transfers}</summary>{listed}{more}</details>"
        rows.append([escape(r.day), escape(r.key), escape(r.op), f"{r.count:,}", f"{r.transfers:,}",
                     escape(r.caller_id or "—"), escape(r.outcome), escape(r.reason), records or "—"])
        classes.append(r.outcome)
        ids.append(r.anchor)
    return _table(["day (UTC)", "key", "operation", "count", "transfers", "caller", "outcome", "reason",
                   "caused by records"], rows, {3, 4}, "no operations in the period", classes, ids)
