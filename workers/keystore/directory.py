"""The process-local key table, built from `keys.material` and `keys.events` (pure, no I/O).

A key version becomes usable when its material is known *and* an event has
announced it; the highest announced version that is neither rotated, revoked
nor destroyed is the (tenant, type)'s active key. Listeners are told of every
key that leaves the active/rotated states so caches evict it everywhere.

A key may have several material records: racing writers of one version, and
one record per rewrap (same key, new wrapping). The entry keeps the recent
ones as candidates; which of them may be unwrapped is the ledger's decision
(core/material.py: the pin and the rewrap chain), applied with `settle`.

The table is sized for millions of keys: an entry holds its records as the
bytes read and parses one into a `KeyMaterial` only when asked (`material`,
`newest`: an unwrap on a cache miss, a rotation, a rewrap, status). Its one
candidate is its newest record, so an entry has a fingerprint dict only once
two records with different fingerprints arrived. A tenant's keys hang off
one small object per tenant (no dict per (tenant, type) with one version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum

from pydantic import ValidationError

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.core.material import latest_accepted_by, material_fingerprint


class KeyState(StrEnum):
    PENDING = "pending"  # material written, not yet announced on keys.events
    ACTIVE = "active"
    ROTATED = "rotated"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


Evict = Callable[[str], None]
MAX_CANDIDATES = 8  # a version is raced by a few writers at most; older rewraps fall off first
_KEY_TYPES = {kind.value: kind for kind in KeyType}  # a str or a KeyType to the KeyType (no enum call)


class KeyEntry:
    """One key version.

    Invariants: `_material` (the record in use: the newest one, until the ledger settled on one,
    `pinned`) and `_newest` (the last record read, accepted or not) are stored forms of records of
    this key; `_candidates` is None while the candidates are just `_newest` (or none, when it is None),
    else the recent records by fingerprint, least recently seen first. A destroyed entry holds none.
    """

    __slots__ = ("key_id", "tenant_id", "key_type", "version", "state", "public_key", "pinned",
                 "_material", "_newest", "_candidates")

    def __init__(self, key_id: str, tenant_id: str, key_type: KeyType, version: int, state: KeyState) -> None:
        self.key_id = key_id
        self.tenant_id = tenant_id
        self.key_type = key_type
        self.version = version
        self.state = state
        self.public_key: str | None = None
        self.pinned = False
        self._material: bytes | None = None
        self._newest: bytes | None = None
        self._candidates: dict[int, bytes] | None = None

    def __repr__(self) -> str:
        return (f"KeyEntry(key_id={self.key_id!r}, tenant_id={self.tenant_id!r}, key_type={self.key_type.value!r}, "
                f"version={self.version}, state={self.state.value!r}, pinned={self.pinned})")

    @property
    def material(self) -> KeyMaterial | None:
        """The record in use, parsed now (a new model on every read)."""
        return None if self._material is None else self._model(self._material)

    @property
    def newest(self) -> KeyMaterial | None:
        """The last record read, accepted or not, parsed now."""
        return None if self._newest is None else self._model(self._newest)

    @property
    def has_material(self) -> bool:
        """`material is not None`, without parsing it."""
        return self._material is not None

    @property
    def kms_key_id(self) -> str | None:
        """The KMS key of the record in use."""
        return None if self._material is None else self._model(self._material).kms_key_id

    @property
    def fingerprint(self) -> int | None:
        return None if self._material is None else self._fingerprint_of(self._material)

    @property
    def candidates(self) -> Mapping[int, KeyMaterial]:
        """The recent records by fingerprint, least recently seen first (a read-only view)."""
        return _Candidates(self)

    # --- internals (the directory's) -----------------------------------------

    @staticmethod
    def _model(stored: bytes) -> KeyMaterial:
        """The model of a record, from the bytes read."""
        return KeyMaterial.model_validate_json(stored)

    def _fingerprint_of(self, stored: bytes) -> int:
        return material_fingerprint(self._model(stored))

    def _stored_candidates(self) -> dict[int, bytes]:
        if self._candidates is not None:
            return self._candidates
        return {} if self._newest is None else {self._fingerprint_of(self._newest): self._newest}

    def _remember(self, stored: bytes) -> None:
        """`stored` becomes the newest record and the most recent candidate. Fingerprints are computed
        only when a record differs from the one candidate: equal bytes are an equal record."""
        if self._candidates is None and (self._newest is None or self._newest == stored):
            self._newest = stored
            return
        held = self._stored_candidates()
        fingerprint = self._fingerprint_of(stored)
        held.pop(fingerprint, None)  # seen again: now the most recent
        held[fingerprint] = stored
        self._forget_oldest(held)
        self._newest = stored
        self._candidates = held if len(held) > 1 else None  # one fingerprint: it is the newest record's

    def _forget_oldest(self, held: dict[int, bytes]) -> None:
        """Bound the candidates, never dropping the record in use."""
        if len(held) <= MAX_CANDIDATES:
            return
        in_use = None if self._material is None else self._fingerprint_of(self._material)
        for fingerprint in list(held):
            if len(held) <= MAX_CANDIDATES:
                return
            if fingerprint != in_use:
                del held[fingerprint]

    def _forget_material(self) -> None:
        self._material = self._newest = self._candidates = None


class _Candidates(Mapping[int, KeyMaterial]):
    """A view of an entry's candidates: its size costs nothing, a record is parsed when read."""

    __slots__ = ("_entry",)

    def __init__(self, entry: KeyEntry) -> None:
        self._entry = entry

    def __len__(self) -> int:
        entry = self._entry
        if entry._candidates is not None:
            return len(entry._candidates)
        return 0 if entry._newest is None else 1

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._entry._stored_candidates()))

    def __getitem__(self, fingerprint: int) -> KeyMaterial:
        return self._entry._model(self._entry._stored_candidates()[fingerprint])


