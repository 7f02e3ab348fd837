"""Key table at scale: time to ready and resident size of a worker whose `keys.material` holds N keys
(default 3,000,000 for `make bench`; BENCH_KEYTABLE_KEYS), whole and sharded (KEYLEDGER_KEY_TABLE_SHARDED).

N keys (half signing with a public key, half encryption, two per tenant, wrapped keys the size AWS KMS
returns) are written as keygen writes them: one `keys.material` record per key, keyed by key id and placed
on its tenant's partition, and its `generated` event on `keys.events`, keyed by tenant; 12 partitions.

- whole: a `keyledger run --group keyledger-signer` process starts on that backlog; the figures are from its
  process start to `/readyz` answering 200 (the key table read to its end, the group joined) and its VmRSS
  once ready. An idle worker (the same group, an empty table) gives the floor bytes per key is measured above.
- sharded: the same worker with KEYLEDGER_KEY_TABLE_SHARDED=true joins a group whose other members (idle
  consumers of this bench, one per 2 partitions) leave it 2 of the 12 partitions: from process start to
  `/readyz` 200 (the system tenant's partition and its 2 assigned ones read), and its VmRSS then.
- phases: when each step of a start ended, from the worker's log (seconds from process start): the
  interpreter, imports, the broker, ledger and KMS checks and the topics (the endpoint open; the imports
  alone are timed in an interpreter of their own), the global tables (callers, then the key table: whole,
  or the system tenant's keys when sharded), the group joined, the assigned partitions' keys read
  (sharded), `/readyz` 200 (no input records here: ready is when the first would be served).
- rebalance: one of those members leaves; its 2 partitions move; the figure is the time from its leave to the
  worker's log saying the key partitions it was given are loaded (its records are served from then on).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Worker, broker, moto_kms, say
from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.app.embedded import free_port
from workers.core import ids
from workers.core.b64 import b64encode
from workers.kafka.partitioning import partition_for
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

PARTITIONS = 12
SHARE = 2  # partitions the sharded worker is left by the bench's idle members
DEFAULT_KEYS = 3_000_000
AWS_BLOB = 184  # bytes of an AWS KMS CiphertextBlob for a 32-byte data key
BATCH_BYTES = 1 << 20
READY_TIMEOUT = 1800.0  # the baseline took minutes at 1M keys: let it finish and be measured


def key_records(keys: int, kms_key_id: str) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
    """(material key, material value, event key, event value) per key, through the real models."""
    created = datetime(2026, 11, 22, tzinfo=UTC)
    for i in range(keys):
        tenant = f"tenant-{i // 2:07d}"
        key_type = KeyType.SIGNING if i % 2 == 0 else KeyType.ENCRYPTION
        key_id = ids.key_id_for(tenant, key_type, 1)
        # distinct bytes per key, as KMS returns them: nothing for the broker or the table to share
        blob = i.to_bytes(8, "big") * (AWS_BLOB // 8)
        public = b64encode(i.to_bytes(32, "big")) if key_type is KeyType.SIGNING else None
        material = KeyMaterial(key_id=key_id, tenant_id=tenant, key_type=key_type, version=1, kms_key_id=kms_key_id,
                               wrapped_key=b64encode(blob), public_key=public, created_at=created, kms_provider="aws")
        event = KeyEvent(event_id=ids.event_id(KeyEventType.GENERATED, key_id), type=KeyEventType.GENERATED,
                         tenant_id=tenant, key_id=key_id, key_type=key_type, version=1, occurred_at=created,
                         public_key=public)
        yield key_id.encode(), material.to_json(), tenant.encode(), event.to_json()


def placed(tenant_key: bytes) -> int:
    """Where keyledger writes a tenant's key records (workers/kafka/material.py)."""
    return partition_for(tenant_key, PARTITIONS)


