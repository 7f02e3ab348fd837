"""Every Kafka client over mutual TLS: `keyledger run`, `keyledger verify` and the tools' readers and
writers, through a real TLS terminator (stunnel) in front of the broker; and the refusals at start.

A worker that cannot talk TLS to the broker stops at start in one line naming the setting: no client
certificate, a certificate from a CA the broker does not trust, a CA that does not sign the broker.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from tests.support.harness import span_job
from tests.support.kafka import forget, records_for, tenant_created, unique_tenant
from tests.support.tls import TlsBroker, keyledger_run, stunnel_binary, tls_broker
from workers.app.embedded import free_port
from workers.kafka.tap import produce

pytestmark = [pytest.mark.integration, pytest.mark.tls,
              pytest.mark.skipif(stunnel_binary() is None, reason="stunnel4 is not installed (apt-get install stunnel4)")]

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("keyledger-keygen", "keyledger-signer")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """The broker behind stunnel; this test process's own clients (workers.kafka.tap) use mutual TLS too."""
    with tls_broker(tmp_path_factory.mktemp("tls")) as broker, pytest.MonkeyPatch.context() as env:
        for name, value in broker.env().items():
            env.setenv(name, value)
        yield broker
    forget(broker.bootstrap)  # the taps of the session keep no broker that is gone


def keyledger_env(extra: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return {**clean, "KEYLEDGER_PROFILE": "dev", "KEYLEDGER_KMS_PROVIDER": "local", "KEYLEDGER_LEDGER": "memory",
            "KEYLEDGER_KAFKA_PARTITIONS": "3", "KEYLEDGER_HTTP_PORT": str(free_port()), **extra}


def keyledger(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env=keyledger_env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, input=stdin)


@pytest.fixture(scope="module")
def worker(tls: TlsBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    with keyledger_run(GROUPS, keyledger_env(tls.env()), tmp_path_factory.mktemp("worker") / "worker.log") as process:
        yield process


def _jcs(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def test_onboarding_and_signing_over_mutual_tls(tls: TlsBroker, worker: subprocess.Popen) -> None:
    tenant = unique_tenant("tls")
    await produce(tls.bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    events = await records_for(tls.bootstrap, "keys.events", tenant, want=2, timeout=90)
    assert worker.poll() is None, f"the worker stopped: {worker.log_path}"  # type: ignore[attr-defined]
    signing = next(e for e in events if e["key_type"] == "signing")
    await produce(tls.bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant, job_id="over-tls"))])
    [signed] = await records_for(tls.bootstrap, "spans.signed", tenant, want=1, timeout=60)
    body = {"key_id": signed["signature"]["key_id"], "span": signed["span"], "tenant_id": tenant}
    value = signed["signature"]["value"]
    VerifyKey(base64.b64decode(signing["public_key"])).verify(
        _jcs(body), base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    # a CLI verb reads keys.events over mutual TLS too
    verified = keyledger("verify", "-", env=tls.env(), stdin=json.dumps(signed) + "\n")
    assert verified.returncode == 0, verified.stderr
    assert "over-tls" in verified.stdout and "valid" in verified.stdout


def _refusal(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


def test_a_worker_without_a_client_certificate_stops_naming_the_setting(tls: TlsBroker) -> None:
    env = {k: v for k, v in tls.env().items() if "CERT_FILE" not in k and "KEY_FILE" not in k}
    line = _refusal(keyledger("run", env=env))
    assert line.startswith("keyledger run: TLS to Kafka at ") and "client certificate" in line
    assert "KEYLEDGER_KAFKA_SSL_CERT_FILE" in line


def test_a_worker_trusting_another_ca_stops_naming_the_setting(tls: TlsBroker) -> None:
    line = _refusal(keyledger("run", env=tls.env(ca=tls.pki.other_ca.cert)))
    assert "not trusted" in line and "KEYLEDGER_KAFKA_SSL_CA_FILE" in line


def test_a_client_certificate_the_broker_does_not_trust_is_named(tls: TlsBroker) -> None:
    line = _refusal(keyledger("status", env=tls.env(cert=tls.pki.impostor)))
    assert line.startswith("keyledger status: TLS to Kafka") and "refuses the client certificate" in line
    assert "KEYLEDGER_KAFKA_SSL_CERT_FILE" in line


def test_a_plaintext_client_gets_no_kafka_answer(tls: TlsBroker) -> None:
    env = {**tls.env(), "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    for name in ("KEYLEDGER_KAFKA_SSL_CA_FILE", "KEYLEDGER_KAFKA_SSL_CERT_FILE", "KEYLEDGER_KAFKA_SSL_KEY_FILE"):
        env.pop(name)
    line = _refusal(keyledger("run", env=env))
    assert "KEYLEDGER_KAFKA_BOOTSTRAP" in line