# slot names by type, looked up in a dict: `.value` of an enum member is a Python-level property
_VERSIONS = {kind: kind.value for kind in KeyType}
_ACTIVE = {kind: f"active_{kind.value}" for kind in KeyType}


class _Tenant:
    """One tenant's key versions and active key, per type. A type with one version holds its entry
    itself, more versions a dict by version; `active_<type>` is kept current on every state change."""

    __slots__ = ("tenant_id", *_VERSIONS.values(), *_ACTIVE.values())

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        for name in self.__slots__[1:]:
            setattr(self, name, None)

    def versions(self, key_type: KeyType) -> list[KeyEntry]:
        held: KeyEntry | dict[int, KeyEntry] | None = getattr(self, _VERSIONS[key_type])
        if held is None:
            return []
        if isinstance(held, KeyEntry):
            return [held]
        return sorted(held.values(), key=lambda e: e.version)

    def add(self, entry: KeyEntry) -> None:
        """Index `entry` by its version (an entry of the same version is replaced, as a dict would)."""
        name = _VERSIONS[entry.key_type]
        held: KeyEntry | dict[int, KeyEntry] | None = getattr(self, name)
        if held is None or (isinstance(held, KeyEntry) and held.version == entry.version):
            setattr(self, name, entry)
        elif isinstance(held, KeyEntry):
            setattr(self, name, {held.version: held, entry.version: entry})
        else:
            held[entry.version] = entry

    def refresh_active(self, key_type: KeyType) -> None:
        active = next((e for e in reversed(self.versions(key_type)) if e.state is KeyState.ACTIVE), None)
        setattr(self, _ACTIVE[key_type], active)


