"""The TigerBeetle component (k8s/components/tigerbeetle), as overlays/production-tigerbeetle renders it:
valid objects, three replicas on three nodes with their own volumes, a format step that never formats a
replica that has data (run here under /bin/sh against a stand-in binary), and replica addresses that are
the ones keyledger is configured with."""

from __future__ import annotations

import copy
import os
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy.test_k8s import CRD_KINDS, K8S_VERSION, config, one, quantity, render, selects

TARGET = "overlays/production-tigerbeetle"
_rendered: list[dict] = []


@pytest.fixture
def objects() -> list[dict]:
    if not _rendered:
        _rendered.extend(render(TARGET))
    return copy.deepcopy(_rendered)


def statefulset(objects: list[dict]) -> dict:
    return one(objects, "StatefulSet", "tigerbeetle")


def test_every_object_is_valid_for_the_kubernetes_api(objects):
    for o in objects:
        if o["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        assert o["metadata"].get("namespace") == "keyledger" or o["kind"] == "Namespace", o["metadata"]["name"]


def test_three_replicas_one_per_node_each_with_its_own_volume(objects):
    sts = statefulset(objects)
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    (anti,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert selects(anti["labelSelector"], sts["spec"]["template"]["metadata"]["labels"])
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and quantity(claim["spec"]["resources"]["requests"]["storage"]) > 0
    for c in pod["initContainers"] + pod["containers"]:
        assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"], c["name"]
    service = one(objects, "Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert one(objects, "PodDisruptionBudget", "tigerbeetle")["spec"]["maxUnavailable"] == 1


def test_replicas_run_hardened_and_sized(objects):
    pod = statefulset(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "Localhost"  # io_uring: docs/tigerbeetle.md
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
        for name in ("cpu", "memory"):
            assert quantity(c["resources"]["limits"][name]) >= quantity(c["resources"]["requests"][name])
        assert "@sha256:" in c["image"]


def test_keyledger_may_reach_the_replicas_and_nothing_else_may(objects):
    labels = statefulset(objects)["spec"]["template"]["metadata"]["labels"]
    keyledger = one(objects, "NetworkPolicy", "keyledger")
    assert any(selects(peer.get("podSelector", {}), labels) and {"protocol": "TCP", "port": 3000} in rule["ports"]
               for rule in keyledger["spec"]["egress"] for peer in rule["to"] if "podSelector" in peer)
    own = one(objects, "NetworkPolicy", "tigerbeetle")
    assert selects(own["spec"]["podSelector"], labels)
    (ingress,) = own["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in ingress["from"]] == ["keyledger", "tigerbeetle"]


def _script(container: dict, tmp_path: Path) -> tuple[str, Path]:
    """The container's shell script with /data and /tigerbeetle moved under `tmp_path`; the stand-in
    binary logs its arguments and, for `format`, creates the file it is given."""
    data, binary, calls = tmp_path / "data", tmp_path / "tigerbeetle", tmp_path / "calls"
    data.mkdir(exist_ok=True)
    binary.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = format ] && eval "last=\\${{$#}}" && echo data > "$last"\n'
                      "exit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    (script,) = container["args"]
    return script.replace("/tigerbeetle ", f"{binary} ").replace("/data/", f"{data}/"), calls


def _run(script: str, hostname: str) -> str:
    done = subprocess.run(["/bin/sh", "-c", script], env={**os.environ, "HOSTNAME": hostname},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_format_runs_once_and_never_on_existing_data(objects, tmp_path):
    (init,) = statefulset(objects)["spec"]["template"]["spec"]["initContainers"]
    script, calls = _script(init, tmp_path)
    _run(script, "tigerbeetle-2")
    assert calls.read_text().split() == ["format", "--cluster=0", "--replica=2", "--replica-count=3",
                                         f"{tmp_path}/data/0_2.tigerbeetle.formatting"]
    assert (tmp_path / "data" / "0_2.tigerbeetle").read_text() == "data\n"
    (tmp_path / "data" / "0_2.tigerbeetle").write_text("ledger")  # the replica ran and wrote its data
    assert "not formatting" in _run(script, "tigerbeetle-2")
    assert len(calls.read_text().splitlines()) == 1
    assert (tmp_path / "data" / "0_2.tigerbeetle").read_text() == "ledger"


def test_each_replica_lists_the_addresses_keyledger_calls(objects, tmp_path):
    (server,) = statefulset(objects)["spec"]["template"]["spec"]["containers"]
    script, calls = _script(server, tmp_path)
    configured = config(objects)["KEYLEDGER_TB_ADDRESSES"].split(",")
    assert len(configured) == 3
    for replica in range(3):
        calls.unlink(missing_ok=True)
        _run(script, f"tigerbeetle-{replica}")
        start, addresses, data = calls.read_text().split()
        own = ["0.0.0.0:3000" if i == replica else a for i, a in enumerate(configured)]
        assert (start, addresses, data) == ("start", f"--addresses={','.join(own)}",
                                            f"{tmp_path}/data/0_{replica}.tigerbeetle")
