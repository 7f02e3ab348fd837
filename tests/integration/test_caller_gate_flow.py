"""Callers end to end, over mutual TLS (stunnel in front of the broker) with `keyledger run` as its own
process and KEYLEDGER_REQUIRE_CALLER=all: onboarding, a signed span, an encrypt and a decrypt through a
registered caller; then every way a caller is refused (unknown caller, forged proof, a proof for another
tenant, operation or body, an expired proof, a caller not allowed for the tenant, a policy record the
operator key did not sign) is denied, audited with the caller and the reason, dead-lettered and never
answered; a copy of a proved request produced again is answered alike and audited as a second operation
from its own record; only the requesting caller opens its result; no plaintext and no result key is on any
topic or in the worker's log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.messages import SealedResultKey
from schemas.topics import Topic
from tests.support.callers import Operator, TestCaller
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.tls import TlsBroker, keyledger_run, stunnel_binary, tls_broker
from workers.app.embedded import free_port
from workers.client import CallerClient, ResultSealError, verify_signed_span
from workers.core.b64 import b64encode, b64url_encode
from workers.core.results import open_result_key, private_key
from workers.kafka.tap import produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.tls,
              pytest.mark.skipif(stunnel_binary() is None, reason="stunnel4 is not installed (apt-get install stunnel4)")]

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("keyledger-keygen", "keyledger-pii", "keyledger-signer")
SECRET = f"4111 1111 {uuid.uuid4().int % 10**8:08d}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("tls")) as broker, pytest.MonkeyPatch.context() as env:
        for name, value in broker.env().items():
            env.setenv(name, value)
        yield broker


def worker_env(tls: TlsBroker, operator: Operator) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return {**clean, **tls.env(), "KEYLEDGER_PROFILE": "dev", "KEYLEDGER_KMS_PROVIDER": "local",
            "KEYLEDGER_LEDGER": "memory", "KEYLEDGER_KAFKA_PARTITIONS": "3", "KEYLEDGER_HTTP_PORT": str(free_port()),
            "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public, "KEYLEDGER_REQUIRE_CALLER": "all",
            "KEYLEDGER_CALLER_MAX_SKEW": "60"}


async def until_logged(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in await asyncio.to_thread(log.read_text, errors="replace"):
        assert time.monotonic() < deadline, f"not in the worker's log: {text}"
        await asyncio.sleep(0.2)


def tampered(value: bytes, **changes: object) -> bytes:
    return json.dumps({**json.loads(value), **changes}).encode()


def forged(value: bytes) -> bytes:
    body = json.loads(value)
    proof = body["caller"]["proof"]
    body["caller"]["proof"] = ("A" if proof[0] != "A" else "B") + proof[1:]
    return json.dumps(body).encode()


def spellings(raw: bytes) -> list[bytes]:
    return [raw, raw.hex().encode(), b64encode(raw).encode(), b64url_encode(raw).encode()]


@pytest.fixture
def operator() -> Operator:
    return Operator()


@pytest.fixture
def worker(tls: TlsBroker, operator: Operator, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """`keyledger run` over mutual TLS, trusting `operator`, requiring a caller for everything."""
    with keyledger_run(GROUPS, worker_env(tls, operator), tmp_path / "worker.log") as process:
        yield process


async def test_callers_over_mutual_tls(tls: TlsBroker, operator: Operator, worker: subprocess.Popen,
                                       tmp_path: Path) -> None:
    bootstrap, tenant, other_tenant = tls.bootstrap, unique_tenant("gate"), unique_tenant("gate")
    log: Path = worker.log_path  # type: ignore[attr-defined]
    # onboarding over mutual TLS
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in (tenant, other_tenant)])
    events = await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    await records_for(bootstrap, "keys.events", other_tenant, want=2, timeout=90)
    assert worker.poll() is None, f"the worker stopped: {log}"
    folder = tmp_path / "callers"
    folder.mkdir()
    suffix = uuid.uuid4().hex[:8]
    billing = await operator.register(bootstrap, folder, f"billing-{suffix}", tenants=[tenant],
                                      operations=("encrypt", "decrypt", "sign"))
    auditor = await operator.register(bootstrap, folder, f"auditor-{suffix}", tenants=[tenant, other_tenant],
                                      operations=("decrypt",))
    outsider = await operator.register(bootstrap, folder, f"outsider-{suffix}", tenants=[other_tenant],
                                       operations=("encrypt", "decrypt"))
    # a policy record signed by another key than the operator's: it grants nothing
    intruder = Operator()
    forger = await intruder.register(bootstrap, folder, f"forger-{suffix}", tenants="*",
                                     operations=("decrypt",))
    for caller in (billing, auditor, outsider):
        await until_logged(log, f"({caller.caller_id}) at version 1")
    await until_logged(log, f"refused a keys.callers record for caller {forger.caller_id}")

    # a signed span through the caller
    span = billing.client.span_request(tenant, {"name": "GET /balance", "trace_id": uuid.uuid4().hex},
                                       job_id="gate-span")
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), json.dumps(span).encode())])
    [signed] = await records_for(bootstrap, "spans.signed", tenant, want=1, timeout=60)
    signing = next(e for e in events if e["key_type"] == "signing")
    assert verify_signed_span(signed, base64.b64decode(signing["public_key"]))

    # an encrypt and a decrypt through the caller
    await produce(bootstrap, "pii.requests", [(tenant.encode(), billing.pii(tenant, "encrypt", {"card": SECRET},
                                                                          job_id="gate-enc"))])
    [sealed] = await records_for(bootstrap, "pii.results", tenant, want=1, timeout=60)
    ciphertext = sealed["fields"]["card"]
    assert ciphertext.startswith("kl1.")
    decrypt = billing.pii(tenant, "decrypt", {"card": ciphertext}, job_id="gate-dec")
    await produce(bootstrap, "pii.requests", [(tenant.encode(), decrypt)])
    results = await records_for(bootstrap, "pii.results", tenant, want=2, timeout=60)
    opened = next(r for r in results if r["job_id"] == "gate-dec")
    assert opened["fields"]["card"].startswith("klr1.") and billing.client.open_result(opened) == {"card": SECRET}
    for stranger in (auditor, outsider):
        with pytest.raises(ResultSealError):
            stranger.client.open_result(opened)

    # every way a caller is refused
    stale = CallerClient(billing.client.credential, clock=lambda: datetime.now(UTC) - timedelta(minutes=10))
    stranger = TestCaller(f"stranger-{suffix}")  # on no keys.callers record at all
    refused = {
        "den-unknown": (stranger.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-unknown"),
                        "unknown_caller", stranger.caller_id),
        "den-forged": (forged(billing.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-forged")),
                       "bad_proof", billing.caller_id),
        "den-tenant": (tampered(billing.pii(other_tenant, "decrypt", {"card": ciphertext}, job_id="den-tenant"),
                                tenant_id=tenant), "bad_proof", billing.caller_id),
        "den-op": (tampered(billing.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-op"),
                            operation="reencrypt"), "bad_proof", billing.caller_id),
        "den-body": (tampered(billing.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-body"),
                              record_id="r2"), "bad_proof", billing.caller_id),
        "den-expired": (json.dumps(stale.pii_request(tenant, "decrypt", {"card": ciphertext}, record_id="r1",
                                                     job_id="den-expired")).encode(), "expired", billing.caller_id),
        "den-tenant-policy": (outsider.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-tenant-policy"),
                              "not_allowed", outsider.caller_id),
        "den-forger": (forger.pii(tenant, "decrypt", {"card": ciphertext}, job_id="den-forger"),
                       "unknown_caller", forger.caller_id),
    }
    await produce(bootstrap, "pii.requests", [(tenant.encode(), value) for value, _, _ in refused.values()])
    letters = await records_for(bootstrap, "kms.dlq", tenant, want=len(refused), timeout=60)
    assert {letter["error"]["type"] for letter in letters} == {"caller_denied"}
    assert all(letter["payload_redacted"] for letter in letters)
    audits = await records_for(bootstrap, "kms.audit", tenant, timeout=60)
    denied = [(e["reason"], e.get("caller_id")) for e in audits if e["op"] == "denied" for _ in range(e["count"])]
    assert sorted(denied) == sorted((reason, caller_id) for _, reason, caller_id in refused.values())

    # a copy of the proved decrypt produced again: the same answer, and a second operation from its own record
    await produce(bootstrap, "pii.requests", [(tenant.encode(), decrypt)])
    results = await records_for(bootstrap, "pii.results", tenant, want=3, timeout=60)
    copies = [r for r in results if r["job_id"] == "gate-dec"]
    assert len(copies) == 2 and all(billing.client.open_result(r) == {"card": SECRET} for r in copies)
    audits = await records_for(bootstrap, "kms.audit", tenant, want=len(audits) + 1, timeout=60)
    decrypts = [e for e in audits if e["op"] == "decrypt"]
    assert len(decrypts) == 2 and len({e["event_id"] for e in decrypts}) == 2
    assert len({json.dumps(e["sources"]) for e in decrypts}) == 2 and not any("requests" in e for e in decrypts)
    assert {e["caller_id"] for e in decrypts} == {billing.caller_id}
    assert {e.get("caller_id") for e in audits if e["op"] in ("encrypt", "sign")} == {billing.caller_id}
    assert not [r for r in results if r["job_id"].startswith("den-")]

    # no plaintext and no result key anywhere (the encrypt request is the producer's own plaintext)
    keyring = private_key(billing.keys.kem, billing.keys.private)
    result_keys = {open_result_key(SealedResultKey.model_validate(r["result_key"]), billing.caller_id, keyring)
                   for r in copies}
    assert worker.poll() is None
    for topic in Topic:
        for record in await read_topic(bootstrap, topic.value, timeout=30):
            value = record.value or b""
            for raw in result_keys:
                assert not any(s in value for s in spellings(raw)), topic
            if SECRET.encode() in value:
                assert topic is Topic.PII_REQUESTS and json.loads(value)["operation"] == "encrypt", topic
    logged = await asyncio.to_thread(log.read_bytes)
    assert SECRET.encode() not in logged
    assert not any(s in logged for raw in result_keys for s in spellings(raw))

