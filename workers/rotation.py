"""Consumer group `keyledger-rotation`: keys.rotation-ticks -> new key versions.

- A tick without `tenant_id` fans out: it reads the cluster time from the ledger
  (see ledger/clock.py), finds every active key created before the cut-off
  (now - KEYLEDGER_ROTATION_AGE for `scheduled`; now for `manual`/`compromise`)
  and publishes one tick per tenant with `due_before`, keyed by the tenant.
  Each tenant's rotation therefore runs on its own partition, one at a time.
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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode
from schemas.messages import (
    KeyEvent,
    KeyEventType,
    KeyType,
    Op,
    RotationReason,
    RotationTick,
)
from schemas.topics import Topic
from workers.audit import AuditTrail
from workers.core import ids
from workers.errors import KeyledgerError, KeyRefused, TransientError
from workers.kafka.consume import run_group
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, letter_for, parse
from workers.keys import KeyService
from workers.keystore.directory import KeyEntry
from workers.ledger import Ledger, LedgerUnavailable
from workers.ledger.clock import LedgerClock
from workers.ledger.records import OpRecord
from workers.settings import Settings
from workers.versions import VersionMaker, VersionPlan

if TYPE_CHECKING:
    from workers.context import ProcessContext

GROUP = "keyledger-rotation"
TOPICS = (Topic.ROTATION_TICKS.value,)
NS = 1_000_000_000

log = logging.getLogger("keyledger.rotation")


class Rotation:
    """One key to rotate: the active version now, the version that replaces it."""

    __slots__ = ("record", "tick", "old", "new")

    def __init__(self, record: InboundRecord, tick: RotationTick, old: KeyEntry) -> None:
        self.record = record
        self.tick = tick
        self.old = old
        kms_key_id = old.material.kms_key_id if old.material else None
        self.new = VersionPlan(record, old.tenant_id, old.key_type, old.version + 1, kms_key_id)


class RotationService:
    def __init__(self, keys: KeyService, ledger: Ledger, audit: AuditTrail, publisher: Publisher,
                 settings: Settings) -> None:
        self._keys = keys
        self._ledger = ledger
        self._audit = audit
        self._publisher = publisher
        self._versions = VersionMaker(keys, ledger, publisher)
        self._clock = LedgerClock(ledger)
        self._age_ns = settings.rotation_age * NS
        self._max_bytes = settings.max_message_bytes
        self.rotated = 0

    async def handle(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        outputs: list[Outgoing] = []
        per_tenant: dict[str, list[tuple[InboundRecord, RotationTick]]] = defaultdict(list)
        for record in records:
            try:
                tick = parse(record, RotationTick, self._max_bytes)
            except KeyledgerError as exc:
                outputs.append(_letter(record, exc))
                continue
            if tick.tenant_id is None:
                outputs += await self._fan_out(tick)
            else:
                per_tenant[tick.tenant_id].append((record, tick))
        await self._publisher.publish(outputs)
        # a tenant's ticks apply in order: round k takes every tenant's k-th tick
        for round_ticks in _rounds(per_tenant):
            await self._rotate(round_ticks)
        return []

    # --- fan-out ---------------------------------------------------------------

    async def _fan_out(self, tick: RotationTick) -> list[Outgoing]:
        now = await self._clock.now(f"tick/{tick.tick_id}")
        cutoff = now - self._age_ns if tick.reason is RotationReason.SCHEDULED else now
        entries = self._active_entries(tick.key_type)
        due = await self._created_before(entries, cutoff)
        tenants = sorted({e.tenant_id for e in due})
        log.info("tick %s (%s): %d of %d active keys due, %d tenants", tick.tick_id, tick.reason.value,
                 len(due), len(entries), len(tenants))
        return [Outgoing.of(Topic.ROTATION_TICKS, tenant, RotationTick(
            tick_id=f"{tick.tick_id}/{tenant}", issued_at=tick.issued_at, tenant_id=tenant, key_type=tick.key_type,
            reason=tick.reason, due_before=cutoff, parent_tick_id=tick.tick_id)) for tenant in tenants]

    def _active_entries(self, key_type: KeyType | None) -> list[KeyEntry]:
        directory = self._keys.directory
        types = [key_type] if key_type else list(KeyType)
        return [e for t in directory.tenants() for k in types if (e := directory.active(t, k)) is not None]

    async def _created_before(self, entries: list[KeyEntry], cutoff: int) -> list[KeyEntry]:
        """The entries whose key account TigerBeetle created before `cutoff` (cluster time)."""
        if not entries:
            return []
        try:
            accounts = await self._ledger.lookup_accounts([ids.from_hex(e.key_id) for e in entries])
        except LedgerUnavailable as exc:
            raise TransientError(f"ledger unavailable: {exc}") from None
        created = {ids.to_hex(a.id): a.timestamp for a in accounts}
        return [e for e in entries if e.key_id in created and created[e.key_id] < cutoff]

    # --- rotation --------------------------------------------------------------

    async def _rotate(self, ticks: list[tuple[InboundRecord, RotationTick]]) -> None:
        dead: list[Outgoing] = []
        wanted: list[Rotation] = []
        for record, tick in ticks:
            try:
                wanted += self._targets(record, tick)
            except KeyRefused as exc:
                dead.append(_letter(record, exc))
        wanted = await self._due(wanted)
        wanted = await self._not_already_done(wanted)
        todo, refused = await self._versions.make_durable([r.new for r in wanted])
        dead += [_letter(plan.record, exc) for plan, exc in refused]
        durable = {p.key_id for p in todo}
        rotations = [r for r in wanted if r.new.key_id in durable]
        audits = await self._audit.record([op for r in rotations for op in _ops(r)])
        events = [event for r in rotations for event in self._events(r)]
        await self._publisher.publish([*(Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in events), *audits, *dead])
        # only once announced durably does this process switch versions (so a failed publish retries the same rotation)
        for event in events:
            self._keys.directory.apply_event(event)
        self.rotated += len(rotations)
        if rotations:
            log.info("rotated %d keys (%d so far)", len(rotations), self.rotated)

    def _targets(self, record: InboundRecord, tick: RotationTick) -> list[Rotation]:
        assert tick.tenant_id is not None
        types = [tick.key_type] if tick.key_type else list(KeyType)
        targets = []
        for key_type in types:
            try:
                old = self._keys.active(tick.tenant_id, key_type)
            except KeyRefused as exc:
                if exc.code is ErrorCode.KEY_NOT_FOUND:
                    continue  # the tenant never had this key type
                raise
            targets.append(Rotation(record, tick, old))
        return targets

    async def _due(self, wanted: list[Rotation]) -> list[Rotation]:
        scheduled = [r for r in wanted if _due_before(r.tick) is not None]
        if not scheduled:
            return wanted
        try:
            accounts = await self._ledger.lookup_accounts([ids.from_hex(r.old.key_id) for r in scheduled])
        except LedgerUnavailable as exc:
            raise TransientError(f"ledger unavailable: {exc}") from None
        created = {ids.to_hex(a.id): a.timestamp for a in accounts}
        return [r for r in wanted if (cutoff := _due_before(r.tick)) is None
                or created.get(r.old.key_id, cutoff) < cutoff]

    async def _not_already_done(self, wanted: list[Rotation]) -> list[Rotation]:
        """Drop rotations a replayed tick already made: the active key came from this very tick."""
        candidates = [r for r in wanted if r.old.version > 1]
        if not candidates:
            return wanted
        made_by = {ids.transfer_id(Op.ROTATE, ids.key_id_for(r.old.tenant_id, r.old.key_type, r.old.version - 1)): r
                   for r in candidates}
        try:
            found = await self._ledger.lookup_transfers(list(made_by))
        except LedgerUnavailable as exc:
            raise TransientError(f"ledger unavailable: {exc}") from None
        done = {id(made_by[t.id]) for t in found if t.user_data_64 == _tick_tag(made_by[t.id].tick)}
        return [r for r in wanted if id(r) not in done]

    def _events(self, rotation: Rotation) -> list[KeyEvent]:
        events = [self._versions.announcement(rotation.new, KeyEventType.ROTATED, rotation.old.key_id,
                                              tick_id=rotation.tick.tick_id, reason=rotation.tick.reason.value)]
        if rotation.tick.reason is RotationReason.COMPROMISE:
            old = rotation.old
            events.append(KeyEvent(
                event_id=ids.event_id(KeyEventType.REVOKED, old.key_id), type=KeyEventType.REVOKED,
                tenant_id=old.tenant_id, key_id=old.key_id, key_type=old.key_type, version=old.version,
                occurred_at=rotation.tick.issued_at, public_key=old.public_key, tick_id=rotation.tick.tick_id))
        return events


def _rounds(per_tenant: dict[str, list[tuple[InboundRecord, RotationTick]]]) -> list[list[tuple[InboundRecord, RotationTick]]]:
    depth = max((len(ticks) for ticks in per_tenant.values()), default=0)
    return [[ticks[k] for ticks in per_tenant.values() if k < len(ticks)] for k in range(depth)]


def _due_before(tick: RotationTick) -> int | None:
    value = getattr(tick, "due_before", None)
    return value if isinstance(value, int) else None


def _tick_tag(tick: RotationTick) -> int:
    return ids.tag64("tick", tick.tick_id)


def _ops(rotation: Rotation) -> list[OpRecord]:
    old, new, source = rotation.old, rotation.new, rotation.record.source
    reason = f"{rotation.tick.reason.value} rotation"
    ops = [
        OpRecord(ids.transfer_id(Op.ROTATE, old.key_id), old.tenant_id, old.key_id, Op.ROTATE, source,
                 reason=reason, linked_key_id=new.key_id, tag=_tick_tag(rotation.tick)),
        OpRecord(ids.transfer_id(Op.GENERATE, new.key_id), new.tenant_id, new.key_id, Op.GENERATE, source,
                 reason=reason),
    ]
    if rotation.tick.reason is RotationReason.COMPROMISE:
        ops.append(OpRecord(ids.transfer_id(Op.REVOKE, old.key_id), old.tenant_id, old.key_id, Op.REVOKE, source,
                            reason="compromise"))
    return ops


def _letter(record: InboundRecord, exc: KeyledgerError) -> Outgoing:
    return letter_for(record, exc.info(), GROUP)


def register(broker: KafkaBroker, context: ProcessContext) -> RotationService:
    service = RotationService(context.keys, context.ledger, context.audit, context.publisher, context.settings)
    run_group(context, GROUP, TOPICS, service.handle)
    return service
