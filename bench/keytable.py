"""Key table at scale: time to ready and resident size of a worker whose `keys.material` holds N keys
(default 1,000,000; BENCH_KEYTABLE_KEYS).

N keys (half signing with a public key, half encryption, two per tenant, wrapped keys the size AWS KMS
returns) are written as keygen writes them: one `keys.material` record per key, keyed by key id, and its
`generated` event on `keys.events`, keyed by tenant. Then a `keyledger run --group keyledger-signer`
process starts on that backlog; the figures are from its process start to `/readyz` answering 200 (the
key table is read to its end and the group joined), and its VmRSS once ready. An idle worker (the same
group, an empty table) started in the same run gives the floor that bytes per key is measured above.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bench.common import Worker, broker, moto_kms, say
from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.app.embedded import free_port
from workers.core import ids
from workers.core.b64 import b64encode
from workers.kafka.topics import ensure_topics
from workers.settings import Settings

PARTITIONS = 6
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


class BatchWriter:
    """Records straight into per-partition batches of ~1 MiB, sent as each fills (one produce per batch)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer, self._topic = producer, topic
        self._partition = DefaultPartitioner()
        self._batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        self._sent: list[asyncio.Future] = []

    async def add(self, key: bytes, value: bytes) -> None:
        partition = self._partition(key, list(range(PARTITIONS)), list(range(PARTITIONS)))
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


async def fill(bootstrap: str, keys: int, kms_key_id: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=BATCH_BYTES,
                                max_request_size=4 * BATCH_BYTES, linger_ms=0)
    await producer.start()
    try:
        materials = BatchWriter(producer, "keys.material")
        events = BatchWriter(producer, "keys.events")
        for material_key, material, event_key, event in key_records(keys, kms_key_id):
            await materials.add(material_key, material)
            await events.add(event_key, event)
        await materials.close()
        await events.close()
    finally:
        await producer.stop()


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


async def measure(bootstrap: str, kms: tuple[str, str], keys: int) -> dict[str, float]:
    """Start a signer on the current backlog: seconds to `/readyz` 200 (and to the log line), RSS then."""
    port = free_port()
    started = time.perf_counter()
    worker = Worker(bootstrap, kms, "keyledger-signer", KEYLEDGER_HTTP_PORT=str(port),
                    KEYLEDGER_STARTUP_TIMEOUT=str(READY_TIMEOUT))
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
    finally:
        worker.stop()
    return {"ready_s": ready_at - started, "loaded_s": (loaded_at or ready_at) - started,
            "rss_mb": memory["VmRSS"] / 1024, "peak_mb": memory["VmHWM"] / 1024}


async def run(keys: int) -> dict:
    with moto_kms() as kms:
        # each worker on a broker of its own: the group's first join, not a wait for the previous member to expire
        with broker() as bootstrap:
            await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS))
            idle = await measure(bootstrap, kms, 0)
        say(f"  idle worker (empty key table): ready in {idle['ready_s']:.1f}s, {idle['rss_mb']:.0f} MB RSS")
        with broker() as bootstrap:
            await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS))
            started = time.perf_counter()
            await fill(bootstrap, keys, kms[1])
            say(f"  {keys:,} keys written to keys.material + keys.events in {time.perf_counter() - started:.0f}s")
            full = await measure(bootstrap, kms, keys)
    per_key = (full["rss_mb"] - idle["rss_mb"]) * 1024 * 1024 / keys if keys else 0.0
    say(f"  {keys:,} keys: key table loaded after {full['loaded_s']:.1f}s, /readyz 200 after {full['ready_s']:.1f}s, "
        f"{full['rss_mb']:.0f} MB RSS (peak {full['peak_mb']:.0f} MB), {per_key:,.0f} bytes a key above idle")
    return {
        "keytable_keys": keys,
        "keytable_ready_s": round(full["ready_s"], 1),
        "keytable_loaded_s": round(full["loaded_s"], 1),
        "keytable_rss_mb": round(full["rss_mb"]),
        "keytable_peak_rss_mb": round(full["peak_mb"]),
        "keytable_bytes_per_key": round(per_key),
        "keytable_idle_ready_s": round(idle["ready_s"], 1),
        "keytable_idle_rss_mb": round(idle["rss_mb"]),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_KEYTABLE_KEYS", "1000000"))))))
