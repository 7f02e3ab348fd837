"""A three-replica TigerBeetle cluster under a signer's steady stream: each replica killed -9 in turn (the
primary among them) and restarted, then two of three killed at once. While a quorum runs, work goes on;
without one, the worker waits (no dead letters, no failed requests, /readyz names the ledger) and resumes
when the quorum is back. keyledger is given the replicas by host name (`localhost`), resolved again when
the cluster stops answering (workers/ledger/tigerbeetle.py); the servers themselves take IPs only.

About 1.5 GB resident per `--development` replica; a replica listens some seconds after it starts."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.kafka import tenant_created, unique_tenant
from workers.app.embedded import free_port, tigerbeetle_binary, wait_for_port
from workers.kafka.tap import produce, read_topic

# three replicas killed in turn under a stream: minutes, more on a busy CI machine
pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(600)]

REPLICAS = 3


class Cluster:
    """`REPLICAS` `--development` replicas on loopback, each its own data file; kill and restart one."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.processes: list[subprocess.Popen | None] = [None] * REPLICAS

    @property
    def names(self) -> str:
        """KEYLEDGER_TB_ADDRESSES as an operator writes it: host names, replica i at position i."""
        return ",".join(f"localhost:{port}" for port in self.ports)

    def data(self, replica: int) -> Path:
        return self.folder / f"0_{replica}.tigerbeetle"

    def format(self) -> Cluster:
        for replica in range(REPLICAS):
            subprocess.run([self.binary, "format", "--cluster=0", f"--replica={replica}",
                            f"--replica-count={REPLICAS}", "--development", str(self.data(replica))],
                           check=True, capture_output=True)
        return self

    def start(self, *replicas: int) -> None:
        addresses = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        for replica in replicas:
            log = open(self.folder / f"replica-{replica}.log", "ab")  # noqa: SIM115
            self.processes[replica] = subprocess.Popen(
                [self.binary, "start", f"--addresses={addresses}", "--development", str(self.data(replica))],
                stdout=log, stderr=subprocess.STDOUT)
        for replica in replicas:
            wait_for_port(self.ports[replica], 120, self.processes[replica])

    def kill(self, *replicas: int) -> None:
        for replica in replicas:
            process = self.processes[replica]
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            self.processes[replica] = None

    def stop(self) -> None:
        self.kill(*range(REPLICAS))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    binary = tigerbeetle_binary()
    if not binary:
        pytest.skip("no tigerbeetle server binary: set TIGERBEETLE_BIN or put tigerbeetle on PATH")
    running = Cluster(binary, tmp_path).format()
    running.start(*range(REPLICAS))
    try:
        yield running
    finally:
        running.stop()


def readiness(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def values(records: list, tenants: set[str]) -> list[dict]:
    decoded = (json.loads(r.value) for r in records if r.value)
    return [v for v in decoded if v.get("tenant_id") in tenants]


def jobs_answered(tenants: set[str]) -> Callable[[list], int]:
    return lambda records: len({v["job_id"] for v in values(records, tenants)})


async def until_answered(bootstrap: str, tenants: set[str], count: int, timeout: float = 180) -> int:
    records = await read_topic(bootstrap, "spans.signed", timeout=timeout,
                               until=lambda rs: jobs_answered(tenants)(rs) >= count)
    return jobs_answered(tenants)(records)


async def dead_letters(bootstrap: str, tenants: set[str]) -> list:
    letters = await read_topic(bootstrap, "kms.dlq", timeout=60)
    return [r for r in letters if r.key is not None and r.key.decode(errors="replace") in tenants]


async def test_a_signer_rides_out_replica_kills_and_waits_for_a_lost_quorum(topics_ready, worker_process, cluster):
    bootstrap = topics_ready
    env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": cluster.names,
           "KEYLEDGER_KAFKA_BATCH_MAX": "20", "KEYLEDGER_RETRY_BACKOFF_MAX": "2"}
    tenants = [unique_tenant("tbc") for _ in range(6)]
    wanted = set(tenants)
    keygen = worker_process("keyledger-keygen", env=env)
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    await read_topic(bootstrap, "keys.events", timeout=180, until=lambda rs: len(values(rs, wanted)) >= 2 * len(tenants))
    keygen.terminate()
    keygen.wait(timeout=60)

    signer = worker_process("keyledger-signer", env=env)
    sent = 0

    async def send(count: int) -> None:
        nonlocal sent
        jobs = [(t.encode(), json.dumps({"job_id": f"{t}-{sent + n}", "tenant_id": t,
                                         "span": {"n": sent + n, "name": "op"}}).encode())
                for n in range(count) for t in tenants]
        sent += count
        await produce(bootstrap, "spans.to-sign", jobs)

    await send(20)
    await until_answered(bootstrap, wanted, 20 * len(tenants))

    # each replica in turn, the primary among them: two of three keep serving, the third rejoins
    for replica in range(REPLICAS):
        cluster.kill(replica)
        await send(20)
        await until_answered(bootstrap, wanted, sent * len(tenants))
        cluster.start(replica)
        await send(5)  # the restarted replica catches up while records flow
        await until_answered(bootstrap, wanted, sent * len(tenants))

    # two of three: no quorum. The signer waits, fails nothing, and says why it is not ready.
    before = sent * len(tenants)
    cluster.kill(1, 2)
    await send(20)
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        status, body = await asyncio.to_thread(readiness, signer.http_port)
        if status == 503 and body["checks"]["ledger"]["state"] == "unavailable":
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(1)
    assert body["checks"]["ledger"]["last_error"]
    assert signer.poll() is None
    assert await until_answered(bootstrap, wanted, before + 1, timeout=5) == before  # nothing passes without a quorum
    assert await dead_letters(bootstrap, wanted) == []

    cluster.start(1, 2)
    assert await until_answered(bootstrap, wanted, sent * len(tenants), timeout=240) == sent * len(tenants)
    deadline = asyncio.get_running_loop().time() + 60
    while (await asyncio.to_thread(readiness, signer.http_port))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "not ready again after the quorum came back"
        await asyncio.sleep(1)
    assert await dead_letters(bootstrap, wanted) == []
    # no record counted a failed attempt: an unreachable ledger is a wait, never a failure
    log = signer.log_path.read_text().splitlines()
    assert [line for line in log if " failed (" in line or "failed outside its handler" in line] == []

    await assert_key_invariants(bootstrap, tenants)
    assert_audit_agrees(bootstrap, env, tenants[::2])
