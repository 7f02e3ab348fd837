"""`keyledger status`: the key table at a glance, read from `keys.material` and `keys.events`.

What it shows, and from where:

- tenants: live (some key not destroyed) and deleted (every key destroyed), from the key table;
- keys by type and state (active, rotated, revoked, destroyed, pending = material written but not
  yet announced);
- keys due for rotation: active keys whose material `created_at` is older than
  KEYLEDGER_ROTATION_AGE (the rotation group measures age in ledger time; the material's
  timestamp is what a reader of the topics has, and it is written when the key is minted);
- keys near wear-out: active encryption keys whose usage (the key account's credits in the
  ledger, the count the PII group enforces) reaches NEAR_WEAR_OUT of KEYLEDGER_ENCRYPT_LIMIT.
  Only a ledger another process can read answers this; for the memory ledger it is skipped
  with a note, never guessed.
- shreds: for each deleted tenant, when its keys were destroyed (the newest `destroyed` event) and
  when the shred is complete: that time + KEYLEDGER_SHRED_WINDOW, by which compaction has removed
  the wrapped keys from `keys.material` (kafka/topics.py: shred_bound). Until then a copy of the
  wrapped key may still be on the topic, and the KMS key that wraps it still unwraps it.

The reserved tenant id `keyledger-system` (keyledger's own records) is not a tenant and is skipped.
Reading never writes: no record is produced, no ledger event is created.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from schemas.topics import Topic
from workers.kafka.tap import read_topic
from workers.keys.budget import EncryptionBudget
from workers.keystore.directory import KeyDirectory, KeyEntry, KeyState
from workers.ledger import Ledger

RESERVED_TENANT = "keyledger-system"
NEAR_WEAR_OUT = 0.9  # share of KEYLEDGER_ENCRYPT_LIMIT from which a key is listed as near wear-out
SHOWN = 20  # most rows of each list in the text form; --json has them all
STATES = [KeyState.ACTIVE, KeyState.ROTATED, KeyState.REVOKED, KeyState.DESTROYED, KeyState.PENDING]


@dataclass(frozen=True)
class KeyRow:
    tenant_id: str
    key_type: str
    version: int
    key_id: str
    age_seconds: int | None = None
    used: int | None = None


@dataclass(frozen=True)
class ShredRow:
    tenant_id: str
    destroyed_at: str
    complete_at: str
    complete: bool


@dataclass
class Status:
    rotation_age: int
    encrypt_limit: int
    live_tenants: list[str] = field(default_factory=list)
    deleted_tenants: list[str] = field(default_factory=list)
    keys: dict[str, dict[str, int]] = field(default_factory=dict)
    due_for_rotation: list[KeyRow] = field(default_factory=list)
    near_wear_out: list[KeyRow] | None = None
    wear_out_note: str | None = None
    unreadable_records: int = 0
    tenant_keys: dict[str, list[str]] = field(default_factory=dict)
    shred_window: int | None = None
    shreds: list[ShredRow] = field(default_factory=list)


async def read_status(bootstrap: str, ledger: Ledger | None, *, rotation_age: int, encrypt_limit: int,
                      ledger_note: str = "", now: datetime | None = None, shred_window: int | None = None) -> Status:
    """The status from the two topics, read to their current end; wear-out from `ledger` when given."""
    directory = KeyDirectory()
    now = now or datetime.now(UTC)
    unreadable = _apply_material(directory, [(r.key, r.value) for r in await read_topic(bootstrap, Topic.KEYS_MATERIAL)])
    events = [r.value for r in await read_topic(bootstrap, Topic.KEYS_EVENTS)]
    unreadable += _apply_events(directory, events)
    status = summarise(directory, now, rotation_age=rotation_age, encrypt_limit=encrypt_limit)
    status.unreadable_records = unreadable
    if shred_window is not None:
        status.shred_window = shred_window
        status.shreds = shreds(directory, _parsed_events(events), now, shred_window)
    if ledger is None:
        status.wear_out_note = ledger_note or "skipped: no ledger to read usage from"
    else:
        status.near_wear_out = await near_wear_out(ledger, _active_encryption_keys(directory), encrypt_limit)
    return status


def _apply_material(directory: KeyDirectory, records: list[tuple[bytes | None, bytes | None]]) -> int:
    unreadable = 0
    for key, value in records:
        try:
            if value is None:
                if key is not None:
                    directory.apply_tombstone(key.decode())
            else:
                directory.apply_material(KeyMaterial.model_validate_json(value))
        except (ValidationError, UnicodeDecodeError):
            unreadable += 1  # a bad record on the topic must not hide the rest of the table
    return unreadable


def _apply_events(directory: KeyDirectory, values: list[bytes | None]) -> int:
    unreadable = 0
    for value in values:
        if value is None:
            continue
        try:
            directory.apply_event(KeyEvent.model_validate_json(value))
        except ValidationError:
            unreadable += 1
    return unreadable


def _parsed_events(values: list[bytes | None]) -> list[KeyEvent]:
    parsed = []
    for value in values:
        try:
            if value is not None:
                parsed.append(KeyEvent.model_validate_json(value))
        except ValidationError:
            continue
    return parsed


def shreds(directory: KeyDirectory, events: list[KeyEvent], now: datetime, shred_window: int) -> list[ShredRow]:
    """Each deleted tenant's shred: destroyed at its newest `destroyed` event, complete a window later (pure)."""
    destroyed_at: dict[str, datetime] = {}
    for event in events:
        if event.type is KeyEventType.DESTROYED and event.tenant_id != RESERVED_TENANT:
            at = event.occurred_at
            destroyed_at[event.tenant_id] = max(at, destroyed_at.get(event.tenant_id, at))
    rows = []
    for tenant in _tenants(directory):
        if directory.is_destroyed_tenant(tenant) and tenant in destroyed_at:
            at = destroyed_at[tenant]
            complete_at = at + timedelta(seconds=shred_window)
            rows.append(ShredRow(tenant, at.isoformat(), complete_at.isoformat(), now >= complete_at))
    return rows


