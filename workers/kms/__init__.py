"""KMS port: wrap and unwrap 32-byte data keys under a KMS key, bound to an encryption context.

Like tink's KmsEnvelopeAead, the KMS is just another AEAD: `generate_data_key`
returns fresh plaintext plus its wrapped form, `decrypt` unwraps it, and the
encryption context (always exactly {"tenant_id", "key_id", "key_type"}) is the
associated data, so a blob moved to another tenant or key never unwraps.

Every adapter implements `Kms`. The batch methods (`generate_data_keys`,
`decrypt_many`), `rewrap`, `rewrap_many`, `wrap_many` and the KEK-version
methods are optional parts of the port (`BatchKms`, `RewrappingKms`,
`BatchRewrappingKms`, `WrappingKms`, `KekVersionedKms`); callers go through
the module functions `generate_data_keys`, `decrypt_many`, `rewrap`,
`rewrap_many` and `wrap_many`, which use an adapter's own method when it has
one and single calls otherwise. The three adapters here (aws, vault, local)
implement all of them. `wrap_many` wraps a given key (provider migration: the
one place a key is unwrapped under one provider to be wrapped under another). Batch results
come back in request order, one per request: the value, or the KmsError of
that request (a batch never fails as a whole for one bad item).

An adapter names its provider in `provider` (`aws`, `vault`, `local`: the
`kms_provider` of keys.material); `provider_of` reads it (absent = `aws`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from schemas.messages import KeyType
from workers.errors import Unavailable

DATA_KEY_BYTES = 32
MAX_WRAPPED_BYTES = 6144  # AWS KMS ciphertext blobs are at most 6 KiB


class KmsError(Exception):
    """A KMS failure; messages never carry key material.

    `detail` is the provider's own explanation (e.g. AWS's "User ... is not authorized to perform kms:Decrypt"):
    for the operator's log only, since it may name accounts and roles; the message travels further (DLQ, results).
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class KmsUnavailable(KmsError, Unavailable):
    """Transient: unreachable, throttled, timed out. Retry with backoff."""


class KmsThrottled(KmsUnavailable):
    """The KMS asked us to slow down (HTTP 429, ThrottlingException): transient, back off harder."""


class KmsRefused(KmsError):
    """Permanent for this request: access denied, wrong context, key disabled or pending deletion."""


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: bytes
    kms_key_id: str
    kek_version: int | None = None  # the KMS key's version that wrapped it, when the provider has versions (vault)

    def __post_init__(self) -> None:
        if len(self.plaintext) != DATA_KEY_BYTES:
            raise KmsError("KMS returned a data key of the wrong length")
        if not 0 < len(self.wrapped) <= MAX_WRAPPED_BYTES:
            raise KmsError("KMS returned a wrapped key of an impossible length")


def encryption_context(tenant_id: str, key_id: str, key_type: KeyType) -> dict[str, str]:
    return {"tenant_id": tenant_id, "key_id": key_id, "key_type": KeyType(key_type).value}


@dataclass(frozen=True, slots=True)
class DataKeyRequest:
    """One data key to generate: under `kms_key_id` (None = the default key), bound to `context`."""

    kms_key_id: str | None
    context: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnwrapRequest:
    """One wrapped key to unwrap under `kms_key_id` and `context`."""

    wrapped: bytes
    kms_key_id: str
    context: dict[str, str]


@dataclass(frozen=True, slots=True)
class WrapRequest:
    """An existing data key to wrap under `kms_key_id` (None = the default key), bound to `context`."""

    plaintext: bytes = field(repr=False)
    kms_key_id: str | None
    context: dict[str, str]


class Rewrapped(NamedTuple):
    """A wrapped key re-wrapped under the KMS key's latest version (same plaintext, same context)."""

    wrapped: bytes
    kek_version: int | None


class KekVersions(NamedTuple):
    """A versioned KMS key: the version new wraps use, and the oldest version that still unwraps."""

    latest: int
    min_decryption: int