class BatchWriter:
    """Records straight into per-partition batches of ~1 MiB, sent as each fills (one produce per batch)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer, self._topic = producer, topic
        self._batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        self._sent: list[asyncio.Future] = []

    async def add(self, key: bytes, value: bytes, tenant: bytes) -> None:
        partition = placed(tenant)
        if self._batches[partition].append(key=key, value=value, timestamp=None) is None:
            await self._flush(partition)
            self._batches[partition].append(key=key, value=value, timestamp=None)

    async def _flush(self, partition: int) -> None:
        batch, self._batches[partition] = self._batches[partition], self._producer.create_batch()
        batch.close()
        self._sent.append(await self._producer.send_batch(batch, self._topic, partition=partition))

    async def close(self) -> None:
        for partition in range(PARTITIONS):
            if self._batches[partition].record_count():
                await self._flush(partition)
        await asyncio.gather(*self._sent)


async def fill(bootstrap: str, keys: int, kms_key_id: str) -> dict[int, int]:
    """Write the keys; returns how many keys each partition holds."""
    per_partition = dict.fromkeys(range(PARTITIONS), 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=BATCH_BYTES,
                                max_request_size=4 * BATCH_BYTES, linger_ms=0)
    await producer.start()
    try:
        materials = BatchWriter(producer, "keys.material")
        events = BatchWriter(producer, "keys.events")
        for material_key, material, event_key, event in key_records(keys, kms_key_id):
            await materials.add(material_key, material, event_key)
            await events.add(event_key, event, event_key)
            per_partition[placed(event_key)] += 1
        await materials.close()
        await events.close()
    finally:
        await producer.stop()
    return per_partition


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


# a start's steps, by the first worker log line that says each is done
PHASES = (
    ("checks_and_topics", "health and metrics on"),
    ("callers", "caller"),
    ("global_tables", "key table loaded"),
    ("group_joined", "consumer groups running"),
    ("assigned_keys", "loaded for keyledger-signer"),
)


def phases(log: Path, started: float) -> dict[str, float]:
    """Seconds from `started` (wall clock) to the first log line of each of PHASES (those that appeared)."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        for name, marker in PHASES:
            if name not in found and marker in line:
                try:
                    logged = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                found[name] = logged - started
    return found


