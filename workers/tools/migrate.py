"""`keyledger migrate --to aws|vault|pkcs11|gcp|azure`: move every live key to another KMS provider, resumable.

Workers must run with both providers configured (KEYLEDGER_KMS_PROVIDERS=aws,vault
and each provider's settings; KEYLEDGER_KMS_PROVIDER says where new keys go).
One `migrate` tick per tenant that still has a key elsewhere; each key is
unwrapped under its provider, wrapped under the target's default key, proven
to unwrap to the same key, then published and accepted by the ledger (one
`rewrap` operation per key). A key already under the target is skipped, so the
command resumes where a previous run stopped. Keys under a tenant's own KMS key
(BYOK) are not moved. At the end it prints how many keys remain elsewhere: the
old provider may leave KEYLEDGER_KMS_PROVIDERS only when none remains.
Exit status 0 when none remains and no tick was dead-lettered.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from typing import TextIO

from schemas.messages import KmsProviderName, RotationReason, RotationTick, TickAction
from workers.core import ids
from workers.errors import CheckFailed
from workers.tools.progress import Progress
from workers.tools.ticks import (
    dead_letters_for,
    describe,
    follow,
    live_keys,
    load_directory,
    send_ticks,
    wrapping_of,
    wrappings,
)


async def migrate(bootstrap: str, to: KmsProviderName, *, idle_timeout: float = 120.0,
                  out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    elsewhere = [e for e in live_keys(await load_directory(bootstrap)) if wrapping_of(e)[0] != to]
    tenants = sorted({e.tenant_id for e in elsewhere})
    run = f"cli-migrate-{uuid.uuid4()}"
    now = datetime.now(UTC)
    ticks = [RotationTick(tick_id=ids.child_tick_id(run, t), issued_at=now, tenant_id=t, action=TickAction.MIGRATE,
                          to_provider=to, reason=RotationReason.MANUAL, parent_tick_id=run) for t in tenants]
    out.write(f"{run}: {len(elsewhere)} live keys of {len(tenants)} tenants are not under {to}\n")
    out.writelines(line + "\n" for line in describe(wrappings(elsewhere)))
    out.flush()
    letters: list[tuple[str, str]] = []
    if ticks:
        sent = await send_ticks(bootstrap, ticks)
        if not await follow(bootstrap, sent, Progress("tenants", len(sent), unit="tenant", done="tenants handled", out=err), idle_timeout):
            raise CheckFailed(f"keyledger-rotation handled nothing for {idle_timeout:.0f}s; is it running with the {to} "
                              "provider configured? Run the same command again to resume")
        letters = await dead_letters_for(bootstrap, {t.tick_id for t in ticks})
        for tick_id, error in letters:
            out.write(f"FAILED {tick_id}: {error}\n")
    remaining = [e for e in live_keys(await load_directory(bootstrap)) if wrapping_of(e)[0] != to]
    if remaining:
        out.write(f"{len(remaining)} keys remain under another provider than {to} "
                  "(keys under a tenant's own KMS key are not migrated):\n")
        out.writelines(line + "\n" for line in describe(wrappings(remaining)))
    else:
        out.write(f"0 keys remain under another provider: every live key is under {to}; the other providers "
                  "may now leave KEYLEDGER_KMS_PROVIDERS\n")
    return 1 if remaining or letters else 0