class Kms(Protocol):
    default_key_id: str

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey: ...

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes: ...

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None: ...

    async def describe_key(self, kms_key_id: str) -> str:
        """The key's canonical identity, the same however it is named (AWS: the key ARN, resolving a key id,
        an ARN or an alias); KmsRefused when there is no such key. BYOK ownership compares these."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchKms(Protocol):
    """Optional: many keys per KMS request where the KMS has a batch API (vault's `batch_input`)."""

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]: ...

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]: ...


@runtime_checkable
class RewrappingKms(Protocol):
    """Optional: re-wrap under the KMS key's latest version without the plaintext leaving the KMS
    (AWS ReEncrypt, vault transit/rewrap); the context is the same on both sides."""

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped: ...


@runtime_checkable
class BatchRewrappingKms(Protocol):
    """Optional: many rewraps per KMS request (vault's transit/rewrap `batch_input`)."""

    async def rewrap_many(self, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]: ...


@runtime_checkable
class WrappingKms(Protocol):
    """Optional: wrap given data keys (AWS Encrypt, vault transit/encrypt), in order, one result each."""

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]: ...


@runtime_checkable
class KekVersionedKms(Protocol):
    """Optional: a KMS key whose versions keyledger manages (vault transit)."""

    async def rotate_kek(self, kms_key_id: str | None = None) -> int: ...

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions: ...

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None: ...


def provider_of(kms: object) -> str:
    """The `kms_provider` to record on keys.material for keys wrapped by `kms` (absent = `aws`)."""
    return getattr(kms, "provider", "aws")


@runtime_checkable
class RoutingKms(Protocol):
    """A KMS made of one adapter per provider (kms/router.py): `route` names the one for a provider."""

    def route(self, provider: str) -> Kms: ...


def kms_for(kms: Kms, provider: str | None) -> Kms:
    """The adapter that unwraps records wrapped by `provider` (None = the default provider, aws).
    A single adapter serves every record (it refuses what it cannot unwrap); a router picks by name."""
    if isinstance(kms, RoutingKms):
        return kms.route(provider or "aws")
    return kms


def is_shared_key(kms: Kms, provider: str | None, kms_key_id: str) -> bool:
    """True when `kms_key_id` is the default key of `provider` here: the key that wraps every tenant
    without its own (BYOK) key. False for a provider this process is not configured with."""
    try:
        return kms_key_id == kms_for(kms, provider).default_key_id
    except KmsError:
        return False


_T = TypeVar("_T")


async def gather_each(calls: Sequence[Awaitable[_T]]) -> list[_T | KmsError]:
    """Runs single calls concurrently; a KmsError stays in its slot, anything else is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, KmsError):
            raise result
    return list(results)  # type: ignore[arg-type]


async def generate_data_keys(kms: Kms, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
    """One data key per request, in order: the adapter's batch method, or single calls."""
    if isinstance(kms, BatchKms):
        return await kms.generate_data_keys(requests)
    return await gather_each([kms.generate_data_key(r.kms_key_id, r.context) for r in requests])


async def decrypt_many(kms: Kms, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
    """One plaintext (or KmsError) per request, in order: the adapter's batch method, or single calls."""
    if isinstance(kms, BatchKms):
        return await kms.decrypt_many(requests)
    return await gather_each([kms.decrypt(r.wrapped, r.kms_key_id, r.context) for r in requests])


async def rewrap_many(kms: Kms, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
    """One rewrap (or KmsError) per request, in order: the adapter's batch method, or single rewraps."""
    if isinstance(kms, BatchRewrappingKms):
        return await kms.rewrap_many(requests)
    return await gather_each([rewrap(kms, r.wrapped, r.kms_key_id, r.context) for r in requests])


async def wrap_many(kms: Kms, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
    """Each given key wrapped (a DataKey holding it, or the KmsError of that request), in order."""
    if isinstance(kms, WrappingKms):
        return await kms.wrap_many(requests)
    raise KmsRefused(f"{type(kms).__name__} cannot wrap a given key")


async def rewrap(kms: Kms, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
    """Re-wraps under the latest KEK version. An adapter without `rewrap` is refused rather than
    emulated by decrypt + encrypt here: that would bring the plaintext into this process for nothing."""
    if isinstance(kms, RewrappingKms):
        return await kms.rewrap(wrapped, kms_key_id, context)
    raise KmsRefused(f"{type(kms).__name__} cannot rewrap")
