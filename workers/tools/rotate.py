"""`keyledger rotate`: issue a rotation tick and follow it to the end with a progress bar."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import TextIO

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
from workers.kafka.tap import produce, read_topic
from workers.keystore.directory import KeyDirectory


def progress(done: int, total: int | None, started: float, out: TextIO = sys.stderr) -> None:
    rate = done / max(time.monotonic() - started, 1e-6)
    if total:
        width = 30
        filled = int(width * min(done, total) / total)
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} keys rotated ({rate:,.0f}/s)")
    else:
        out.write(f"\r{done} keys rotated ({rate:,.0f}/s)")
    out.flush()


async def active_keys(bootstrap: str, tenant: str | None, key_type: KeyType | None) -> int:
    directory = KeyDirectory()
    for record in await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=120):
        if record.value is not None:
            directory.apply_event(KeyEvent.model_validate_json(record.value))
    # a fan-out (no tenant) skips keyledger's own digest key, except on schedule (see services/rotation.py)
    tenants = [tenant] if tenant else sorted(directory.tenants() - {SYSTEM_TENANT})
    types = [key_type] if key_type else list(KeyType)
    return sum(1 for t in tenants for k in types if directory.active(t, k) is not None)


async def rotate(bootstrap: str, tenant: str | None, key_type: KeyType | None, reason: RotationReason,
                 idle_timeout: float = 15.0) -> int:
    tick = RotationTick(tick_id=f"cli-{uuid.uuid4()}", issued_at=datetime.now(UTC), tenant_id=tenant,
                        key_type=key_type, reason=reason)
    # a scheduled tick rotates only what is due, which only the ledger knows: no total then
    total = None if reason is RotationReason.SCHEDULED and tenant is None else await active_keys(bootstrap, tenant, key_type)
    await produce(bootstrap, Topic.ROTATION_TICKS, [((tenant or "scheduler").encode(), tick.to_json())])
    started = last_change = time.monotonic()
    done = 0
    while True:
        records = await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=120)
        now_done = sum(1 for r in records if r.value and _rotated_by(r.value, tick.tick_id))
        if now_done != done:
            done, last_change = now_done, time.monotonic()
        progress(done, total, started)
        if total is not None and done >= total:
            break
        if time.monotonic() - last_change > idle_timeout:
            break
        await asyncio.sleep(0.5)
    sys.stderr.write("\n")
    print(f"tick {tick.tick_id}: {done} keys rotated in {time.monotonic() - started:.1f}s")
    return 0 if total is None or done >= total else 1


def _rotated_by(value: bytes, tick_id: str) -> bool:
    """Whether the `keys.events` record `value` is a rotation made by `tick_id` or by its fan-out child
    for the event's tenant (ids.child_tick_id: the same function the fan-out uses, so a tick whose id
    merely starts like ours is never counted)."""
    event = KeyEvent.model_validate_json(value)
    made_by = event.tick_id
    return event.type is KeyEventType.ROTATED and made_by is not None and (
        made_by == tick_id or made_by == ids.child_tick_id(tick_id, event.tenant_id))
