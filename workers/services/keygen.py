"""Key generation: tenants.created -> the tenant's keys.

Order of durability for a batch (a crash between any two steps loses nothing
and a replay duplicates nothing):
  1. KMS GenerateDataKey for keys that have neither material nor account;
  2. publish their `keys.material` (acks=all) — the wrapped key is now safe;
  3. create the tenant and key accounts (pinning each material's fingerprint);
  4. create the `generate` transfers (deterministic ids: a replay is `exists`);
  5. publish `keys.events` + `kms.audit` (+ DLQ letters); then the offsets commit.
Steps 1-3 are keys/versions.py, 4-5 the group's emitter. A key whose account and
material already exist is not touched again, so the same event replayed, or the
same tenant created twice, makes no second key.

Per-tenant KMS keys (KEYLEDGER_TENANT_KMS_KEYS=per-tenant): a tenant created without `kms_key_id`
gets a KMS key of its own first (Kms.tenant_key: found by an alias derived from the tenant id, so a
replay finds the same key), and from then on it is handled exactly as a BYOK tenant: its keys are
wrapped under that KMS key, rotation keeps it, and shredding schedules it for deletion.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.errors import ErrorCode
from schemas.messages import SYSTEM_TENANT, KeyEventType, Op, TenantCreated
from workers.core import ids
from workers.errors import KeyRefused
from workers.keys.service import KeyService
from workers.keys.versions import VersionMaker, VersionPlan
from workers.keystore.directory import KeyState
from workers.kms import KmsRefused
from workers.ledger.records import OpRecord, WrapFacts
from workers.services.outcome import Outcome
from workers.source import Source

FIRST_VERSION = 1


class KeygenService:
    def __init__(self, keys: KeyService, versions: VersionMaker, per_tenant_kms_keys: bool = False) -> None:
        self._keys = keys
        self._per_tenant_kms_keys = per_tenant_kms_keys
        self._versions = versions
        self.keys_created = 0

    async def create(self, requests: Sequence[tuple[Source, TenantCreated]]) -> Outcome[None]:
        """All or nothing: a KMS or ledger outage raises Unavailable and the batch waits."""
        outcome = Outcome[None]()
        plans: dict[str, VersionPlan] = {}
        claimed: dict[str, str] = {}  # BYOK keys claimed in this batch -> by which tenant
        for source, event in requests:
            try:
                event = await self._with_tenant_kms_key(event)
                if event.kms_key_id is not None:
                    await self._own_kms_key(event.tenant_id, event.kms_key_id, claimed)
                for plan in self._plan(source, event):
                    plans.setdefault(plan.key_id, plan)  # one tenant twice in a batch: one key
            except KeyRefused as exc:
                outcome.refuse(source, exc)
        todo, refused = await self._versions.make_durable(list(plans.values()))
        outcome.dead += [(plan.source, exc) for plan, exc in refused]
        outcome.ops += [_generate_op(p, self._versions.wrap_of(p)) for p in todo]
        outcome.events += [self._versions.announcement(p, KeyEventType.GENERATED) for p in todo]
        self.keys_created += len(todo)
        return outcome

    async def _with_tenant_kms_key(self, event: TenantCreated) -> TenantCreated:
        if not self._per_tenant_kms_keys or event.kms_key_id is not None or event.tenant_id == SYSTEM_TENANT \
                or self._keys.directory.is_destroyed_tenant(event.tenant_id):
            return event
        try:
            kms_key_id = await self._keys.kms.tenant_key(event.tenant_id)
        except KmsRefused as exc:
            raise KeyRefused(f"no KMS key of the tenant's own: {exc}", ErrorCode.KMS_REFUSED) from None
        return event.model_copy(update={"kms_key_id": kms_key_id})

    async def _own_kms_key(self, tenant_id: str, kms_key_id: str, claimed: dict[str, str]) -> None:
        """BYOK: a tenant's own KMS key belongs to that tenant alone. The shared default key, or a key bound
        to another live tenant (compared as the KMS identifies keys: an id, an ARN and an alias of one key
        are one key), is refused, so deleting this tenant can never destroy what others need."""
        if await self._keys.is_default_kms_key(kms_key_id):
            raise KeyRefused("kms_key_id names the shared default KMS key, not a key of the tenant's own",
                             ErrorCode.KMS_REFUSED)
        canonical = await self._keys.canonical_kms_key(kms_key_id)
        others = (await self._keys.tenants_bound_to(canonical) | {claimed.get(canonical, tenant_id)}) - {tenant_id}
        if others:
            raise KeyRefused("kms_key_id names a KMS key already bound to another tenant", ErrorCode.KMS_REFUSED)
        claimed[canonical] = tenant_id

    def _plan(self, source: Source, event: TenantCreated) -> list[VersionPlan]:
        directory = self._keys.directory
        if event.tenant_id == SYSTEM_TENANT:
            raise KeyRefused(f"tenant id {SYSTEM_TENANT} is reserved for keyledger's own keys", ErrorCode.INVALID_MESSAGE)
        if directory.is_destroyed_tenant(event.tenant_id):
            raise KeyRefused(f"tenant {event.tenant_id} was destroyed; its id cannot be reused", ErrorCode.TENANT_DESTROYED)
        plans = []
        for key_type in dict.fromkeys(event.key_types):
            announced = [e for e in directory.versions(event.tenant_id, key_type) if e.state is not KeyState.PENDING]
            if announced:
                continue  # the tenant already has this key type: nothing new
            plans.append(VersionPlan(source, event.tenant_id, key_type, FIRST_VERSION, event.kms_key_id))
        return plans


def _generate_op(plan: VersionPlan, wrap: WrapFacts) -> OpRecord:
    return OpRecord(
        transfer_id=ids.transfer_id(Op.GENERATE, plan.key_id),
        tenant_id=plan.tenant_id,
        key_id=plan.key_id,
        op=Op.GENERATE,
        source=plan.source,
        reason="tenant created",
        wrap=wrap,
    )
