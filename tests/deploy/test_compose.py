"""The docker compose stack (compose/): schema, wiring, Prometheus and the Grafana dashboard.

compose_spec.json is the Compose Specification schema shipped in PyPI's docker-compose 1.29.2
wheel (compose/config/compose_spec.json, Apache License 2.0, (c) Docker Inc. and the
compose-spec authors), vendored unmodified: `pip download --no-deps docker-compose==1.29.2`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SCHEMA = Path(__file__).with_name("compose_spec.json")
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"

GROUPS = ["keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation", "keyledger-audit-digest"]
# The metrics the workers export (issue 11); the dashboard and alerts may use no other.
METRICS = {
    "keyledger_records_total", "keyledger_dead_letters_total", "keyledger_records_waiting",
    "keyledger_batch_seconds", "keyledger_consumer_lag", "keyledger_kms_calls_total",
    "keyledger_kms_seconds", "keyledger_ledger_requests_total", "keyledger_ledger_seconds",
    "keyledger_cache_hits_total", "keyledger_cache_misses_total", "keyledger_cache_evictions_total",
    "keyledger_keys", "keyledger_rotations_total", "keyledger_key_usage_ratio",
}
HISTOGRAMS = {"keyledger_batch_seconds", "keyledger_kms_seconds", "keyledger_ledger_seconds"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((COMPOSE / "grafana" / "dashboards" / "keyledger.json").read_text())


def validator() -> jsonschema.Validator:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "the vendored schema was changed"
    schema = json.loads(raw)
    # Compose's own formats; jsonschema's built-in "duration" is ISO 8601 ("PT10S"), not "10s".
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("duration")(lambda v: not isinstance(v, str) or bool(re.fullmatch(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+", v)))
    return jsonschema.Draft201909Validator(schema, format_checker=formats)


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


# --- schema --------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec(compose):
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_schema_validation_is_not_vacuous(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["kafka"]["healthcheck"]["intervall"] = "10s"
    assert list(validator().iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["kafka"]["healthcheck"]["interval"] = "ten seconds"
    assert list(validator().iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["kms-init"]["depends_on"]["kms"]["condition"] = "service_ready"
    assert list(validator().iter_errors(broken))


# --- services ------------------------------------------------------------------------------

def test_one_worker_service_per_group(compose):
    runs = {}
    for name, service in compose["services"].items():
        command = command_of(service)
        if command[:1] == ["run"]:
            assert command.count("--group") == 1, name
            runs.setdefault(command[command.index("--group") + 1], []).append(name)
    assert sorted(runs) == sorted(GROUPS)
    assert all(len(names) == 1 for names in runs.values()), runs


def test_workers_run_the_hardened_image_in_the_production_profile(compose):
    for group in GROUPS:
        service = compose["services"][group]
        assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}
        assert (COMPOSE / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert re.fullmatch(r"\d+:\d+", service["user"]) and service["user"].split(":")[0] == "10001"
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        env = service["environment"]
        assert env["KEYLEDGER_PROFILE"] == "production" and env["KEYLEDGER_LOG_FORMAT"] == "json"
        assert env["KEYLEDGER_HTTP_PORT"] == "8080"
        assert "/readyz" in " ".join(service["healthcheck"]["test"]) and ":8080" in " ".join(service["healthcheck"]["test"])


def test_every_long_running_service_has_a_healthcheck_and_restart_policy(compose):
    for name, service in compose["services"].items():
        if one_shot(service):
            assert "healthcheck" not in service, name
            continue
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_wait_for_health_or_completion(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            # a service in an inactive profile cannot be depended on by one that is always on
            assert set(services[dep].get("profiles", [])) <= set(service.get("profiles", [])), (name, dep)
            expected = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dep}: {spec}"
    for group in GROUPS:
        assert set(services[group]["depends_on"]) >= {"kafka", "tigerbeetle", "kms-init"}, group


def test_state_lives_on_named_volumes(compose):
    mounts = {name: [v.split(":")[:2] for v in s.get("volumes", [])] for name, s in compose["services"].items()}
    for service, path in (("kafka", "/var/lib/kafka/data"), ("tigerbeetle", "/data"),
                          ("kms", "/var/lib/localstack"), ("prometheus", "/prometheus"),
                          ("grafana", "/var/lib/grafana")):
        (volume,) = [src for src, dst in mounts[service] if dst == path]
        assert volume in compose["volumes"], f"{service}: {path} is not on a named volume"
    # bind mounts point at files in the repository
    for service, pairs in mounts.items():
        for src, _ in pairs:
            if src.startswith("."):
                assert (COMPOSE / src).exists(), f"{service}: {src} does not exist"


def test_kafka_listens_inside_and_for_the_host(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert listeners["EXTERNAL"] == "localhost:9092"
    internal = listeners[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert internal.startswith("kafka:")
    assert "127.0.0.1:9092:9092" in kafka["ports"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) | {"CONTROLLER"} == set(protocols)
    for group in GROUPS:
        assert compose["services"][group]["environment"]["KEYLEDGER_KAFKA_BOOTSTRAP"] == internal


def test_tigerbeetle_is_addressed_by_ip(compose):
    """The TigerBeetle client (0.17) refuses host names: the workers need its fixed IP."""
    import ipaddress

    tb = compose["services"]["tigerbeetle"]
    address = tb["networks"]["default"]["ipv4_address"]
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    for group in GROUPS:
        host, port = compose["services"][group]["environment"]["KEYLEDGER_TB_ADDRESSES"].rsplit(":", 1)
        assert host == address and port == "3000"
    assert "--addresses=0.0.0.0:3000" in tb["command"][0]


def test_kms_key_is_created_by_an_init_that_fails_loudly(compose):
    init = compose["services"]["kms-init"]
    script = init["command"][0]
    assert script.lstrip().startswith("set -eu")
    assert "kms create-key" in script and "kms create-alias --alias-name alias/keyledger" in script
    assert "|| true" not in script and "|| :" not in script
    assert init["depends_on"] == {"kms": {"condition": "service_healthy"}}
    for group in GROUPS:
        env = compose["services"][group]["environment"]
        assert env["KEYLEDGER_KMS_KEY_ID"] == "alias/keyledger"
        assert env["KEYLEDGER_KMS_ENDPOINT_URL"].startswith("http://kms:")


def test_openbao_is_an_alternative_kms_under_the_vault_profile(compose):
    services = compose["services"]
    bao = services["openbao"]
    assert bao["image"].startswith("openbao/openbao:") and bao["profiles"] == ["vault"]
    assert "-dev" in bao["command"]
    init = services["openbao-init"]
    assert init["profiles"] == ["vault"] and init["command"][0].lstrip().startswith("set -eu")
    assert "derived=true" in init["command"][0]
    # nothing outside the profile needs it
    for name, service in services.items():
        if "vault" not in service.get("profiles", []):
            assert not {"openbao", "openbao-init"} & set(service.get("depends_on", {})), name
    token = re.search(r"-dev-root-token-id=(\S+)", " ".join(bao["command"])).group(1)
    for group in GROUPS:
        env = services[group]["environment"]
        assert env["KEYLEDGER_VAULT_ADDR"] == "http://openbao:8200" and env["KEYLEDGER_VAULT_TOKEN"] == token


def test_images_are_pinned_to_versions(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith((":latest", ":3")), f"{name}: {image}"
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"


# --- Prometheus ----------------------------------------------------------------------------

def test_prometheus_scrapes_every_worker(compose):
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "keyledger"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    assert targets == {f"{group}:8080" for group in GROUPS}
    for target in targets:
        assert target.split(":")[0] in compose["services"]


def _metrics_in(expr: str) -> set[str]:
    names = set(re.findall(r"\bkeyledger_[a-z_]+\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n
            for n in names}


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_alert_rules_use_known_metrics(compose):
    rules = yaml.safe_load((COMPOSE / "alerts.yml").read_text())
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    mounted = {dst for src, dst, *_ in (v.split(":") for v in compose["services"]["prometheus"]["volumes"])}
    assert set(config["rule_files"]) <= mounted
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert alerts
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        assert _balanced(rule["expr"]), rule["alert"]
        assert _metrics_in(rule["expr"]) <= METRICS, rule["alert"]


# --- Grafana -------------------------------------------------------------------------------

def test_grafana_provisions_the_datasource_and_dashboards(compose):
    grafana = compose["services"]["grafana"]
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in grafana["volumes"])}
    provisioning = COMPOSE / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "keyledger.yml").read_text())["providers"]
    assert provider["options"]["path"] in mounts  # the provider reads a mounted directory
    dashboards = COMPOSE / mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["keyledger.json"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_panels_query_the_provisioned_prometheus(dashboard):
    uid = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert panel["title"] and panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert _balanced(target["expr"]), panel["title"]
            assert _metrics_in(target["expr"]) <= METRICS, panel["title"]


def test_dashboard_covers_every_subject_and_metric(dashboard):
    panels = _panels(dashboard)
    subjects = {
        # subject: (title pattern, a metric its queries must use)
        "throughput": (r"throughput", "keyledger_records_total"),
        "lag": (r"\blag\b", "keyledger_consumer_lag"),
        "dead letters by code": (r"dead letter.*code", "keyledger_dead_letters_total"),
        "KMS latency": (r"KMS latency", "keyledger_kms_seconds_bucket"),
        "cache hit ratio": (r"cache hit ratio", "keyledger_cache_misses_total"),
        "keys by state": (r"keys by .*state", "keyledger_keys"),
        "key usage vs wear-out": (r"usage.*wear-out", "keyledger_key_usage_ratio"),
    }
    for subject, (title, metric) in subjects.items():
        matching = [p for p in panels if re.search(title, p["title"], re.IGNORECASE)
                    and any(re.search(rf"\b{metric}\b", t["expr"]) for t in p["targets"])]
        assert matching, f"no panel for {subject}"
    dlq = next(p for p in panels if re.search("dead letter", p["title"], re.IGNORECASE))
    assert any(re.search(r"by \([^)]*\bcode\b", t["expr"]) for t in dlq["targets"])
    used = set().union(*(_metrics_in(t["expr"]) for p in panels for t in p["targets"]))
    assert used == METRICS, f"not charted: {sorted(METRICS - used)}"


def test_dashboard_layout_has_no_overlapping_panels(dashboard):
    cells = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
