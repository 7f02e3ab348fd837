"""PII figures: a consume -> produce pass-through on the worker's own publisher (the transport floor) and
end-to-end encrypt, decrypt and reencrypt of 1 KB records with 3 fields through one worker process, every
request proved by its caller (the production default), in the same run. Each operation is judged by the
worker's CPU a record against the pass-through's (`pii_{op}_cpu_vs_passthrough`), with millicores per MB/s
and the share raw AES-GCM takes of it beside it."""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench import breakdown
from bench.audit_volume import audit_bytes_per_output_byte, record_bytes
from bench.callers import registered
from bench.common import Worker, broker, moto_kms, say, tigerbeetle, wait_group_done
from workers.client import CallerClient, CallerCredential
from workers.kafka import compat
from workers.kafka.publisher import KafkaPublisher, Outgoing
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

TENANTS = 100


FIELDS = {"email": "user0@example.com" + "x" * 280, "address": "1 Main Street " + "y" * 300, "notes": "z" * 300}


def record(i: int, caller: CallerClient) -> tuple[bytes, bytes]:
    """An `encrypt` request of 3 fields (~1 KB), proved by `caller`."""
    tenant = f"tenant-{i % TENANTS:03d}"
    fields = {**FIELDS, "email": f"user{i}@example.com" + "x" * 280}
    body = caller.pii_request(tenant, "encrypt", fields, record_id=f"rec-{i}", job_id=f"job-{i}")
    return tenant.encode(), json.dumps(body).encode()


