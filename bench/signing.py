"""Span-signing figures: raw Ed25519 floor, end-to-end spans/s through a real broker, cached
key retrieval latency, KMS calls per 100,000 spans over 100 tenants."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import breakdown
from bench.audit_volume import audit_bytes_per_output_byte
from bench.callers import registered
from bench.common import (
    CpuSplit,
    Worker,
    broker,
    moto_kms,
    percentile,
    say,
    tigerbeetle,
    wait_group_done,
)
from schemas.messages import KeyEvent, KeyEventType, KeyType
from workers.core import ids
from workers.core.signing import signing_input
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keystore.directory import KeyDirectory
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings

TENANTS = 100


def sample_span(i: int) -> dict:
    return {
        "trace_id": uuid.UUID(int=i).hex, "span_id": f"{i:016x}", "parent_span_id": f"{i + 1:016x}",
        "name": "POST /v1/payments", "kind": "SERVER",
        # OTLP/JSON writes 64-bit nanosecond times as strings: RFC 8785 numbers stop at 2^53
        "start_time_unix_nano": str(1_795_000_000_000_000_000 + i),
        "end_time_unix_nano": str(1_795_000_000_000_900_000 + i), "status": {"code": "OK"},
        "attributes": {"http.method": "POST", "http.route": "/v1/payments", "http.status_code": 201,
                       "service.name": "payments", "tenant.tier": "gold"},
    }


def raw_signing_rate(seconds: float = 2.0) -> tuple[float, float]:
    """The floor: Ed25519 over the same canonical bytes, one core, nothing else. Signatures a second of
    wall time, and microseconds of CPU a signature (what the worker's CPU a span is held to)."""
    key = Ed25519PrivateKey.generate()
    message = signing_input("tenant-000", "ab" * 16, sample_span(1))
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            key.sign(message)
        count += 1000
    return count / (time.perf_counter() - start), (time.process_time() - cpu) * 1e6 / count


async def cached_retrieval_latency(samples: int = 100_000) -> tuple[float, float]:
    """p50/p99 in microseconds of finding a tenant's active signing key and its cached private key."""
    directory = KeyDirectory()
    kms = LocalKms()
    keys = KeyService(directory, kms, MemoryLedger(), SingleFlightCache(ttl=3600, max_entries=1000))
    tenants = [f"tenant-{i:03d}" for i in range(TENANTS)]
    for tenant in tenants:
        minted = await keys.mint(tenant, KeyType.SIGNING, 1, None)
        directory.apply_material(minted.material)
        directory.apply_event(KeyEvent(event_id=ids.event_id("generated", minted.material.key_id),
                                       type=KeyEventType.GENERATED, tenant_id=tenant, key_id=minted.material.key_id,
                                       key_type=KeyType.SIGNING, version=1, occurred_at=minted.material.created_at))
    timings = []
    clock = time.perf_counter_ns
    for i in range(samples):
        tenant = tenants[i % TENANTS]
        start = clock()
        entry = keys.active(tenant, KeyType.SIGNING)
        secret = keys.cached_secret(entry.key_id)
        timings.append((clock() - start) / 1000)
        assert secret is not None
    return percentile(timings, 0.50), percentile(timings, 0.99)


async def end_to_end(spans: int) -> dict:
    """The backlog is produced first, then one signer process works through it alone. Every span is proved
    by a registered caller and the signer asks for it (the production default).

    With a TigerBeetle server the signer is a fresh process (cold cache: every KMS call is a
    real miss); without one, one process onboards and signs (the memory ledger lives there).
    """
    with broker() as bootstrap, moto_kms() as kms, tigerbeetle() as tb:
        await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6))  # type: ignore[call-arg]  # flat names, as tests spell them
        caller, caller_env = await registered(bootstrap, kms, tb)
        ledger = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tb} if tb else {}
        ledger = {**ledger, **caller_env}
        # without TigerBeetle one process onboards and signs: the memory ledger lives there
        onboarding = Worker(bootstrap, kms, "keyledger-keygen", *(() if tb else ("keyledger-signer",)), **ledger)
        tenants = [f"tenant-{i:03d}" for i in range(TENANTS)]
        now = "2026-11-22T00:00:00Z"
        await produce(bootstrap, "tenants.created", [
            (t.encode(), json.dumps({"event_id": f"e-{t}", "tenant_id": t, "occurred_at": now}).encode())
            for t in tenants])
        await read_topic(bootstrap, "keys.events", until=lambda r: len(r) >= 2 * TENANTS, timeout=120)
        if tb:
            onboarding.stop()
        say(f"  {TENANTS} tenants onboarded ({'TigerBeetle' if tb else 'memory'} ledger); producing {spans} spans")
        jobs = [(tenants[i % TENANTS].encode(), json.dumps(
            caller.span_request(tenants[i % TENANTS], sample_span(i), job_id=f"job-{i}")).encode())
            for i in range(spans)]
        started = time.time()
        for start in range(0, spans, 20_000):
            await produce(bootstrap, "spans.to-sign", jobs[start:start + 20_000])
        # a fresh signer on the whole backlog: its CPU from ready (start-up done) until all is committed
        signer = Worker(bootstrap, kms, "keyledger-signer", **ledger) if tb else None
        if signer is not None:
            started = await signer.ready()
        sampler = breakdown.sampler((signer or onboarding).process.pid)
        await wait_group_done(bootstrap, "keyledger-signer", "spans.to-sign")
        finished = time.time()
        samples = sampler.stop() if sampler else None
        signed = await read_topic(bootstrap, "spans.signed", timeout=300)
        audit_ratio = audit_bytes_per_output_byte(await read_topic(bootstrap, "kms.audit", timeout=300), signed, {"sign"})
        stamps = sorted(r.timestamp for r in signed)
        split = (signer or onboarding).cpu_split(started, finished) if signed else CpuSplit(0, 0, 0)
        busy = split.total
        stats = (signer or onboarding).stop()
    if len(signed) < spans:
        raise SystemExit(f"only {len(signed)} of {spans} spans were signed")
    seconds = max((stamps[-1] - stamps[0]) / 1000, 1e-3)
    busy_seconds = max(finished - started, 1e-3)
    # without TigerBeetle the one process also made the 2 GenerateDataKey calls per tenant
    kms_calls = stats.get("kms_calls", 0) - (0 if tb else 2 * TENANTS)
    return {"spans": len(signed), "seconds": seconds, "spans_per_s": len(signed) / seconds,
            "cpu_us_per_span": busy * 1e6 / len(signed), "cpu_busy": busy / busy_seconds,
            **{f"{part}_us_per_span": value * 1e6 / len(signed) for part, value in split._asdict().items()},
            "kms_calls": kms_calls, "distinct_keys": TENANTS, "ledger": "tigerbeetle" if tb else "memory",
            "audit_bytes_per_output_byte": audit_ratio,
            "breakdown": samples.table(len(signed)) if samples else None}


