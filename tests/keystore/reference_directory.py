"""The key table as it was before issue 15 (one pydantic model per record): the oracle the compact
table is held to (test_directory_reference.py). Copied from workers/keystore/directory.py at the
commit before the change, with one deliberate fix, marked below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.core.material import latest_accepted, material_fingerprint


class KeyState(StrEnum):
    PENDING = "pending"  # material written, not yet announced on keys.events
    ACTIVE = "active"
    ROTATED = "rotated"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


@dataclass(slots=True)
class KeyEntry:
    key_id: str
    tenant_id: str
    key_type: KeyType
    version: int
    state: KeyState
    material: KeyMaterial | None = None
    """The record in use: the newest one, until the ledger settled on one (`pinned`)."""
    public_key: str | None = None
    # the recent material records of this id, by fingerprint, least recently seen first: two writers
    # racing on one version both publish, every rewrap publishes one, and `settle` picks the one the
    # ledger accepted last, whatever compaction kept
    candidates: dict[int, KeyMaterial] = field(default_factory=dict)
    pinned: bool = False
    newest: KeyMaterial | None = None
    """The last record read, accepted or not."""

    @property
    def fingerprint(self) -> int | None:
        return material_fingerprint(self.material) if self.material else None


Evict = Callable[[str], None]
MAX_CANDIDATES = 8  # a version is raced by a few writers at most; older rewraps fall off first


class KeyDirectory:
    def __init__(self) -> None:
        self._keys: dict[str, KeyEntry] = {}
        self._versions: dict[tuple[str, KeyType], dict[int, KeyEntry]] = {}
        self._destroyed_tenants: set[str] = set()
        self._listeners: list[Evict] = []
        # the active version per (tenant, type), kept current on every state change: the hot path reads it
        self._active: dict[tuple[str, KeyType], KeyEntry] = {}

    def on_evict(self, listener: Evict) -> None:
        self._listeners.append(listener)

    # --- writes ------------------------------------------------------------

    def apply_material(self, material: KeyMaterial) -> None:
        entry = self._keys.get(material.key_id)
        if entry is None:
            entry = self._add(material.key_id, material.tenant_id, material.key_type, material.version, KeyState.PENDING)
        elif entry.state is KeyState.DESTROYED:
            return  # a destroyed key never comes back, whatever arrives late
        fingerprint = material_fingerprint(material)
        entry.candidates.pop(fingerprint, None)  # seen again: now the most recent
        entry.candidates[fingerprint] = material
        _forget_oldest(entry)
        entry.newest = material
        if not entry.pinned:
            entry.material = material
            entry.public_key = material.public_key or entry.public_key

    def pin(self, key_id: str, fingerprint: int) -> KeyMaterial | None:
        """Settle on the material the ledger account pins; None when that record has not arrived."""
        return self.settle(key_id, [fingerprint])

    def settle(self, key_id: str, chain: Sequence[int]) -> KeyMaterial | None:
        """Settle on the candidate accepted last in `chain` (the account's pin, then its rewraps'
        fingerprints, in ledger order); None when no accepted record has arrived."""
        entry = self._keys.get(key_id)
        if entry is None or entry.state is KeyState.DESTROYED:
            return None
        chosen = latest_accepted(chain, entry.candidates.values())
        if chosen is not None:
            entry.material, entry.pinned = chosen, True
            entry.public_key = chosen.public_key or entry.public_key
        return chosen

    def apply_tombstone(self, key_id: str) -> None:
        entry = self._keys.get(key_id)
        if entry is not None:
            entry.material = entry.newest = None
            entry.candidates.clear()
            self._set_state(entry, KeyState.DESTROYED)

    def apply_event(self, event: KeyEvent) -> None:
        entry = self._keys.get(event.key_id) or self._add(
            event.key_id, event.tenant_id, event.key_type, event.version, KeyState.PENDING
        )
        if event.public_key:
            entry.public_key = event.public_key
        if event.type in (KeyEventType.GENERATED, KeyEventType.ROTATED):
            if entry.state is KeyState.PENDING:
                self._set_state(entry, KeyState.ACTIVE)
            previous = self._keys.get(event.previous_key_id or "")
            if previous is not None and previous.state is KeyState.ACTIVE:
                self._set_state(previous, KeyState.ROTATED)
        elif event.type is KeyEventType.REVOKED:
            if entry.state is not KeyState.DESTROYED:
                self._set_state(entry, KeyState.REVOKED)
        elif event.type is KeyEventType.DESTROYED:
            entry.material = entry.newest = None
            entry.candidates.clear()
            self._set_state(entry, KeyState.DESTROYED)
            if all(k.state is KeyState.DESTROYED for k in self.tenant_keys(entry.tenant_id)):
                self._destroyed_tenants.add(entry.tenant_id)

    # --- reads -------------------------------------------------------------

    def get(self, key_id: str) -> KeyEntry | None:
        return self._keys.get(key_id)

    def versions(self, tenant_id: str, key_type: KeyType) -> list[KeyEntry]:
        return sorted(self._versions.get((tenant_id, key_type), {}).values(), key=lambda e: e.version)

    def active(self, tenant_id: str, key_type: KeyType) -> KeyEntry | None:
        return self._active.get((tenant_id, key_type))

    def _refresh_active(self, tenant_id: str, key_type: KeyType) -> None:
        for entry in reversed(self.versions(tenant_id, key_type)):
            if entry.state is KeyState.ACTIVE:
                self._active[(tenant_id, key_type)] = entry
                return
        self._active.pop((tenant_id, key_type), None)

    def tenant_keys(self, tenant_id: str) -> list[KeyEntry]:
        return [e for t in KeyType for e in self.versions(tenant_id, t)]

    def is_known_tenant(self, tenant_id: str) -> bool:
        return any((tenant_id, t) in self._versions for t in KeyType)

    def is_destroyed_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self._destroyed_tenants

    def entries(self) -> list[KeyEntry]:
        """Every key version known, in no particular order."""
        return list(self._keys.values())

    def tenants(self) -> set[str]:
        return {tenant for tenant, _ in self._versions}

    def active_keys(self, key_type: KeyType) -> list[KeyEntry]:
        """Every tenant's active key of `key_type`."""
        return [entry for (_, kind), entry in self._active.items() if kind == key_type]

    def census(self) -> dict[tuple[KeyType, KeyState], int]:
        """How many keys are in each (type, state); every pair is present, zero included."""
        counts = {(kind, state): 0 for kind in KeyType for state in KeyState}
        for entry in self._keys.values():
            counts[(entry.key_type, entry.state)] += 1
        return counts

    def __len__(self) -> int:
        return len(self._keys)

    # --- internals ---------------------------------------------------------

    def _add(self, key_id: str, tenant_id: str, key_type: KeyType, version: int, state: KeyState) -> KeyEntry:
        entry = KeyEntry(key_id, tenant_id, KeyType(key_type), version, state)
        self._keys[key_id] = entry
        self._versions.setdefault((tenant_id, entry.key_type), {})[version] = entry
        return entry

    def _set_state(self, entry: KeyEntry, state: KeyState) -> None:
        if entry.state is state:
            return
        entry.state = state
        self._refresh_active(entry.tenant_id, entry.key_type)
        if state in (KeyState.ROTATED, KeyState.REVOKED, KeyState.DESTROYED):
            for listener in self._listeners:
                listener(entry.key_id)


def _forget_oldest(entry: KeyEntry) -> None:
    """Bound the candidates, never dropping the record in use."""
    # the fix: the record in use is recognised by its fingerprint, not by object identity (a pinned
    # record seen again as another object with the same fingerprint could be dropped before)
    in_use = material_fingerprint(entry.material) if entry.material else None
    for fingerprint in list(entry.candidates):
        if len(entry.candidates) <= MAX_CANDIDATES:
            return
        if fingerprint != in_use:
            del entry.candidates[fingerprint]
