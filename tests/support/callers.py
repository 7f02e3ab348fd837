"""Callers for tests: a caller identity enrolled straight into a process's CallerTable (no keys.callers
record, no KMS), whose requests are proved and whose results are opened with the caller module
(workers/client.py), exactly as a service adopting callers does."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from schemas.messages import CallerKem, CallerOperation, CallerPolicy
from workers.client import CallerClient, CallerCredential, CallerKeyPair
from workers.core.b64 import b64url_encode
from workers.core.callers import CallerTable, caller_id_for
from workers.core.results import generate_keypair

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
