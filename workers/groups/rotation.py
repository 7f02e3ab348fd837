"""Consumer group `keyledger-rotation`: keys.rotation-ticks -> new key versions (services/rotation.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from schemas.messages import RotationTick
from schemas.topics import Topic
from workers.core import policy
from workers.groups.base import Deps
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.versions import VersionMaker
from workers.services.rotation import RotationService, Tick


class RotationGroup:
    name: str = "keyledger-rotation"
    topics: tuple[str, ...] = (Topic.ROTATION_TICKS.value,)
    pipelined: bool = False

    def __init__(self, deps: Deps) -> None:
        versions = VersionMaker(deps.keys, deps.ledger, deps.publisher)
        self.service = RotationService(deps.keys, deps.ledger, versions, deps.settings.rotation_age)
        self._emit = deps.emitter(self.name)
        self._max_bytes = deps.settings.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, RotationTick, self._max_bytes))
        per_tenant: dict[str, list[Tick]] = defaultdict(list)
        for record, tick in parsed:
            if tick.tenant_id is not None:
                per_tenant[tick.tenant_id].append((record, tick))
        fan_outs = [(record, tick) for record, tick in parsed if tick.tenant_id is None]
        waiting = list(await self._emit((await self.service.fan_out(fan_outs)).refuse_all(refused)))
        for round_ticks in policy.rounds(per_tenant):  # a tenant's ticks apply in order
            waiting += await self._emit(await self.service.rotate(round_ticks))
        return waiting
