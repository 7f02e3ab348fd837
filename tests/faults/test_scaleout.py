"""Several processes per group over one broker with 12 partitions, joining and leaving mid-stream: one
killed -9, one added, one stopped gracefully, all while records flow. Rebalances lose and double nothing:
every input is answered, each ledger transfer is made once (one id per input record), every signature
verifies under PyNaCl, every ciphertext opens again, `keyledger audit verify` agrees with the ledger, and
keygen and rotation leave exactly one active key per tenant and type.

The broker is this module's own (12-partition topics; the session's has 3); the KMS is moto and the ledger
the session's single TigerBeetle, shared by every process as in production."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from schemas.messages import AuditEvent
from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.audit import transfers_by_place
from tests.support.kafka import tenant_created, unique_tenant
from workers.app.embedded import EmbeddedBroker, free_port
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.keys.audit import named_transfers
from workers.settings import Settings

# six processes joining and leaving under load: minutes, and more on a busy CI machine than alone
pytestmark = [pytest.mark.integration, pytest.mark.scaleout, pytest.mark.timeout(900)]

PARTITIONS = 12


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[str]:
    with EmbeddedBroker(log_path=tmp_path_factory.mktemp("scaleout") / "broker.log") as running:
        asyncio.run(ensure_topics(running.bootstrap, Settings(kafka_bootstrap=running.bootstrap,
                                                              kafka_partitions=PARTITIONS)))
        yield running.bootstrap


class Fleet:
    """`keyledger run` processes over the module's broker, each with its own health port and log."""

    def __init__(self, bootstrap: str, env: dict[str, str], logs: Path) -> None:
        self.bootstrap = bootstrap
        self.env = {**os.environ, **env, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap,
                    "KEYLEDGER_KAFKA_PARTITIONS": str(PARTITIONS), "KEYLEDGER_KEY_TABLE_WAIT": "30",
                    # rebalances are under test here, not callers (tests/groups/test_callers.py,
                    # tests/faults/test_kill_9.py): decrypts are answered in plaintext as before callers
                    "KEYLEDGER_REQUIRE_CALLER": "none"}
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, group: str) -> subprocess.Popen:
        port = free_port()
        log_path = self.logs / f"{group}-{len(self.started)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "workers.app.cli", "run", "--group", group],
                                env={**self.env, "KEYLEDGER_HTTP_PORT": str(port)},
                                stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        proc.http_port, proc.log_path = port, log_path  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    async def ready(self, *procs: subprocess.Popen, timeout: float = 120.0) -> None:
        """Each process answers /readyz 200: key table read, its group joined."""
        async def one(proc: subprocess.Popen) -> None:
            deadline = asyncio.get_running_loop().time() + timeout
            while not await asyncio.to_thread(_ready, proc.http_port):  # type: ignore[attr-defined]
                assert proc.poll() is None, proc.log_path.read_text()[-3000:]  # type: ignore[attr-defined]
                assert asyncio.get_running_loop().time() < deadline, "not ready in time"
                await asyncio.sleep(0.5)
        await asyncio.gather(*(one(p) for p in procs))

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


async def kill_9(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)