async def pass_through(bootstrap: str, records: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """Consume, produce the same records durably, commit: what any worker pays before doing any work. The
    records go out through the worker's own publisher (KafkaPublisher: its producer settings and its batch
    builder, one record batch a partition), so the floor is the same transport the worker pays for.
    Records/s, and microseconds of this process's CPU a record (it runs nothing else meanwhile), of it in
    the kernel."""
    await produce(bootstrap, "bench.pass-in", records)
    compat.install()
    settings = Settings(kafka_bootstrap=bootstrap)  # type: ignore[call-arg]  # flat names, as tests spell them
    consumer = AIOKafkaConsumer("bench.pass-in", bootstrap_servers=bootstrap, group_id="bench-pass",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    publisher = KafkaPublisher(bootstrap, settings)
    await consumer.start()
    await publisher.start()
    done, start, cpu = 0, None, os.times()
    try:
        while done < len(records):
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.kafka.batch_max)
            if start is None:
                start, cpu = time.perf_counter(), os.times()
            outgoing = [Outgoing("bench.pass-out", r.key, r.value) for rs in batches.values() for r in rs]
            await publisher.publish(outgoing)
            await consumer.commit()
            done += len(outgoing)
        seconds, now = time.perf_counter() - (start or 0.0), os.times()
        user, kernel = now.user - cpu.user, now.system - cpu.system
        return done / seconds, (user + kernel) * 1e6 / done, kernel * 1e6 / done
    finally:
        await consumer.stop()
        await publisher.aclose()


async def serve(bootstrap: str, kms: tuple[str, str], ledger: dict[str, str], operation: str,
                requests: list[tuple[bytes, bytes]], shared: Worker | None) -> tuple[dict, list]:
    """One backlog of `operation` requests served by the PII worker: a fresh process when TigerBeetle holds
    the ledger (cold, as after a deploy), else the one process that also onboarded (the memory ledger
    lives there). Records/s from the first to the last result; CPU of the worker from when the fresh process is
    ready (its start-up done; the one process: from the first request produced) until all are committed."""
    started = time.time()
    await produce(bootstrap, "pii.requests", requests)
    worker = shared or Worker(bootstrap, kms, "keyledger-pii", **ledger)
    if shared is None:
        started = await worker.ready()
    sampler = breakdown.sampler(worker.process.pid)
    await wait_group_done(bootstrap, "keyledger-pii", "pii.requests")
    finished = time.time()
    samples = sampler.stop() if sampler else None
    mine = f'"operation":"{operation}"'.encode()
    results = [r for r in await read_topic(bootstrap, "pii.results", timeout=300) if mine in r.value]
    if len(results) < len(requests):
        raise SystemExit(f"only {len(results)} of {len(requests)} {operation} results; worker log {worker.log}")
    failed = sum(1 for r in results if b'"error"' in r.value or b'"errors"' in r.value)
    stamps = sorted(r.timestamp for r in results)
    seconds = max((stamps[-1] - stamps[0]) / 1000, 1e-3)
    split = worker.cpu_split(started, finished)
    cpu = split.total
    if shared is None:
        worker.stop()
    megabytes = sum(len(v) for _, v in requests) / 1e6
    return {"records": len(results), "failed": failed, "per_s": len(results) / seconds, "seconds": seconds,
            "cpu_s": cpu, "cpu_us_per_record": cpu * 1e6 / len(results), "mb_per_s": megabytes / seconds,
            **{f"{part}_us_per_record": value * 1e6 / len(results) for part, value in split._asdict().items()},
            "millicores_per_mb_s": 1000 * cpu / megabytes,
            "breakdown": samples.table(len(results)) if samples else None}, results


def follow_up(results: list, operation: str, caller: CallerClient) -> list[tuple[bytes, bytes]]:
    """Requests of `operation`, proved by `caller`, on every sealed field of `results` (decrypt or reencrypt
    what was encrypted)."""
    requests = []
    for i, result in enumerate(results):
        body = json.loads(result.value)
        requests.append((result.key, json.dumps(caller.pii_request(
            body["tenant_id"], operation, body["fields"], record_id=body["record_id"],
            job_id=f"{operation}-{i}")).encode()))
    return requests


async def end_to_end(bootstrap: str, kms: tuple[str, str], count: int) -> dict[str, dict]:
    """encrypt `count` records, then decrypt and reencrypt what encrypt sealed: three backlogs, same run, every
    request proved by a registered caller and every worker asking for it (the production default)."""
    figures = {}
    with tigerbeetle() as tb:
        caller, caller_env = await registered(bootstrap, kms, tb)
        ledger = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tb} if tb else {}
        env = {**ledger, **caller_env}
        tenants = [f"tenant-{i:03d}" for i in range(min(TENANTS, count))]
        onboarding = Worker(bootstrap, kms, "keyledger-keygen", *(() if tb else ("keyledger-pii",)), **env)
        now = "2026-11-22T00:00:00Z"
        await produce(bootstrap, "tenants.created", [
            (t.encode(), json.dumps({"event_id": f"e-{t}", "tenant_id": t, "occurred_at": now}).encode())
            for t in tenants])
        await read_topic(bootstrap, "keys.events", until=lambda r: len(r) >= 2 * len(tenants), timeout=300)
        if tb:
            onboarding.stop()
        shared = None if tb else onboarding
        # proved just before they are served: a proof's `at` must be within the skew when it is checked
        requests = [record(i, caller) for i in range(count)]
        figures["encrypt"], sealed = await serve(bootstrap, kms, env, "encrypt", requests, shared)
        outputs = {"encrypt": sealed}
        for operation in ("decrypt", "reencrypt"):
            figures[operation], outputs[operation] = await serve(bootstrap, kms, env, operation,
                                                                 follow_up(sealed, operation, caller), shared)
        audit = await read_topic(bootstrap, "kms.audit", timeout=300)
        for operation, results in outputs.items():
            figures[operation]["audit_bytes_per_output_byte"] = audit_bytes_per_output_byte(audit, results, {operation})
            figures[operation]["output_bytes"] = record_bytes(results)
        if shared is not None:
            shared.stop()
    return figures


def raw_seal_us(seconds: float = 1.0) -> float:
    """Microseconds of CPU AES-GCM takes to seal the 3 fields of a record (their sizes, their AADs' sizes)
    and nothing else, in this process."""
    aead, aad = AESGCM(os.urandom(32)), b"a" * 120
    fields = [value.encode() for value in FIELDS.values()]
    count, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(1000):
            for value in fields:
                aead.encrypt(os.urandom(12), value, aad)
        count += 1000
    return (time.process_time() - start) * 1e6 / count


