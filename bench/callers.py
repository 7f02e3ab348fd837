"""The bench's one caller: the production default (KEYLEDGER_REQUIRE_CALLER=all) asks every span and PII
request for a caller's proof, so every request the benches send is proved, and its check is inside the
figures. In process (bench/hotpath.py) the caller is enrolled into the process's CallerTable as a verified
keys.callers record would install it; over a broker it is registered as `keyledger caller add` does."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import CallerKem, CallerOperation, CallerPolicy
from workers.client import CallerClient, CallerCredential, CallerKeyPair
from workers.core.b64 import b64url_encode
from workers.core.callers import CallerTable, caller_id_for
from workers.core.results import generate_keypair
from workers.kms.aws import AwsKms
from workers.ledger import Ledger
from workers.ledger.memory import MemoryLedger
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.tools.callers import caller_add

NAME = "bench-service"
EVERY_OPERATION = [operation.value for operation in CallerOperation]


def enrolled(table: CallerTable) -> CallerClient:
    """A caller allowed every operation on every tenant, installed into `table`."""
    caller_id, secret = caller_id_for(NAME), os.urandom(32)
    private, public = generate_keypair(CallerKem.X25519)
    table.install(CallerPolicy(caller_id=caller_id, name=NAME, tenants="*", operations=EVERY_OPERATION,
                               kem=CallerKem.X25519, public_key=b64url_encode(public), wrapped_secret="unused",
                               kms_key_id="unused", created_at=datetime.now(UTC), version=1, signature="unused"),
                  secret)
    return CallerClient(CallerCredential(caller_id, NAME, secret), CallerKeyPair(CallerKem.X25519, private, public))


async def registered(bootstrap: str, kms: tuple[str, str], tigerbeetle: str | None) -> tuple[CallerClient, dict[str, str]]:
    """A caller registered on the broker (its secret wrapped by the bench's KMS, its policy pinned in the
    workers' TigerBeetle when they use one) and the environment a worker needs to trust it with every
    request asking for a caller (the production default)."""
    operator = Ed25519PrivateKey.generate()
    private, public = generate_keypair(CallerKem.X25519)
    folder = Path(tempfile.mkdtemp(prefix="keyledger-bench-caller-"))
    client = AwsKms(kms[1], endpoint_url=kms[0])
    ledger: Ledger = TigerBeetleLedger(tigerbeetle) if tigerbeetle else MemoryLedger()
    try:
        await caller_add(bootstrap, client, operator, NAME, tenants="*", operations=EVERY_OPERATION,
                         kem=CallerKem.X25519, caller_public_key=public, secret_out=folder / "bench.secret",
                         ledger=ledger)
    finally:
        await client.aclose()
        await ledger.aclose()
    caller = CallerClient(CallerCredential.load(folder / "bench.secret"), CallerKeyPair(CallerKem.X25519, private, public))
    env = {"KEYLEDGER_OPERATOR_PUBLIC_KEY": b64url_encode(operator.public_key().public_bytes_raw()),
           "KEYLEDGER_REQUIRE_CALLER": "all"}
    return caller, env
