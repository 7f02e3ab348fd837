"""Infrastructure that goes away mid-stream and comes back: nothing is lost, nothing is counted twice."""

from __future__ import annotations

import json

import pytest

from tests.faults.invariants import assert_audit_agrees, assert_key_invariants
from tests.support.harness import span_job
from tests.support.kafka import read, records_for, tenant_created, unique_tenant, until
from tests.support.processes import sample, scrape
from workers.app.embedded import TigerBeetleServer, tigerbeetle_binary
from workers.kafka.tap import produce

pytestmark = pytest.mark.integration


async def parked_spans(port: int) -> float:
    """Spans the signer parked for another attempt, as its /metrics counts them."""
    return sample(await scrape(port), "keyledger_records_total", group="keyledger-signer", outcome="retried")


async def test_tigerbeetle_killed_and_restarted_mid_stream(topics_ready, worker_process, tmp_path):
    binary = tigerbeetle_binary()
    if not binary:
        pytest.skip("no tigerbeetle server binary: set TIGERBEETLE_BIN or put tigerbeetle on PATH")
    server = TigerBeetleServer(binary, tmp_path).start()
    try:
        bootstrap, tenants = topics_ready, [unique_tenant("tb-out") for _ in range(3)]
        env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": server.address,
               "KEYLEDGER_RETRY_BACKOFF_MAX": "1"}
        worker = worker_process("keyledger-keygen", "keyledger-signer", env=env)
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
        for tenant in tenants:
            await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
        jobs = [(t.encode(), span_job(t, job_id=f"{t}-{n}")) for n in range(1500) for t in tenants]
        wanted = set(tenants)

        def signed(records) -> int:
            return len({v["job_id"] for v in (json.loads(r.value) for r in records if r.value)
                        if v.get("tenant_id") in wanted})

        await produce(bootstrap, "spans.to-sign", jobs[: len(jobs) // 2])
        await read(bootstrap, "spans.signed", until=lambda rs: signed(rs) >= 100, timeout=90)
        parked = await parked_spans(worker.http_port)
        server.kill()  # the ledger is gone: the signer's batches wait, uncommitted
        await produce(bootstrap, "spans.to-sign", jobs[len(jobs) // 2:])

        async def parked_more() -> bool:
            return await parked_spans(worker.http_port) > parked

        await until(parked_more, "span parked for want of the ledger", timeout=90)
        during = signed(await read(bootstrap, "spans.signed", timeout=60))
        assert during < len(jobs)  # the work was attempted and is waiting, not done without a ledger
        server.restart()
        done = await read(bootstrap, "spans.signed", until=lambda rs: signed(rs) >= len(jobs), timeout=180)
        assert signed(done) == len(jobs)
        await assert_key_invariants(bootstrap, tenants)
        assert_audit_agrees(bootstrap, env, tenants)
    finally:
        server.stop()
