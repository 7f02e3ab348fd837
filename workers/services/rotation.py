"""Rotation: keys.rotation-ticks -> new key versions.

- A tick without `tenant_id` fans out: it reads the cluster time from the ledger
  (see ledger/clock.py), finds every active key created before the cut-off
  (core/policy.py: now - KEYLEDGER_ROTATION_AGE for `scheduled`; now for
  `manual`/`compromise`) and publishes one tick per tenant with `due_before`,
  keyed by the tenant. Each tenant's rotation therefore runs on its own
  partition, one at a time.
- A tick with `key_id` is about that key alone: without `tenant_id` it becomes one tick for the
  key's tenant (never a fan-out); a `key_id` that is unknown, of another tenant than `tenant_id` or
  of another type than `key_type` is refused as `ambiguous_tick`.
- A `manual` or `compromise` tick without tenant and key that would rotate keys of more than one
  tenant needs the operator's signature (core/operator_ticks.py), else it is refused as
  `unauthorized_tick` and nothing rotates. A scheduled fan-out rotates only keys already due and
  needs none.
- A tick with `tenant_id` rotates that tenant now (only keys created before
  `due_before` when it has one). Version v+1 is made durable like a first key
  (material, then account); then one `rotate` transfer on the old key links the
  new one, the new key gets its `generate` transfer, `compromise` adds a `revoke`
  transfer; `keys.events` announces `rotated` (and `revoked`), which moves the
  active key and evicts the old one from every process's cache.
- Exactly one active key per (tenant, type): versions and ids are deterministic,
  the `rotate` transfer of a key can exist once (its id is derived from the old
  key), and the event that switches versions is a single record. A replayed tick
  finds the rotation it already made (the rotate transfer carries the tick's tag)
  and changes nothing; a crash half-way is completed by the replay.
- The audit digest key (tenant `keyledger-system`) follows the rotation age like any
  signing key: a scheduled fan-out rotates it when due. Manual and compromise fan-outs
  (`keyledger rotate --all`) are about tenants' keys and skip it; a tick naming
  `keyledger-system` rotates it. Old digests stay verifiable: keys.events keeps every
  version's public key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.errors import ErrorCode
from schemas.messages import SYSTEM_TENANT, KeyEvent, KeyEventType, KeyType, Op, RotationReason, RotationTick
from workers.core import ids, policy
from workers.core.operator_ticks import operator_signed
from workers.errors import KeyRefused, TickRefused
from workers.keys.service import KeyService
from workers.keys.versions import VersionMaker, VersionPlan
from workers.keystore.directory import KeyEntry
from workers.kms import Kms, is_shared_key
from workers.ledger import Ledger
from workers.ledger.clock import LedgerClock
from workers.ledger.records import OpRecord, WrapFacts
from workers.services.outcome import Outcome
from workers.source import Source

log = logging.getLogger("keyledger.rotation")

Tick = tuple[Source, RotationTick]


class Rotation:
    """One key to rotate: the active version now, the version that replaces it."""

    __slots__ = ("source", "tick", "old", "new")

    def __init__(self, source: Source, tick: RotationTick, old: KeyEntry, kms: Kms) -> None:
        self.source = source
        self.tick = tick
        self.old = old
        # a tenant's own KMS key (BYOK) wraps its next version too, with the same provider; a key under
        # a provider's shared default key moves to where new keys go (a provider migration may be under way)
        material = old.material
        byok = material is not None and not is_shared_key(kms, material.kms_provider, material.kms_key_id)
        self.new = VersionPlan(source, old.tenant_id, old.key_type, old.version + 1,
                               material.kms_key_id if material and byok else None,
                               material.kms_provider if material and byok else None)


class RotationService:
    def __init__(self, keys: KeyService, ledger: Ledger, versions: VersionMaker, rotation_age: int,
                 operator_key: Ed25519PublicKey | None = None) -> None:
        self._keys = keys
        self._operator_key = operator_key
        self._ledger = ledger
        self._versions = versions
        self._clock = LedgerClock(ledger)
        self.rotation_age = rotation_age
        self.rotated = 0

    # --- fan-out ---------------------------------------------------------------

    async def fan_out(self, ticks: Sequence[Tick]) -> Outcome[None]:
        """One tick per tenant with a key due, for each tick that names no tenant."""
        outcome = Outcome[None]()
        for source, tick in ticks:
            try:
                outcome.ticks += await self._fan_out(tick)
            except TickRefused as exc:
                log.warning("tick %s refused: %s", tick.tick_id, exc)
                outcome.refuse(source, exc)
        return outcome

    async def _fan_out(self, tick: RotationTick) -> list[RotationTick]:
        now = await self._clock.now(f"tick/{tick.tick_id}")
        cutoff = policy.rotation_cutoff(now, tick.reason, self.rotation_age)
        if tick.key_id is not None:
            entry = self._named_key(tick)
            return [RotationTick(
                tick_id=ids.child_tick_id(tick.tick_id, entry.tenant_id), issued_at=tick.issued_at,
                tenant_id=entry.tenant_id, key_type=entry.key_type, reason=tick.reason, due_before=cutoff,
                parent_tick_id=tick.tick_id, key_id=entry.key_id)]
        entries = self._active_entries(tick.key_type, with_system=tick.reason is RotationReason.SCHEDULED)
        due = await self._created_before(entries, cutoff)
        tenants = sorted({e.tenant_id for e in due})
        log.info("tick %s (%s): %d of %d active keys due, %d tenants", tick.tick_id, tick.reason.value,
                 len(due), len(entries), len(tenants))
        if (tick.reason is not RotationReason.SCHEDULED and len(tenants) > 1
                and not operator_signed(tick, self._operator_key)):
            raise TickRefused(
                f"a {tick.reason.value} tick without tenant_id and key_id would rotate keys of {len(tenants)} "
                "tenants: it needs operator_signature by the operator key (keyledger rotate --all --operator-key); "
                "nothing rotated", ErrorCode.UNAUTHORIZED_TICK)
        return [RotationTick(
            tick_id=ids.child_tick_id(tick.tick_id, tenant), issued_at=tick.issued_at, tenant_id=tenant, key_type=tick.key_type,
            reason=tick.reason, due_before=cutoff, parent_tick_id=tick.tick_id) for tenant in tenants]

    def _named_key(self, tick: RotationTick) -> KeyEntry:
        """The key a tick's `key_id` names, when it agrees with the tick's tenant and key type."""
        assert tick.key_id is not None
        entry = self._keys.directory.get(tick.key_id)
        if entry is None:
            raise TickRefused(f"tick names key_id {tick.key_id}, which is not a known key: nothing rotated")
        if tick.tenant_id is not None and entry.tenant_id != tick.tenant_id:
            raise TickRefused(f"tick names key_id {tick.key_id}, which is not a key of tenant_id "
                              f"{tick.tenant_id!r}: nothing rotated")
        if tick.key_type is not None and entry.key_type is not tick.key_type:
            raise TickRefused(f"tick names key_id {tick.key_id}, a {entry.key_type.value} key, and key_type "
                              f"{tick.key_type.value}: nothing rotated")
        return entry

    def _active_entries(self, key_type: KeyType | None, with_system: bool = False) -> list[KeyEntry]:
        directory = self._keys.directory
        types = [key_type] if key_type else list(KeyType)
        tenants = directory.tenants() if with_system else directory.tenants() - {SYSTEM_TENANT}
        return [e for t in tenants for k in types if (e := directory.active(t, k)) is not None]

    async def _created_before(self, entries: list[KeyEntry], cutoff: int) -> list[KeyEntry]:
        """The entries whose key account the ledger created before `cutoff` (cluster time)."""
        if not entries:
            return []
        created = await self._creation_times([e.key_id for e in entries])
        return [e for e in entries if e.key_id in created and policy.is_due(created[e.key_id], cutoff)]

    async def _creation_times(self, key_ids: list[str]) -> dict[str, int]:
        accounts = await self._ledger.lookup_accounts([ids.from_hex(k) for k in key_ids])
        return {ids.to_hex(a.id): a.timestamp for a in accounts}

    # --- rotation --------------------------------------------------------------

    async def rotate(self, ticks: Sequence[Tick]) -> Outcome[None]:
        """At most one tick per tenant (a round): each tenant's due keys get their next version."""
        outcome = Outcome[None]()
        wanted: list[Rotation] = []
        for source, tick in ticks:
            try:
                wanted += self._targets(source, tick)
            except TickRefused as exc:
                log.warning("tick %s refused: %s", tick.tick_id, exc)
                outcome.refuse(source, exc)
            except KeyRefused as exc:
                if self._keys.waits_for_tenant(exc, source):
                    outcome.blocked.append(source)
                else:
                    outcome.refuse(source, exc)
        wanted = await self._due(wanted)
        wanted = await self._not_already_done(wanted)
        todo, refused = await self._versions.make_durable([r.new for r in wanted])
        outcome.dead += [(plan.source, exc) for plan, exc in refused]
        durable = {p.key_id for p in todo}
        rotations = [r for r in wanted if r.new.key_id in durable]
        outcome.ops += [op for r in rotations for op in _ops(r, self._versions.wrap_of(r.new))]
        outcome.events += [event for r in rotations for event in self._events(r)]
        self.rotated += len(rotations)
        if rotations:
            log.info("rotated %d keys (%d so far)", len(rotations), self.rotated)
        return outcome

    def _targets(self, source: Source, tick: RotationTick) -> list[Rotation]:
        assert tick.tenant_id is not None
        types = [tick.key_type] if tick.key_type else list(KeyType)
        if tick.key_id is not None:
            types = [self._named_key(tick).key_type]
        targets = []
        for key_type in types:
            try:
                old = self._keys.active(tick.tenant_id, key_type)
            except KeyRefused as exc:
                if exc.code is ErrorCode.KEY_NOT_FOUND:
                    continue  # the tenant never had this key type
                raise
            if tick.key_id is not None and tick.key_id != old.key_id:
                continue  # the key this tick was about is no longer active: rotated already
            targets.append(Rotation(source, tick, old, self._keys.kms))
        return targets

    async def _due(self, wanted: list[Rotation]) -> list[Rotation]:
        scheduled = [r for r in wanted if r.tick.due_before is not None]
        if not scheduled:
            return wanted
        created = await self._creation_times([r.old.key_id for r in scheduled])
        return [r for r in wanted if (cutoff := r.tick.due_before) is None
                or policy.is_due(created.get(r.old.key_id, cutoff), cutoff)]

    async def _not_already_done(self, wanted: list[Rotation]) -> list[Rotation]:
        """Drop rotations a replayed tick already made: the active key came from this very tick."""
        candidates = [r for r in wanted if r.old.version > 1]
        if not candidates:
            return wanted
        made_by = {ids.transfer_id(Op.ROTATE, ids.key_id_for(r.old.tenant_id, r.old.key_type, r.old.version - 1)): r
                   for r in candidates}
        found = await self._ledger.lookup_transfers(list(made_by))
        done = {id(made_by[t.id]) for t in found if t.user_data_64 == _tick_tag(made_by[t.id].tick)}
        return [r for r in wanted if id(r) not in done]

    def _events(self, rotation: Rotation) -> list[KeyEvent]:
        events = [self._versions.announcement(rotation.new, KeyEventType.ROTATED, rotation.old.key_id,
                                              tick_id=rotation.tick.tick_id, reason=rotation.tick.reason)]
        if rotation.tick.reason is RotationReason.COMPROMISE:
            old = rotation.old
            events.append(KeyEvent(
                event_id=ids.event_id(KeyEventType.REVOKED, old.key_id), type=KeyEventType.REVOKED,
                tenant_id=old.tenant_id, key_id=old.key_id, key_type=old.key_type, version=old.version,
                occurred_at=rotation.tick.issued_at, public_key=old.public_key, tick_id=rotation.tick.tick_id))
        return events


def _tick_tag(tick: RotationTick) -> int:
    return ids.tag64("tick", tick.tick_id)


def _ops(rotation: Rotation, wrap: WrapFacts) -> list[OpRecord]:
    old, new, source = rotation.old, rotation.new, rotation.source
    # the cause when keyledger asked for it itself (e.g. "wear_out rotation"), else the tick's reason
    reason = f"{rotation.tick.cause or rotation.tick.reason.value} rotation"
    ops = [
        OpRecord(ids.transfer_id(Op.ROTATE, old.key_id), old.tenant_id, old.key_id, Op.ROTATE, source,
                 reason=reason, linked_key_id=new.key_id, tag=_tick_tag(rotation.tick)),
        OpRecord(ids.transfer_id(Op.GENERATE, new.key_id), new.tenant_id, new.key_id, Op.GENERATE, source,
                 reason=reason, wrap=wrap),
    ]
    if rotation.tick.reason is RotationReason.COMPROMISE:
        ops.append(OpRecord(ids.transfer_id(Op.REVOKE, old.key_id), old.tenant_id, old.key_id, Op.REVOKE, source,
                            reason="compromise"))
    return ops