class KeyDirectory:
    def __init__(self) -> None:
        self._keys: dict[str, KeyEntry] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._destroyed_tenants: set[str] = set()
        self._listeners: list[Evict] = []

    def on_evict(self, listener: Evict) -> None:
        self._listeners.append(listener)

    # --- writes ------------------------------------------------------------

    def apply_material(self, material: KeyMaterial) -> None:
        """A record this process wrote or built: held as its JSON (`to_json()`, what it publishes)."""
        self._apply_material(material.key_id, material.tenant_id, material.key_type, material.version,
                             material.public_key, material.to_json())

    def apply_material_record(self, value: bytes) -> bool:
        """A `keys.material` value as read; False (and nothing changes) when `KeyMaterial` refuses it."""
        try:
            material = KeyMaterial.model_validate_json(value)
        except ValidationError:
            return False
        self._apply_material(material.key_id, material.tenant_id, material.key_type, material.version,
                             material.public_key, value)
        return True

    def _apply_material(self, key_id: str, tenant_id: str, key_type: KeyType, version: int,
                        public_key: str | None, raw: bytes) -> None:
        entry = self._keys.get(key_id)
        if entry is None:
            entry = self._add(key_id, tenant_id, key_type, version, KeyState.PENDING)
        elif entry.state is KeyState.DESTROYED:
            return  # a destroyed key never comes back, whatever arrives late
        entry._remember(raw)
        if not entry.pinned:
            entry._material = raw
            entry.public_key = public_key or entry.public_key

    def pin(self, key_id: str, fingerprint: int) -> KeyMaterial | None:
        """Settle on the material the ledger account pins; None when that record has not arrived."""
        return self.settle(key_id, [fingerprint])

    def settle(self, key_id: str, chain: Sequence[int]) -> KeyMaterial | None:
        """Settle on the candidate accepted last in `chain` (the account's pin, then its rewraps'
        fingerprints, in ledger order); None when no accepted record has arrived."""
        entry = self._keys.get(key_id)
        if entry is None or entry.state is KeyState.DESTROYED:
            return None
        stored = latest_accepted_by(chain, entry._stored_candidates().items())
        if stored is None:
            return None
        chosen = entry._model(stored)
        entry._material, entry.pinned = stored, True
        entry.public_key = chosen.public_key or entry.public_key
        return chosen

    def apply_tombstone(self, key_id: str) -> None:
        entry = self._keys.get(key_id)
        if entry is not None:
            entry._forget_material()
            self._set_state(entry, KeyState.DESTROYED)

    def apply_event_record(self, value: bytes) -> bool:
        """A `keys.events` value as read; False (and nothing changes) when `KeyEvent` refuses it."""
        try:
            event = KeyEvent.model_validate_json(value)
        except ValidationError:
            return False
        self.apply_event(event)
        return True

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
            entry._forget_material()
            self._set_state(entry, KeyState.DESTROYED)
            if all(k.state is KeyState.DESTROYED for k in self.tenant_keys(entry.tenant_id)):
                self._destroyed_tenants.add(entry.tenant_id)

    def drop_tenants(self, dropped: Callable[[str], bool]) -> int:
        """Forget every key of each tenant `dropped` names (a sharded table giving up a partition): the
        listeners are told of each key, so no cache keeps a secret of a key the table no longer follows.
        Returns how many keys were forgotten; reading the tenants' records again brings them back."""
        gone = [tenant_id for tenant_id in self._tenants if dropped(tenant_id)]
        forgotten = 0
        for tenant_id in gone:
            tenant = self._tenants.pop(tenant_id)
            self._destroyed_tenants.discard(tenant_id)
            for key_type in KeyType:
                for entry in tenant.versions(key_type):
                    del self._keys[entry.key_id]
                    forgotten += 1
                    for listener in self._listeners:
                        listener(entry.key_id)
        return forgotten

    # --- reads -------------------------------------------------------------

    def get(self, key_id: str) -> KeyEntry | None:
        return self._keys.get(key_id)

    def versions(self, tenant_id: str, key_type: KeyType) -> list[KeyEntry]:
        tenant = self._tenants.get(tenant_id)
        return [] if tenant is None else tenant.versions(_KEY_TYPES[key_type])

    def active(self, tenant_id: str, key_type: KeyType) -> KeyEntry | None:
        tenant = self._tenants.get(tenant_id)
        return None if tenant is None else getattr(tenant, _ACTIVE[key_type])

    def tenant_keys(self, tenant_id: str) -> list[KeyEntry]:
        tenant = self._tenants.get(tenant_id)
        return [] if tenant is None else [e for t in KeyType for e in tenant.versions(t)]

    def is_known_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self._tenants

    def is_destroyed_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self._destroyed_tenants

    def entries(self) -> list[KeyEntry]:
        """Every key version known, in no particular order."""
        return list(self._keys.values())

    def tenants(self) -> set[str]:
        return set(self._tenants)

    def active_keys(self, key_type: KeyType) -> list[KeyEntry]:
        """Every tenant's active key of `key_type`."""
        name = _ACTIVE[key_type]
        return [entry for tenant in self._tenants.values() if (entry := getattr(tenant, name)) is not None]

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
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant(tenant_id)
        # the tenant's own id object: a million entries share a few hundred thousand strings
        entry = KeyEntry(key_id, tenant.tenant_id, _KEY_TYPES[key_type], version, state)
        self._keys[key_id] = entry
        tenant.add(entry)
        return entry

    def _set_state(self, entry: KeyEntry, state: KeyState) -> None:
        if entry.state is state:
            return
        entry.state = state
        self._tenants[entry.tenant_id].refresh_active(entry.key_type)
        if state in (KeyState.ROTATED, KeyState.REVOKED, KeyState.DESTROYED):
            for listener in self._listeners:
                listener(entry.key_id)
