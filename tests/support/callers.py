"""Callers for tests, whose requests are proved and whose results are opened with the caller module
(workers/client.py), exactly as a service adopting callers does: `TestCaller` is enrolled straight into
a process's CallerTable (handler tests: no keys.callers record, no KMS); `Operator.register` makes a
`RegisteredCaller` over a real broker as `keyledger caller keygen` and `caller add` do."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import CallerKem, CallerOperation, CallerPolicy
from workers.client import CallerClient, CallerCredential, CallerKeyPair, load_public_key
from workers.core.b64 import b64url_encode
from workers.core.callers import CallerTable, caller_id_for
from workers.core.results import generate_keypair
from workers.kms import Kms
from workers.kms.factory import open_kms
from workers.kms.local import LocalKms
from workers.ledger import Ledger
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings
from workers.tools.callers import caller_add, caller_keygen

EVERY_OPERATION = tuple(operation.value for operation in CallerOperation)


class TestCaller:
    __test__ = False  # not a test class

    def __init__(self, name: str, kem: CallerKem = CallerKem.X25519) -> None:
        self.name = name
        self.caller_id = caller_id_for(name)
        self.secret = os.urandom(32)
        private, public = generate_keypair(kem)
        self.keys = CallerKeyPair(kem, private, public)
        self.client = CallerClient(CallerCredential(self.caller_id, name, self.secret), self.keys)

    def policy(self, *, tenants: list[str] | str = "*", operations: tuple[str, ...] = EVERY_OPERATION,
               version: int = 1, revoked: bool = False) -> CallerPolicy:
        assert self.keys.public is not None
        return CallerPolicy(caller_id=self.caller_id, name=self.name, tenants=tenants, operations=list(operations),
                            kem=self.keys.kem, public_key=b64url_encode(self.keys.public), wrapped_secret="unused",
                            kms_key_id="unused", created_at=datetime.now(UTC), revoked=revoked, version=version,
                            signature="unused")

    def enrol(self, table: CallerTable, **policy: Any) -> TestCaller:
        """Install this caller's policy (and secret) into `table` as a verified keys.callers record would."""
        table.install(self.policy(**policy), self.secret)
        return self

    def pii(self, tenant: str, operation: str, fields: dict, record_id: str = "r1", job_id: str = "j1") -> bytes:
        """A proved pii.requests value."""
        return json.dumps(self.client.pii_request(tenant, operation, fields, record_id=record_id,
                                                  job_id=job_id)).encode()

    def span(self, tenant: str, span: dict, job_id: str) -> bytes:
        return json.dumps(self.client.span_request(tenant, span, job_id=job_id)).encode()

    def open(self, result: dict) -> dict:
        """`result` as this caller reads it: sealed fields opened, `result_key` consumed. A decrypt's fields
        are sealed, never plaintext on the topic."""
        opened = dict(result)
        if result.get("operation") == "decrypt" and result.get("fields"):
            assert all(v.startswith("klr1.") for v in result["fields"].values()), "a caller's decrypt is sealed"
        opened["fields"] = self.client.open_result(result)
        opened.pop("result_key", None)
        return opened


TEST_CALLER = TestCaller("test-service")
"""The caller every handler harness knows (allowed every operation for every tenant)."""


class RegisteredCaller:
    """A caller as `keyledger caller keygen` and `caller add` leave it: files on disk, a signed keys.callers
    record on the broker, and a client for its requests."""

    __test__ = False

    def __init__(self, name: str, credential: Path, private_key: Path) -> None:
        self.name = name
        self.caller_id = caller_id_for(name)
        self.credential = credential
        self.private_key = private_key
        self.keys = CallerKeyPair.load(private_key)
        self.client = CallerClient(CallerCredential.load(credential), self.keys)

    def pii(self, tenant: str, operation: str, fields: dict, *, job_id: str, record_id: str = "r1") -> bytes:
        return json.dumps(self.client.pii_request(tenant, operation, fields, record_id=record_id,
                                                  job_id=job_id)).encode()


class Operator:
    """An operator key (what `keyledger operator keygen` makes), registering callers over a real broker."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public = b64url_encode(self.key.public_key().public_bytes_raw())

    async def register(self, bootstrap: str, folder: Path, name: str, *, tenants: list[str] | str = "*",
                       operations: tuple[str, ...] = EVERY_OPERATION,
                       kem: CallerKem = CallerKem.X25519, kms: Kms | None = None,
                       ledger: Ledger | None = None) -> RegisteredCaller:
        """`keyledger caller keygen` then `caller add`; the secret is wrapped by `kms` (by default the
        development KMS): the workers' own KMS must unwrap it. The version is pinned in `ledger` (by
        default a memory ledger of its own: a pin no worker reads)."""
        private, public = caller_keygen(folder / name, kem)
        _, raw = load_public_key(public)
        await caller_add(bootstrap, kms or LocalKms(), self.key, name, ledger=ledger or MemoryLedger(), tenants=tenants,
                         operations=list(operations), kem=kem, caller_public_key=raw,
                         secret_out=folder / f"{name}.secret")
        return RegisteredCaller(name, folder / f"{name}.secret", private)


async def register_caller(bootstrap: str, folder: Path, name: str, kms_env: dict[str, str] | None = None, *,
                          operator: Operator | None = None, **policy: Any) -> tuple[Operator, RegisteredCaller]:
    """A new operator and one caller it registers; the caller's secret is wrapped by the KMS the workers are
    configured with in `kms_env` (KEYLEDGER_* variables), the local one by default. Start the workers with
    KEYLEDGER_OPERATOR_PUBLIC_KEY=operator.public."""
    operator = operator or Operator()
    kms_settings = {key.removeprefix("KEYLEDGER_").lower(): value for key, value in (kms_env or {}).items()
                    if key.startswith(("KEYLEDGER_KMS_", "KEYLEDGER_AWS_", "KEYLEDGER_VAULT_"))}
    kms = open_kms(Settings(**kms_settings).kms)
    try:
        caller = await operator.register(bootstrap, folder, name, kms=kms, **policy)
    finally:
        await kms.aclose()
    return operator, caller


class SharedMemoryLedger(MemoryLedger):
    """The memory ledger declared `shared`: stands in for TigerBeetle where a test pins caller policies
    and then has a process (or a verb) read the pins, all in this one process."""

    shared = True
