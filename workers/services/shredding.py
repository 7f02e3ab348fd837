"""Crypto-shredding: tenants.deleted destroys every key of the tenant.

1. a pending CLOSING_CREDIT `destroy` transfer per key: TigerBeetle closes the
   key accounts and refuses any later operation on them (unwrap checks this);
2. tombstones on `keys.material` (the wrapped keys leave the topic at its next
   compaction) and `destroyed` events, which evict every process's caches;
3. once both are durable, a BYOK tenant's own KMS key is scheduled for deletion
   (7-day pending window).
A replay finds the transfers `exists` and republishes the same tombstones and ids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

from schemas.errors import ErrorCode
from schemas.messages import SYSTEM_TENANT, KeyEvent, KeyEventType, Op, TenantDeleted
from workers.core import ids
from workers.errors import KeyRefused
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.kms import KmsRefused
from workers.ledger.records import OpRecord, WrapFacts
from workers.services.outcome import Outcome
from workers.source import Source

BYOK_PENDING_DAYS = 7  # AWS KMS minimum: the window in which a mistaken deletion can still be cancelled

log = logging.getLogger("keyledger.shredding")


class Shredder:
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys
        self.keys_destroyed = 0

    async def shred(self, requests: Sequence[tuple[Source, TenantDeleted]]) -> Outcome[None]:
        outcome = Outcome[None]()
        doomed: list[tuple[Source, KeyEntry]] = []
        for source, event in requests:
            try:
                doomed += [(source, e) for e in self._keys_of(event.tenant_id)]
            except KeyRefused as exc:
                if self._keys.waits_for_tenant(exc, source):
                    outcome.blocked.append(source)  # created just before: its keys may be on their way
                else:
                    outcome.refuse(source, exc)
        byok = await self._owned_alone(doomed)
        outcome.ops += [_destroy_op(source, entry, byok) for source, entry in doomed]
        outcome.tombstones += [e.key_id for _, e in doomed]
        outcome.events += [_destroyed_event(e) for _, e in doomed]
        outcome.then += [partial(self._schedule_deletion, kms_key_id) for kms_key_id in sorted(byok)]
        self.keys_destroyed += len(doomed)
        return outcome

    async def _owned_alone(self, doomed: list[tuple[Source, KeyEntry]]) -> set[str]:
        """The KMS keys to schedule for deletion: a BYOK key bound to the deleted tenant alone, never the
        shared default key nor one another live tenant's material is wrapped under (compared as the KMS
        identifies keys, so an alias or ARN of the default key is the default key)."""
        chosen = set()
        deleted = {e.tenant_id for _, e in doomed}
        for kms_key_id in sorted({e.material.kms_key_id for _, e in doomed if e.material is not None}):
            try:
                if await self._keys.is_default_kms_key(kms_key_id):
                    continue
                others = await self._keys.tenants_bound_to(await self._keys.canonical_kms_key(kms_key_id)) - deleted
            except KeyRefused:
                continue  # the KMS no longer knows the key: nothing left to schedule
            if others:
                log.warning("KMS key of a deleted tenant not scheduled for deletion: another tenant's keys use it")
                continue
            chosen.add(kms_key_id)
        return chosen

    def _keys_of(self, tenant_id: str) -> list[KeyEntry]:
        directory = self._keys.directory
        if tenant_id == SYSTEM_TENANT:  # the audit digest key: shredding it would orphan no data but stop the chain
            raise KeyRefused(f"tenant id {SYSTEM_TENANT} is reserved for keyledger's own keys", ErrorCode.INVALID_MESSAGE)
        if not directory.is_known_tenant(tenant_id):
            raise KeyRefused(f"unknown tenant {tenant_id}", ErrorCode.UNKNOWN_TENANT)
        return [e for e in directory.tenant_keys(tenant_id) if e.state is not KeyState.DESTROYED]

    async def _schedule_deletion(self, kms_key_id: str) -> None:
        """KmsUnavailable propagates: the batch waits and the replay schedules it again."""
        try:
            await self._keys.kms.schedule_key_deletion(kms_key_id, BYOK_PENDING_DAYS)
        except KmsRefused as exc:
            log.warning("BYOK key deletion not scheduled (%s): already pending or not ours", exc)


def _destroy_op(source: Source, entry: KeyEntry, scheduled: set[str]) -> OpRecord:
    """The destroy, with where the version was wrapped and, when the shred schedules that KMS key for
    deletion, the pending window its audit event turns into the deletion date."""
    material = entry.material
    wrap = None
    if material is not None:
        wrap = WrapFacts.of(material, BYOK_PENDING_DAYS if material.kms_key_id in scheduled else None)
    return OpRecord(ids.transfer_id(Op.DESTROY, entry.key_id), entry.tenant_id, entry.key_id, Op.DESTROY,
                    source, reason="tenant deleted", closing=True, wrap=wrap)


def _destroyed_event(entry: KeyEntry) -> KeyEvent:
    return KeyEvent(event_id=ids.event_id(KeyEventType.DESTROYED, entry.key_id), type=KeyEventType.DESTROYED,
                    tenant_id=entry.tenant_id, key_id=entry.key_id, key_type=entry.key_type, version=entry.version,
                    occurred_at=datetime.now(UTC), public_key=entry.public_key)
