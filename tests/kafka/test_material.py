"""`keys.material` records and tombstones are placed by their tenant id (the partition a sharded key table
reads for that tenant), keyed by key id (compaction)."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.messages import KeyType
from tests.keystore.test_directory import material
from workers.kafka.material import KafkaMaterialStore, material_record, tombstones
from workers.kafka.publisher import Outgoing


class Captured:
    published = 0

    def __init__(self) -> None:
        self.records: list[Outgoing] = []

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, records: Iterable[Outgoing]) -> None:
        self.records += list(records)


def test_a_material_record_is_keyed_by_key_id_and_placed_by_tenant():
    m = material("acme", KeyType.SIGNING, 1)
    record = material_record(m)
    assert (record.topic, record.key, record.placed_by) == ("keys.material", m.key_id.encode(), b"acme")


def test_a_tombstone_follows_its_tenant_and_the_key_ids_partition_of_records_placed_before():
    assert [(t.placed_by, t.value) for t in tombstones("k1", "acme")] == [(None, None), (b"acme", None)]
    assert [(t.placed_by, t.value) for t in tombstones("k1", None)] == [(None, None)]


async def test_the_store_writes_and_erases_on_the_tenants_partition():
    published = Captured()
    m = material("acme", KeyType.ENCRYPTION, 1)
    store = KafkaMaterialStore(published, {m.key_id: "acme"}.get)
    await store.write([m])
    await store.erase([m.key_id, "unknown"])
    assert [(r.key, r.value is None, r.placed_by) for r in published.records] == [
        (m.key_id.encode(), False, b"acme"), (m.key_id.encode(), True, None), (m.key_id.encode(), True, b"acme"),
        (b"unknown", True, None)]
