"""Several KMS providers in one process: the hybrid period of a provider migration.

`KmsRouter` is a `Kms` made of one adapter per configured provider. New keys go
to the primary provider (KEYLEDGER_KMS_PROVIDER); a wrapped key is unwrapped
by the provider its keys.material record names (`kms_provider`, absent = aws),
which callers pick with `route(provider)` (`workers.kms.kms_for`). A record
naming a provider this process was not configured with is refused, saying
which: the old provider may only be removed once no live record names it.

Every port method is written here, none inherited: new keys, wraps and the
KEK-version calls go to the primary; unwraps and rewraps of a blob whose
provider the caller does not say go to the provider its form names (vault and
local blobs have a fixed prefix; anything else is AWS's). `capabilities` are
the primary's, with `routing` on: a record's own adapter (`route`) declares its.

Deletion of a tenant's own KMS key is refused while several providers are
configured (a key id does not say which provider holds it, and a wrong guess
could schedule the deletion of an unrelated key); the shared default key of
every provider is always refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

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

_BLOB_PREFIXES = (("vault", b"vault:v"), ("local", b"KLK1"))
_R = TypeVar("_R")


class KmsRouter(Kms):
    def __init__(self, primary: Kms, others: Sequence[Kms] = ()) -> None:
        self._by_provider: dict[str, Kms] = {}
        for adapter in [primary, *others]:
            name = adapter.capabilities.provider
            if name in self._by_provider:
                raise ValueError(f"KMS provider {name} configured twice")
            self._by_provider[name] = adapter
        self.primary = primary
        self.default_key_id = primary.default_key_id

    @property
    def capabilities(self) -> KmsCapabilities:
        return dataclasses.replace(self.primary.capabilities, routing=True)

    @property
    def calls(self) -> int:
        return sum(adapter.calls for adapter in self._by_provider.values())

    # --- routing --------------------------------------------------------------------------

    def route(self, provider: str) -> Kms:
        adapter = self._by_provider.get(provider)
        if adapter is None:
            raise KmsRefused(f"keys.material names KMS provider {provider!r}, which this process is not configured "
                             f"with (configured: {', '.join(self._by_provider)}; see KEYLEDGER_KMS_PROVIDERS)")
        return adapter

    @property
    def providers(self) -> Mapping[str, Kms]:
        return dict(self._by_provider)

    def is_shared_key(self, provider: str | None, kms_key_id: str) -> bool:
        adapter = self._by_provider.get(provider or "aws")
        return adapter is not None and kms_key_id == adapter.default_key_id

    def is_default_key(self, kms_key_id: str) -> bool:
        return any(kms_key_id == adapter.default_key_id for adapter in self._by_provider.values())

    # --- new keys, wraps and KEK versions: the primary provider ---------------------------

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        return await self.primary.generate_data_key(kms_key_id, context)

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
        return await self.primary.generate_data_keys(requests)

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        return await self.primary.wrap(plaintext, kms_key_id, context)

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
        return await self.primary.wrap_many(requests)

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        return await self.primary.rotate_kek(kms_key_id)

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        return await self.primary.kek_versions(kms_key_id)

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        await self.primary.retire_kek_versions(min_version, kms_key_id)

    async def describe_key(self, kms_key_id: str) -> str:
        """As the primary provider identifies the key (BYOK keys are bound where new keys go); a key of
        another provider is usually refused there, so it never compares equal to one of the primary's."""
        return await self.primary.describe_key(kms_key_id)

    # --- wrapped blobs: the provider their form names -------------------------------------

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        """For callers that do not know the record's provider; callers that know use `route`."""
        return await self.route(_provider_of_blob(wrapped)).decrypt(wrapped, kms_key_id, context)

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
        return await self._per_provider(requests, lambda adapter, part: adapter.decrypt_many(part))

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        return await self.route(_provider_of_blob(wrapped)).rewrap(wrapped, kms_key_id, context)

    async def rewrap_many(self, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        return await self._per_provider(requests, lambda adapter, part: adapter.rewrap_many(part))

    async def _per_provider(self, requests: Sequence[UnwrapRequest],
                            call: Callable[[Kms, list[UnwrapRequest]], Awaitable[list[_R | KmsError]]],
                            ) -> list[_R | KmsError]:
        """`call` once per provider with its requests; results back in request order."""
        results: list[_R | KmsError | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(_provider_of_blob(request.wrapped), []).append(i)
        for provider, slots in groups.items():
            try:
                adapter = self.route(provider)
            except KmsError as exc:
                for i in slots:
                    results[i] = exc
                continue
            for i, result in zip(slots, await call(adapter, [requests[i] for i in slots]), strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    # --- lifecycle ----------------------------------------------------------------------------

    async def tenant_key(self, tenant_id: str) -> str:
        return await self.primary.tenant_key(tenant_id)  # new keys go to the primary provider

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        if self.is_default_key(kms_key_id):
            raise KmsRefused(f"{kms_key_id} is a provider's shared default key: keyledger never deletes it")
        if len(self._by_provider) > 1:
            raise KmsRefused(f"several KMS providers are configured ({', '.join(self._by_provider)}): "
                             f"schedule the deletion of {kms_key_id} by hand with the provider that holds it")
        await self.primary.schedule_key_deletion(kms_key_id, pending_days)

    async def aclose(self) -> None:
        for adapter in self._by_provider.values():
            try:
                await adapter.aclose()
            except Exception:  # close the others whatever one of them says
                pass


def _provider_of_blob(wrapped: bytes) -> str:
    for provider, prefix in _BLOB_PREFIXES:
        if wrapped.startswith(prefix):
            return provider
    return "aws"