def _tenants(directory: KeyDirectory) -> list[str]:
    return sorted(t for t in directory.tenants() if t != RESERVED_TENANT)


def _active_encryption_keys(directory: KeyDirectory) -> list[KeyEntry]:
    active = (directory.active(t, KeyType.ENCRYPTION) for t in _tenants(directory))
    return [entry for entry in active if entry is not None]


def summarise(directory: KeyDirectory, now: datetime, *, rotation_age: int, encrypt_limit: int) -> Status:
    """Everything but wear-out, from the key table alone (pure)."""
    status = Status(rotation_age=rotation_age, encrypt_limit=encrypt_limit)
    counts: dict[KeyType, Counter[KeyState]] = {t: Counter() for t in KeyType}
    for tenant in _tenants(directory):
        keys = directory.tenant_keys(tenant)
        (status.deleted_tenants if directory.is_destroyed_tenant(tenant) else status.live_tenants).append(tenant)
        status.tenant_keys[tenant] = [f"{k.key_type.value} v{k.version} {k.state.value}" for k in keys]
        for key in keys:
            counts[key.key_type][key.state] += 1
            age = _age_seconds(key, now)
            if key.state is KeyState.ACTIVE and age is not None and age > rotation_age:
                status.due_for_rotation.append(_row(key, age_seconds=age))
    status.keys = {t.value: {s.value: counts[t][s] for s in STATES} for t in KeyType}
    return status


def _age_seconds(key: KeyEntry, now: datetime) -> int | None:
    if key.material is None:
        return None
    created = key.material.created_at
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return int((now - created).total_seconds())


def _row(key: KeyEntry, **extra: Any) -> KeyRow:
    return KeyRow(key.tenant_id, key.key_type.value, key.version, key.key_id, **extra)


async def near_wear_out(ledger: Ledger, keys: list[KeyEntry], encrypt_limit: int) -> list[KeyRow]:
    """Active encryption keys whose seals reach NEAR_WEAR_OUT of the limit, most used first: the encryption
    budget the PII workers charge before sealing (keys/budget.py), so this is exactly what they enforce."""
    if not keys:
        return []
    used = await EncryptionBudget(ledger, encrypt_limit).used([k.key_id for k in keys])
    rows = [_row(k, used=used[k.key_id]) for k in keys
            if used.get(k.key_id, 0) >= NEAR_WEAR_OUT * encrypt_limit]
    return sorted(rows, key=lambda r: -(r.used or 0))


def to_json(status: Status) -> str:
    body = asdict(status)
    body["tenants"] = {"live": body.pop("live_tenants"), "deleted": body.pop("deleted_tenants")}
    return json.dumps(body, indent=2, sort_keys=True)


def render(status: Status, source: str) -> str:
    """The text form: counts first, then what needs attention, then the tenants."""
    lines = [f"key table from {source}",
             f"tenants: {len(status.live_tenants)} live, {len(status.deleted_tenants)} deleted"]
    states = [s.value for s in STATES]
    lines.append(f"  {'key type':<12}" + "".join(f"{s:>11}" for s in states))
    for key_type, by_state in status.keys.items():
        lines.append(f"  {key_type:<12}" + "".join(f"{by_state[s]:>11}" for s in states))
    lines.append(f"due for rotation (active, older than KEYLEDGER_ROTATION_AGE={status.rotation_age}s): "
                 + _listed(status.due_for_rotation, lambda r: f"{_days(r.age_seconds)} old"))
    wear = f"near wear-out (>= {NEAR_WEAR_OUT:.0%} of KEYLEDGER_ENCRYPT_LIMIT={status.encrypt_limit}): "
    if status.near_wear_out is None:
        lines.append(wear + (status.wear_out_note or "skipped"))
    else:
        lines.append(wear + _listed(status.near_wear_out, lambda r: f"{r.used} used"))
    if status.shred_window is not None:
        lines.append(f"shreds (complete KEYLEDGER_SHRED_WINDOW={status.shred_window}s after deletion): "
                     + _listed_shreds(status.shreds))
    for tenant in (status.live_tenants + status.deleted_tenants)[:SHOWN]:
        gone = " (deleted)" if tenant in status.deleted_tenants else ""
        lines.append(f"  {tenant}{gone}: " + ", ".join(status.tenant_keys[tenant]))
    hidden = len(status.live_tenants) + len(status.deleted_tenants) - SHOWN
    if hidden > 0:
        lines.append(f"  ... and {hidden} more tenants (--json lists them all)")
    if status.unreadable_records:
        lines.append(f"{status.unreadable_records} records on keys.material/keys.events are not valid key records")
    return "\n".join(lines)


def _listed_shreds(rows: list[ShredRow]) -> str:
    if not rows:
        return "none"
    shown = [f"\n  {r.tenant_id}: destroyed {r.destroyed_at}, "
             + (f"complete since {r.complete_at}" if r.complete else f"complete at {r.complete_at} (pending)")
             for r in rows[:SHOWN]]
    more = f"\n  ... and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return f"{len(rows)}" + "".join(shown) + more


def _listed(rows: list[KeyRow], detail: Any) -> str:
    if not rows:
        return "none"
    shown = [f"\n  {r.tenant_id} {r.key_type} v{r.version} {r.key_id} ({detail(r)})" for r in rows[:SHOWN]]
    more = f"\n  ... and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return f"{len(rows)}" + "".join(shown) + more


def _days(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds}s"
