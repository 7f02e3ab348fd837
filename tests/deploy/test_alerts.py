"""One alert set: compose/alerts.yml is the source; the PrometheusRule the manifests render and the
README's alert table are made from it by k8s/sync_alerts.py and must not drift. promtool checks the
rules where it is installed (Debian's `prometheus` package ships it); a schema check runs everywhere."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_k8s import of_kind, render

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "compose" / "alerts.yml"


def _sync():
    spec = importlib.util.spec_from_file_location("sync_alerts", ROOT / "k8s" / "sync_alerts.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(SOURCE.read_text())["groups"] for r in g["rules"]]


def test_the_prometheus_rule_and_the_readme_are_made_from_compose_alerts():
    assert _sync().main(["--check"]) == 0, "run python k8s/sync_alerts.py"


@pytest.mark.parametrize("target", ["base", "overlays/production"])
def test_the_rendered_prometheus_rule_carries_every_alert(target):
    (rule,) = of_kind(render(target), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(SOURCE.read_text())["groups"]


def test_the_readme_table_lists_every_alert_once():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- alerts:"):readme.index("<!-- /alerts -->")]
    names = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| Keyledger")]
    assert names == [r["alert"] for r in rules()]


def test_rules_have_the_fields_prometheus_reads():
    """The PrometheusRule schema's rule fields, and a duration Prometheus parses."""
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        if "for" in rule:
            assert isinstance(rule["for"], str) and rule["for"][:-1].isdigit() and rule["for"][-1] in "smhd"
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert all(isinstance(v, str) for v in rule["annotations"].values()), rule["alert"]


def test_promtool_accepts_the_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): the schema test above still ran")
    (rule,) = of_kind(render("base"), "PrometheusRule")
    rendered = tmp_path / "rule.yml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    for path in (SOURCE, rendered):
        done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
