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
Keys generated while a pass runs (onboarding, rotation) land where the workers'
KEYLEDGER_KMS_PROVIDER says, which during a hybrid period may still be the old
provider: the next pass (at most PASSES) moves the keys the previous one had not
seen. What still remains is listed with why: generated after the last pass (the
workers' default provider is not the target), dead-lettered, or BYOK.
Exit status 0 when none remains and no tick was dead-lettered.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import TextIO

from schemas.messages import KmsProviderName, RotationReason, RotationTick, TickAction
from workers.core import ids
from workers.errors import CheckFailed
from workers.keystore.directory import KeyEntry
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

PASSES = 3
"""Passes at most: a pass moves the keys the previous one had not seen (generated while it ran)."""


async def migrate(bootstrap: str, to: KmsProviderName, *, idle_timeout: float = 120.0,
                  out: TextIO = sys.stdout, err: TextIO = sys.stderr, passes: int = PASSES) -> int:
    run = f"cli-migrate-{uuid.uuid4()}"
    started = datetime.now(UTC)
    asked: set[str] = set()  # key ids a pass already sent a tick for
    letters: list[tuple[str, str]] = []
    failed_tenants: set[str] = set()
    for number in range(1, passes + 1):
        elsewhere = [e for e in live_keys(await load_directory(bootstrap)) if wrapping_of(e)[0] != to]
        new = [e for e in elsewhere if e.key_id not in asked]
        if number == 1:
            out.write(f"{run}: {len(elsewhere)} live keys of {len({e.tenant_id for e in elsewhere})} tenants "
                      f"are not under {to}\n")
            out.writelines(line + "\n" for line in describe(wrappings(elsewhere)))
        elif new:
            out.write(f"pass {number}: {len(new)} keys of {len({e.tenant_id for e in new})} tenants appeared "
                      f"under another provider while the previous pass ran\n")
        out.flush()
        if not new:
            break
        asked |= {e.key_id for e in new}
        pass_id = run if number == 1 else f"{run}-p{number}"
        tenants = sorted({e.tenant_id for e in new})
        ticks = [RotationTick(tick_id=ids.child_tick_id(pass_id, t), issued_at=datetime.now(UTC), tenant_id=t,
                              action=TickAction.MIGRATE, to_provider=to, reason=RotationReason.MANUAL,
                              parent_tick_id=pass_id) for t in tenants]
        sent = await send_ticks(bootstrap, ticks)
        if not await follow(bootstrap, sent, Progress("tenants", len(sent), unit="tenant", done="tenants handled", out=err), idle_timeout):
            raise CheckFailed(f"keyledger-rotation handled nothing for {idle_timeout:.0f}s; is it running with the {to} "
                              "provider configured? Run the same command again to resume")
        found = await dead_letters_for(bootstrap, {t.tick_id for t in ticks})
        by_tick = {t.tick_id: t.tenant_id for t in ticks}
        failed_tenants |= {tenant for tick_id, _ in found if (tenant := by_tick.get(tick_id))}
        letters += found
        for tick_id, error in found:
            out.write(f"FAILED {tick_id}: {error}\n")
    remaining = [e for e in live_keys(await load_directory(bootstrap)) if wrapping_of(e)[0] != to]
    if remaining:
        out.write(f"{len(remaining)} keys remain under another provider than {to}:\n")
        out.writelines(line + "\n" for line in describe(wrappings(remaining)))
        out.writelines(line + "\n" for line in _why(remaining, to, started, asked, failed_tenants))
    else:
        out.write(f"0 keys remain under another provider: every live key is under {to}; the other providers "
                  "may now leave KEYLEDGER_KMS_PROVIDERS\n")
    return 1 if remaining or letters else 0


def _why(remaining: list[KeyEntry], to: KmsProviderName, started: datetime, asked: set[str],
         failed_tenants: set[str]) -> list[str]:
    """Each remaining key counted under exactly one reason, the first that applies."""
    reasons: Counter[str] = Counter()
    for entry in remaining:
        provider = wrapping_of(entry)[0]
        if entry.tenant_id in failed_tenants:
            reasons["its tenant's migrate tick was dead-lettered (FAILED above)"] += 1
        elif entry.key_id not in asked:
            reasons[f"generated under {provider} after the last pass read the key table: the workers' "
                    f"KEYLEDGER_KMS_PROVIDER is {provider}, not {to}; set it to {to} and run again"] += 1
        elif _created_at(entry) >= started:
            reasons[f"generated under {provider} while the migration ran and not moved by its pass "
                    "(run the same command again)"] += 1
        else:
            reasons["under a tenant's own KMS key (BYOK), which migrate leaves in place"] += 1
    return [f"  {count:>7} {reason}" for reason, count in sorted(reasons.items())]


def _created_at(entry: KeyEntry) -> datetime:
    assert entry.newest is not None
    created = entry.newest.created_at
    return created if created.tzinfo else created.replace(tzinfo=UTC)