async def stop_gracefully(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            pytest.fail("no exit 60 s after SIGTERM; its log ends:\n" + proc.log_path.read_text()[-3000:])  # type: ignore[attr-defined]
        assert code == 0, proc.log_path.read_text()[-3000:]  # type: ignore[attr-defined]


async def held_by_the_living(*procs: subprocess.Popen, timeout: float = 120.0) -> None:
    """Every partition of the group is held by one of `procs` (the living members): the broker has
    evicted a member killed -9. The embedded broker (tansu) waits for every member of the last
    generation before it completes a rebalance, and does not expire one whose session ran out while it
    waits: a member that leaves while a dead one is still in the generation stalls the group for good.
    Kafka expires the dead member after its session timeout; here the test lets the eviction land
    before the next change of membership."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum([await asyncio.to_thread(assigned, p) for p in procs if p.poll() is None]) != PARTITIONS:
        assert asyncio.get_running_loop().time() < deadline, "the dead member's partitions were never reassigned"
        await asyncio.sleep(0.5)


def assigned(proc: subprocess.Popen) -> int:
    """Partitions the process's groups hold now, as its /readyz reports them."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/readyz", timeout=5) as answer:  # type: ignore[attr-defined]
            body = json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        body = json.loads(refused.read())
    return sum(g["partitions"] for g in body["checks"]["groups"].values())


@pytest.fixture
def env(aws_env: dict[str, str], tigerbeetle_address: str) -> dict[str, str]:
    # batches small enough that the churn lands between many of them
    return {**aws_env, "KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle_address,
            "KEYLEDGER_KAFKA_BATCH_MAX": "50"}


@pytest.fixture
def fleet(broker: str, env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(broker, env, tmp_path)
    yield running
    running.stop_all()


def values(records: list, tenants: set[str]) -> list[dict]:
    decoded = (json.loads(r.value) for r in records if r.value)
    return [v for v in decoded if v.get("tenant_id") in tenants]


def distinct(field: str, tenants: set[str]) -> Callable[[list], int]:
    return lambda records: len({v[field] for v in values(records, tenants)})


Step = Callable[[], Awaitable[None]]


async def stream(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], chunks: int,
                 every: float, at: dict[int, Step]) -> None:
    """`records` in `chunks` steady chunks, `every` seconds apart; `at[i]` runs before chunk i."""
    size = -(-len(records) // chunks)
    for index in range(chunks):
        if index in at:
            await at[index]()
        await produce(bootstrap, topic, records[index * size:(index + 1) * size])
        await asyncio.sleep(every)


async def onboard(fleet: Fleet, tenants: list[str]) -> dict[str, dict[str, str]]:
    """Keys for `tenants` made by one keygen process; returns each tenant's public signing key by key id."""
    keygen = fleet.start("keyledger-keygen")
    await produce(fleet.bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    wanted = set(tenants)
    generated = await read_topic(fleet.bootstrap, "keys.events", timeout=180,
                                 until=lambda rs: len(values(rs, wanted)) >= 2 * len(tenants))
    await stop_gracefully(keygen)
    return {v["key_id"]: v for v in values(generated, wanted) if v["key_type"] == "signing"}


def _jcs(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pii_request(tenant: str, job: str, operation: str, fields: dict[str, str], record: str | None = None) -> bytes:
    """A PII request; `record` (the record id the fields are bound to) defaults to the job id."""
    return json.dumps({"job_id": job, "tenant_id": tenant, "record_id": record or job, "operation": operation,
                       "fields": fields}).encode()


async def test_signer_and_pii_fleets_lose_and_double_nothing_across_rebalances(fleet: Fleet, env):
    bootstrap = fleet.bootstrap
    tenants = [unique_tenant("so") for _ in range(24)]  # keyed by tenant: enough to cover 12 partitions
    wanted = set(tenants)
    signing_keys = await onboard(fleet, tenants)
    signers = [fleet.start("keyledger-signer") for _ in range(3)]
    piis = [fleet.start("keyledger-pii") for _ in range(3)]
    await fleet.ready(*signers, *piis)

    spans = [(t.encode(), json.dumps({"job_id": f"{t}-s{n}", "tenant_id": t,
                                      "span": {"n": n, "name": "op"}}).encode())
             for n in range(90) for t in tenants]
    plain = {f"{t}-p{n}": {"ssn": f"{n:09d}", "name": f"{t} {n}"} for n in range(40) for t in tenants}
    seals = [(job.rsplit("-p", 1)[0].encode(), pii_request(job.rsplit("-p", 1)[0], job, "encrypt", fields))
             for job, fields in plain.items()]
    added: list = []

    async def kill() -> None:
        await kill_9(signers[0], piis[0])

    async def add() -> None:
        added.extend([fleet.start("keyledger-signer"), fleet.start("keyledger-pii")])

    async def stop() -> None:
        await fleet.ready(*added)  # the new ones joined (and took partitions) while records flowed
        await held_by_the_living(*signers[1:], added[0])
        await held_by_the_living(*piis[1:], added[1])
        await stop_gracefully(signers[1], piis[1])

    await asyncio.gather(
        stream(bootstrap, "spans.to-sign", spans, chunks=30, every=0.5, at={5: kill, 10: add, 20: stop}),
        stream(bootstrap, "pii.requests", seals, chunks=30, every=0.5, at={}))

    signed_records = await read_topic(bootstrap, "spans.signed", timeout=300,
                                      until=lambda rs: distinct("job_id", wanted)(rs) >= len(spans))
    sealed_records = await read_topic(bootstrap, "pii.results", timeout=300,
                                      until=lambda rs: distinct("job_id", wanted)(rs) >= len(seals))

    # every input answered, each signature valid under a third party's Ed25519
    signed = values(signed_records, wanted)
    assert {v["job_id"] for v in signed} == {json.loads(v)["job_id"] for _, v in spans}
    for record in signed:
        key = signing_keys[record["signature"]["key_id"]]
        body = {"key_id": key["key_id"], "span": record["span"], "tenant_id": record["tenant_id"]}
        value = record["signature"]["value"]
        VerifyKey(base64.b64decode(key["public_key"])).verify(
            _jcs(body), base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))

    # every ciphertext opens to what was sealed (the remaining processes answer the decrypts)
    sealed = {v["job_id"]: v for v in values(sealed_records, wanted)}
    assert set(sealed) == set(plain) and not [v for v in sealed.values() if v.get("errors") or v.get("error")]
    opens = [(v["tenant_id"].encode(), pii_request(v["tenant_id"], f"open-{job}", "decrypt", v["fields"], job))
             for job, v in sealed.items()]
    await produce(bootstrap, "pii.requests", opens)
    opened_records = await read_topic(
        bootstrap, "pii.results", timeout=300,
        until=lambda rs: len({v["job_id"] for v in values(rs, wanted) if v["job_id"].startswith("open-")}) >= len(opens))
    opened = {v["job_id"][len("open-"):]: v for v in values(opened_records, wanted) if v["job_id"].startswith("open-")}
    assert {job: v["fields"] for job, v in opened.items()} == plain

    # each ledger transfer once: one transfer id per input record (and key and operation), however often
    # the record was replayed across the rebalances
    audits = values(await read_topic(bootstrap, "kms.audit", timeout=120), wanted)
    by_source: dict[tuple, set[str]] = {}
    for audit in audits:
        for (topic, partition, offset), transfer_id in transfers_by_place(audit).items():
            cause = (topic, partition, offset, audit["key_id"], audit["op"])
            by_source.setdefault(cause, set()).add(transfer_id)
    assert [s for s, ids in by_source.items() if len(ids) > 1] == [], "one input record, two ledger transfers"
    signs = {i for a in audits if a["op"] == "sign" for i in named_transfers(AuditEvent.model_validate(a))}
    assert len(signs) == len(spans)

    assert_audit_agrees(bootstrap, env, tenants[::6])
    await assert_key_invariants(bootstrap, tenants)
    survivors = (signers[2], piis[2], *added)
    assert all(p.poll() is None for p in survivors)
    assert all(assigned(p) > 0 for p in survivors)  # the added ones hold partitions: they took work over
    for proc in survivors:  # every survivor went through rebalances mid-stream
        assert "partitions revoked" in proc.log_path.read_text(), proc.log_path  # type: ignore[attr-defined]


async def test_keygen_and_rotation_pairs_make_one_active_key_per_tenant_and_type(fleet: Fleet, env):
    bootstrap = fleet.bootstrap
    tenants = [unique_tenant("so-k") for _ in range(240)]
    wanted = set(tenants)

    def count(kind: str) -> Callable[[list], int]:
        return lambda records: len({(v["key_id"], v["type"]) for v in values(records, wanted) if v["type"] == kind})

    keygens = [fleet.start("keyledger-keygen") for _ in range(2)]
    await fleet.ready(*keygens)

    async def replace_keygen() -> None:
        await kill_9(keygens[0])
        keygens.append(fleet.start("keyledger-keygen"))

    creations = [(t.encode(), tenant_created(t)) for t in tenants]
    await stream(bootstrap, "tenants.created", creations, chunks=12, every=0.5, at={4: replace_keygen})
    await read_topic(bootstrap, "keys.events", timeout=300, until=lambda rs: count("generated")(rs) >= 2 * len(tenants))
    await assert_key_invariants(bootstrap, tenants)

    rotations = [fleet.start("keyledger-rotation") for _ in range(2)]
    await fleet.ready(*rotations)

    async def kill() -> None:
        await kill_9(rotations[0])

    async def add() -> None:
        rotations.append(fleet.start("keyledger-rotation"))

    async def stop() -> None:
        await fleet.ready(rotations[2])
        await held_by_the_living(*rotations[1:])
        await stop_gracefully(rotations[1])

    ticks = [(t.encode(), json.dumps({"tick_id": f"so-{t}", "issued_at": datetime.now(UTC).isoformat(),
                                      "tenant_id": t, "reason": "manual"}).encode()) for t in tenants]
    await stream(bootstrap, "keys.rotation-ticks", ticks, chunks=16, every=0.5, at={3: kill, 5: add, 10: stop})
    events = await read_topic(bootstrap, "keys.events", timeout=300,
                              until=lambda rs: count("rotated")(rs) >= 2 * len(tenants))
    if count("rotated")(events) < 2 * len(tenants):  # say who stopped taking work, not only what is missing
        pytest.fail(f"{count('rotated')(events)} of {2 * len(tenants)} keys rotated after 300 s; the rotation "
                    "processes' logs end:\n" + "\n".join(
                        f"--- {proc.log_path.name}\n" + "\n".join(proc.log_path.read_text().splitlines()[-8:])  # type: ignore[attr-defined]
                        for proc in rotations))
    directory = await assert_key_invariants(bootstrap, tenants)
    assert {e.version for t in tenants for e in directory.tenant_keys(t) if e.state.value == "active"} == {2}
    assert_audit_agrees(bootstrap, env, tenants[::60])
