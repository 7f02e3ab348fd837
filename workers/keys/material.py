"""Where wrapped key material is made durable: the port, and an adapter in memory.

`write` returns once every record is durable (the Kafka adapter, kafka/material.py, awaits acks=all):
callers write material before the ledger account or transfer that pins its fingerprint, so a key the
ledger knows always has its material somewhere. `erase` writes tombstones (a destroyed key's material,
compacted away), also durable once it returns. Both are called with no records too (nothing to do).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from schemas.messages import KeyMaterial


class MaterialStore(Protocol):
    async def write(self, materials: Iterable[KeyMaterial]) -> None: ...

    async def erase(self, key_ids: Iterable[str]) -> None: ...


class MemoryMaterialStore:
    """Every write and erase in order, as `keys.material` would hold them before compaction."""

    def __init__(self) -> None:
        self.log: list[tuple[str, KeyMaterial | None]] = []

    async def write(self, materials: Iterable[KeyMaterial]) -> None:
        self.log += [(m.key_id, m) for m in materials]

    async def erase(self, key_ids: Iterable[str]) -> None:
        self.log += [(key_id, None) for key_id in key_ids]

    def latest(self) -> dict[str, KeyMaterial | None]:
        """Each key's last record: what compaction keeps."""
        return dict(self.log)
