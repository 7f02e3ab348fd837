"""Rewrap at scale: N tenants x 2 keys re-wrapped by the rotation group's RewrapService, in process, against
an OpenBao dev server (after a Transit KEK rotation; transit/rewrap in batches) and against moto's KMS
server (ReEncrypt, one request per key). The service runs as the group runs it: ticks of one tenant each,
1,000 per handler call, the memory ledger for the accounts and the rewrap transfers, and a publisher that
only counts (the broker's share is measured by bench/signing.py and bench/pii.py).

    python bench/rewrap.py        # BENCH_REWRAP_TENANTS (10,000 on Vault), BENCH_REWRAP_MOTO_TENANTS (1,000)

Figures on stderr as they come, one JSON object last on stdout. `run()` is the hook for bench/run.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import moto_kms
from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType, RotationReason, RotationTick, TickAction
from workers.app.openbao import OpenBaoDevServer
from workers.core import ids
from workers.core.b64 import b64encode
from workers.core.material import material_fingerprint
from workers.kafka.material import KafkaMaterialStore
from workers.kafka.publisher import Outgoing
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keystore.directory import KeyDirectory
from workers.kms import DataKey, DataKeyRequest, Kms, encryption_context, generate_data_keys, provider_of
from workers.kms.aws import AwsKms
from workers.kms.vault import TokenAuth, VaultKms
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import key_account, tenant_account
from workers.services.kek_retirement import KekRetirement
from workers.services.rewrap import RewrapService
from workers.source import Source

BATCH = 1000  # ticks per handler call, as KEYLEDGER_KAFKA_BATCH_MAX


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CountingPublisher:
    published = 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def publish(self, records: Iterable[Outgoing]) -> None:
        self.published += sum(1 for _ in records)


async def _populate(kms: Kms, tenants: int) -> KeyService:
    """Every tenant's two keys, as keygen leaves them: material known, announced, accounts pinned."""
    keys = KeyService(KeyDirectory(), kms, MemoryLedger(), SingleFlightCache(ttl=60, max_entries=10))
    plans = [(f"tenant-{i:05d}", key_type) for i in range(tenants) for key_type in KeyType]
    requests = [DataKeyRequest(None, encryption_context(t, ids.key_id_for(t, k, 1), k)) for t, k in plans]
    wrapped = await generate_data_keys(kms, requests)
    now = datetime.now(UTC)
    accounts = [tenant_account(f"tenant-{i:05d}") for i in range(tenants)]
    for (tenant, key_type), data_key in zip(plans, wrapped, strict=True):
        assert isinstance(data_key, DataKey), data_key
        key_id = ids.key_id_for(tenant, key_type, 1)
        material = KeyMaterial(key_id=key_id, tenant_id=tenant, key_type=key_type, version=1,
                               kms_key_id=data_key.kms_key_id, wrapped_key=b64encode(data_key.wrapped),
                               created_at=now, kms_provider=provider_of(kms), kek_version=data_key.kek_version)
        keys.directory.apply_material(material)
        keys.directory.apply_event(KeyEvent(event_id=key_id, type=KeyEventType.GENERATED, tenant_id=tenant,
                                            key_id=key_id, key_type=key_type, version=1, occurred_at=now))
        accounts.append(key_account(tenant, key_id, key_type, 1, material_fingerprint(material)))
    await keys.ledger.create_accounts(accounts)
    return keys


async def _rewrap_all(keys: KeyService, tenants: int, run: str) -> tuple[float, int, int]:
    """Seconds, keys re-wrapped and KMS requests for one manual run over every tenant."""
    service = RewrapService(keys, keys.ledger, KafkaMaterialStore(CountingPublisher()))
    audit = AuditTrail(keys.ledger)
    now = datetime.now(UTC)
    ticks = [(Source("keys.rotation-ticks", 0, i),
              RotationTick(tick_id=f"{run}/tenant-{i:05d}", issued_at=now, tenant_id=f"tenant-{i:05d}",
                           action=TickAction.REWRAP, reason=RotationReason.MANUAL, parent_tick_id=run))
             for i in range(tenants)]
    calls, started = getattr(keys.kms, "calls", 0), time.perf_counter()
    for start in range(0, len(ticks), BATCH):
        outcome = await service.rewrap(ticks[start:start + BATCH])
        await audit.record(outcome.ops)  # the emitter's first step: the transfers that accept the new records
        for follow_up in outcome.then:
            await follow_up()
        if outcome.dead or outcome.blocked:
            raise SystemExit(f"rewrap refused {len(outcome.dead)} and deferred {len(outcome.blocked)} tenants")
    return time.perf_counter() - started, service.rewrapped, getattr(keys.kms, "calls", 0) - calls


async def _vault(tenants: int) -> dict:
    with OpenBaoDevServer() as bao:
        kms = VaultKms(bao.addr, TokenAuth(bao.token), default_key_id="keyledger-bench", timeout=30)
        try:
            keys = await _populate(kms, tenants)
            bao.admin("POST", "transit/keys/keyledger-bench/rotate", {})
            seconds, moved, calls = await _rewrap_all(keys, tenants, "bench-vault")
            _say(f"vault: {moved:,} keys re-wrapped to KEK v2 in {seconds:.1f}s: {moved / seconds:,.0f} keys/s "
                 f"({calls:,} Vault requests, transit/rewrap batches of {kms.batch_max})")
            started = time.perf_counter()
            report = await KekRetirement(keys, keys.ledger).retire_unneeded()
            retire_s = time.perf_counter() - started
            _say(f"vault: retirement proof over {moved:,} keys in {retire_s:.2f}s: {report[0]}")
        finally:
            await kms.aclose()
    return {"rewrap_vault_keys": moved, "rewrap_vault_keys_per_s": round(moved / seconds),
            "rewrap_vault_requests": calls, "rewrap_vault_retire_proof_s": round(retire_s, 2)}


async def _moto(tenants: int) -> dict:
    with moto_kms() as (endpoint, key_id):
        kms = AwsKms(key_id, endpoint_url=endpoint, timeout=30)
        try:
            keys = await _populate(kms, tenants)
            seconds, moved, calls = await _rewrap_all(keys, tenants, "bench-moto")
            _say(f"moto: {moved:,} keys re-wrapped (ReEncrypt) in {seconds:.1f}s: {moved / seconds:,.0f} keys/s "
                 f"({calls:,} KMS requests)")
        finally:
            await kms.aclose()
    return {"rewrap_moto_keys": moved, "rewrap_moto_keys_per_s": round(moved / seconds), "rewrap_moto_requests": calls}


async def run(tenants: int = 10_000, moto_tenants: int = 1_000) -> dict:
    figures = await _vault(tenants)
    figures.update(await _moto(moto_tenants))
    return figures


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_REWRAP_TENANTS", "10000")),
                                     int(os.environ.get("BENCH_REWRAP_MOTO_TENANTS", "1000"))))), flush=True)
