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

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode
from schemas.messages import KeyEvent, KeyEventType, KeyType, Op, TenantCreated
from schemas.topics import Topic
from workers.audit import AuditTrail
from workers.core import ids
from workers.errors import BadInput, KeyRefused, TransientError
from workers.kafka.consume import BatchRunner, subscribe
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, dead_letter, parse
from workers.keys import KeyService
from workers.keystore.directory import KeyState
from workers.ledger import Account, CreateAccountStatus, Ledger, LedgerUnavailable, account_ok
from workers.ledger.records import OpRecord, key_account, tenant_account
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.context import ProcessContext

GROUP = "keyledger-keygen"
TOPICS = (Topic.TENANTS_CREATED.value,)
FIRST_VERSION = 1

log = logging.getLogger("keyledger.keygen")


@dataclass(slots=True)
class KeyPlan:
    record: InboundRecord
    tenant_id: str
    key_type: KeyType
    kms_key_id: str | None
    key_id: str


class KeygenService:
    def __init__(self, keys: KeyService, ledger: Ledger, audit: AuditTrail, publisher: Publisher, settings: Settings) -> None:
        self._keys = keys
        self._ledger = ledger
        self._audit = audit
        self._publisher = publisher
        self._max_bytes = settings.max_message_bytes
        self.keys_created = 0

    async def handle(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        """All or nothing: a KMS or ledger outage raises TransientError and the batch waits."""
        dead: list[Outgoing] = []
        plans: dict[str, KeyPlan] = {}
        for record in records:
            try:
                event = parse(record, TenantCreated, self._max_bytes)
                for plan in self._plan(record, event):
                    plans.setdefault(plan.key_id, plan)  # one tenant twice in a batch: one key
            except (BadInput, KeyRefused) as exc:
                dead.append(_letter(record, exc))
        todo = await self._still_missing(list(plans.values()), dead)
        await self._ensure_material(todo)
        await self._register_accounts(todo)
        audits = await self._audit.record([_generate_op(p) for p in todo])
        events = [Outgoing.of(Topic.KEYS_EVENTS, p.tenant_id, self._generated_event(p)) for p in todo]
        await self._publisher.publish([*events, *audits, *dead])
        for outgoing in events:
            self._keys.directory.apply_event(KeyEvent.model_validate_json(outgoing.value or b""))
        self.keys_created += len(todo)
        return []

    def _plan(self, record: InboundRecord, event: TenantCreated) -> list[KeyPlan]:
        directory = self._keys.directory
        if directory.is_destroyed_tenant(event.tenant_id):
            raise KeyRefused(f"tenant {event.tenant_id} was destroyed; its id cannot be reused", ErrorCode.TENANT_DESTROYED)
        plans = []
        for key_type in dict.fromkeys(event.key_types):
            announced = [e for e in directory.versions(event.tenant_id, key_type) if e.state is not KeyState.PENDING]
            if announced:
                continue  # the tenant already has this key type: nothing new
            key_id = ids.key_id_for(event.tenant_id, key_type, FIRST_VERSION)
            plans.append(KeyPlan(record, event.tenant_id, key_type, event.kms_key_id, key_id))
        return plans

    async def _still_missing(self, plans: list[KeyPlan], dead: list[Outgoing]) -> list[KeyPlan]:
        """Drop plans whose account exists without usable material: that key can't be rebuilt."""
        if not plans:
            return []
        accounts = {a.id: a for a in await self._lookup([ids.from_hex(p.key_id) for p in plans])}
        todo = []
        for plan in plans:
            account = accounts.get(ids.from_hex(plan.key_id))
            entry = self._keys.directory.get(plan.key_id)
            if account is not None and (entry is None or entry.fingerprint != account.user_data_64):
                log.error("key %s has a ledger account but no matching material", plan.key_id)
                dead.append(_letter(plan.record, KeyRefused(
                    f"key {plan.key_id} exists in the ledger without matching material", ErrorCode.MATERIAL_MISMATCH)))
                continue
            todo.append(plan)
        return todo

    async def _ensure_material(self, plans: list[KeyPlan]) -> None:
        """Mint what has no material yet (material of a crashed attempt is reused) and make it durable."""
        directory = self._keys.directory
        fresh = [p for p in plans if (e := directory.get(p.key_id)) is None or e.material is None]
        minted = await asyncio.gather(
            *(self._keys.mint(p.tenant_id, p.key_type, FIRST_VERSION, p.kms_key_id) for p in fresh)
        )
        await self._publisher.publish(Outgoing.of(Topic.KEYS_MATERIAL, m.material.key_id, m.material) for m in minted)
        for key in minted:
            directory.apply_material(key.material)

    async def _register_accounts(self, plans: list[KeyPlan]) -> None:
        if not plans:
            return
        directory = self._keys.directory
        tenants = {p.tenant_id: tenant_account(p.tenant_id) for p in plans}
        keys = []
        for p in plans:
            entry = directory.get(p.key_id)
            assert entry is not None and entry.fingerprint is not None
            keys.append(key_account(p.tenant_id, p.key_id, p.key_type, FIRST_VERSION, entry.fingerprint))
        try:
            results = await self._ledger.create_accounts([*tenants.values(), *keys])
        except LedgerUnavailable as exc:
            raise TransientError(f"ledger unavailable: {exc}") from None
        for account, result in zip([*tenants.values(), *keys], results, strict=True):
            if not account_ok(result.status):
                # EXISTS_WITH_DIFFERENT_USER_DATA_64: another writer pinned other material first
                raise RuntimeError(f"ledger refused account {account.id:032x}: {CreateAccountStatus(result.status).name}")

    def _generated_event(self, plan: KeyPlan) -> KeyEvent:
        entry = self._keys.directory.get(plan.key_id)
        assert entry is not None and entry.material is not None
        return KeyEvent(
            event_id=ids.event_id(KeyEventType.GENERATED, plan.key_id),
            type=KeyEventType.GENERATED,
            tenant_id=plan.tenant_id,
            key_id=plan.key_id,
            key_type=plan.key_type,
            version=FIRST_VERSION,
            occurred_at=entry.material.created_at,
            public_key=entry.material.public_key,
        )

    async def _lookup(self, account_ids: list[int]) -> list[Account]:
        try:
            return await self._ledger.lookup_accounts(account_ids)
        except LedgerUnavailable as exc:
            raise TransientError(f"ledger unavailable: {exc}") from None


def _generate_op(plan: KeyPlan) -> OpRecord:
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
    runner = BatchRunner(GROUP, service.handle, context.publisher, context.settings)
    subscribe(broker, TOPICS, GROUP, runner, context.settings)
    context.runners.append(runner)
    return service


def _letter(record: InboundRecord, exc: BadInput | KeyRefused) -> Outgoing:
    key = record.key.decode(errors="replace") if record.key else ""
    return Outgoing.of(Topic.DLQ, key, dead_letter(record, exc.info(), GROUP))
