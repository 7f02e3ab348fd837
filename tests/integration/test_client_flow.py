"""`keyledger client encrypt|decrypt|sign` against running workers over a real broker: each proved
request of a registered caller gets its answer (the decrypt's opened with the caller's private key),
and the signed span verifies with `keyledger verify`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.callers import Operator
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["keyledger-keygen", "keyledger-pii", "keyledger-signer"]


async def cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "workers.app.cli", *args],
                                   env={**clean, **env}, input=stdin, capture_output=True, text=True, timeout=180)


async def test_the_client_verbs_encrypt_decrypt_and_sign(topics_ready: str, tmp_path: Path):
    bootstrap, tenant = topics_ready, unique_tenant("client")
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap}
    operator = Operator()
    billing = await operator.register(bootstrap, tmp_path, f"billing-{tenant}", tenants=[tenant],
                                      operations=("encrypt", "decrypt", "sign"))
    (tmp_path / "span.json").write_text(json.dumps({"name": "GET /balance", "trace_id": "4bf92f3577b34da6"}))
    common = ("--credential", str(billing.credential), "--tenant", tenant)
    async with in_process_workers(bootstrap, GROUPS, overrides={"operator_public_key": operator.public,
                                                                "require_caller": "all"}):
        await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
        await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
        encrypted = await cli("client", "encrypt", *common, "--record-id", "user-7", "--field", "email=a@example.com",
                              env=env)
        assert encrypted.returncode == 0, encrypted.stdout + encrypted.stderr
        ciphertext = json.loads(encrypted.stdout)["fields"]["email"]
        assert ciphertext.startswith("kl1.")
        decrypted = await cli("client", "decrypt", *common, "--record-id", "user-7", "--field", f"email={ciphertext}",
                              "--private-key", str(tmp_path / "none.key"), env=env)
        assert decrypted.returncode == 2 and "none.key" in decrypted.stderr  # a missing file, before any request
        decrypted = await cli("client", "decrypt", *common, "--record-id", "user-7", "--field", f"email={ciphertext}",
                              "--private-key", str(billing.private_key), env=env)
        assert decrypted.returncode == 0, decrypted.stdout + decrypted.stderr
        answer = json.loads(decrypted.stdout)
        assert answer["fields"] == {"email": "a@example.com"} and answer["result_key"]["caller"] == billing.caller_id
        signed = await cli("client", "sign", *common, "--span", str(tmp_path / "span.json"), env=env)
        assert signed.returncode == 0, signed.stdout + signed.stderr
        record = json.loads(signed.stdout)
        assert record["caller"]["id"] == billing.caller_id and record["signature"]["alg"] == "Ed25519"
        verified = await cli("verify", "-", env=env, stdin=signed.stdout)
        assert verified.returncode == 0 and "valid" in verified.stdout, verified.stdout + verified.stderr
