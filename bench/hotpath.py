"""Where a worker's time goes without Kafka: the signer and PII handlers called in this process on
prepared records (local KMS, a publisher that keeps nothing; a real TigerBeetle when a binary is
installed, else the memory ledger), microseconds of CPU per record, beside the raw Ed25519 signature
and AES-GCM seal measured in the same process.

The end-to-end benches (bench/signing.py, bench/pii.py) report the worker's CPU per record over a real
broker and TigerBeetle; the difference from these figures is the Kafka and TigerBeetle clients' share.
BENCH_PROFILE=path writes a cProfile of each handler loop to path.signer and path.pii.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import say, tigerbeetle
from bench.pii import record as pii_record
from bench.signing import sample_span
from schemas.messages import KeyEvent, KeyEventType, KeyType
from workers.core import ids
from workers.core.material import material_fingerprint
from workers.groups.base import Deps
from workers.groups.pii import PiiGroup
from workers.groups.signer import SignerGroup
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keystore.directory import KeyDirectory
from workers.kms.local import LocalKms
from workers.ledger import Ledger
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import key_account, tenant_account
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.settings import Settings

TENANTS = 100
BATCH = 1000


class KeepNothing:
    published = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        self.published += sum(1 for _ in records)


async def _deps(tb: str | None) -> Deps:
    settings = Settings(kafka_bootstrap="unused:9092", key_table_wait=0)
    ledger: Ledger = TigerBeetleLedger(tb) if tb else MemoryLedger()
    directory = KeyDirectory()
    keys = KeyService(directory, LocalKms(), ledger, SingleFlightCache(ttl=3600, max_entries=10_000))
    for i in range(TENANTS):
        tenant = f"tenant-{i:03d}"
        for key_type in KeyType:
            minted = await keys.mint(tenant, key_type, 1, None)
            await ledger.create_accounts([tenant_account(tenant), key_account(
                tenant, minted.material.key_id, key_type, 1, material_fingerprint(minted.material))])
            directory.apply_material(minted.material)
            directory.apply_event(KeyEvent(
                event_id=ids.event_id("generated", minted.material.key_id), type=KeyEventType.GENERATED,
                tenant_id=tenant, key_id=minted.material.key_id, key_type=key_type, version=1,
                occurred_at=minted.material.created_at))
    return Deps(settings, keys, ledger, AuditTrail(ledger), KeepNothing())


def _records(topic: str, values: list[tuple[bytes, bytes]]) -> list[InboundRecord]:
    return [InboundRecord(topic, i % 6, i, key, value) for i, (key, value) in enumerate(values)]


async def _per_record_us(handle, records: list[InboundRecord], name: str) -> float:
    await handle(records[:BATCH])  # warm: keys unwrapped, budgets funded
    profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    start = time.process_time()
    if profile:
        profile.enable()
    for at in range(BATCH, len(records), BATCH):
        waiting = await handle(records[at:at + BATCH])
        assert not waiting, f"{len(waiting)} records wait"
    if profile:
        profile.disable()
        profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{name}")
    return (time.process_time() - start) * 1e6 / (len(records) - BATCH)


def _raw_sign_us() -> float:
    from workers.core.signing import signing_input

    key, message = Ed25519PrivateKey.generate(), signing_input("tenant-000", "ab" * 16, sample_span(1))
    start = time.process_time()
    for _ in range(20_000):
        key.sign(message)
    return (time.process_time() - start) * 1e6 / 20_000


def _raw_seal_us() -> float:
    aead, field_value, aad = AESGCM(os.urandom(32)), b"x" * 300, b"a" * 120
    start = time.process_time()
    for _ in range(60_000):
        aead.encrypt(os.urandom(12), field_value, aad)
    return (time.process_time() - start) * 1e6 / 20_000  # three fields a record


async def run(count: int) -> dict:
    with tigerbeetle() as tb:
        return await _run(count, tb)


async def _run(count: int, tb: str | None) -> dict:
    deps = await _deps(tb)
    signer = SignerGroup(deps)
    spans = _records("spans.to-sign", [
        (f"tenant-{i % TENANTS:03d}".encode(),
         json.dumps({"job_id": f"job-{i}", "tenant_id": f"tenant-{i % TENANTS:03d}", "span": sample_span(i)}).encode())
        for i in range(count)])
    sign_us = await _per_record_us(signer.handle, spans, "signer")
    raw_sign = _raw_sign_us()
    say(f"hot path, in process, no Kafka ({'TigerBeetle' if tb else 'memory ledger'}): signer {sign_us:.1f} us of CPU a span "
        f"(the Ed25519 signature alone {raw_sign:.1f} us)")
    pii = PiiGroup(deps)
    requests = _records("pii.requests", [pii_record(i) for i in range(count)])
    pii_us = await _per_record_us(pii.handle, requests, "pii")
    raw_seal = _raw_seal_us()
    say(f"  PII encrypt {pii_us:.1f} us of CPU a record of 3 fields (AES-GCM of the 3 fields alone {raw_seal:.1f} us)")
    await deps.ledger.aclose()
    return {"hotpath_ledger": "tigerbeetle" if tb else "memory", "hotpath_sign_us": round(sign_us, 1), "hotpath_raw_sign_us": round(raw_sign, 1),
            "hotpath_pii_encrypt_us": round(pii_us, 1), "hotpath_raw_seal_3_fields_us": round(raw_seal, 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_HOTPATH_RECORDS", "30000"))))))
