"""Callers over a real broker: `keyledger caller add` writes a signed keys.callers record that a follower
accepts (unwrapping the same secret the credential file holds); a record signed by another key is
refused and logged by the caller id it names; `caller list` shows both; `caller revoke` reaches a
running follower. The secret is never printed and never on the topic in plaintext."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.topics import Topic
from tests.support.kafka import read
from workers.client import CallerCredential
from workers.core.b64 import b64encode, b64url_encode
from workers.core.callers import CallerTable, caller_id_for, operator_public_key, sign_policy
from workers.core.canonical import canonical_json
from workers.kafka.follow import TopicFollower
from workers.kafka.tap import produce
from workers.keystore.callers import CallerPolicies
from workers.kms.local import LocalKms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    clean["PYTHONPATH"] = str(ROOT) + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "workers.app.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=180)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def test_caller_add_is_accepted_a_forgery_refused_and_revoke_followed(topics_ready: str, tmp_path: Path,
                                                                           caplog):
    env = {"KEYLEDGER_KAFKA_BOOTSTRAP": topics_ready, "KEYLEDGER_KMS_PROVIDER": "local"}
    name, forged_name = f"billing-{uuid.uuid4().hex[:8]}", f"mallory-{uuid.uuid4().hex[:8]}"
    caller_id, forged_id = caller_id_for(name), caller_id_for(forged_name)
    outputs = [ok(cli("operator", "keygen", "--out", str(tmp_path / "ops"), env=env)),
               ok(cli("caller", "keygen", "--out", str(tmp_path / "billing"), "--kem", "mlkem768-x25519", env=env)),
               ok(cli("caller", "add", name, "--tenants", "acme,globex", "--operations", "encrypt,decrypt",
                      "--public-key", str(tmp_path / "billing" / "caller.pub"),
                      "--operator-key", str(tmp_path / "ops" / "operator.key"),
                      "--secret-out", str(tmp_path / "billing.secret"), env=env))]
    credential = CallerCredential.load(tmp_path / "billing.secret")
    assert credential.caller_id == caller_id and "version 1" in outputs[-1]
    operator_pub = (tmp_path / "ops" / "operator.pub").read_text().strip()

    # write access to the topic alone: a record for a new caller, and a higher version of billing granting more
    intruder = Ed25519PrivateKey.generate()
    kms = LocalKms()
    stolen = await kms.generate_data_key(None, {"caller_id": forged_id})
    forged = {"caller_id": forged_id, "name": forged_name, "tenants": "*", "operations": ["decrypt"],
              "kem": "x25519", "public_key": b64url_encode(bytes(32)), "wrapped_secret": b64encode(stolen.wrapped),
              "kms_key_id": stolen.kms_key_id, "kms_provider": "local", "created_at": "2026-01-01T00:00:00Z",
              "revoked": False, "version": 1}
    raised = {**json.loads(json.dumps(forged)), "caller_id": caller_id, "name": name, "version": 99}
    await produce(topics_ready, Topic.KEYS_CALLERS, [
        (forged_id.encode(), canonical_json(sign_policy(forged, intruder))),
        (caller_id.encode(), canonical_json(sign_policy(raised, intruder)))])

    policies = CallerPolicies(CallerTable(), kms, operator_public_key(operator_pub))
    follower = TopicFollower(topics_ready, [Topic.KEYS_CALLERS.value], lambda _topic, key, value: policies.apply(key, value),
                             client_id="keyledger-callers", startup_timeout=60)
    with caplog.at_level(logging.WARNING, logger="keyledger.callers"):
        await follower.start()
    try:
        held = policies.table.get(caller_id)
        assert held is not None and held.policy.version == 1 and held.secret == credential.secret
        assert held.policy.tenants == ["acme", "globex"] and held.policy.kem.value == "mlkem768-x25519"
        assert policies.table.get(forged_id) is None
        assert f"refused a keys.callers record for caller {forged_id}" in caplog.text
        assert f"refused a keys.callers record for caller {caller_id}" in caplog.text

        listed = ok(cli("caller", "list", env={**env, "KEYLEDGER_OPERATOR_PUBLIC_KEY": operator_pub}))
        mine = [line for line in listed.splitlines() if line.startswith(name)]
        assert len(mine) == 1 and "active" in mine[0] and "decrypt,encrypt / acme,globex" in mine[0]
        assert f"REFUSED record for caller {forged_id}" in listed and forged_name not in listed.split("REFUSED")[0]

        revoked = ok(cli("caller", "revoke", name, "--operator-key", str(tmp_path / "ops" / "operator.key"), env=env))
        assert "version 2" in revoked
        await until(lambda: policies.table.get(caller_id).policy.revoked)  # type: ignore[union-attr]
        assert policies.table.get(caller_id).secret is None  # type: ignore[union-attr]
        missing = cli("caller", "revoke", "nobody-" + uuid.uuid4().hex[:6], "--operator-key",
                      str(tmp_path / "ops" / "operator.key"), env=env)
        assert missing.returncode == 1 and "nothing revoked" in missing.stderr
    finally:
        await follower.aclose()

    secret_texts = [credential.secret.hex(), b64url_encode(credential.secret), b64encode(credential.secret)]
    printed = "".join(outputs) + listed + revoked
    assert not any(text in printed for text in secret_texts)
    on_topic = b"".join(r.value or b"" for r in await read(topics_ready, Topic.KEYS_CALLERS))
    assert credential.secret not in on_topic and not any(text.encode() in on_topic for text in secret_texts)
