"""Onboarding and rotation at scale: N tenants (default 10,000) created, then rotated by one manual tick,
against moto's KMS over HTTP, each held to the KMS ceiling measured beside them: the best GenerateDataKey/s
a bare client reaches over swept concurrencies (two calls a tenant). The sweep is how the default
KEYLEDGER_KMS_CONCURRENCY was chosen; the worker runs at that default."""

from __future__ import annotations

import asyncio
import json
import os
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import Worker, broker, moto_kms, say
from schemas.messages import RotationReason, RotationTick
from workers.core.b64 import b64url_encode
from workers.core.operator_ticks import sign_tick
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.kms.aws import AwsKms
from workers.settings import Settings


async def _count_events(bootstrap: str, kind: str, want: int, timeout: float) -> list:
    """The `kind` events of keys.events once there are `want` of them. Each record is decoded once: the
    bench shares the cores with the worker and moto, and must not take what it measures from them."""
    matching: list = []
    decoded = 0

    def counted(records: list) -> bool:
        nonlocal decoded
        matching.extend(r for r in records[decoded:] if r.value and json.loads(r.value)["type"] == kind)
        decoded = len(records)
        return len(matching) >= want

    await read_topic(bootstrap, "keys.events", until=counted, timeout=timeout)
    return matching


LEVELS = (4, 8, 16, 32, 64)  # KMS calls in flight from one process, swept for the ceiling


async def kms_rate(kms: tuple[str, str], concurrency: int, calls: int = 1500) -> float:
    """GenerateDataKey/s that moto answers a bare client (nothing but the calls) at `concurrency`."""
    client = AwsKms(kms[1], endpoint_url=kms[0], concurrency=concurrency)
    try:
        await client.generate_data_key(None, {"warm": "up"})
        start = time.perf_counter()
        await asyncio.gather(*(client.generate_data_key(None, {"tenant_id": str(i)}) for i in range(calls)))
        return calls / (time.perf_counter() - start)
    finally:
        await client.aclose()


async def kms_ceiling(kms: tuple[str, str]) -> tuple[float, int, dict[int, float]]:
    """The best GenerateDataKey/s over the swept concurrencies, the concurrency that reached it, and each
    level's rate: the ceiling onboarding and rotation (two calls a tenant) are held to."""
    levels = sorted({*LEVELS, Settings().kms.concurrency})  # the default always among them
    await kms_rate(kms, Settings().kms.concurrency, 4000)  # moto answers a fresh server's first thousands slower
    rates = {level: await kms_rate(kms, level) for level in levels}
    best = max(rates, key=rates.__getitem__)
    return rates[best], best, rates


def enough(rates: dict[int, float], ceiling: float) -> int:
    """The fewest calls in flight that reach 0.95 of the ceiling: below it the KMS waits for the client."""
    return min(level for level, rate in rates.items() if rate >= 0.95 * ceiling)


async def run(tenants: int) -> dict:
    with broker() as bootstrap, moto_kms() as kms:
        best_rate, best, rates = await kms_ceiling(kms)
        default = Settings().kms.concurrency
        say("  moto answers a bare client " + ", ".join(f"{r:,.0f}/s at {c}" for c, r in rates.items())
            + f" GenerateDataKey calls in flight: best {best_rate:,.0f}/s at {best}, 0.95 of it from "
            f"{enough(rates, best_rate)} on; the default KEYLEDGER_KMS_CONCURRENCY={default} reaches "
            f"{rates[default] / best_rate:.2f} of it")
        await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6))  # type: ignore[call-arg]  # flat names, as tests spell them
        # a manual tick for every tenant is honoured only when the operator key signed it (core/operator_ticks.py)
        operator = Ed25519PrivateKey.generate()
        worker = Worker(bootstrap, kms, "keyledger-keygen", "keyledger-rotation", KEYLEDGER_OPERATOR_PUBLIC_KEY=(
            b64url_encode(operator.public_key().public_bytes_raw())))
        now = "2026-11-22T00:00:00Z"

        def created(names: list[str]) -> list[tuple[bytes, bytes]]:
            return [(t.encode(), json.dumps({"event_id": f"e-{t}", "tenant_id": t, "occurred_at": now}).encode())
                    for t in names]

        # one tenant first, so the clock starts on a worker that is up (its start-up is not onboarding)
        await produce(bootstrap, "tenants.created", created(["tenant-warm"]))
        await _count_events(bootstrap, "generated", 2, timeout=120)
        started = time.perf_counter()
        await produce(bootstrap, "tenants.created", created([f"tenant-{i:05d}" for i in range(tenants)]))
        await _count_events(bootstrap, "generated", 2 * (tenants + 1), timeout=1200)
        onboard_s = time.perf_counter() - started
        onboard_rate = tenants / onboard_s
        tick = sign_tick(RotationTick(tick_id="bench-rotation", issued_at=now, reason=RotationReason.MANUAL), operator)
        tick_sent = time.time()
        await produce(bootstrap, "keys.rotation-ticks", [(b"bench", tick.model_dump_json(exclude_none=True).encode())])
        tenants += 1  # the warm-up tenant rotates too
        rotated = await _count_events(bootstrap, "rotated", 2 * tenants, timeout=1200)
        stats = worker.stop()
        # the ceiling beside them: the bare client at the worker's concurrency just before onboarding and
        # again just after rotation (moto's pace drifts over minutes; the mean of the two is held to)
        after = await kms_rate(kms, default)
    if len(rotated) < 2 * tenants:
        raise SystemExit(f"only {len(rotated)} of {2 * tenants} keys rotated; worker log {worker.log}")
    floor = (rates[default] + after) / 2
    seconds = max(r.timestamp for r in rotated) / 1000 - tick_sent
    onboard_ratio = onboard_rate / (floor / 2)
    ratio = (tenants / seconds) / (floor / 2)
    say(f"  KMS ceiling beside them: {rates[default]:,.0f}/s before, {after:,.0f}/s after, at most "
        f"{floor / 2:,.0f} tenants/s")
    say(f"  {tenants - 1} tenants onboarded ({2 * (tenants - 1)} keys) in {onboard_s:.1f}s: {onboard_rate:,.0f} "
        f"tenants/s = {onboard_ratio:.2f} of the KMS ceiling")
    say(f"  {tenants} tenants rotated ({len(rotated)} keys) in {seconds:.1f}s: {tenants / seconds:,.0f} tenants/s = "
        f"{ratio:.2f} of the KMS ceiling")
    return {
        "rotation_tenants": tenants,
        "rotation_keys": len(rotated),
        "rotation_seconds": round(seconds, 2),
        "rotation_tenants_per_s": round(tenants / seconds, 1),
        "rotation_onboard_seconds": round(onboard_s, 1),
        "onboard_tenants_per_s": round(onboard_rate, 1),
        "onboard_ratio_to_kms_floor": round(onboard_ratio, 3),
        "rotation_kms_calls": stats.get("kms_calls"),
        "rotation_kms_floor_calls_per_s": round(floor),
        "rotation_kms_floor_before_calls_per_s": round(rates[default]),
        "rotation_kms_floor_after_calls_per_s": round(after),
        "rotation_kms_best_concurrency": best,
        "rotation_kms_enough_concurrency": enough(rates, best_rate),
        "rotation_kms_default_concurrency": default,
        "rotation_kms_default_vs_best": round(rates[default] / best_rate, 3),
        "rotation_kms_calls_per_s_by_concurrency": {str(c): round(r) for c, r in rates.items()},
        "rotation_ratio_to_kms_floor": round(ratio, 3),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_TENANTS", "10000"))))))