def imports_s() -> float:
    """Seconds a fresh interpreter takes to start and import what `keyledger run` imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import workers.app.cli, workers.app.runtime"], check=True)
    return time.perf_counter() - started


def timeline(figures: dict[str, Any]) -> str:
    """`phase t` pairs in the order they ended."""
    steps = sorted((*figures["phases"].items(), ("ready", figures["ready_s"])), key=lambda step: step[1])
    return ", ".join(f"{name} {at:.1f}" for name, at in steps)


async def measure(bootstrap: str, kms: tuple[str, str], keys: int) -> dict[str, Any]:
    """Start a signer on the current backlog: seconds to `/readyz` 200 (and to the log line), RSS then."""
    port = free_port()
    started, started_wall = time.perf_counter(), time.time()
    worker = Worker(bootstrap, kms, "keyledger-signer", KEYLEDGER_HTTP_PORT=str(port),
                    KEYLEDGER_KAFKA_PARTITIONS=str(PARTITIONS), KEYLEDGER_STARTUP_TIMEOUT=str(READY_TIMEOUT))
    loaded_at: float | None = None
    try:
        while True:
            if worker.process.poll() is not None:
                raise SystemExit(f"worker exited ({worker.process.returncode}); log {worker.log}")
            if time.perf_counter() - started > READY_TIMEOUT:
                raise SystemExit(f"worker not ready in {READY_TIMEOUT}s; log {worker.log}")
            if loaded_at is None and "key table loaded" in worker.log.read_text(errors="replace"):
                loaded_at = time.perf_counter()
            code, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            if code == 200:
                ready_at = time.perf_counter()
                break
            await asyncio.sleep(0.1)
        memory = _status(worker.process.pid)
        known = body.get("checks", {}).get("key_table", {}).get("keys")
        if known != keys:
            raise SystemExit(f"worker knows {known} keys, {keys} written; log {worker.log}")
        steps = phases(worker.log, started_wall)
    finally:
        worker.stop()
    return {"ready_s": ready_at - started, "loaded_s": (loaded_at or ready_at) - started,
            "rss_mb": memory["VmRSS"] / 1024, "peak_mb": memory["VmHWM"] / 1024, "phases": steps}


class IdleMembers:
    """Consumers of the signer's group that take partitions and do nothing: with `count` of them, a worker
    joining the group is left its share (PARTITIONS / (count + 1) partitions)."""

    def __init__(self, bootstrap: str, count: int) -> None:
        self._bootstrap = bootstrap
        self._members = [AIOKafkaConsumer("spans.to-sign", bootstrap_servers=bootstrap, group_id="keyledger-signer",
                                          enable_auto_commit=False, client_id=f"bench-idle-{i}") for i in range(count)]
        self._polls: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for member in self._members:
            await member.start()
            self._polls.append(asyncio.create_task(self._poll(member)))

    @staticmethod
    async def _poll(member: AIOKafkaConsumer) -> None:
        while True:  # getmany is what takes part in rebalances
            await member.getmany(timeout_ms=200)

    async def leave(self) -> None:
        """One member leaves the group (its partitions move to the others)."""
        self._polls.pop().cancel()
        await self._members.pop().stop()

    async def stop(self) -> None:
        for poll in self._polls:
            poll.cancel()
        for member in self._members:
            await member.stop()


async def _served(port: int, share: int | None = None) -> dict:
    """/readyz 200 (the assigned partitions' keys read) with the group holding `share` partitions, if given."""
    deadline = time.perf_counter() + READY_TIMEOUT
    while True:
        code, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
        checks = body.get("checks", {})
        held = checks.get("groups", {}).get("keyledger-signer", {}).get("partitions")
        if code == 200 and (share is None or held == share):
            return checks
        if time.perf_counter() > deadline:
            raise SystemExit(f"sharded worker not served in {READY_TIMEOUT}s: {body}")
        await asyncio.sleep(0.05)


async def measure_sharded(bootstrap: str, kms: tuple[str, str], per_partition: dict[int, int]) -> dict[str, Any]:
    """A sharded signer left SHARE partitions by idle members: seconds to `/readyz` 200 with its share's keys
    read, RSS then; then one idle member leaves: seconds until the partitions that moved to it are served."""
    members = IdleMembers(bootstrap, PARTITIONS // SHARE - 1)
    await members.start()
    port = free_port()
    started, started_wall = time.perf_counter(), time.time()
    worker = Worker(bootstrap, kms, "keyledger-signer", KEYLEDGER_HTTP_PORT=str(port),
                    KEYLEDGER_KAFKA_PARTITIONS=str(PARTITIONS), KEYLEDGER_STARTUP_TIMEOUT=str(READY_TIMEOUT),
                    KEYLEDGER_KEY_TABLE_SHARDED="true")
    try:
        checks = await _served(port, SHARE)
        ready_at = time.perf_counter()
        steps = phases(worker.log, started_wall)
        memory = _status(worker.process.pid)
        table = checks["key_table"]
        expected = sum(per_partition[p] for p in table["partitions"])
        if table["keys"] != expected or len(table["partitions"]) != SHARE:
            raise SystemExit(f"sharded worker holds {table}, expected {expected} keys of {SHARE} partitions; "
                             f"log {worker.log}")
        loads = worker.log.read_text(errors="replace").count("loaded for keyledger-signer")
        left = time.perf_counter()
        await members.leave()
        while worker.log.read_text(errors="replace").count("loaded for keyledger-signer") == loads:
            if time.perf_counter() - left > READY_TIMEOUT:
                raise SystemExit(f"no partition moved to the sharded worker; log {worker.log}")
            await asyncio.sleep(0.05)
        moved = await _served(port)
        moved_at = time.perf_counter()
    finally:
        worker.stop()
        await members.stop()
    return {"ready_s": ready_at - started, "rss_mb": memory["VmRSS"] / 1024, "peak_mb": memory["VmHWM"] / 1024,
            "keys": table["keys"], "moved_s": moved_at - left,
            "moved_partitions": len(set(moved["key_table"]["partitions"]) - set(table["partitions"])), "phases": steps}


async def run(keys: int) -> dict:
    with moto_kms() as kms:
        # each worker on a broker of its own: the group's first join, not a wait for the previous member to expire
        with broker() as bootstrap:
            await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS))  # type: ignore[call-arg]  # flat names, as tests spell them
            idle = await measure(bootstrap, kms, 0)
        say(f"  idle worker (empty key table): ready in {idle['ready_s']:.1f}s, {idle['rss_mb']:.0f} MB RSS")
        with broker() as bootstrap:
            await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS))  # type: ignore[call-arg]  # flat names, as tests spell them
            started = time.perf_counter()
            per_partition = await fill(bootstrap, keys, kms[1])
            say(f"  {keys:,} keys written to keys.material + keys.events in {time.perf_counter() - started:.0f}s")
            full = await measure(bootstrap, kms, keys)
        with broker() as bootstrap:  # the same topic, on a broker of its own again (a first join)
            await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS))  # type: ignore[call-arg]  # flat names, as tests spell them
            await fill(bootstrap, keys, kms[1])
            sharded = await measure_sharded(bootstrap, kms, per_partition)
    per_key = (full["rss_mb"] - idle["rss_mb"]) * 1024 * 1024 / keys if keys else 0.0
    say(f"  {keys:,} keys: key table loaded after {full['loaded_s']:.1f}s, /readyz 200 after {full['ready_s']:.1f}s, "
        f"{full['rss_mb']:.0f} MB RSS (peak {full['peak_mb']:.0f} MB), {per_key:,.0f} bytes a key above idle")
    memory_ratio = sharded["rss_mb"] / full["rss_mb"]
    time_ratio = sharded["ready_s"] / full["ready_s"]
    # the key table's own part: above what an idle worker (an empty table) costs anyway
    table_memory_ratio = (sharded["rss_mb"] - idle["rss_mb"]) / max(full["rss_mb"] - idle["rss_mb"], 1e-9)
    table_time_ratio = (sharded["ready_s"] - idle["ready_s"]) / max(full["ready_s"] - idle["ready_s"], 1e-9)
    say(f"  sharded, {SHARE} of {PARTITIONS} partitions ({sharded['keys']:,} keys): /readyz 200 after "
        f"{sharded['ready_s']:.1f}s ({time_ratio:.2f} of whole), {sharded['rss_mb']:.0f} MB RSS ({memory_ratio:.2f} of "
        f"whole; peak {sharded['peak_mb']:.0f} MB); a rebalance moving {sharded['moved_partitions']} partitions to it: "
        f"served after {sharded['moved_s']:.1f}s ({sharded['moved_s'] / full['ready_s']:.2f} of a whole start)")
    imports = imports_s()
    say(f"  a fresh interpreter importing `keyledger run`'s modules: {imports:.1f}s")
    for name, figures in (("idle", idle), ("whole", full), ("sharded", sharded)):
        say(f"  {name} start, seconds from process start to the end of each step: {timeline(figures)}")
    say(f"  above an idle worker: sharded memory {table_memory_ratio:.2f} and time to ready {table_time_ratio:.2f} "
        "of the whole table's")
    return {
        "keytable_keys": keys,
        "keytable_partitions": PARTITIONS,
        "keytable_sharded_share": SHARE,
        "keytable_sharded_keys": sharded["keys"],
        "keytable_sharded_ready_s": round(sharded["ready_s"], 1),
        "keytable_sharded_rss_mb": round(sharded["rss_mb"]),
        "keytable_sharded_peak_rss_mb": round(sharded["peak_mb"]),
        "keytable_sharded_memory_ratio": round(memory_ratio, 2),
        "keytable_sharded_time_ratio": round(time_ratio, 2),
        "keytable_sharded_memory_ratio_above_idle": round(table_memory_ratio, 2),
        "keytable_sharded_time_ratio_above_idle": round(table_time_ratio, 2),
        "keytable_rebalance_moved_partitions": sharded["moved_partitions"],
        "keytable_rebalance_served_s": round(sharded["moved_s"], 1),
        "keytable_ready_s": round(full["ready_s"], 1),
        "keytable_loaded_s": round(full["loaded_s"], 1),
        "keytable_rss_mb": round(full["rss_mb"]),
        "keytable_peak_rss_mb": round(full["peak_mb"]),
        "keytable_bytes_per_key": round(per_key),
        "keytable_idle_ready_s": round(idle["ready_s"], 1),
        "keytable_idle_rss_mb": round(idle["rss_mb"]),
        "keytable_imports_s": round(imports, 1),
        **{f"keytable_{name}_phase_{phase}_s": round(at, 1)
           for name, figures in (("idle", idle), ("whole", full), ("sharded", sharded))
           for phase, at in figures["phases"].items()},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_KEYTABLE_KEYS", str(DEFAULT_KEYS)))))))
