"""`keys.material` as a material store (keys/material.py: the port): records keyed by key id, acks=all.

Each record is placed on its tenant's partition (murmur2 of the tenant id, `Outgoing.placed_by`), not its
key id's: a tenant's material shares the partition number of its `keys.events` and input records, which a
sharded key table (KEYLEDGER_KEY_TABLE_SHARDED) reads alone. A tombstone goes where its record went, or
compaction would never remove that record: to the tenant's partition (the key table knows the tenant), and
also to the key id's own partition, where versions before tenant placement wrote it (a tombstone where no
record is costs one small record and removes nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from schemas.messages import KeyMaterial
from schemas.topics import Topic
from workers.kafka.publisher import Outgoing, Publisher

TenantOf = Callable[[str], str | None]
"""The tenant of a key id, when the key table knows it."""


def material_record(material: KeyMaterial) -> Outgoing:
    """A key's `keys.material` record, on its tenant's partition."""
    return Outgoing.of(Topic.KEYS_MATERIAL, material.key_id, material)._replace(placed_by=material.tenant_id.encode())


def tombstones(key_id: str, tenant_id: str | None) -> list[Outgoing]:
    """The tombstones of `key_id`: on its key id's partition (where a record written before tenant placement
    lies, and the only one for a key of no known tenant) and on its tenant's."""
    record = Outgoing.of(Topic.KEYS_MATERIAL, key_id, None)
    return [record] if tenant_id is None else [record, record._replace(placed_by=tenant_id.encode())]


class KafkaMaterialStore:
    def __init__(self, publisher: Publisher, tenant_of: TenantOf = lambda _key_id: None) -> None:
        self._publisher = publisher
        self._tenant_of = tenant_of

    async def write(self, materials: Iterable[KeyMaterial]) -> None:
        await self._publisher.publish(material_record(m) for m in materials)

    async def erase(self, key_ids: Iterable[str]) -> None:
        await self._publisher.publish(
            record for key_id in key_ids for record in tombstones(key_id, self._tenant_of(key_id)))
