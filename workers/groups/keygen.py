"""Consumer group `keyledger-keygen`: tenants.created -> keys (services/keygen.py);
tenants.deleted -> crypto-shredding (services/shredding.py)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.messages import TenantCreated, TenantDeleted
from schemas.topics import Topic
from workers.groups.base import Deps, Emitter
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.versions import VersionMaker
from workers.services.keygen import KeygenService
from workers.services.shredding import Shredder
from workers.settings import TenantKmsKeys


class KeygenGroup:
    name: str = "keyledger-keygen"
    topics: tuple[str, ...] = (Topic.TENANTS_CREATED.value, Topic.TENANTS_DELETED.value)
    pipelined: bool = False

    def __init__(self, deps: Deps) -> None:
        per_tenant = deps.settings.kms.tenant_kms_keys is TenantKmsKeys.PER_TENANT
        self.service = KeygenService(deps.keys, VersionMaker(deps.keys, deps.ledger, deps.materials), per_tenant)
        self.shredder = Shredder(deps.keys)
        self._emit: Emitter[None] = deps.emitter(self.name)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        """Creations first, then deletions: a tenant created and deleted in one batch ends destroyed."""
        created = [r for r in records if r.topic == Topic.TENANTS_CREATED]
        deleted = [r for r in records if r.topic == Topic.TENANTS_DELETED]
        waiting: list[InboundRecord] = []
        if created:
            creations, refused = parse_all(created, lambda r: parse(r, TenantCreated, self._max_bytes))
            outcome = await self.service.create([(r.source, event) for r, event in creations])
            waiting += await self._emit(created, outcome.refuse_all((r.source, e) for r, e in refused))
        if deleted:
            deletions, refused = parse_all(deleted, lambda r: parse(r, TenantDeleted, self._max_bytes))
            shredded = await self.shredder.shred([(r.source, event) for r, event in deletions])
            waiting += await self._emit(deleted, shredded.refuse_all((r.source, e) for r, e in refused))
        return waiting
