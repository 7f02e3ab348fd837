"""Making a new key version durable, shared by key generation (v1) and rotation (v+1).

Order (a crash between any two steps loses nothing, a replay duplicates nothing):
  1. KMS GenerateDataKey for versions that have neither material nor account
     (material written by a crashed attempt is reused, never minted twice); a version KMS
     refuses to generate (KeyRefused, `kms_refused`) is refused alone, the others go on;
  2. write their `keys.material` (MaterialStore: durable once it returns): the wrapped key is safe;
  3. create the tenant and key accounts, each pinning its material's fingerprint.
Key ids are derived from (tenant, type, version), so a replay lands on the same
account (`exists`) and never makes a second key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ErrorCode
from schemas.messages import KeyEvent, KeyEventType, KeyType
from workers.core import ids
from workers.errors import KeyRefused, Unavailable
from workers.keys.material import MaterialStore
from workers.keys.service import KeyService, MintedKey
from workers.ledger import (
    Account,
    CreateAccountStatus,
    Ledger,
    account_ok,
)
from workers.ledger.records import WrapFacts, key_account, tenant_account
from workers.source import Source

log = logging.getLogger("keyledger.versions")


@dataclass(slots=True)
class VersionPlan:
    """A key version to make durable. Never changed once made: `key_id` is derived once (a rotation
    looks it up a dozen times, and each derivation is a hash)."""

    source: Source
    """The request that asks for the version (a refused plan refuses it)."""
    tenant_id: str
    key_type: KeyType
    version: int
    kms_key_id: str | None
    kms_provider: str | None = None  # None: where new keys go (KEYLEDGER_KMS_PROVIDER)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.key_id = ids.key_id_for(self.tenant_id, self.key_type, self.version)


class VersionMaker:
    def __init__(self, keys: KeyService, ledger: Ledger, materials: MaterialStore) -> None:
        self._keys = keys
        self._ledger = ledger
        self._materials = materials

    async def make_durable(self, plans: list[VersionPlan]) -> tuple[list[VersionPlan], list[tuple[VersionPlan, KeyRefused]]]:
        """Steps 1-3 for every plan; returns the plans now durable and those refused."""
        todo, refused = await self._recoverable(plans)
        todo, kms_refused = await self._ensure_material(todo)
        await self._register_accounts(todo)
        return todo, refused + kms_refused

    async def _recoverable(self, plans: list[VersionPlan]) -> tuple[list[VersionPlan], list[tuple[VersionPlan, KeyRefused]]]:
        """A version whose account exists without matching material cannot be rebuilt: refuse it."""
        if not plans:
            return [], []
        accounts = {a.id: a for a in await self._lookup([ids.from_hex(p.key_id) for p in plans])}
        todo, refused = [], []
        for plan in plans:
            account = accounts.get(ids.from_hex(plan.key_id))
            entry = self._keys.directory.get(plan.key_id)
            if account is not None and (entry is None or entry.fingerprint != account.user_data_64):
                log.error("key %s has a ledger account but no matching material", plan.key_id)
                refused.append((plan, KeyRefused(
                    f"key {plan.key_id} exists in the ledger without matching material", ErrorCode.MATERIAL_MISMATCH)))
            else:
                todo.append(plan)
        return todo, refused

    async def _ensure_material(self, plans: list[VersionPlan]
                               ) -> tuple[list[VersionPlan], list[tuple[VersionPlan, KeyRefused]]]:
        """Mint what has no material yet; returns the plans that have material and those KMS refused.
        What was minted is written even when another mint failed transiently (then this raises),
        so a retry does not mint it again."""
        directory = self._keys.directory
        fresh = [p for p in plans if (e := directory.get(p.key_id)) is None or e.material is None]
        results = await asyncio.gather(
            *(self._keys.mint(p.tenant_id, p.key_type, p.version, p.kms_key_id, p.kms_provider) for p in fresh), return_exceptions=True)
        minted: list[MintedKey] = []
        refused: list[tuple[VersionPlan, KeyRefused]] = []
        failure: BaseException | None = None
        for plan, result in zip(fresh, results, strict=True):
            if isinstance(result, KeyRefused):
                log.warning("KMS refused to generate key %s: %s", plan.key_id, result)
                refused.append((plan, result))
            elif isinstance(result, BaseException):
                failure = failure if isinstance(failure, Unavailable) else result  # an outage first: the batch waits
            else:
                minted.append(result)
        await self._materials.write(m.material for m in minted)
        for key in minted:
            directory.apply_material(key.material)
        if failure is not None:
            raise failure
        lost = {id(plan) for plan, _ in refused}
        return [p for p in plans if id(p) not in lost], refused

    async def _register_accounts(self, plans: list[VersionPlan]) -> None:
        if not plans:
            return
        tenants = {p.tenant_id: tenant_account(p.tenant_id) for p in plans}
        keys = []
        for p in plans:
            entry = self._keys.directory.get(p.key_id)
            assert entry is not None and entry.fingerprint is not None
            keys.append(key_account(p.tenant_id, p.key_id, p.key_type, p.version, entry.fingerprint))
        accounts = [*tenants.values(), *keys]
        results = await self._ledger.create_accounts(accounts)
        lost = []
        for account, result in zip(accounts, results, strict=True):
            if result.status is CreateAccountStatus.EXISTS_WITH_DIFFERENT_USER_DATA_64 and account.code == ids.KEY_ACCOUNT_CODE:
                lost.append(account.id)  # another writer pinned its material first: theirs wins
            elif not account_ok(result.status):
                raise RuntimeError(f"ledger refused account {account.id:032x}: {CreateAccountStatus(result.status).name}")
        if lost:
            await self._adopt_winners(lost)

    async def _adopt_winners(self, account_ids: list[int]) -> None:
        """Settle on the winning material and write it again, so compaction keeps it, not ours."""
        winners = []
        for account in await self._lookup(account_ids):
            material = self._keys.directory.pin(ids.to_hex(account.id), account.user_data_64)
            if material is None:
                raise Unavailable(f"material pinned by key {account.id:032x} not received yet")
            winners.append(material)
        await self._materials.write(winners)

    async def _lookup(self, account_ids: list[int]) -> list[Account]:
        return await self._ledger.lookup_accounts(account_ids)

    def wrap_of(self, plan: VersionPlan) -> WrapFacts:
        """Where the durable version of `plan` is wrapped (its generate's audit event records it)."""
        entry = self._keys.directory.get(plan.key_id)
        assert entry is not None and entry.material is not None
        return WrapFacts.of(entry.material)

    def announcement(self, plan: VersionPlan, kind: KeyEventType, previous_key_id: str | None = None,
                     **extra: Any) -> KeyEvent:
        entry = self._keys.directory.get(plan.key_id)
        assert entry is not None and entry.material is not None
        return KeyEvent(
            event_id=ids.event_id(kind, plan.key_id),
            type=kind,
            tenant_id=plan.tenant_id,
            key_id=plan.key_id,
            key_type=plan.key_type,
            version=plan.version,
            occurred_at=entry.material.created_at,
            public_key=entry.material.public_key,
            previous_key_id=previous_key_id,
            **extra,
        )
