"""Where a worker's time goes without Kafka: the signer and PII handlers called in this process on
prepared records (local KMS, a publisher that keeps only the PII results; a real TigerBeetle when a
binary is installed, else the memory ledger), microseconds of CPU per record, of the process and of the
event loop's thread alone, beside the raw Ed25519 signature and AES-GCM seal measured in the same
process. PII: encrypt, then decrypt and reencrypt of what encrypt sealed.

The end-to-end benches (bench/signing.py, bench/pii.py) report the worker's CPU per record over a real
broker and TigerBeetle; the difference from these figures is the Kafka and TigerBeetle clients' share.
BENCH_PROFILE=path writes a cProfile of each handler loop to path.signer and path.pii.<operation>.
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

from bench.callers import enrolled
from bench.common import say, tigerbeetle
from bench.pii import follow_up
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
from workers.settings import CallerSettings, RequireCaller, Settings

TENANTS = 100
BATCH = 1000


class KeepResults:
    """A publisher that keeps only the `pii.results` it is given (what decrypt and reencrypt are fed)."""

    def __init__(self) -> None:
        self.published = 0
        self.results: list[Outgoing] = []

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        for record in records:
            self.published += 1
            if record.topic == "pii.results":
                self.results.append(record)


async def _deps(tb: str | None) -> Deps:
    # the production default: every span and PII request is asked for its caller's proof
    settings = Settings(kafka_bootstrap="unused:9092", key_table_wait=0,  # type: ignore[call-arg]  # flat names, as tests spell them
                        callers=CallerSettings(require=RequireCaller.ALL))
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
    return Deps(settings, keys, ledger, AuditTrail(ledger), KeepResults())


def _records(topic: str, values: list[tuple[bytes, bytes]], first: int = 0) -> list[InboundRecord]:
    """Records at offsets from `first` on: later backlogs of one topic must not reuse an earlier one's
    offsets, or their audit transfers would be the earlier ones' (`exists`)."""
    return [InboundRecord(topic, i % 6, first + i, key, value) for i, (key, value) in enumerate(values)]


async def _per_record_us(handle, records: list[InboundRecord], name: str) -> tuple[float, float]:
    """CPU a record of the whole process and of the event loop's thread alone, in microseconds. The loop's
    share is keyledger's Python; the rest is the TigerBeetle client's thread and, for the signer, the
    signatures it makes on a worker thread."""
    await handle(records[:BATCH])  # warm: keys unwrapped, budgets funded
    profile = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    start, loop_start = time.process_time(), time.thread_time()
    if profile:
        profile.enable()
    for at in range(BATCH, len(records), BATCH):
        waiting = await handle(records[at:at + BATCH])
        assert not waiting, f"{len(waiting)} records wait"
    if profile:
        profile.disable()
        profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{name}")
    measured = len(records) - BATCH
    return (time.process_time() - start) * 1e6 / measured, (time.thread_time() - loop_start) * 1e6 / measured


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
    caller = enrolled(deps.callers)
    signer = SignerGroup(deps)
    spans = _records("spans.to-sign", [
        (f"tenant-{i % TENANTS:03d}".encode(),
         json.dumps(caller.span_request(f"tenant-{i % TENANTS:03d}", sample_span(i), job_id=f"job-{i}")).encode())
        for i in range(count)])
    sign_us, sign_loop_us = await _per_record_us(signer.handle, spans, "signer")
    raw_sign = _raw_sign_us()
    say(f"hot path, in process, no Kafka ({'TigerBeetle' if tb else 'memory ledger'}): signer {sign_us:.1f} us of CPU a span, "
        f"{sign_loop_us:.1f} us of it on the event loop (the Ed25519 signature alone {raw_sign:.1f} us)")
    figures = {"hotpath_ledger": "tigerbeetle" if tb else "memory", "hotpath_sign_us": round(sign_us, 1),
               "hotpath_sign_loop_us": round(sign_loop_us, 1), "hotpath_raw_sign_us": round(raw_sign, 1)}
    pii = PiiGroup(deps)
    publisher = deps.publisher
    assert isinstance(publisher, KeepResults)
    sealed: list[Outgoing] = []
    for at, operation in enumerate(("encrypt", "decrypt", "reencrypt")):
        values = ([pii_record(i, caller) for i in range(count)] if operation == "encrypt"
                  else follow_up(sealed, operation, caller))
        requests = _records("pii.requests", values, first=at * count)
        publisher.results = []
        pii_us, pii_loop_us = await _per_record_us(pii.handle, requests, f"pii.{operation}")
        sealed = sealed or publisher.results
        say(f"  PII {operation} {pii_us:.1f} us of CPU a record of 3 fields, {pii_loop_us:.1f} us of it on the event loop")
        figures[f"hotpath_pii_{operation}_us"] = round(pii_us, 1)
        figures[f"hotpath_pii_{operation}_loop_us"] = round(pii_loop_us, 1)
    raw_seal = _raw_seal_us()
    say(f"  (AES-GCM of the 3 fields alone {raw_seal:.1f} us)")
    figures["hotpath_raw_seal_3_fields_us"] = round(raw_seal, 1)
    await deps.ledger.aclose()
    return figures


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_HOTPATH_RECORDS", "30000"))))))
