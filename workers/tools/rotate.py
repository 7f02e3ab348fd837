"""`keyledger rotate`: issue a rotation tick and follow it to the end with a progress bar.

The key table is read first: a tenant with no keys (unknown, or deleted) is refused before
any tick is published, so a typo never reads as "0 keys rotated". A manual or compromise
rotation of every tenant is signed with the operator key (`--operator-key`); without it, when
more than one tenant would rotate, nothing is published (the workers would refuse it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from schemas.messages import (
    SYSTEM_TENANT,
    KeyEvent,
    KeyEventType,
    KeyType,
    RotationReason,
    RotationTick,
)
from schemas.topics import Topic
from workers.core import ids
from workers.core.operator_ticks import sign_tick
from workers.errors import CheckFailed
from workers.kafka.tap import produce, read_topic
from workers.keystore.directory import KeyDirectory
from workers.tools.progress import Progress


async def active_keys(bootstrap: str, tenant: str | None, key_type: KeyType | None) -> tuple[int, int]:
    """How many active keys the rotation covers and of how many tenants; CheckFailed when a named
    tenant has none to rotate."""
    directory = KeyDirectory()
    for record in await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=120):
        event = _key_event(record.value)
        if event is not None:
            directory.apply_event(event)
    # a fan-out (no tenant) skips keyledger's own digest key, except on schedule (see services/rotation.py)
    tenants = [tenant] if tenant else sorted(directory.tenants() - {SYSTEM_TENANT})
    types = [key_type] if key_type else list(KeyType)
    covered = [t for t in tenants for k in types if directory.active(t, k) is not None]
    if tenant is not None and not covered:
        raise CheckFailed(_nothing_to_rotate(directory, tenant, key_type))
    return len(covered), len(set(covered))


def _nothing_to_rotate(directory: KeyDirectory, tenant: str, key_type: KeyType | None) -> str:
    if not directory.is_known_tenant(tenant):
        return (f"tenant {tenant!r} has no keys on keys.events: nothing rotated "
                "(check the tenant id; `keyledger status` lists the tenants)")
    if directory.is_destroyed_tenant(tenant):
        return f"tenant {tenant!r} was deleted: its keys are destroyed, nothing rotated"
    return f"tenant {tenant!r} has no active {key_type.value if key_type else ''} key: nothing rotated"


async def rotate(bootstrap: str, tenant: str | None, key_type: KeyType | None, reason: RotationReason,
                 idle_timeout: float = 15.0, operator: Ed25519PrivateKey | None = None) -> int:
    tick = RotationTick(tick_id=f"cli-{uuid.uuid4()}", issued_at=datetime.now(UTC), tenant_id=tenant,
                        key_type=key_type, reason=reason)
    total: int | None = None
    if tenant is not None or reason is not RotationReason.SCHEDULED:
        total, tenants = await active_keys(bootstrap, tenant, key_type)
        if tenant is None and operator is not None:
            tick = sign_tick(tick, operator)
        elif tenant is None and tenants > 1:
            raise CheckFailed(f"a {reason.value} rotation of every tenant ({tenants} tenants) needs the operator's "
                              "signature: pass --operator-key FILE (`keyledger operator keygen`); nothing published")
    if reason is RotationReason.SCHEDULED:
        total = None  # a scheduled tick rotates only what is due, which only the ledger knows
    await produce(bootstrap, Topic.ROTATION_TICKS, [((tenant or "scheduler").encode(), tick.to_json())])
    started = last_change = time.monotonic()
    done = 0
    with Progress("rotating", total, unit="key", done="keys rotated") as bar:
        while True:
            records = await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=120)
            now_done = sum(1 for r in records if r.value and _rotated_by(r.value, tick.tick_id))
            if now_done != done:
                done, last_change = now_done, time.monotonic()
                bar.update_to(done)
            if total is not None and done >= total:
                break
            if time.monotonic() - last_change > idle_timeout:
                break
            await asyncio.sleep(0.5)
    print(f"tick {tick.tick_id}: {done} keys rotated in {time.monotonic() - started:.1f}s")
    if total is not None and done < total:
        raise CheckFailed(f"{done} of {total} keys rotated: nothing moved for {idle_timeout:g}s; "
                          "is `keyledger run` (the keyledger-rotation group) running on this Kafka?")
    return 0


def _key_event(value: bytes | None) -> KeyEvent | None:
    """The event, or None for a tombstone or a record that is not one (it must not stop the count)."""
    if value is None:
        return None
    try:
        return KeyEvent.model_validate_json(value)
    except ValidationError:
        return None


def _rotated_by(value: bytes, tick_id: str) -> bool:
    """Whether the `keys.events` record `value` is a rotation made by `tick_id` or by its fan-out child
    for the event's tenant (ids.child_tick_id: the same function the fan-out uses, so a tick whose id
    merely starts like ours is never counted)."""
    event = _key_event(value)
    made_by = event.tick_id if event else None
    return event is not None and event.type is KeyEventType.ROTATED and made_by is not None and (
        made_by == tick_id or made_by == ids.child_tick_id(tick_id, event.tenant_id))
