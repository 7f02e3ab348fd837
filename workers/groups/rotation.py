"""Consumer group `keyledger-rotation`: keys.rotation-ticks -> new key versions (services/rotation.py),
and, for ticks with an `action`, new wrappings of the same keys (services/rewrap.py, rewrap_fanout.py,
kek_retirement.py: rewrap, migrate, retire)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from schemas.messages import RotationTick, TickAction
from schemas.topics import Topic
from workers.core import policy
from workers.core.callers import operator_public_key
from workers.groups.base import Deps, Emitter
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.versions import VersionMaker
from workers.services.kek_retirement import KekRetirement
from workers.services.moves import REWRAPPING
from workers.services.rewrap import RewrapService
from workers.services.rewrap_fanout import RewrapFanOut
from workers.services.rotation import RotationService, Tick


class RotationGroup:
    name: str = "keyledger-rotation"
    topics: tuple[str, ...] = (Topic.ROTATION_TICKS.value,)
    pipelined: bool = False

    def __init__(self, deps: Deps) -> None:
        versions = VersionMaker(deps.keys, deps.ledger, deps.materials)
        operator = deps.settings.callers.operator_public_key
        self.service = RotationService(deps.keys, deps.ledger, versions, deps.settings.limits.rotation_age,
                                       operator_public_key(operator) if operator else None)
        self.rewrap = RewrapService(deps.keys, deps.ledger, deps.materials)
        self.retirement = KekRetirement(deps.keys, deps.ledger)
        self.rewrap_fan_out = RewrapFanOut(deps.keys, self.retirement)
        self._emit: Emitter[None] = deps.emitter(self.name)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        ticks, refused = parse_all(records, lambda record: parse(record, RotationTick, self._max_bytes))
        parsed = [(r.source, tick) for r, tick in ticks]
        retires = [(r, t) for r, t in parsed if t.action is TickAction.RETIRE]
        per_tenant: dict[str, list[Tick]] = defaultdict(list)
        for source, tick in parsed:
            if tick.tenant_id is not None and tick.action is not TickAction.RETIRE:
                per_tenant[tick.tenant_id].append((source, tick))
        # a tick naming a key but no tenant goes through the fan-out too: it becomes one tick for the key's tenant
        fan_outs = [(r, t) for r, t in parsed if t.tenant_id is None and t.action in (None, TickAction.ROTATE)]
        rewrap_fan_outs = [(r, t) for r, t in parsed if t.tenant_id is None and t.action in REWRAPPING]
        fanned = await self.service.fan_out(fan_outs)
        waiting = await self._emit(records, fanned.refuse_all((r.source, e) for r, e in refused))
        if rewrap_fan_outs:
            waiting += await self._emit(records, await self.rewrap_fan_out.fan_out(rewrap_fan_outs))
        for round_ticks in policy.rounds(per_tenant):  # a tenant's ticks apply in order
            rotations = [(r, t) for r, t in round_ticks if t.action not in REWRAPPING]
            rewraps = [(r, t) for r, t in round_ticks if t.action in REWRAPPING]
            if rotations:
                waiting += await self._emit(records, await self.service.rotate(rotations))
            if rewraps:
                waiting += await self._emit(records, await self.rewrap.rewrap(rewraps))
        if retires:  # last: after this batch's rewraps are durable
            waiting += await self._emit(records, await self.retirement.retire(retires))
        return waiting
