"""The Kubernetes manifests, as `kubectl kustomize` renders them (base and production overlay).

Every built-in object is validated against the Kubernetes OpenAPI schema in strict mode
(unknown fields are errors) by kubernetes-validate; KEDA's ScaledObject and the Prometheus
Operator's ServiceMonitor and PrometheusRule have no schema there, so their fields are checked here. Each
property is asserted on every object it applies to.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.process  # the manifests are rendered by `kubectl kustomize`

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# The API version the manifests are validated against: the oldest minor still supported on
# EKS standard support that has every field used here (CronJob timeZone, PDB policy/v1).
K8S_VERSION = "1.31.0"
# Custom resources without a schema in kubernetes-validate: their fields are tested below.
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}

GROUPS = {
    # group -> the topics it consumes (shared/design.md)
    "keyledger-keygen": {"tenants.created", "tenants.deleted"},
    "keyledger-signer": {"spans.to-sign"},
    "keyledger-pii": {"pii.requests"},
    "keyledger-rotation": {"keys.rotation-ticks"},
    "keyledger-audit-digest": {"kms.audit"},
}
USER = 10001
HTTP_PORT = 8080
TARGETS = ["base", "overlays/production"]


def render(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered (kubectl kustomize)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


_rendered: dict[str, list[dict]] = {}


@pytest.fixture(params=TARGETS)
def objects(request) -> list[dict]:
    if request.param not in _rendered:
        _rendered[request.param] = render(request.param)
    return copy.deepcopy(_rendered[request.param])


@pytest.fixture
def production() -> list[dict]:
    if "overlays/production" not in _rendered:
        _rendered["overlays/production"] = render("overlays/production")
    return copy.deepcopy(_rendered["overlays/production"])


# --- helpers -------------------------------------------------------------------------------

def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(objs: list[dict]) -> Iterator[tuple[str, dict]]:
    """(owner, pod template) for every workload kind that carries one."""
    for o in objs:
        owner = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield owner, o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield owner, o["spec"]["jobTemplate"]["spec"]["template"]
        elif o["kind"] == "Pod":
            yield owner, {"metadata": o["metadata"], "spec": o["spec"]}


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are expected here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def config(objs: list[dict]) -> dict[str, str]:
    maps = [m for m in of_kind(objs, "ConfigMap") if m["metadata"]["name"].startswith("keyledger")]
    assert len(maps) == 1, [m["metadata"]["name"] for m in maps]
    return maps[0]["data"]


def group_of(deployment: dict) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container.get("command", []) + container.get("args", [])
    assert args.count("--group") == 1, f"{deployment['metadata']['name']}: {args}"
    return args[args.index("--group") + 1]


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in _UNITS, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


# --- schema validation ---------------------------------------------------------------------

def test_every_object_is_valid_for_the_kubernetes_api(objects):
    errors, skipped = [], set()
    for o in objects:
        if o["kind"] in CRD_KINDS:
            skipped.add(o["kind"])
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)
    assert skipped == CRD_KINDS  # every custom kind is rendered (and checked below or in test_alerts.py)


def test_strict_validation_rejects_unknown_fields(objects):
    """The validator above is not vacuous: a misspelt field fails it."""
    deployment = copy.deepcopy(of_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --- pod hardening (every pod template, every container) -----------------------------------

def test_every_pod_runs_hardened(objects):
    templates = list(pod_templates(objects))
    assert len(templates) == len(GROUPS) + 1  # five worker Deployments and the CronJob
    for owner, template in templates:
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            where = f"{owner} container {c['name']}"
            sc = c.get("securityContext", {})

            def effective(key, sc=sc, pod_sc=pod_sc):  # the container's, else the pod's
                return sc.get(key, pod_sc.get(key))

            user = effective("runAsUser")
            assert isinstance(user, int) and not isinstance(user, bool) and user == USER, f"{where}: runAsUser {user!r}"
            assert effective("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"

            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for name in ("cpu", "memory"):
                    assert name in res.get(kind, {}), f"{where}: no resources.{kind}.{name}"
            for name in ("cpu", "memory"):
                assert quantity(res["limits"][name]) >= quantity(res["requests"][name]), f"{where}: {name}"


def test_pod_templates_name_an_existing_service_account(objects):
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(objects, "ServiceAccount")}
    for owner, template in pod_templates(objects):
        name = template["spec"].get("serviceAccountName")
        assert name in accounts, f"{owner}: serviceAccountName {name!r} is not rendered"
        assert template["spec"].get("automountServiceAccountToken") is False, owner
    # one account per consumer group, named after it: each gets its own IAM role (docs/iam.md)
    for d in of_kind(objects, "Deployment"):
        assert d["spec"]["template"]["spec"]["serviceAccountName"] == group_of(d), d["metadata"]["name"]
    assert "keyledger" not in accounts  # no account shared by every group


# --- the worker Deployments ----------------------------------------------------------------

def test_one_deployment_per_consumer_group(objects):
    deployments = of_kind(objects, "Deployment")
    groups = [group_of(d) for d in deployments]
    assert sorted(groups) == sorted(GROUPS)
    for d in deployments:
        (container,) = d["spec"]["template"]["spec"]["containers"]
        # no command: the image's ENTRYPOINT (keyledger) runs `run --group NAME`
        assert "command" not in container and container["args"][0] == "run", d["metadata"]["name"]
        assert d["metadata"]["name"] == group_of(d)
        # KEDA's HPA owns the replica count; a fixed value would be reset on every apply
        assert "replicas" not in d["spec"], d["metadata"]["name"]
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert selects(d["spec"]["selector"], pod_labels)
        others = [o for o in deployments if o is not d]
        assert not any(selects(d["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"]) for o in others)


def test_every_group_the_code_knows_is_deployed(objects):
    from workers.groups import ALL_GROUPS

    assert set(ALL_GROUPS) <= {group_of(d) for d in of_kind(objects, "Deployment")}


def test_workers_probe_health_and_readiness_on_the_http_port(objects):
    for d in of_kind(objects, "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports.get("http") == HTTP_PORT, d["metadata"]["name"]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, f"{d['metadata']['name']} {probe}"
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == HTTP_PORT, f"{d['metadata']['name']} {probe}"


def test_worker_memory_follows_the_readme_formula(objects):
    """README "Capacity guide": request = idle + key versions x bytes a key, limit = 1.5 x request, both
    rounded up to 32 MiB, for the key count the manifests are sized for."""
    readme = (ROOT / "README.md").read_text()
    sizing = readme[readme.index("<!-- sizing:"):readme.index("<!-- /sizing -->")]
    found = re.search(r"request = (\d+) MiB \+ key versions × (\d+) B`, `limit = ([\d.]+) × request`, both\s+"
                      r"rounded up to (\d+) MiB;\s+the manifests are sized for \*\*([\d,]+)\*\* key versions: "
                      r"request (\d+)Mi, limit (\d+)Mi", sizing)
    assert found, sizing
    idle, per_key, factor, step, keys, request_mi, limit_mi = found.groups()

    def rounded(mib: float) -> int:
        return int(-(-mib // int(step)) * int(step))

    request = rounded(int(idle) + int(keys.replace(",", "")) * int(per_key) / 2**20)
    limit = rounded(request * float(factor))
    assert (request, limit) == (int(request_mi), int(limit_mi))
    for d in of_kind(objects, "Deployment"):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert quantity(c["resources"]["requests"]["memory"]) == request * 2**20, d["metadata"]["name"]
        assert quantity(c["resources"]["limits"]["memory"]) == limit * 2**20, d["metadata"]["name"]


def test_every_deployment_has_one_disruption_budget(objects):
    budgets = of_kind(objects, "PodDisruptionBudget")
    for d in of_kind(objects, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(mine) == 1, d["metadata"]["name"]
        assert mine[0]["spec"].get("maxUnavailable") == 1
    assert len(budgets) == len(of_kind(objects, "Deployment"))


def test_every_deployment_scales_on_its_consumer_lag(objects):
    cfg = config(objects)
    partitions = int(cfg["KEYLEDGER_KAFKA_PARTITIONS"])
    scaled = of_kind(objects, "ScaledObject")
    assert len(scaled) == len(of_kind(objects, "Deployment"))
    for d in of_kind(objects, "Deployment"):
        name, group = d["metadata"]["name"], group_of(d)
        mine = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == name]
        assert len(mine) == 1, name
        spec = mine[0]["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["scaleTargetRef"].get("apiVersion", "apps/v1") == "apps/v1"
        assert mine[0]["apiVersion"] == "keda.sh/v1alpha1"
        if group == "keyledger-audit-digest":
            # one writer per partition's digest chain: exactly one replica, replaced (Recreate), never two
            assert spec["minReplicaCount"] == spec["maxReplicaCount"] == 1, name
            assert d["spec"]["strategy"] == {"type": "Recreate"}, name
        else:
            # replicas beyond the partition count would sit idle
            assert spec["maxReplicaCount"] == partitions, name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        topics = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka", name
            meta = trigger["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), f"{name}: KEDA metadata values are strings"
            assert meta["consumerGroup"] == group, name
            assert int(meta["lagThreshold"]) > 0, name
            assert meta.get("allowIdleConsumers", "false") == "false", name
            # bootstrap servers come from the worker's own settings
            assert meta.get("bootstrapServersFromEnv") == "KEYLEDGER_KAFKA_BOOTSTRAP", name
            topics.add(meta["topic"])
        assert topics == GROUPS[group], name
        env_from = d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert any(e.get("configMapRef", {}).get("name", "").startswith("keyledger") for e in env_from)


# --- metrics discovery ---------------------------------------------------------------------

def test_worker_pods_carry_prometheus_scrape_annotations(objects):
    for d in of_kind(objects, "Deployment"):
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", d["metadata"]["name"]
        assert annotations.get("prometheus.io/port") == str(HTTP_PORT), d["metadata"]["name"]
        assert annotations.get("prometheus.io/path") == "/metrics", d["metadata"]["name"]


def test_service_monitor_finds_every_worker_through_the_service(objects):
    (service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "keyledger-metrics"]
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == HTTP_PORT
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    for d in of_kind(objects, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": service["spec"]["selector"]}, labels), d["metadata"]["name"]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert port["targetPort"] in {p["name"] for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
    # the CronJob serves nothing: the Service must not select it
    cron = of_kind(objects, "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not selects({"matchLabels": service["spec"]["selector"]}, cron)


# --- network policy ------------------------------------------------------------------------

def _ports(rule: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def test_network_policy_confines_every_pod(objects):
    cfg = config(objects)
    policies = of_kind(objects, "NetworkPolicy")
    for owner, template in pod_templates(objects):
        mine = [p for p in policies if selects(p["spec"]["podSelector"], template["metadata"]["labels"])]
        assert mine, f"{owner}: no NetworkPolicy selects it"
        for policy in mine:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            for rule in policy["spec"].get("ingress", []):
                assert _ports(rule) == {("TCP", HTTP_PORT)}, "ingress only on the HTTP port"
                assert rule.get("from"), "ingress from named peers only"
                for peer in rule["from"]:
                    assert "ipBlock" not in peer
                    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
        egress = {port for policy in mine for rule in policy["spec"].get("egress", []) for port in _ports(rule)}
        assert {("UDP", 53), ("TCP", 53), ("TCP", 443)} <= egress, owner
        # every Kafka broker and TigerBeetle replica the settings name is reachable
        for setting in ("KEYLEDGER_KAFKA_BOOTSTRAP", "KEYLEDGER_TB_ADDRESSES"):
            for address in cfg[setting].split(","):
                assert ("TCP", int(address.rsplit(":", 1)[1])) in egress, f"{owner}: {setting} {address}"


# --- settings and the CronJob ---------------------------------------------------------------

def test_settings_are_a_valid_production_profile(objects, monkeypatch):
    from workers.settings import Settings

    cfg = config(objects)
    assert all(key.startswith("KEYLEDGER_") for key in cfg), sorted(cfg)
    assert cfg["KEYLEDGER_PROFILE"] == "production"
    assert cfg["KEYLEDGER_LOG_FORMAT"] == "json"
    assert int(cfg["KEYLEDGER_HTTP_PORT"]) == HTTP_PORT
    assert cfg["KEYLEDGER_DLQ_KEEP_PII"] == "false"
    for key in [k for k in os.environ if k.startswith("KEYLEDGER_")]:
        monkeypatch.delenv(key)
    for key, value in cfg.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # the production profile raises on a development-only part
    assert settings.production_problems() == []


def test_tigerbeetle_replicas_are_host_port_pairs(objects):
    """Names are fine: workers.ledger.tigerbeetle.resolve_addresses turns them into the IPs the client needs."""
    for address in config(objects)["KEYLEDGER_TB_ADDRESSES"].split(","):
        host, port = address.rsplit(":", 1)
        assert host and 0 < int(port) < 65536


def test_cronjob_publishes_scheduled_rotation_ticks(objects):
    (cron,) = of_kind(objects, "CronJob")
    spec = cron["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "command" not in c and c["args"] == ["rotate", "--all", "--reason", "scheduled"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert spec["jobTemplate"]["spec"].get("activeDeadlineSeconds", 0) > 0
    # a one-shot CLI binds no port
    assert {"name": "KEYLEDGER_HTTP_PORT", "value": "0"} in c.get("env", [])


def test_containers_use_the_keyledger_image(objects):
    for owner, template in pod_templates(objects):
        for c in containers(template["spec"]):
            assert re.fullmatch(r"(.+/)?keyledger(@sha256:[0-9a-f]{64})?", c["image"]), f"{owner}: {c['image']}"


# --- production overlay --------------------------------------------------------------------

def test_production_images_are_pinned_by_digest(production):
    images = [c["image"] for _, t in pod_templates(production) for c in containers(t["spec"])]
    assert images
    for image in images:
        assert re.fullmatch(r"[a-z0-9.\-/:]+@sha256:[0-9a-f]{64}", image), image


def test_production_service_accounts_assume_one_iam_role_per_group(production):
    roles = {}
    for group in GROUPS:
        sa = one(production, "ServiceAccount", group)
        arn = sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
        assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", arn), arn
        roles[group] = arn
    assert len(set(roles.values())) == len(GROUPS), roles  # no role shared by two groups
    # the CronJob's account has no cloud role
    tick = one(production, "ServiceAccount", "keyledger-rotation-tick")
    assert "eks.amazonaws.com/role-arn" not in tick["metadata"].get("annotations", {})


def test_production_namespace_enforces_restricted_pod_security(production):
    (ns,) = of_kind(production, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in production:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == ns["metadata"]["name"], f"{o['kind']}/{o['metadata']['name']}"
