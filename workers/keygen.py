"""Consumer group `keyledger-keygen`: tenants.created -> the tenant's keys.

Order of durability for a batch (a crash between any two steps loses nothing
and a replay duplicates nothing):
  1. KMS GenerateDataKey for keys that have neither material nor account;
  2. publish their `keys.material` (acks=all) — the wrapped key is now safe;
  3. create the tenant and key accounts (pinning each material's fingerprint);
  4. create the `generate` transfers (deterministic ids: a replay is `exists`);
  5. publish `keys.events` + `kms.audit` (+ DLQ letters); then the offsets commit.
A key whose account and material already exist is not touched again, so the
same event replayed, or the same tenant created twice, makes no second key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode
from schemas.messages import KeyEvent, KeyEventType, Op, TenantCreated, TenantDeleted
from schemas.topics import Topic
from workers.audit import AuditTrail
from workers.core import ids
from workers.errors import BadInput, KeyledgerError, KeyRefused, TransientError
from workers.kafka.consume import run_group
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, letter_for, parse
from workers.keys import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.kms import KmsRefused, KmsUnavailable
from workers.ledger import (
    Ledger,
)
from workers.ledger.records import OpRecord
from workers.settings import Settings
from workers.versions import VersionMaker, VersionPlan

if TYPE_CHECKING:
    from workers.context import ProcessContext

GROUP = "keyledger-keygen"
TOPICS = (Topic.TENANTS_CREATED.value, Topic.TENANTS_DELETED.value)
BYOK_PENDING_DAYS = 7  # AWS KMS minimum: the window in which a mistaken deletion can still be cancelled
FIRST_VERSION = 1

log = logging.getLogger("keyledger.keygen")


class KeygenService:
    def __init__(self, keys: KeyService, ledger: Ledger, audit: AuditTrail, publisher: Publisher, settings: Settings) -> None:
        self._keys = keys
        self._ledger = ledger
        self._audit = audit
        self._publisher = publisher
        self._max_bytes = settings.max_message_bytes
        self._versions = VersionMaker(keys, ledger, publisher)
        self._shredder = Shredder(keys, audit, publisher, settings)
        self.keys_created = 0

    async def handle(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        """All or nothing: a KMS or ledger outage raises TransientError and the batch waits."""
        created = [r for r in records if r.topic == Topic.TENANTS_CREATED]
        deleted = [r for r in records if r.topic == Topic.TENANTS_DELETED]
        if created:
            await self._create(created)
        if deleted:
            await self._shredder.shred(deleted)
        return []

    async def _create(self, records: Sequence[InboundRecord]) -> None:
        dead: list[Outgoing] = []
        plans: dict[str, VersionPlan] = {}
        for record in records:
            try:
                event = parse(record, TenantCreated, self._max_bytes)
                for plan in self._plan(record, event):
                    plans.setdefault(plan.key_id, plan)  # one tenant twice in a batch: one key
            except (BadInput, KeyRefused) as exc:
                dead.append(_letter(record, exc))
        todo, refused = await self._versions.make_durable(list(plans.values()))
        dead += [_letter(plan.record, exc) for plan, exc in refused]
        audits = await self._audit.record([_generate_op(p) for p in todo])
        events = [self._versions.announcement(p, KeyEventType.GENERATED) for p in todo]
        await self._publisher.publish([*(Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in events), *audits, *dead])
        for event in events:
            self._keys.directory.apply_event(event)
        self.keys_created += len(todo)

    def _plan(self, record: InboundRecord, event: TenantCreated) -> list[VersionPlan]:
        directory = self._keys.directory
        if directory.is_destroyed_tenant(event.tenant_id):
            raise KeyRefused(f"tenant {event.tenant_id} was destroyed; its id cannot be reused", ErrorCode.TENANT_DESTROYED)
        plans = []
        for key_type in dict.fromkeys(event.key_types):
            announced = [e for e in directory.versions(event.tenant_id, key_type) if e.state is not KeyState.PENDING]
            if announced:
                continue  # the tenant already has this key type: nothing new
            plans.append(VersionPlan(record, event.tenant_id, key_type, FIRST_VERSION, event.kms_key_id))
        return plans


class Shredder:
    """tenants.deleted: crypto-shredding. Every key of the tenant is destroyed.

    1. a pending CLOSING_CREDIT `destroy` transfer per key: TigerBeetle closes the
       key accounts and refuses any later operation on them (unwrap checks this);
    2. tombstones on `keys.material` (the wrapped keys leave the topic at its next
       compaction) and `destroyed` events, which evict every process's caches;
    3. a BYOK tenant's own KMS key is scheduled for deletion (7-day pending window).
    A replay finds the transfers `exists` and republishes the same tombstones and ids.
    """

    def __init__(self, keys: KeyService, audit: AuditTrail, publisher: Publisher, settings: Settings) -> None:
        self._keys = keys
        self._audit = audit
        self._publisher = publisher
        self._max_bytes = settings.max_message_bytes
        self.keys_destroyed = 0

    async def shred(self, records: Sequence[InboundRecord]) -> None:
        dead: list[Outgoing] = []
        doomed: list[tuple[InboundRecord, KeyEntry]] = []
        for record in records:
            try:
                event = parse(record, TenantDeleted, self._max_bytes)
                doomed += [(record, e) for e in self._keys_of(event.tenant_id)]
            except (BadInput, KeyRefused) as exc:
                dead.append(_letter(record, exc))
        audits = await self._audit.record([_destroy_op(record, entry) for record, entry in doomed])
        byok = {e.material.kms_key_id for _, e in doomed if e.material and e.material.kms_key_id != self._keys.kms.default_key_id}
        tombstones = [Outgoing.of(Topic.KEYS_MATERIAL, e.key_id, None) for _, e in doomed]
        events = [_destroyed_event(e, record) for record, e in doomed]
        await self._publisher.publish([*tombstones, *(Outgoing.of(Topic.KEYS_EVENTS, e.tenant_id, e) for e in events),
                                       *audits, *dead])
        for event in events:
            self._keys.directory.apply_event(event)
        for kms_key_id in sorted(byok):
            await self._schedule_deletion(kms_key_id)
        self.keys_destroyed += len(events)

    def _keys_of(self, tenant_id: str) -> list[KeyEntry]:
        directory = self._keys.directory
        if not directory.is_known_tenant(tenant_id):
            raise KeyRefused(f"unknown tenant {tenant_id}", ErrorCode.UNKNOWN_TENANT)
        return [e for e in directory.tenant_keys(tenant_id) if e.state is not KeyState.DESTROYED]

    async def _schedule_deletion(self, kms_key_id: str) -> None:
        try:
            await self._keys.kms.schedule_key_deletion(kms_key_id, BYOK_PENDING_DAYS)
        except KmsRefused as exc:
            log.warning("BYOK key deletion not scheduled (%s): already pending or not ours", exc)
        except KmsUnavailable as exc:
            raise TransientError(f"KMS unavailable: {exc}") from None


def _destroy_op(record: InboundRecord, entry: KeyEntry) -> OpRecord:
    return OpRecord(ids.transfer_id(Op.DESTROY, entry.key_id), entry.tenant_id, entry.key_id, Op.DESTROY,
                    record.source, reason="tenant deleted", closing=True)


def _destroyed_event(entry: KeyEntry, record: InboundRecord) -> KeyEvent:
    return KeyEvent(event_id=ids.event_id(KeyEventType.DESTROYED, entry.key_id), type=KeyEventType.DESTROYED,
                    tenant_id=entry.tenant_id, key_id=entry.key_id, key_type=entry.key_type, version=entry.version,
                    occurred_at=datetime.now(UTC), public_key=entry.public_key)


def _generate_op(plan: VersionPlan) -> OpRecord:
    return OpRecord(
        transfer_id=ids.transfer_id(Op.GENERATE, plan.key_id),
        tenant_id=plan.tenant_id,
        key_id=plan.key_id,
        op=Op.GENERATE,
        source=plan.record.source,
        reason="tenant created",
    )


def register(broker: KafkaBroker, context: ProcessContext) -> KeygenService:
    service = KeygenService(context.keys, context.ledger, context.audit, context.publisher, context.settings)
    run_group(context, GROUP, TOPICS, service.handle)
    return service


def _letter(record: InboundRecord, exc: KeyledgerError) -> Outgoing:
    return letter_for(record, exc.info(), GROUP)
