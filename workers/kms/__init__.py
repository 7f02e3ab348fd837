"""KMS port: wrap and unwrap 32-byte data keys under a KMS key, bound to an encryption context.

Like tink's KmsEnvelopeAead, the KMS is just another AEAD: `generate_data_key`
returns fresh plaintext plus its wrapped form, `decrypt` unwraps it, and the
encryption context (always exactly {"tenant_id", "key_id", "key_type"}) is the
associated data, so a blob moved to another tenant or key never unwraps.

`Kms` is the whole port, one declared interface. Every adapter (aws, vault,
pkcs11, gcp, azure, local) and every wrapper (the router, the metered KMS of app/observability)
subclasses it. An adapter writes the calls its KMS answers (`wrap`, `decrypt`,
`describe_key`, `schedule_key_deletion`, and `generate_data_key` where the KMS
makes data keys itself) and declares in `capabilities` what else it does
natively; `Kms` gives the rest:

  - batches (`generate_data_keys`, `decrypt_many`, `wrap_many`, `rewrap_many`):
    single calls gathered, at most `concurrency` in flight, unless the adapter
    declares `batching` and sends many keys per request (vault's `batch_input`);
  - `rewrap`: unwrap and wrap again in this process, unless the adapter declares
    `native_rewrap` (AWS ReEncrypt, vault transit/rewrap: the plaintext stays in
    the KMS);
  - KEK versions (`rotate_kek`, `kek_versions`, `retire_kek_versions`): refused
    with `KekVersionsUnsupported`, unless the adapter declares `kek_versions`;
  - routing (`route`, `providers`, `is_shared_key`): one adapter serves every
    record (it refuses what it cannot unwrap), unless it declares `routing` (the
    router picks one adapter per provider).

Callers read `capabilities`; they never probe an adapter for a method. Batch
results come back in request order, one per request: the value, or the
KmsError of that request (a batch never fails as a whole for one bad item).
`wrap_many` wraps a given key (provider migration: the one place a key is
unwrapped under one provider to be wrapped under another).

The module functions (`generate_data_keys`, `decrypt_many`, `rewrap`,
`rewrap_many`, `wrap_many`, `kms_for`, `provider_of`, `is_shared_key`) are the
same calls spelt as functions, for callers written against them.
"""
from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

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

    setting = ("KEYLEDGER_KMS_ENDPOINT_URL and KEYLEDGER_AWS_REGION (aws) or KEYLEDGER_VAULT_ADDR (vault), "
               "and the KMS credentials")


class KmsThrottled(KmsUnavailable):
    """The KMS asked us to slow down (HTTP 429, ThrottlingException): transient, back off harder."""

    setting = "KEYLEDGER_KMS_CONCURRENCY against the KMS's request quota"


class KmsRefused(KmsError):
    """Permanent for this request: access denied, wrong context, key disabled or pending deletion."""


class KekVersionsUnsupported(KmsRefused):
    """The provider's KMS keys have no versions keyledger manages (`capabilities.kek_versions` is False)."""


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: bytes
    kms_key_id: str
    kek_version: int | None = None  # the KMS key's version that wrapped it, when the provider has versions (vault, pkcs11, gcp, azure)

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


@dataclass(frozen=True, slots=True)
class KmsCapabilities:
    """What a `Kms` does natively, declared by the class (callers read it; they never probe for methods).

    `provider` is the `kms_provider` recorded on keys.material for keys this KMS wraps (`aws`, `vault`,
    `pkcs11`, `gcp`, `azure`, `local`). Each flag off means the port's default in `Kms` does the job (see the module docstring)."""

    provider: str
    batching: bool = False  # many keys per KMS request
    native_rewrap: bool = False  # rewrap inside the KMS: the plaintext never reaches this process
    kek_versions: bool = False  # rotate_kek / kek_versions / retire_kek_versions work
    routing: bool = False  # one adapter per provider behind `route`
    tenant_keys: bool = False  # tenant_key creates (or finds) a KMS key of a tenant's own


_T = TypeVar("_T")