async def run(count: int) -> dict:
    unproved = CallerClient(CallerCredential("0" * 32, "pass-through", bytes(32)))  # the floor checks nothing
    records = [record(i, unproved) for i in range(count)]
    size = sum(len(v) for _, v in records) / count
    with broker() as bootstrap, moto_kms() as kms:
        await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6),  # type: ignore[call-arg]  # flat names, as tests spell them
                            ["bench.pass-in", "bench.pass-out", "tenants.created", "keys.events", "keys.material",
                             "keys.callers", "kms.audit", "kms.dlq", "pii.requests", "pii.results",
                             "keys.rotation-ticks"])
        say(f"pii: transport floor, {count} records of {size:,.0f} bytes consumed by plain aiokafka and produced "
            "through the worker's publisher (its batch builder)")
        floor, floor_cpu, floor_kernel = await pass_through(bootstrap, records)
        floor_millicores = floor_cpu * 1e-3 / (size / 1e6)  # CPU seconds a MB, in thousandths
        say(f"  {floor:,.0f} records/s, {floor_cpu:.1f} us of CPU a record ({floor_kernel:.1f} of it in the kernel), "
            f"{floor_millicores:.0f} millicores per MB/s")
        say(f"pii: end to end, 3 fields per record, {TENANTS} tenants, one worker process, every request proved by "
            "its caller: encrypt, then decrypt and reencrypt of what it sealed")
        e2e = await end_to_end(bootstrap, kms, count)
    raw_seal = raw_seal_us()
    figures: dict[str, object] = {"pii_record_bytes": round(size), "pii_passthrough_per_s": round(floor),
                                  "pii_passthrough_cpu_us": round(floor_cpu, 1),
                                  "pii_passthrough_kernel_us": round(floor_kernel, 1),
                                  "pii_passthrough_millicores_per_mb_s": round(floor_millicores, 1),
                                  "pii_raw_aes_gcm_3_fields_us": round(raw_seal, 2), "pii_records": count}
    for operation, measured in e2e.items():
        ratio = measured["per_s"] / floor
        cpu_ratio = measured["cpu_us_per_record"] / floor_cpu
        aes_share = raw_seal / measured["cpu_us_per_record"]
        say(f"  {operation}: {measured['cpu_us_per_record']:.1f} us of the worker's CPU a record = {cpu_ratio:.2f}x "
            f"the pass-through's; {measured['millicores_per_mb_s']:.0f} millicores per MB/s; AES-GCM {aes_share:.1%} "
            f"of it; {measured['per_s']:,.0f} records/s = {ratio:.2f} of the pass-through's rate "
            f"({measured['failed']} failed), {measured['mb_per_s']:.1f} MB/s in; of the CPU "
            f"{measured['main_user_us_per_record']:.1f} in its event loop's thread, "
            f"{measured['main_kernel_us_per_record']:.1f} in the kernel for it, {measured['other_threads_us_per_record']:.1f} "
            "in other threads (the TigerBeetle client's)")
        if measured["breakdown"]:
            say(breakdown.render(f"PII {operation}", measured["breakdown"],
                                 ("the pass-through", floor_cpu)))
            figures.update(breakdown.figures(f"pii_{operation}", measured["breakdown"]))
        figures[f"pii_{operation}_cpu_vs_passthrough"] = round(cpu_ratio, 3)
        figures[f"pii_{operation}_millicores_per_mb_s"] = round(measured["millicores_per_mb_s"], 1)
        figures[f"pii_{operation}_aes_gcm_share"] = round(aes_share, 4)
        figures[f"pii_{operation}_e2e_per_s"] = round(measured["per_s"])
        figures[f"pii_{operation}_ratio"] = round(ratio, 3)
        figures[f"pii_{operation}_failed"] = measured["failed"]
        figures[f"pii_{operation}_cpu_us"] = round(measured["cpu_us_per_record"], 1)
        figures[f"pii_{operation}_audit_bytes_per_output_byte"] = round(measured["audit_bytes_per_output_byte"], 4)
        for part in ("main_user", "main_kernel", "other_threads"):
            figures[f"pii_{operation}_{part}_us"] = round(measured[f"{part}_us_per_record"], 1)
    figures["pii_audit_bytes_per_output_byte"] = round(
        sum(m["audit_bytes_per_output_byte"] * m["output_bytes"] for m in e2e.values())
        / max(sum(m["output_bytes"] for m in e2e.values()), 1), 4)
    return figures


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_PII_RECORDS", "30000"))))))
