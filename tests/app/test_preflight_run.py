"""`keyledger run`'s preflight: each group's KMS rights (moto, OpenBao), TigerBeetle's cluster id, one line per failure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest

from workers.app.embedded import TigerBeetleServer, free_port, tigerbeetle_binary
from workers.app.preflight import check_cluster, check_kms
from workers.errors import ConfigError
from workers.settings import Settings

pytestmark = pytest.mark.integration


def aws(moto_endpoint: str, key: str | None, **more) -> Settings:
    return Settings(kms_provider="aws", kms_key_id=key, kms_endpoint_url=moto_endpoint, aws_region="us-east-1",
                    kms_max_attempts=1, **more)


async def test_keygen_makes_a_data_key_and_the_signer_only_reaches_the_kms(moto_endpoint, moto_kms_key):
    settings = aws(moto_endpoint, moto_kms_key)
    assert await check_kms(settings, ["keyledger-keygen", "keyledger-signer"]) == []
    assert await check_kms(settings, ["keyledger-signer", "keyledger-pii"]) == []


async def test_a_missing_default_key_is_named_with_what_was_tried(moto_endpoint):
    settings = aws(moto_endpoint, "alias/nowhere")
    [line] = await check_kms(settings, ["keyledger-keygen"])
    assert line.startswith("KEYLEDGER_KMS_KEY_ID=alias/nowhere: GenerateDataKey for keyledger-keygen (region us-east-1")
    assert "is not found" in line and "KEYLEDGER_AWS_REGION" in line


async def test_an_unreachable_kms_names_the_endpoint_setting(moto_kms_key):
    settings = aws(f"http://127.0.0.1:{free_port()}", moto_kms_key, kms_timeout=1)
    [line] = await check_kms(settings, ["keyledger-pii"])
    assert line.startswith("cannot reach the KMS: DescribeKey for keyledger-pii")
    assert "EndpointConnectionError" in line and "KEYLEDGER_KMS_ENDPOINT_URL" in line


async def test_the_local_kms_needs_no_check():
    assert await check_kms(Settings(), ["keyledger-keygen"]) == []


async def test_a_pkcs11_token_is_checked_by_wrapping_or_describing_under_the_default_key(softhsm, monkeypatch):
    for name, value in softhsm.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(kms_provider="pkcs11")
    assert await check_kms(settings, ["keyledger-keygen", "keyledger-signer"]) == []
    assert await check_kms(settings, ["keyledger-signer"]) == []


async def test_a_key_store_that_refuses_or_is_out_of_reach_is_one_line_naming_its_settings():
    from tests.support.faults import SwitchableKms
    from workers.app.preflight import _key_store_problems
    from workers.kms.local import LocalKms
    from workers.settings import KmsProvider

    refusing = LocalKms()
    await refusing.schedule_key_deletion(refusing.default_key_id, 7)  # the local KMS then refuses that key
    [line] = await _key_store_problems(KmsProvider.GCP, refusing, ["keyledger-keygen"])
    assert line.startswith(f"KEYLEDGER_KMS_PROVIDER=gcp: a data key wrapped under {refusing.default_key_id} "
                           "for keyledger-keygen was refused")
    assert line.endswith("check the KEYLEDGER_GCP_* settings (docs/runbooks/gcp.md)")
    down = SwitchableKms()
    down.down = True
    [line] = await _key_store_problems(KmsProvider.AZURE, down, ["keyledger-keygen", "keyledger-pii"])
    assert "for keyledger-keygen could not reach it" in line and "KEYLEDGER_AZURE_*" in line


def policy(openbao, name: str, ops: tuple[str, ...], key: str) -> str:
    """A token whose policy allows `update` on transit/<op>/<key> for each op."""
    hcl = "\n".join(f'path "transit/{op}/{key}" {{ capabilities = ["update"] }}' for op in ops)
    openbao.admin("POST", f"sys/policies/acl/{name}", {"policy": hcl})
    return openbao.admin("POST", "auth/token/create", {"policies": [name]})["auth"]["client_token"]


async def test_a_vault_token_is_checked_for_what_each_group_does(openbao):
    key = f"k-{uuid.uuid4().hex[:8]}"
    token = policy(openbao, f"p-{key}", ("decrypt",), key)
    settings = Settings(kms_provider="vault", vault_addr=openbao.addr, vault_token=token, vault_key=key)
    assert await check_kms(settings, ["keyledger-signer"]) == []
    [line] = await check_kms(settings, ["keyledger-signer", "keyledger-keygen"])
    assert line.startswith(f"KEYLEDGER_VAULT_KEY={key}: the Vault token may not update transit/encrypt/{key}")
    assert "keyledger-keygen needs" in line
    refused = Settings(kms_provider="vault", vault_addr=openbao.addr, vault_token="not-a-token", vault_key=key)
    [line] = await check_kms(refused, ["keyledger-signer"])
    assert line.startswith("the Vault token (KEYLEDGER_VAULT_AUTH=token) was refused")


@pytest.fixture(scope="module")
def tigerbeetle(tmp_path_factory):
    binary = tigerbeetle_binary()
    if not binary:
        pytest.skip("no tigerbeetle server binary (TIGERBEETLE_BIN)")
    server = TigerBeetleServer(binary, tmp_path_factory.mktemp("tb")).start()
    yield server.address
    server.stop()


async def test_a_wrong_tigerbeetle_cluster_id_is_named_as_such(tigerbeetle):
    await check_cluster(tigerbeetle, 0)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"did not answer as cluster 7 within 3s \(it answers as cluster 0\): "
                                          r"set KEYLEDGER_TB_CLUSTER_ID"):
        await check_cluster(tigerbeetle, 7, timeout=3)
    assert time.monotonic() - started < 6


def test_run_stops_at_start_on_a_missing_key_before_consuming(moto_endpoint, kafka_bootstrap):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update({"KEYLEDGER_PROFILE": "dev", "KEYLEDGER_LEDGER": "memory", "KEYLEDGER_AWS_REGION": "us-east-1",
                "KEYLEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEYLEDGER_KMS_PROVIDER": "aws",
                "KEYLEDGER_KMS_KEY_ID": "alias/keyledger-missing", "KEYLEDGER_KMS_ENDPOINT_URL": moto_endpoint,
                "KEYLEDGER_HTTP_PORT": "0", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    done = subprocess.run([sys.executable, "-m", "workers.app.cli", "run", "--group", "keyledger-keygen"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()  # nothing else: no topic was created, nothing consumed
    assert line.startswith("keyledger run: KEYLEDGER_KMS_KEY_ID=alias/keyledger-missing: GenerateDataKey")


async def test_a_silent_tigerbeetle_is_named_busy_or_another_cluster():
    """A server that accepts connections and never answers (a replica without quorum, or busy, or of
    another cluster than every one asked) is not only blamed on the cluster id."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=r"did not answer as cluster 0 within 1s: it is overloaded or has "
                                              r"no quorum, or its data file was formatted with another --cluster"):
            await check_cluster(f"127.0.0.1:{port}", 0, timeout=1)
        assert accepted, "the probe connected"
    finally:
        server.close()
        for writer in accepted:
            writer.close()