async def run(spans: int) -> dict:
    say("signing: raw Ed25519 floor (one core)")
    raw, raw_cpu_us = raw_signing_rate()
    say(f"  {raw:,.0f} signatures/s, {raw_cpu_us:.1f} us of CPU a signature")
    say("signing: cached key retrieval")
    p50, p99 = await cached_retrieval_latency()
    say(f"  p50 {p50:.2f} us, p99 {p99:.2f} us")
    say(f"signing: end to end, {spans} spans over {TENANTS} tenants, one worker process")
    e2e = await end_to_end(spans)
    kms_per_100k = e2e["kms_calls"] * 100_000 / e2e["spans"] if e2e["kms_calls"] is not None else None
    ratio = e2e["spans_per_s"] / raw
    cpu_ratio = e2e["cpu_us_per_span"] / raw_cpu_us
    say(f"  {e2e['spans_per_s']:,.0f} spans/s end to end = {ratio:.2f} of the raw signing rate; "
        f"{e2e['kms_calls']} KMS calls ({kms_per_100k:.0f} per 100,000 spans; {TENANTS} distinct keys); "
        f"the worker used {e2e['cpu_us_per_span']:.0f} us of CPU a span ({e2e['cpu_busy']:.0%} of one core: "
        f"{e2e['main_user_us_per_span']:.0f} in its event loop's thread, {e2e['main_kernel_us_per_span']:.0f} in the "
        f"kernel for it, {e2e['other_threads_us_per_span']:.0f} in other threads, where the signatures are made); "
        f"the raw signature alone is {raw_cpu_us:.0f} us of CPU: {cpu_ratio:.2f}x")
    where = {}
    if e2e["breakdown"]:
        say(breakdown.render("signing", e2e["breakdown"], ("one raw Ed25519 signature", raw_cpu_us)))
        where = breakdown.figures("sign", e2e["breakdown"])
    return {
        **where,
        "sign_worker_cpu_vs_raw_sign": round(cpu_ratio, 3),
        "sign_raw_cpu_us": round(raw_cpu_us, 1),
        "sign_raw_per_s": round(raw),
        "sign_e2e_spans_per_s": round(e2e["spans_per_s"]),
        "sign_e2e_ratio": round(ratio, 3),
        "sign_e2e_spans": e2e["spans"],
        "sign_worker_cpu_us_per_span": round(e2e["cpu_us_per_span"], 1),
        "sign_worker_cpu_busy": round(e2e["cpu_busy"], 3),
        **{f"sign_worker_{part}_us": round(e2e[f"{part}_us_per_span"], 1)
           for part in ("main_user", "main_kernel", "other_threads")},
        "cached_key_p50_us": round(p50, 2),
        "cached_key_p99_us": round(p99, 2),
        "sign_kms_calls": e2e["kms_calls"],
        "sign_kms_calls_per_100k_spans": round(kms_per_100k, 1) if kms_per_100k is not None else None,
        "sign_distinct_keys": TENANTS,
        "sign_ledger": e2e["ledger"],
        "sign_audit_bytes_per_output_byte": round(e2e["audit_bytes_per_output_byte"], 4),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_SPANS", "100000"))))))
