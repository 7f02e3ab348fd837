"""PII figures: a plain aiokafka consume -> produce pass-through (the transport floor) and end-to-end
`encrypt` of 1 KB records with 3 fields through one worker process, in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.audit_volume import audit_bytes_per_output_byte, record_bytes
from bench.common import Worker, broker, moto_kms, say, tigerbeetle, wait_group_done
from workers.kafka import compat
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

TENANTS = 100


def record(i: int) -> tuple[bytes, bytes]:
    tenant = f"tenant-{i % TENANTS:03d}"
    fields = {"email": f"user{i}@example.com" + "x" * 280, "address": "1 Main Street " + "y" * 300,
              "notes": "z" * 300}
    body = {"job_id": f"job-{i}", "tenant_id": tenant, "record_id": f"rec-{i}", "operation": "encrypt",
            "fields": fields}
    return tenant.encode(), json.dumps(body).encode()


async def pass_through(bootstrap: str, records: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """Consume, produce the same records durably, commit: what any worker pays before doing any work.
    Records/s, and microseconds of this process's CPU a record (it runs nothing else meanwhile), of it in
    the kernel."""
    await produce(bootstrap, "bench.pass-in", records)
    compat.install()
    consumer = AIOKafkaConsumer("bench.pass-in", bootstrap_servers=bootstrap, group_id="bench-pass",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    settings = Settings()
    # the worker's own producer settings, so the floor is the same transport
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=settings.kafka.linger_ms, max_batch_size=settings.kafka.producer_batch_bytes,
                                max_request_size=settings.kafka.producer_batch_bytes * 2)
    await consumer.start()
    await producer.start()
    done, start, cpu = 0, None, os.times()
    try:
        while done < len(records):
            batches = await consumer.getmany(timeout_ms=100, max_records=Settings().kafka.batch_max)
            if start is None:
                start, cpu = time.perf_counter(), os.times()
            futures = [await producer.send("bench.pass-out", r.value, key=r.key) for rs in batches.values() for r in rs]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
        seconds, now = time.perf_counter() - start, os.times()
        user, kernel = now.user - cpu.user, now.system - cpu.system
        return done / seconds, (user + kernel) * 1e6 / done, kernel * 1e6 / done
    finally:
        await consumer.stop()
        await producer.stop()


async def serve(bootstrap: str, kms: tuple[str, str], ledger: dict[str, str], operation: str,
                requests: list[tuple[bytes, bytes]], shared: Worker | None) -> tuple[dict, list]:
    """One backlog of `operation` requests served by the PII worker: a fresh process when TigerBeetle holds
    the ledger (cold, as after a deploy), else the one process that also onboarded (the memory ledger
    lives there). Records/s from the first to the last result; CPU of the worker in that window."""
    await produce(bootstrap, "pii.requests", requests)
    worker = shared or Worker(bootstrap, kms, "keyledger-pii", **ledger)
    await wait_group_done(bootstrap, "keyledger-pii", "pii.requests")
    mine = f'"operation":"{operation}"'.encode()
    results = [r for r in await read_topic(bootstrap, "pii.results", timeout=300) if mine in r.value]
    if len(results) < len(requests):
        raise SystemExit(f"only {len(results)} of {len(requests)} {operation} results; worker log {worker.log}")
    failed = sum(1 for r in results if b'"error"' in r.value or b'"errors"' in r.value)
    stamps = sorted(r.timestamp for r in results)
    seconds = max((stamps[-1] - stamps[0]) / 1000, 1e-3)
    split = worker.cpu_split(stamps[0] / 1000, stamps[-1] / 1000)
    cpu = split.total
    if shared is None:
        worker.stop()
    megabytes = sum(len(v) for _, v in requests) / 1e6
    return {"records": len(results), "failed": failed, "per_s": len(results) / seconds, "seconds": seconds,
            "cpu_s": cpu, "cpu_us_per_record": cpu * 1e6 / len(results), "mb_per_s": megabytes / seconds,
            **{f"{part}_us_per_record": value * 1e6 / len(results) for part, value in split._asdict().items()},
            "millicores_per_mb_s": 1000 * cpu / megabytes}, results


def follow_up(results: list, operation: str) -> list[tuple[bytes, bytes]]:
    """Requests of `operation` on every sealed field of `results` (decrypt or reencrypt what was encrypted)."""
    requests = []
    for i, result in enumerate(results):
        body = json.loads(result.value)
        requests.append((result.key, json.dumps({
            "job_id": f"{operation}-{i}", "tenant_id": body["tenant_id"], "record_id": body["record_id"],
            "operation": operation, "fields": body["fields"]}).encode()))
    return requests


async def end_to_end(bootstrap: str, kms: tuple[str, str], records: list[tuple[bytes, bytes]]) -> dict[str, dict]:
    """encrypt the records, then decrypt and reencrypt what encrypt sealed: three backlogs, same run."""
    figures = {}
    with tigerbeetle() as tb:
        ledger = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tb} if tb else {}
        tenants = sorted({k.decode() for k, _ in records})
        onboarding = Worker(bootstrap, kms, "keyledger-keygen", *(() if tb else ("keyledger-pii",)), **ledger)
        now = "2026-11-22T00:00:00Z"
        await produce(bootstrap, "tenants.created", [
            (t.encode(), json.dumps({"event_id": f"e-{t}", "tenant_id": t, "occurred_at": now}).encode())
            for t in tenants])
        await read_topic(bootstrap, "keys.events", until=lambda r: len(r) >= 2 * len(tenants), timeout=300)
        if tb:
            onboarding.stop()
        shared = None if tb else onboarding
        figures["encrypt"], sealed = await serve(bootstrap, kms, ledger, "encrypt", records, shared)
        outputs = {"encrypt": sealed}
        for operation in ("decrypt", "reencrypt"):
            figures[operation], outputs[operation] = await serve(bootstrap, kms, ledger, operation,
                                                                 follow_up(sealed, operation), shared)
        audit = await read_topic(bootstrap, "kms.audit", timeout=300)
        for operation, results in outputs.items():
            figures[operation]["audit_bytes_per_output_byte"] = audit_bytes_per_output_byte(audit, results, {operation})
            figures[operation]["output_bytes"] = record_bytes(results)
        if shared is not None:
            shared.stop()
    return figures


async def run(count: int) -> dict:
    records = [record(i) for i in range(count)]
    size = sum(len(v) for _, v in records) / count
    with broker() as bootstrap, moto_kms() as kms:
        await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6),
                            ["bench.pass-in", "bench.pass-out", "tenants.created", "keys.events", "keys.material",
                             "kms.audit", "kms.dlq", "pii.requests", "pii.results", "keys.rotation-ticks"])
        say(f"pii: transport floor, {count} records of {size:,.0f} bytes consumed and produced by plain aiokafka")
        floor, floor_cpu, floor_kernel = await pass_through(bootstrap, records)
        say(f"  {floor:,.0f} records/s, {floor_cpu:.1f} us of CPU a record ({floor_kernel:.1f} of it in the kernel)")
        say(f"pii: end to end, 3 fields per record, {TENANTS} tenants, one worker process: encrypt, then decrypt "
            "and reencrypt of what it sealed")
        e2e = await end_to_end(bootstrap, kms, records)
    figures: dict[str, object] = {"pii_record_bytes": round(size), "pii_passthrough_per_s": round(floor),
                                  "pii_passthrough_cpu_us": round(floor_cpu, 1),
                                  "pii_passthrough_kernel_us": round(floor_kernel, 1), "pii_records": count}
    for operation, measured in e2e.items():
        ratio = measured["per_s"] / floor
        say(f"  {operation}: {measured['per_s']:,.0f} records/s = {ratio:.2f} of the pass-through "
            f"({measured['failed']} failed); {measured['mb_per_s']:.1f} MB/s in, "
            f"{measured['millicores_per_mb_s']:.0f} millicores per MB/s, {measured['cpu_us_per_record']:.1f} us of "
            f"the worker's CPU a record: {measured['main_user_us_per_record']:.1f} in its event loop's thread, "
            f"{measured['main_kernel_us_per_record']:.1f} in the kernel for it, {measured['other_threads_us_per_record']:.1f} "
            "in other threads (the TigerBeetle client's)")
        figures[f"pii_{operation}_e2e_per_s"] = round(measured["per_s"])
        figures[f"pii_{operation}_ratio"] = round(ratio, 3)
        figures[f"pii_{operation}_failed"] = measured["failed"]
        figures[f"pii_{operation}_millicores_per_mb_s"] = round(measured["millicores_per_mb_s"], 1)
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
