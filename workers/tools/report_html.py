"""The tenant report as one self-contained HTML file: inline CSS, an inline SVG timeline, no external assets.

Readable on screen and printed (@media print: black on white, tables kept whole,
the timeline scaled to the page). Every text from the topics or the ledger is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

from workers.core.policy import NS
from workers.tools.report import KeyVersion, Operation, TenantReport, iso

OP_COLOURS = {
    "generate": "#2b6cb0", "sign": "#2f855a", "encrypt": "#805ad5", "decrypt": "#d69e2e", "reencrypt": "#319795",
    "rotate": "#4a5568", "rewrap": "#718096", "revoke": "#c05621", "destroy": "#1a202c", "denied": "#e53e3e",
}
STATE_COLOURS = {"active": "#68d391", "rotated": "#a0aec0", "revoked": "#f6ad55", "destroyed": "#2d3748"}

CSS = """
:root { --ink: #1a202c; --muted: #4a5568; --line: #e2e8f0; --ok: #276749; --bad: #c53030; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0 0 16px; }
.verdicts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
.verdict { border: 1px solid var(--line); border-left: 6px solid var(--ok); border-radius: 4px; padding: 10px 12px; }
.verdict.bad { border-left-color: var(--bad); }
.verdict b.ok { color: var(--ok); } .verdict b.bad { color: var(--bad); }
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
  body { margin: 0; max-width: none; font-size: 10pt; color: #000; }
  h2 { break-after: avoid; } table, .verdict, figure { break-inside: avoid; }
  th { background: none; } .timeline { border: none; }
  a { color: #000; text-decoration: none; }
}
"""


def render_html(report: TenantReport) -> str:
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
        "<h2>Timeline</h2>",
        f"<figure>{_timeline(report)}{_legend()}</figure>",
        "<h2>Keys and versions</h2>", _keys_table(report),
        "<h2>Operations per key</h2>", _operations_table(report),
        "<h2>Rotation cadence</h2>", _rotations_table(report),
        "<h2>Wear-out headroom (encryption keys)</h2>", _wear_table(report),
        "<h2>Denied operations</h2>", _denied_table(report),
        '<p class="meta">Sources: TigerBeetle accounts and transfers (code 8), keys.events, kms.audit and '
        "kms.audit.digests. Re-check with <code>keyledger audit verify</code>.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _when(ns: int | None) -> str:
    text = iso(ns)
    return escape(text.replace("T", " ").replace("Z", " UTC")) if text else "—"


def _verdicts(report: TenantReport) -> str:
    ledger_ok = report.ledger_agrees
    chain_ok = report.chain_intact
    ledger = (f"<b class=\"{'ok' if ledger_ok else 'bad'}\">{'agree' if ledger_ok else 'DISAGREE'}</b>: "
              f"{report.ledger_events:,} audit events of this tenant compared with TigerBeetle both ways"
              + _problems(report.ledger_mismatches))
    chain = (f"<b class=\"{'ok' if chain_ok else 'bad'}\">{'intact' if chain_ok else 'BROKEN'}</b>: "
             f"{report.chain_digests:,} signed digests; {report.protected_records:,} of this tenant's "
             f"{report.tenant_audit_records:,} audit records protected, {report.awaiting_digest:,} awaiting the next digest"
             + _problems(report.chain_problems))
    late = len(report.late_rotations)
    overdue = sum(k.overdue for k in report.keys)
    policy = (f"<b class=\"{'bad' if late or overdue else 'ok'}\">{late} late rotation(s), {overdue} overdue key(s)</b>; "
              f"{sum(o.count for o in report.denied):,} denied operation(s)")
    return ('<div class="verdicts">'
            f'<div class="verdict{"" if ledger_ok else " bad"}"><div>Ledger vs kms.audit</div>{ledger}</div>'
            f'<div class="verdict{"" if chain_ok else " bad"}"><div>Digest chain over kms.audit</div>{chain}</div>'
            f'<div class="verdict{" bad" if late or overdue else ""}"><div>Policy</div>{policy}</div>'
            "</div>")


def _problems(problems: list[str]) -> str:
    if not problems:
        return ""
    shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:20])
    more = f"<li>… and {len(problems) - 20} more</li>" if len(problems) > 20 else ""
    return f'<ul class="problems">{shown}{more}</ul>'


# --- timeline --------------------------------------------------------------------------

WIDTH, LABEL, ROW, TOP, AXIS = 1100, 190, 34, 14, 34


def _timeline(report: TenantReport) -> str:
    keys = report.keys
    if not keys:
        return "<p>No key accounts for this tenant in the ledger.</p>"
    start = min(k.created_ns for k in keys)
    # live keys' bars run to the report's time, destroyed ones stop at their destruction
    live = [report.generated_at_ns for k in keys if k.destroyed_ns is None]
    end = max([start + NS, *live, *(_end(k, report) for k in keys), *(o.at_ns for o in report.operations)])
    span = end - start
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
        out.append(f'<line x1="{x(op.at_ns):.1f}" x2="{x(op.at_ns):.1f}" y1="{y + 2}" y2="{y + 10}" stroke="{colour}" '
                   f'stroke-width="2"><title>{escape(op.op)} ×{op.count} {_when(op.at_ns)}</title></line>')
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
    return (f'<figcaption class="legend">bars: {states} ✕ destroyed<br>ticks (operations): {ops}</figcaption>')


# --- tables ----------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, empty: str = "none") -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{cell}</td>' for i, cell in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _keys_table(report: TenantReport) -> str:
    rows = [[f"<code>{escape(k.key_id)}</code>", escape(k.key_type), k.version, escape(k.state), _when(k.created_ns),
             _when(k.rotated_ns), _when(k.revoked_ns), _when(k.destroyed_ns), escape(k.rotation_reason or "—"),
             escape(", ".join(k.announced) or "—")] for k in report.keys]
    return _table(["key id", "type", "v", "state", "created", "rotated", "revoked", "destroyed", "replaced because",
                   "keys.events"], rows, {2}, "no keys")


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
             escape(o.reason or "—"), f"<code>{escape(o.transfer_id)}</code>"] for o in denied[:200]]
    return _table(["when", "key", "operation", "count", "reason", "transfer / event id"], rows, {3},
                  "no denied operations")
