"""The KMS and ledger ports, metered: the same ports, wrapping the configured adapters.

Each call is counted by operation and outcome, timed, traced as a client span when
tracing is on, and remembered by a `Reachability` that /readyz reports without
probing the dependency (a probe of AWS KMS costs money and quota). A KMS refusal
is logged with its cause: the provider's explanation, not only the error class.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from workers.app.observability.metrics import Metrics
from workers.errors import Unavailable
from workers.kms import (
    DataKey,
    DataKeyRequest,
    KekVersions,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    Rewrapped,
    UnwrapRequest,
    WrapRequest,
)
from workers.ledger import (
    Account,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    QueryFilter,
    Transfer,
)

log = logging.getLogger("keyledger.ports")

T = TypeVar("T")
SpanFactory = Callable[[str, dict[str, Any]], contextlib.AbstractContextManager[object]]


def _no_span(name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext()


class Reachability:
    """What the latest calls said about a dependency: `ok` (it answered, refusals included), `unavailable`
    (it did not), or `unknown` (no call yet)."""

    def __init__(self) -> None:
        self.state = "unknown"
        self.last_error: str | None = None
        self.since: datetime | None = None

    def answered(self) -> None:
        if self.state != "ok":
            self.state, self.since = "ok", datetime.now(UTC)

    def failed(self, error: str) -> None:
        self.last_error = error
        if self.state != "unavailable":
            self.state, self.since = "unavailable", datetime.now(UTC)

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since.isoformat() if self.since else None,
                "last_error": self.last_error}


class MeteredKms(Kms):
    """A `Kms` that reports every call: each port method is written here and forwards to the same
    method of the adapter, so the adapter's capabilities (declared by it, read through here) decide
    how the work is done. Every KMS call (each async method) is counted once per port call by
    operation and outcome, timed and traced; a router's providers are metered too (`route`,
    `providers`), sharing this one's reachability."""

    def __init__(self, inner: Kms, metrics: Metrics, span: SpanFactory | None = None,
                 reachability: Reachability | None = None) -> None:
        self.inner = inner
        self.default_key_id = inner.default_key_id
        self.reachability = reachability or Reachability()
        self._metrics = metrics
        self._span = span or _no_span
        self._routes: dict[str, MeteredKms] = {}

    @property
    def capabilities(self) -> KmsCapabilities:
        return self.inner.capabilities

    @property
    def calls(self) -> int:
        return self.inner.calls

    # --- routing: no KMS call; the adapters it hands out are metered ----------------------

    def route(self, provider: str) -> Kms:
        """The metered adapter of `provider`: this one when the inner KMS serves every record itself."""
        routed = self.inner.route(provider)
        if not self.inner.capabilities.routing:
            return self
        if provider not in self._routes:
            self._routes[provider] = MeteredKms(routed, self._metrics, self._span, self.reachability)
        return self._routes[provider]

    @property
    def providers(self) -> Mapping[str, Kms]:
        return {name: self.route(name) for name in self.inner.providers}

    def is_shared_key(self, provider: str | None, kms_key_id: str) -> bool:
        return self.inner.is_shared_key(provider, kms_key_id)

    # --- KMS calls ----------------------------------------------------------------------------

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        return await self._call("generate_data_key", lambda: self.inner.generate_data_key(kms_key_id, context))

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        return await self._call("wrap", lambda: self.inner.wrap(plaintext, kms_key_id, context))

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        return await self._call("decrypt", lambda: self.inner.decrypt(wrapped, kms_key_id, context))

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        return await self._call("rewrap", lambda: self.inner.rewrap(wrapped, kms_key_id, context))

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
        return await self._call("generate_data_keys", lambda: self.inner.generate_data_keys(requests))

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
        return await self._call("decrypt_many", lambda: self.inner.decrypt_many(requests))

    async def rewrap_many(self, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        return await self._call("rewrap_many", lambda: self.inner.rewrap_many(requests))

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
        return await self._call("wrap_many", lambda: self.inner.wrap_many(requests))

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        return await self._call("rotate_kek", lambda: self.inner.rotate_kek(kms_key_id))

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        return await self._call("kek_versions", lambda: self.inner.kek_versions(kms_key_id))

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        await self._call("retire_kek_versions", lambda: self.inner.retire_kek_versions(min_version, kms_key_id))

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        await self._call("schedule_key_deletion", lambda: self.inner.schedule_key_deletion(kms_key_id, pending_days))

    async def describe_key(self, kms_key_id: str) -> str:
        return await self._call("describe_key", lambda: self.inner.describe_key(kms_key_id))

    async def tenant_key(self, tenant_id: str) -> str:
        return await self._call("tenant_key", lambda: self.inner.tenant_key(tenant_id))

    async def aclose(self) -> None:
        await self._call("aclose", self.inner.aclose)

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        outcome = "error"
        started = time.perf_counter()
        try:
            with self._span(f"kms {operation}", {"keyledger.kms.operation": operation}):
                result = await call()
            outcome = "success"
            self.reachability.answered()
            return result
        except KmsRefused as exc:
            outcome = "refused"
            self.reachability.answered()
            cause = f": {exc.detail}" if exc.detail else ""
            log.warning("KMS refused %s: %s%s", operation, exc, cause,
                        extra={"code": "kms_refused", "operation": operation})
            raise
        except Unavailable as exc:
            outcome = "unavailable"
            self.reachability.failed(str(exc))
            raise
        finally:
            self._metrics.kms_calls.labels(operation, outcome).inc()
            self._metrics.kms_seconds.labels(operation).observe(time.perf_counter() - started)


class MeteredLedger:
    """A `Ledger` that reports every request (one port call: the adapter may cut it into several)."""

    def __init__(self, inner: Ledger, metrics: Metrics, span: SpanFactory | None = None) -> None:
        self.inner = inner
        self.reachability = Reachability()
        self._metrics = metrics
        self._span = span or _no_span

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def shared(self) -> bool:
        return self.inner.shared

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._call("create_accounts", len(accounts), lambda: self.inner.create_accounts(accounts))

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._call("create_transfers", len(transfers), lambda: self.inner.create_transfers(transfers))

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._call("lookup_accounts", len(ids), lambda: self.inner.lookup_accounts(ids))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._call("lookup_transfers", len(ids), lambda: self.inner.lookup_transfers(ids))

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        return await self._call("get_account_transfers", 1, lambda: self.inner.get_account_transfers(account_filter))

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await self._call("query_accounts", 1, lambda: self.inner.query_accounts(query_filter))

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await self._call("query_transfers", 1, lambda: self.inner.query_transfers(query_filter))

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _call(self, operation: str, events: int, call: Callable[[], Awaitable[T]]) -> T:
        outcome = "error"
        started = time.perf_counter()
        try:
            with self._span(f"ledger {operation}", {"keyledger.ledger.operation": operation,
                                                    "keyledger.ledger.events": events}):
                result = await call()
            outcome = "success"
            self.reachability.answered()
            return result
        except Unavailable as exc:
            outcome = "unavailable"
            self.reachability.failed(str(exc))
            raise
        finally:
            self._metrics.ledger_requests.labels(operation, outcome).inc()
            self._metrics.ledger_seconds.labels(operation).observe(time.perf_counter() - started)
