"""/healthz, /readyz and /metrics over a real broker: a `keyledger run` process, and a context seen starting."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import sample, samples
from workers.app.context import ProcessContext
from workers.app.embedded import free_port
from workers.kafka.tap import produce
from workers.settings import Settings

pytestmark = pytest.mark.integration


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, session.get(url) as reply:
        return reply.status, await reply.text()


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    """The first truthy answer of `check`, asked every 0.2 s; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = await check()
        except aiohttp.ClientError:
            answer = None
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.2)


async def test_a_running_worker_reports_health_readiness_and_what_it_did(worker_process, topics_ready):
    bootstrap = topics_ready
    worker = worker_process("keyledger-keygen", "keyledger-signer", env={"KEYLEDGER_LOG_FORMAT": "json"})
    base = f"http://127.0.0.1:{worker.http_port}"

    async def healthy() -> bool:
        return (await get(f"{base}/healthz"))[0] == 200

    async def ready() -> dict | None:
        status, body = await get(f"{base}/readyz")
        return json.loads(body) if status == 200 else None

    await until(healthy, "liveness", timeout=30)
    readiness = await until(ready, "readiness", timeout=90)
    checks = readiness["checks"]
    assert checks["broker"]["ok"] and checks["key_table"]["loaded"]
    assert set(checks["groups"]) == {"keyledger-keygen", "keyledger-signer"}
    assert all(group["joined"] for group in checks["groups"].values())

    tenant, stranger = unique_tenant("ops"), unique_tenant("stranger")
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await records_for(bootstrap, "keys.events", tenant, want=2, timeout=60)
    spans = [json.dumps({"job_id": f"j{i}", "tenant_id": tenant, "span": {"n": i}}).encode() for i in range(3)]
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), s) for s in spans] + [
        (stranger.encode(), json.dumps({"job_id": "x", "tenant_id": stranger, "span": {}}).encode())])
    await records_for(bootstrap, "spans.signed", tenant, want=3, timeout=60)
    await records_for(bootstrap, "kms.dlq", stranger, want=1, timeout=60)

    signer = {"group": "keyledger-signer"}

    async def counted() -> dict | None:
        status, text = await get(f"{base}/metrics")
        parsed = samples(text)
        done = (sample(parsed, "keyledger_records_total", **signer, outcome="processed") >= 3
                and sample(parsed, "keyledger_dead_letters_total", **signer, code="unknown_tenant") >= 1)
        return parsed if status == 200 and done else None

    parsed = await until(counted, "records and dead letters in /metrics", timeout=30)
    assert sample(parsed, "keyledger_records_total", **signer, outcome="dead_lettered") >= 1
    assert sample(parsed, "keyledger_kms_calls_total", operation="generate_data_key", outcome="success") >= 2
    assert sample(parsed, "keyledger_kms_seconds_count", operation="generate_data_key") >= 2
    assert sample(parsed, "keyledger_ledger_requests_total", operation="create_transfers", outcome="success") >= 1
    assert sample(parsed, "keyledger_keys", key_type="signing", state="active") >= 1
    assert sample(parsed, "keyledger_batch_size_count", **signer) >= 1
    assert ("keyledger_records_waiting", frozenset(signer.items())) in parsed
    assert ("process_resident_memory_bytes", frozenset()) in parsed
    assert not any("tenant" in dict(labels) for _, labels in parsed)  # tenant ids are never a label

    async def lag_sampled() -> bool:
        parsed = samples((await get(f"{base}/metrics"))[1])
        return any(name == "keyledger_consumer_lag" and dict(labels)["group"] == "keyledger-signer"
                   for name, labels in parsed)

    await until(lag_sampled, "consumer lag of the signer's partitions", timeout=30)
    parsed = await until(counted, "metrics")
    assert ("keyledger_key_usage_ratio", frozenset()) in parsed
    assert 0 <= sample(parsed, "keyledger_key_usage_ratio") < 1  # budgets charged by sealing: tests/app/test_metrics.py

    # the worker's log: one JSON object per line, the dead letter with its place and code
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    [dead] = [line for line in lines if line.get("code") == "unknown_tenant" and stranger in line["message"]]
    assert dead["group"] == "keyledger-signer" and dead["topic"] == "spans.to-sign"
    assert isinstance(dead["partition"], int) and isinstance(dead["offset"], int)
    assert any(line.get("event") == "generated" and line.get("tenant_id") == tenant for line in lines)


async def test_readiness_is_false_until_the_key_table_is_loaded_and_the_groups_joined(topics_ready):
    bootstrap = topics_ready
    settings = Settings(kafka_bootstrap=bootstrap, kafka_partitions=3, http_port=free_port(), http_host="127.0.0.1")
    context = ProcessContext.build(settings, bootstrap)
    context.register(["keyledger-keygen"])
    url = await context.serve_http()
    try:
        assert url == f"http://127.0.0.1:{settings.http.port}"
        assert (await get(f"{url}/healthz"))[0] == 200  # alive before anything connected
        status, body = await get(f"{url}/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503 and not checks["key_table"]["loaded"]
        assert checks["groups"]["keyledger-keygen"]["joined"] is False
        assert checks["kms"]["state"] == "unknown" and checks["kms"]["fatal"]  # keygen cannot serve without KMS

        await context.start()

        async def ready() -> dict | None:
            status, body = await get(f"{url}/readyz")
            return json.loads(body) if status == 200 else None

        checks = (await until(ready, "readiness", timeout=60))["checks"]
        assert checks["key_table"]["loaded"] and checks["groups"]["keyledger-keygen"]["joined"]
    finally:
        await context.aclose()
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/healthz")  # closed with the context
