"""Rewrap and migrate fan-out: a rewrap/migrate tick that names no tenant becomes one tick per tenant
with a key to move (each then re-wrapped by services/rewrap.py). A scheduled rewrap first retires the
KEK versions the previous pass left unneeded (services/kek_retirement.py): this pass's wrappings
retire at the next."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from schemas.messages import RotationReason, TickAction
from workers.core import ids
from workers.errors import KeyledgerError
from workers.keys.service import KeyService
from workers.services.kek_retirement import KekRetirement
from workers.services.moves import Move, Tick, check_tick, live_entries, wanted
from workers.services.outcome import Outcome

log = logging.getLogger("keyledger.rewrap")


class RewrapFanOut:
    def __init__(self, keys: KeyService, retirement: KekRetirement) -> None:
        self._keys = keys
        self._retirement = retirement

    async def fan_out(self, ticks: Sequence[Tick]) -> Outcome[None]:
        """One tick per tenant with a key to move, for each rewrap/migrate tick that names no tenant."""
        outcome = Outcome[None]()
        for source, tick in ticks:
            if tick.action is TickAction.REWRAP and tick.reason is RotationReason.SCHEDULED:
                for line in await self._retirement.retire_unneeded():
                    log.info("retire (tick %s): %s", tick.tick_id, line)
            try:
                check_tick(self._keys.kms, tick)
                moves = [Move(source, tick, e, old=e.material) for e in live_entries(self._keys, tick)]
                chosen = await wanted(self._keys.kms, moves)
            except KeyledgerError as exc:
                outcome.refuse(source, exc)
                continue
            for move in chosen:
                if move.error is not None:
                    log.warning("key %s: %s", move.entry.key_id, move.error)
            tenants = sorted({m.entry.tenant_id for m in chosen if m.error is None})
            log.info("%s tick %s: %d live keys to move, %d tenants", tick.action, tick.tick_id, len(chosen),
                     len(tenants))
            outcome.ticks += [tick.model_copy(update={
                "tick_id": ids.child_tick_id(tick.tick_id, tenant), "tenant_id": tenant, "parent_tick_id": tick.tick_id})
                for tenant in tenants]
        return outcome
