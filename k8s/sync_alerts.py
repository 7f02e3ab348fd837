"""Writes keyledger's alerts where they are read, from their one source, compose/alerts.yml:

- k8s/base/prometheusrule.yaml: the same groups as a Prometheus Operator PrometheusRule;
- README.md: the "Alerts worth setting" table, between its `<!-- alerts -->` markers.

`python k8s/sync_alerts.py` rewrites both; `--check` only says whether they are current (exit 1 when
not). tests/deploy/test_alerts.py runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "compose" / "alerts.yml"
RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
README = ROOT / "README.md"
BEGIN = "<!-- alerts: generated from compose/alerts.yml by `python k8s/sync_alerts.py`; edit that file -->"
END = "<!-- /alerts -->"


def groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(SOURCE.read_text())["groups"])


def prometheus_rule() -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "keyledger", "labels": {"app.kubernetes.io/name": "keyledger"}},
        "spec": {"groups": groups()},
    }
    header = ("# Generated from compose/alerts.yml by `python k8s/sync_alerts.py`: edit that file, not this one.\n"
              "# Needs the Prometheus Operator (like servicemonitor.yaml).\n")
    return header + yaml.safe_dump(rule, sort_keys=False, width=200)


def readme_table() -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = [BEGIN, "| alert | PromQL | for | severity | why |", "|---|---|---|---|---|"]
    for group in groups():
        for rule in group["rules"]:
            lines.append(f"| {rule['alert']} | `{cell(rule['expr'])}` | {rule.get('for', '')} | "
                         f"{rule['labels']['severity']} | {cell(rule['annotations']['description'])} |")
    lines.append(END)
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + readme_table() + readme[end:]


def main(argv: list[str]) -> int:
    readme = README.read_text()
    wanted = {RULE: prometheus_rule(), README: readme_with_table(readme)}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not what compose/alerts.yml makes: run python k8s/sync_alerts.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