class Kms(abc.ABC):
    """The KMS port. Subclasses write the abstract calls and declare `capabilities`; every other
    method has a default here. Messages of the errors raised never carry key material."""

    default_key_id: str
    concurrency: int = 32  # single calls in flight when a default batch method gathers them
    _calls: int = 0  # the adapter's count of requests made, read by the default `calls`

    @property
    @abc.abstractmethod
    def capabilities(self) -> KmsCapabilities: ...

    @property
    def calls(self) -> int:
        """Requests made to the KMS so far (attempts included where the adapter retries itself). This
        default reads `_calls`, which an adapter adds one to per request; a wrapper, or an adapter whose
        client keeps the count, overrides it."""
        return self._calls

    @property
    def provider(self) -> str:
        return self.capabilities.provider

    # --- what every adapter writes ---------------------------------------------------

    @abc.abstractmethod
    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        """A given 32-byte data key wrapped under `kms_key_id` (None = the default key), bound to `context`."""

    @abc.abstractmethod
    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        """The data key `wrapped` holds; KmsRefused under any other key or context."""

    @abc.abstractmethod
    async def describe_key(self, kms_key_id: str) -> str:
        """The key's canonical identity, the same however it is named (AWS: the key ARN, resolving a key id,
        an ARN or an alias); KmsRefused when there is no such key. BYOK ownership compares these."""

    @abc.abstractmethod
    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None: ...

    async def tenant_key(self, tenant_id: str) -> str:
        """The id of the KMS key of `tenant_id`'s own, created (tagged with the tenant id) when it does not
        exist yet; found again by an alias derived from the tenant id, so a tenant never gets two.
        Refused unless `capabilities.tenant_keys`."""
        raise KmsRefused(f"the {self.capabilities.provider} KMS provider creates no KMS key per tenant")

    async def aclose(self) -> None:
        """Releases connections and tokens; the default has none."""
        return None

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        """A fresh data key and its wrapping under `kms_key_id` (None = the default key), bound to `context`.
        This default wraps 32 bytes from the OS (`os.urandom`), for a KMS without a data-key call."""
        return await self.wrap(os.urandom(DATA_KEY_BYTES), kms_key_id, context)

    # --- batches: single calls gathered unless `capabilities.batching` ------------------

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
        """One data key (or KmsError) per request, in order."""
        return await gather_each([self.generate_data_key(r.kms_key_id, r.context) for r in requests],
                                 self.concurrency)

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
        """One plaintext (or KmsError) per request, in order."""
        return await gather_each([self.decrypt(r.wrapped, r.kms_key_id, r.context) for r in requests],
                                 self.concurrency)

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
        """Each given key wrapped (a DataKey holding it, or the KmsError of that request), in order."""
        return await gather_each([self.wrap(r.plaintext, r.kms_key_id, r.context) for r in requests],
                                 self.concurrency)

    async def rewrap_many(self, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        """One rewrap (or KmsError) per request, in order."""
        return await gather_each([self.rewrap(r.wrapped, r.kms_key_id, r.context) for r in requests],
                                 self.concurrency)

    # --- rewrap: in this process unless `capabilities.native_rewrap` --------------------

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        """Re-wraps under the KMS key's latest version, same key, same context. This default unwraps
        and wraps again here, so the plaintext passes through this process's memory (as it does for any
        unwrap); an adapter whose KMS rewraps natively overrides it and declares `native_rewrap`."""
        plaintext = await self.decrypt(wrapped, kms_key_id, context)
        data_key = await self.wrap(plaintext, kms_key_id, context)
        return Rewrapped(data_key.wrapped, data_key.kek_version)

    # --- KEK versions: refused unless `capabilities.kek_versions` ------------------------

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        """A new version of the KMS key; new wraps use it, older blobs still unwrap. Returns it."""
        raise self._no_kek_versions()

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        raise self._no_kek_versions()

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        """Blobs wrapped by versions below `min_version` stop unwrapping (rewrap them first)."""
        raise self._no_kek_versions()

    def _no_kek_versions(self) -> KekVersionsUnsupported:
        return KekVersionsUnsupported(f"the {self.provider} KMS provider has no KEK versions keyledger manages")

    # --- routing: one adapter for every record unless `capabilities.routing` -------------

    def route(self, provider: str) -> Kms:
        """The adapter that unwraps records wrapped by `provider`: this one (it refuses what it cannot
        unwrap); a router picks by name and refuses a provider it was not configured with."""
        return self

    @property
    def providers(self) -> Mapping[str, Kms]:
        """Each configured provider's adapter, by name."""
        return {self.provider: self}

    def is_shared_key(self, provider: str | None, kms_key_id: str) -> bool:
        """True when `kms_key_id` is the default key of `provider` (None = aws) here: the key that wraps
        every tenant without its own (BYOK) key. False for a provider this process is not configured with."""
        try:
            return kms_key_id == self.route(provider or "aws").default_key_id
        except KmsError:
            return False


async def gather_each(calls: Sequence[Awaitable[_T]], limit: int | None = None) -> list[_T | KmsError]:
    """Runs single calls concurrently, at most `limit` at a time (None: all); a KmsError stays in its
    slot, anything else is raised."""
    if limit is not None and len(calls) > limit:
        semaphore = asyncio.Semaphore(limit)

        async def bounded(call: Awaitable[_T]) -> _T:
            async with semaphore:
                return await call

        calls = [bounded(call) for call in calls]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, KmsError):
            raise result
    return list(results)  # type: ignore[arg-type]


# --- the same calls as functions ---------------------------------------------------------


def provider_of(kms: Kms) -> str:
    """The `kms_provider` to record on keys.material for keys wrapped by `kms`."""
    return kms.capabilities.provider


def kms_for(kms: Kms, provider: str | None) -> Kms:
    """The adapter that unwraps records wrapped by `provider` (None = the default provider, aws)."""
    return kms.route(provider or "aws")


def is_shared_key(kms: Kms, provider: str | None, kms_key_id: str) -> bool:
    return kms.is_shared_key(provider, kms_key_id)


async def generate_data_keys(kms: Kms, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
    return await kms.generate_data_keys(requests)


async def decrypt_many(kms: Kms, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
    return await kms.decrypt_many(requests)


async def rewrap_many(kms: Kms, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
    return await kms.rewrap_many(requests)


async def wrap_many(kms: Kms, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
    return await kms.wrap_many(requests)


async def rewrap(kms: Kms, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
    return await kms.rewrap(wrapped, kms_key_id, context)
