"""Caller policy pins over a real broker and TigerBeetle: `keyledger caller add` then `caller revoke` pin
versions 1 and 2 in the ledger; a worker process whose keys.callers holds only the version-1 record (what
compaction leaves once an insider re-published it: here the v1 bytes on a fresh broker's keys.callers)
refuses that record as rolled back below the pin (counted and logged) and denies the caller's requests
with a `caller_denied` dead letter."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from schemas.topics import Topic
from tests.support.callers import RegisteredCaller
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.core.callers import caller_id_for
from workers.kafka.tap import produce, read_topic
from workers.kms.local import LocalKms
from workers.ledger.tigerbeetle import TigerBeetleLedger

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_caller_rolled_back_on_keys_callers_is_denied_by_its_ledger_pin(topics_ready: str, own_broker: str,
                                                                                own_tigerbeetle: str, tmp_path: Path,
                                                                                caplog):
    name = f"billing-{uuid.uuid4().hex[:8]}"
    caller_id = caller_id_for(name)
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": topics_ready, "KEYLEDGER_KMS_PROVIDER": "local",
           "KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": own_tigerbeetle}
    operator_key = tmp_path / "ops" / "operator.key"
    cli("operator", "keygen", "--out", str(tmp_path / "ops"), env=env)
    cli("caller", "keygen", "--out", str(tmp_path / "billing"), env=env)
    added = cli("caller", "add", name, "--tenants", "*", "--operations", "encrypt,decrypt",
                "--public-key", str(tmp_path / "billing" / "caller.pub"), "--operator-key", str(operator_key),
                "--secret-out", str(tmp_path / "billing.secret"), env=env)
    revoked = cli("caller", "revoke", name, "--operator-key", str(operator_key), env=env)
    assert "version 1" in added and "version 2" in revoked

    # the insider's rollback: of the caller's records only version 1 is left on keys.callers
    [first] = [r.value for r in await read_topic(topics_ready, Topic.KEYS_CALLERS.value, timeout=30)
               if r.key == caller_id.encode() and r.value and json.loads(r.value)["version"] == 1]
    await produce(own_broker, Topic.KEYS_CALLERS, [(caller_id.encode(), first)])

    operator_public = (tmp_path / "ops" / "operator.pub").read_text().strip()
    caller = RegisteredCaller(name, tmp_path / "billing.secret", tmp_path / "billing" / "caller.key")
    tenant = unique_tenant("pins")
    ledger = TigerBeetleLedger(own_tigerbeetle, 0, timeout=30.0)
    with caplog.at_level(logging.WARNING, logger="keyledger.callers"):
        async with in_process_workers(own_broker, ["keyledger-keygen", "keyledger-pii"], kms=LocalKms(),
                                      ledger=ledger, overrides={"operator_public_key": operator_public,
                                                                "require_caller": "all"}) as context:
            assert context.caller_policies is not None and context.caller_policies.refused == 1
            assert context.callers.get(caller_id) is None and context.callers.pinned(caller_id) == 2
            assert (f"refused a keys.callers record for caller {caller_id}: rolled back: version 1, the ledger "
                    "pins 2") in caplog.text
            await produce(own_broker, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
            await records_for(own_broker, "keys.events", tenant, want=2, timeout=90)
            # the revoked caller's own credential, proving a request as it could before its revocation
            request = caller.pii(tenant, "encrypt", {"email": "a@example.com"}, job_id="rolled-back")
            await produce(own_broker, "pii.requests", [(tenant.encode(), request)])
            [letter] = await records_for(own_broker, "kms.dlq", tenant, want=1, timeout=60)
            assert letter["error"]["type"] == "caller_denied" and "unknown_caller" in letter["error"]["message"]
            assert not await records_for(own_broker, "pii.results", tenant, timeout=1)
