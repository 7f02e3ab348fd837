"""`make bench`: every benchmark in one run; figures on stderr as they come, one JSON object last.

Sizes: BENCH_SPANS (100,000), BENCH_VERIFY_SPANS (100,000), BENCH_PII_RECORDS (30,000), BENCH_TENANTS (10,000),
BENCH_KEYTABLE_KEYS (3,000,000), BENCH_VAULT_TENANTS (10,000), BENCH_REWRAP_TENANTS (10,000),
BENCH_REWRAP_MOTO_TENANTS (1,000).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import crypto_peers, keytable, lifecycle, pii, rewrap, signing, vault, verify


async def main() -> None:
    figures: dict = {}
    print("per-field sealing and opening in one process: keyledger beside Tink, AES-GCM and the AWS Encryption SDK",
          file=sys.stderr, flush=True)
    figures.update(crypto_peers.run())
    figures.update(await signing.run(int(os.environ.get("BENCH_SPANS", "100000"))))
    figures.update(await verify.run(int(os.environ.get("BENCH_VERIFY_SPANS", "100000"))))
    figures.update(await pii.run(int(os.environ.get("BENCH_PII_RECORDS", "30000"))))
    print("onboarding and rotation of every tenant, against moto's KMS over HTTP", file=sys.stderr, flush=True)
    figures.update(await lifecycle.run(int(os.environ.get("BENCH_TENANTS", "10000"))))
    figures.update(await keytable.run(int(os.environ.get("BENCH_KEYTABLE_KEYS", str(keytable.DEFAULT_KEYS)))))
    figures.update(await vault.run(int(os.environ.get("BENCH_VAULT_TENANTS", "10000"))))
    figures.update(await rewrap.run(int(os.environ.get("BENCH_REWRAP_TENANTS", "10000")),
                                    int(os.environ.get("BENCH_REWRAP_MOTO_TENANTS", "1000"))))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
