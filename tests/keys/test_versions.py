"""keys/versions.py through the MaterialStore port: a new version's material is durable before its ledger
account pins it, a replay reuses it, and a version the ledger holds without that material is refused."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.messages import KeyMaterial, KeyType
from workers.core import ids
from workers.keys.cache import SingleFlightCache
from workers.keys.material import MemoryMaterialStore
from workers.keys.service import KeyService
from workers.keys.versions import VersionMaker, VersionPlan
from workers.keystore.directory import KeyDirectory
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.source import Source

SOURCE = Source("tenants.created", 0, 3)


class CheckedStore(MemoryMaterialStore):
    """Remembers, for each write, which of the written keys the ledger already had an account for."""

    def __init__(self, ledger: MemoryLedger) -> None:
        super().__init__()
        self._ledger = ledger
        self.accounts_at_write: list[int] = []

    async def write(self, materials: Iterable[KeyMaterial]) -> None:
        materials = list(materials)
        found = await self._ledger.lookup_accounts([ids.from_hex(m.key_id) for m in materials])
        self.accounts_at_write.append(len(found))
        await super().write(materials)


def stack() -> tuple[KeyService, MemoryLedger, CheckedStore]:
    ledger = MemoryLedger()
    keys = KeyService(KeyDirectory(), LocalKms(), ledger, SingleFlightCache(ttl=60, max_entries=10))
    return keys, ledger, CheckedStore(ledger)


async def test_material_is_durable_before_the_account_that_pins_it():
    keys, ledger, store = stack()
    plans = [VersionPlan(SOURCE, "acme", key_type, 1, None) for key_type in KeyType]
    done, refused = await VersionMaker(keys, ledger, store).make_durable(plans)
    assert refused == [] and [p.key_id for p in done] == [p.key_id for p in plans]
    assert store.accounts_at_write == [0]  # one write of both materials, before any account
    latest = store.latest()
    for plan in plans:
        [account] = await ledger.lookup_accounts([ids.from_hex(plan.key_id)])
        material = latest[plan.key_id]
        assert material is not None
        entry = keys.directory.get(plan.key_id)
        assert entry is not None and account.user_data_64 == entry.fingerprint


async def test_a_replay_mints_nothing_again():
    keys, ledger, store = stack()
    maker = VersionMaker(keys, ledger, store)
    await maker.make_durable([VersionPlan(SOURCE, "acme", KeyType.SIGNING, 1, None)])
    written = list(store.log)
    done, refused = await maker.make_durable([VersionPlan(SOURCE, "acme", KeyType.SIGNING, 1, None)])
    assert len(done) == 1 and refused == []
    assert store.log == written  # its material is known: nothing minted, nothing written again


async def test_an_account_without_its_material_is_refused_not_rebuilt():
    keys, ledger, store = stack()
    await VersionMaker(keys, ledger, store).make_durable([VersionPlan(SOURCE, "acme", KeyType.SIGNING, 1, None)])
    stranger = KeyService(KeyDirectory(), LocalKms(), ledger, SingleFlightCache(ttl=60, max_entries=10))
    fresh = MemoryMaterialStore()
    done, refused = await VersionMaker(stranger, ledger, fresh).make_durable(
        [VersionPlan(SOURCE, "acme", KeyType.SIGNING, 1, None)])
    assert done == [] and [error.code.value for _, error in refused] == ["material_mismatch"]
    assert fresh.log == []


async def test_erase_writes_tombstones_in_order():
    store = MemoryMaterialStore()
    await store.erase(["b", "a"])
    assert store.log == [("b", None), ("a", None)] and store.latest() == {"b": None, "a": None}
