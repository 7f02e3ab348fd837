"""Consumer group `keyledger-rotation`: keys.rotation-ticks -> new key versions (services/rotation.py),
and, for ticks with an `action`, new wrappings of the same keys (services/rewrap.py: rewrap, migrate,
retire)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from schemas.messages import RotationTick, TickAction
from schemas.topics import Topic
from workers.core import policy
from workers.groups.base import Deps
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.versions import VersionMaker
from workers.services.rewrap import REWRAPPING, RewrapService
from workers.services.rotation import RotationService, Tick


class RotationGroup:
    name: str = "keyledger-rotation"
    topics: tuple[str, ...] = (Topic.ROTATION_TICKS.value,)
    pipelined: bool = False

    def __init__(self, deps: Deps) -> None:
        versions = VersionMaker(deps.keys, deps.ledger, deps.publisher)
        self.service = RotationService(deps.keys, deps.ledger, versions, deps.settings.limits.rotation_age)
        self.rewrap = RewrapService(deps.keys, deps.ledger, deps.publisher)
        self._emit = deps.emitter(self.name)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, RotationTick, self._max_bytes))
        retires = [(r, t) for r, t in parsed if t.action is TickAction.RETIRE]
        per_tenant: dict[str, list[Tick]] = defaultdict(list)
        for record, tick in parsed:
            if tick.tenant_id is not None and tick.action is not TickAction.RETIRE:
                per_tenant[tick.tenant_id].append((record, tick))
        fan_outs = [(r, t) for r, t in parsed if t.tenant_id is None and t.action in (None, TickAction.ROTATE)]
        rewrap_fan_outs = [(r, t) for r, t in parsed if t.tenant_id is None and t.action in REWRAPPING]
        waiting = list(await self._emit((await self.service.fan_out(fan_outs)).refuse_all(refused)))
        if rewrap_fan_outs:
            waiting += await self._emit(await self.rewrap.fan_out(rewrap_fan_outs))
        for round_ticks in policy.rounds(per_tenant):  # a tenant's ticks apply in order
            rotations = [(r, t) for r, t in round_ticks if t.action not in REWRAPPING]
            rewraps = [(r, t) for r, t in round_ticks if t.action in REWRAPPING]
            if rotations:
                waiting += await self._emit(await self.service.rotate(rotations))
            if rewraps:
                waiting += await self._emit(await self.rewrap.rewrap(rewraps))
        if retires:  # last: after this batch's rewraps are durable
            waiting += await self._emit(await self.rewrap.retire(retires))
        return waiting
