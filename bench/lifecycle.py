"""Rotation at scale: N tenants (default 10,000) rotated by one manual tick against moto's KMS over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time

from bench.common import Worker, broker, moto_kms, say
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.kms.aws import AwsKms
from workers.settings import Settings


async def _count_events(bootstrap: str, kind: str, want: int, timeout: float) -> list:
    def matching(records):
        return [r for r in records if r.value and json.loads(r.value)["type"] == kind]

    records = await read_topic(bootstrap, "keys.events", until=lambda rs: len(matching(rs)) >= want, timeout=timeout)
    return matching(records)


async def kms_floor(kms: tuple[str, str], calls: int = 1000) -> float:
    """GenerateDataKey/s that moto answers a bare client at the worker's concurrency: rotation's ceiling."""
    client = AwsKms(kms[1], endpoint_url=kms[0], concurrency=Settings().kms_concurrency)
    try:
        await client.generate_data_key(None, {"warm": "up"})
        start = time.perf_counter()
        await asyncio.gather(*(client.generate_data_key(None, {"tenant_id": str(i)}) for i in range(calls)))
        return calls / (time.perf_counter() - start)
    finally:
        await client.aclose()


async def run(tenants: int) -> dict:
    with broker() as bootstrap, moto_kms() as kms:
        floor = await kms_floor(kms)
        say(f"  moto answers {floor:,.0f} GenerateDataKey/s to a bare client: at most {floor / 2:,.0f} tenants/s")
        await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6))
        worker = Worker(bootstrap, kms, "keyledger-keygen", "keyledger-rotation")
        names = [f"tenant-{i:05d}" for i in range(tenants)]
        now = "2026-11-22T00:00:00Z"
        started = time.perf_counter()
        await produce(bootstrap, "tenants.created", [
            (t.encode(), json.dumps({"event_id": f"e-{t}", "tenant_id": t, "occurred_at": now}).encode()) for t in names])
        await _count_events(bootstrap, "generated", 2 * tenants, timeout=1200)
        onboard_s = time.perf_counter() - started
        say(f"  {tenants} tenants onboarded ({2 * tenants} keys) in {onboard_s:.1f}s")
        tick = {"tick_id": "bench-rotation", "issued_at": now, "reason": "manual"}
        tick_sent = time.time()
        await produce(bootstrap, "keys.rotation-ticks", [(b"bench", json.dumps(tick).encode())])
        rotated = await _count_events(bootstrap, "rotated", 2 * tenants, timeout=1200)
        stats = worker.stop()
    if len(rotated) < 2 * tenants:
        raise SystemExit(f"only {len(rotated)} of {2 * tenants} keys rotated; worker log {worker.log}")
    seconds = max(r.timestamp for r in rotated) / 1000 - tick_sent
    return {
        "rotation_tenants": tenants,
        "rotation_keys": len(rotated),
        "rotation_seconds": round(seconds, 2),
        "rotation_tenants_per_s": round(tenants / seconds, 1),
        "rotation_onboard_seconds": round(onboard_s, 1),
        "rotation_kms_calls": stats.get("kms_calls"),
        "rotation_kms_floor_calls_per_s": round(floor),
        "rotation_ratio_to_kms_floor": round((tenants / seconds) / (floor / 2), 3),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_TENANTS", "10000"))))))
