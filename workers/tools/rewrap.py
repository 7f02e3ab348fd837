"""`keyledger rewrap --all | --tenant T`: re-wrap live keys under their KMS key's latest version.

One `rewrap` tick per tenant (reason `manual`: every live key under an
unversioned provider is re-wrapped too), followed until the rotation group has
handled them all; then, for `--all`, one `retire` tick, which raises each
Vault transit key's min_decryption_version as far as the worker can prove no
live key still needs the older versions (it logs what it retired and why not).
The keys themselves never change: same key ids, public keys, ciphertexts.
Exit status 0 when every tick was handled and none was dead-lettered.

`--scheduled` (for a CronJob) publishes one scheduled `rewrap` tick instead and
waits until the rotation group has taken it: the worker first retires the KEK
versions the previous pass left unneeded, then fans out to the tenants with a
key under an older Vault KEK version (keys under AWS KMS are left alone).
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from typing import TextIO

from schemas.messages import RotationReason, RotationTick, TickAction
from workers.core import ids
from workers.core.material import material_fingerprint
from workers.errors import CheckFailed
from workers.tools.progress import Progress
from workers.tools.ticks import (
    dead_letters_for,
    describe,
    follow,
    live_keys,
    load_directory,
    send_ticks,
    wrappings,
)


async def rewrap(bootstrap: str, tenant: str | None, *, idle_timeout: float = 120.0,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    directory = await load_directory(bootstrap)
    if tenant is not None and not live_keys(directory, tenant):
        raise CheckFailed(f"tenant {tenant!r} has no live keys on keys.material: nothing to re-wrap "
                          "(check the tenant id; `keyledger status` lists the tenants)")
    keys = live_keys(directory, tenant)
    before = {e.key_id: material_fingerprint(e.newest) for e in keys if e.newest is not None}
    tenants = sorted({e.tenant_id for e in keys})
    run = f"cli-rewrap-{uuid.uuid4()}"
    now = datetime.now(UTC)
    ticks = [RotationTick(tick_id=ids.child_tick_id(run, t), issued_at=now, tenant_id=t, action=TickAction.REWRAP,
                          reason=RotationReason.MANUAL, parent_tick_id=run) for t in tenants]
    out.write(f"{run}: re-wrapping {len(keys)} live keys of {len(tenants)} tenants\n")
    out.writelines(line + "\n" for line in describe(wrappings(keys)))
    out.flush()
    sent = await send_ticks(bootstrap, ticks)
    finished = await follow(bootstrap, sent, Progress("tenants", len(sent), unit="tenant", done="tenants handled", out=err), idle_timeout)
    if not finished:
        raise CheckFailed(f"keyledger-rotation handled nothing for {idle_timeout:.0f}s; is it running? Run the same "
                          "command again to resume (keys already re-wrapped are skipped)")
    letters = await dead_letters_for(bootstrap, {t.tick_id for t in ticks})
    for tick_id, error in letters:
        out.write(f"FAILED {tick_id}: {error}\n")
    if tenant is None:
        retire = RotationTick(tick_id=f"{run}/retire", issued_at=datetime.now(UTC), action=TickAction.RETIRE,
                              parent_tick_id=run)
        retired = await follow(bootstrap, await send_ticks(bootstrap, [retire]), Progress("retire", 1, unit="tick", done="retire ticks handled", out=err),
                               idle_timeout)
        out.write("retire tick handled: the rotation worker logged each KEK's min_decryption_version\n" if retired
                  else "retire tick not handled yet\n")
    after = live_keys(await load_directory(bootstrap), tenant)
    moved = sum(1 for e in after if e.newest is not None and before.get(e.key_id) not in (None, material_fingerprint(e.newest)))
    out.write(f"{run}: {moved} keys re-wrapped, {len(letters)} tenants failed; now:\n")
    out.writelines(line + "\n" for line in describe(wrappings(after)))
    return 1 if letters else 0


async def rewrap_scheduled(bootstrap: str, *, idle_timeout: float = 120.0, out: TextIO = sys.stdout,
                           err: TextIO = sys.stderr) -> int:
    tick = RotationTick(tick_id=f"cron-rewrap-{uuid.uuid4()}", issued_at=datetime.now(UTC), action=TickAction.REWRAP,
                        reason=RotationReason.SCHEDULED)
    sent = await send_ticks(bootstrap, [tick])
    if not await follow(bootstrap, sent, Progress("rewrap tick", 1, unit="tick", done="ticks taken", out=err),
                        idle_timeout):
        raise CheckFailed(f"keyledger-rotation did not take tick {tick.tick_id} within {idle_timeout:.0f}s; is it "
                          "running? The tick stays on keys.rotation-ticks and will be handled when it is")
    letters = await dead_letters_for(bootstrap, {tick.tick_id})
    for tick_id, error in letters:
        out.write(f"FAILED {tick_id}: {error}\n")
    out.write(f"{tick.tick_id}: taken; tenants with keys under an older KEK version get one rewrap tick each\n")
    return 1 if letters else 0
