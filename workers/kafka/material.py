"""`keys.material` as a material store (keys/material.py: the port): records keyed by key id, acks=all."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.messages import KeyMaterial
from schemas.topics import Topic
from workers.kafka.publisher import Outgoing, Publisher


class KafkaMaterialStore:
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def write(self, materials: Iterable[KeyMaterial]) -> None:
        await self._publisher.publish(Outgoing.of(Topic.KEYS_MATERIAL, m.key_id, m) for m in materials)

    async def erase(self, key_ids: Iterable[str]) -> None:
        await self._publisher.publish(Outgoing.of(Topic.KEYS_MATERIAL, key_id, None) for key_id in key_ids)
