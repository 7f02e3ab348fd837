"""Key retrieval and minting: the cache first, then keys.material + KMS Decrypt, checked against the ledger.

Isolation: every lookup names the tenant, and a key id of another tenant is
answered exactly like an unknown one, so a request can neither use nor probe
another tenant's keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import ErrorCode
from schemas.messages import KeyMaterial, KeyType
from workers.core import ids, signing
from workers.core.b64 import b64decode, b64encode
from workers.core.material import material_fingerprint
from workers.errors import KeyledgerError, KeyRefused, Unavailable
from workers.keys.cache import SingleFlightCache
from workers.keys.patience import TenantPatience
from workers.keys.pins import accepted_material
from workers.keystore.directory import KeyDirectory, KeyEntry, KeyState
from workers.keystore.shards import KeyShards
from workers.kms import Kms, KmsRefused, encryption_context, kms_for, provider_of
from workers.ledger import Ledger
from workers.source import Source

SecretKey = Ed25519PrivateKey | AESGCM


class TenantKeysLoading(Unavailable):
    """A sharded key table does not hold the tenant's partition yet: the record waits while it loads."""

    setting = "KEYLEDGER_KEY_TABLE_SHARDED and that input producers partition by murmur2 of the tenant id"


@dataclass(frozen=True, slots=True)
class MintedKey:
    material: KeyMaterial
    fingerprint: int


class KeyService:
    def __init__(
        self,
        directory: KeyDirectory,
        kms: Kms,
        ledger: Ledger,
        secrets: SingleFlightCache[SecretKey],
        patience: TenantPatience | None = None,
        shards: KeyShards | None = None,
    ) -> None:
        """`shards`: the table holds only some tenants' keys (KEYLEDGER_KEY_TABLE_SHARDED); a lookup of a
        tenant it does not hold raises `TenantKeysLoading` (the record waits) and has them loaded."""
        self.directory = directory
        self.kms = kms
        self.ledger = ledger
        self.secrets = secrets
        self.patience = patience or TenantPatience(0)
        self.shards = shards
        self._canonical: dict[str, str] = {}  # KMS key as named -> as the KMS identifies it (describe_key)
        directory.on_evict(self.evict)

    # --- BYOK ownership ------------------------------------------------------

    async def canonical_kms_key(self, kms_key_id: str) -> str:
        """The KMS's own identity of a key however it is named (id, ARN, alias); remembered per name."""
        known = self._canonical.get(kms_key_id)
        if known is None:
            try:
                known = await self.kms.describe_key(kms_key_id)
            except KmsRefused as exc:
                raise KeyRefused(f"KMS does not describe key {kms_key_id[:200]!r}: {exc}", ErrorCode.KMS_REFUSED) from None
            if len(self._canonical) > 100_000:
                self._canonical.clear()
            self._canonical[kms_key_id] = known
        return known

    async def is_default_kms_key(self, kms_key_id: str) -> bool:
        return await self.canonical_kms_key(kms_key_id) == await self.canonical_kms_key(self.kms.default_key_id)

    async def tenants_bound_to(self, canonical: str) -> set[str]:
        """The live tenants with a key version wrapped under the KMS key `canonical` (from keys.material)."""
        owners = set()
        for entry in self.directory.entries():
            kms_key_id = entry.kms_key_id  # read off the stored record: no parse per key of the table
            if entry.state is KeyState.DESTROYED or kms_key_id is None or entry.tenant_id in owners:
                continue
            try:
                same = await self.canonical_kms_key(kms_key_id) == canonical
            except KeyRefused:
                continue  # a key the KMS does not know is not the key it just described
            if same:
                owners.add(entry.tenant_id)
        return owners

    def unknown_tenant(self, tenant_id: str) -> bool:
        """Neither a tenant with keys nor a destroyed one: the key table has not heard of it (yet)."""
        if self.directory.active(tenant_id, KeyType.ENCRYPTION) or self.directory.active(tenant_id, KeyType.SIGNING):
            return False  # the common case, asked once per PII request: two dict lookups
        self._held(tenant_id)
        if self.directory.is_destroyed_tenant(tenant_id):
            return False
        # material read but no key announced yet (keygen is between the two): not known yet either
        return not any(e.state is not KeyState.PENDING for e in self.directory.tenant_keys(tenant_id))

    def waits_for_tenant(self, error: KeyledgerError, source: Source) -> bool:
        """Whether a request refused with `error` should rather wait: its tenant is not in the key table
        yet and its wait (keys/patience.py) is not over."""
        return error.code is ErrorCode.UNKNOWN_TENANT and self.patience.waits(source)

    # --- lookups -----------------------------------------------------------

    def active(self, tenant_id: str, key_type: KeyType) -> KeyEntry:
        entry = self.directory.active(tenant_id, key_type)
        if entry is not None:
            return entry
        self._held(tenant_id)
        if self.directory.is_destroyed_tenant(tenant_id):
            raise KeyRefused(f"tenant {tenant_id} was destroyed", ErrorCode.TENANT_DESTROYED)
        if self.unknown_tenant(tenant_id):
            raise KeyRefused(f"unknown tenant {tenant_id}", ErrorCode.UNKNOWN_TENANT)
        raise KeyRefused(f"tenant {tenant_id} has no active {key_type.value} key", ErrorCode.KEY_NOT_FOUND)

    def tenant_of(self, key_id: str) -> str | None:
        """The tenant of a key the table knows (a destroyed one too), else None."""
        entry = self.directory.get(key_id)
        return None if entry is None else entry.tenant_id

    def owned(self, tenant_id: str, key_id: str) -> KeyEntry:
        """The tenant's key `key_id`; another tenant's key is reported as not found."""
        entry = self.directory.get(key_id)
        if entry is None or entry.tenant_id != tenant_id:
            self._held(tenant_id)
            raise KeyRefused(f"no key {key_id} for tenant {tenant_id}", ErrorCode.KEY_NOT_FOUND)
        if entry.state is KeyState.DESTROYED:
            raise KeyRefused(f"key {key_id} was destroyed", ErrorCode.KEY_DESTROYED)
        return entry

    def _held(self, tenant_id: str) -> None:
        """Before a lookup's miss is believed: the table holds every key of the tenant (or TenantKeysLoading)."""
        if self.shards is not None and not self.shards.holds(tenant_id):
            self.shards.want(tenant_id)
            raise TenantKeysLoading(f"keys of tenant {tenant_id} are being loaded (key partition "
                                    f"{self.shards.partition(tenant_id)} is not held by this process)")

    # --- secrets -----------------------------------------------------------

    def cached_secret(self, key_id: str) -> SecretKey | None:
        return self.secrets.peek(key_id)

    async def unwrap_missing(self, entries: Iterable[KeyEntry]) -> dict[str, KeyledgerError | Unavailable]:
        """Unwrap, concurrently, every entry not in the cache (one KMS call per key, however many ask);
        returns the expected failures by key id. Anything unexpected is raised."""
        missing = {e.key_id: e for e in entries if self.cached_secret(e.key_id) is None}
        results = await asyncio.gather(*(self.secret(e) for e in missing.values()), return_exceptions=True)
        failures: dict[str, KeyledgerError | Unavailable] = {}
        for key_id, result in zip(missing, results, strict=True):
            if isinstance(result, KeyledgerError | Unavailable):
                failures[key_id] = result
            elif isinstance(result, BaseException):
                raise result
        return failures

    async def secret(self, entry: KeyEntry) -> SecretKey:
        return await self.secrets.get(entry.key_id, lambda: self._unwrap(entry))

    async def _unwrap(self, entry: KeyEntry) -> SecretKey:
        material = entry.material
        if material is None or entry.state is KeyState.DESTROYED:
            raise KeyRefused(f"key {entry.key_id} has no material", ErrorCode.KEY_DESTROYED)
        material = await self._check_pinned(entry, material)
        context = encryption_context(entry.tenant_id, entry.key_id, entry.key_type)
        try:
            kms = kms_for(self.kms, material.kms_provider)
            plaintext = await kms.decrypt(b64decode(material.wrapped_key), material.kms_key_id, context)
        except KmsRefused as exc:
            raise KeyRefused(f"KMS refused to unwrap {entry.key_id}: {exc}", ErrorCode.KMS_REFUSED) from None
        return secret_key_of(entry.key_type, plaintext)

    async def _check_pinned(self, entry: KeyEntry, material: KeyMaterial) -> KeyMaterial:
        """The material the ledger accepted (the account's pin or a rewrap's; keys/pins.py), or a typed refusal."""
        return await accepted_material(self.directory, self.ledger, entry)

    def evict(self, key_id: str) -> None:
        self.secrets.evict(key_id)

    # --- minting -----------------------------------------------------------

    async def mint(self, tenant_id: str, key_type: KeyType, version: int, kms_key_id: str | None,
                   kms_provider: str | None = None) -> MintedKey:
        """New key material from KMS GenerateDataKey (under `kms_provider`, None = where new keys go);
        the plaintext only reaches the cache."""
        key_id = ids.key_id_for(tenant_id, key_type, version)
        context = encryption_context(tenant_id, key_id, key_type)
        try:
            kms = kms_for(self.kms, kms_provider) if kms_provider else self.kms
            data_key = await kms.generate_data_key(kms_key_id, context)
        except KmsRefused as exc:
            raise KeyRefused(f"KMS refused to generate a key: {exc}", ErrorCode.KMS_REFUSED) from None
        secret = secret_key_of(key_type, data_key.plaintext)
        public = (
            b64encode(signing.public_key_bytes(secret)) if isinstance(secret, Ed25519PrivateKey) else None
        )
        material = KeyMaterial(
            key_id=key_id,
            tenant_id=tenant_id,
            key_type=key_type,
            version=version,
            kms_key_id=data_key.kms_key_id,
            wrapped_key=b64encode(data_key.wrapped),
            public_key=public,
            created_at=datetime.now(UTC),
            kms_provider=provider_of(kms),
            kek_version=data_key.kek_version,
        )
        # warm the cache: the first sign/encrypt under a new key costs no KMS call
        self.secrets.put(key_id, secret)
        return MintedKey(material, material_fingerprint(material))


def secret_key_of(key_type: KeyType, plaintext: bytes) -> SecretKey:
    if key_type is KeyType.SIGNING:
        return signing.private_key_from_seed(plaintext)
    return AESGCM(plaintext)
