"""What rewrap, its fan-out and migration share: a key to re-wrap for a tick (`Move`), which keys a
tick covers, which of them need moving, and the ids and reasons derived from the tick alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from schemas.errors import ErrorCode
from schemas.messages import KeyMaterial, Op, RotationReason, RotationTick, TickAction
from workers.core import ids
from workers.core.b64 import b64decode
from workers.core.material import provider_name, wrapped_kek_version
from workers.errors import BadInput, KeyledgerError, KeyRefused, Unavailable
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.kms import (
    Kms,
    KmsError,
    KmsRefused,
    UnwrapRequest,
    encryption_context,
    is_shared_key,
    kms_for,
    provider_of,
)
from workers.source import Source

log = logging.getLogger("keyledger.rewrap")

Tick = tuple[Source, RotationTick]
LIVE = (KeyState.ACTIVE, KeyState.ROTATED, KeyState.REVOKED)
REWRAPPING = (TickAction.REWRAP, TickAction.MIGRATE)


@dataclass(slots=True)
class Move:
    """One key to re-wrap for one tick."""

    source: Source
    """The tick that asked."""
    tick: RotationTick
    entry: KeyEntry
    old: KeyMaterial | None = None
    new: KeyMaterial | None = None
    error: KeyledgerError | Unavailable | None = None
    """Why this key is not moved (this run): refused, or out of reach for now."""

    @property
    def transfer_id(self) -> int:
        return rewrap_transfer_id(self.entry.key_id, self.tick)

    @property
    def context(self) -> dict[str, str]:
        return encryption_context(self.entry.tenant_id, self.entry.key_id, self.entry.key_type)

    @property
    def current(self) -> KeyMaterial:
        """The accepted record being re-wrapped (set once the move is planned)."""
        assert self.old is not None
        return self.old

    def unwrap_request(self) -> UnwrapRequest:
        return UnwrapRequest(b64decode(self.current.wrapped_key), self.current.kms_key_id, self.context)


def rewrap_transfer_id(key_id: str, tick: RotationTick) -> int:
    """One rewrap per key per run: a replayed tick (or a per-tenant tick of the same fan-out) lands on it."""
    return ids.transfer_id(Op.REWRAP, key_id, "run", run_id(tick))


def run_id(tick: RotationTick) -> str:
    return tick.parent_tick_id or tick.tick_id


def reason_of(tick: RotationTick) -> str:
    """Derived from the tick alone: a replay republishes the same audit event."""
    if tick.action is TickAction.MIGRATE:
        return f"migration to {tick.to_provider}"
    return f"{tick.reason.value} rewrap to the latest KEK version"


def live_entries(keys: KeyService, tick: RotationTick) -> list[KeyEntry]:
    """The keys a tick covers: its tenant's (or every tenant's), of its key type (or both), still live."""
    directory = keys.directory
    entries = directory.tenant_keys(tick.tenant_id) if tick.tenant_id else directory.entries()
    return [e for e in entries if e.state in LIVE and e.material is not None
            and (tick.key_type is None or e.key_type is tick.key_type)]


def check_tick(kms: Kms, tick: RotationTick) -> None:
    """A migrate tick names a provider this process can wrap with, and that provider has a default key."""
    if tick.action is not TickAction.MIGRATE:
        return
    if tick.to_provider is None:
        raise BadInput("invalid RotationTick: to_provider: a migrate tick names the provider to move to")
    target = target_adapter(kms, tick.to_provider)
    if not target.default_key_id:
        raise KeyRefused(f"the {tick.to_provider} provider has no default key", ErrorCode.KMS_REFUSED)


def target_adapter(kms: Kms, provider: str) -> Kms:
    """The adapter that wraps with `provider`; refused when this process has none."""
    try:
        adapter = kms_for(kms, provider)
    except KmsRefused as exc:
        raise KeyRefused(str(exc), ErrorCode.KMS_REFUSED) from None
    if provider_of(adapter) != provider:
        raise KeyRefused(f"this process has no {provider} KMS provider (set KEYLEDGER_KMS_PROVIDERS)",
                         ErrorCode.KMS_REFUSED)
    return adapter


async def wanted(kms: Kms, moves: list[Move]) -> list[Move]:
    """The moves whose key is not yet where the tick wants it (KEK versions read once per KEK and
    call). A KEK the KMS will not describe leaves its keys with that error."""
    latest: dict[tuple[str, str], int | None] = {}
    refused: dict[tuple[str, str], KeyRefused] = {}
    chosen = []
    for move in moves:
        material, tick = move.current, move.tick
        if tick.action is TickAction.MIGRATE:
            if provider_name(material) == tick.to_provider:
                continue
            if not is_shared_key(kms, material.kms_provider, material.kms_key_id):
                log.warning("key %s is under the tenant's own KMS key %s: not migrated", move.entry.key_id,
                            material.kms_key_id)
                continue
            chosen.append(move)
            continue
        where = (provider_name(material), material.kms_key_id)
        if where not in latest and where not in refused:
            try:
                latest[where] = await _latest_version(kms, material)
            except KeyRefused as exc:
                refused[where] = exc
        if where in refused:
            move.error = refused[where]
            chosen.append(move)
            continue
        newest = latest[where]
        if newest is None:
            if tick.reason is RotationReason.MANUAL:
                chosen.append(move)  # unversioned: an explicit request re-wraps under the current backing key
        elif (wrapped_kek_version(material) or material.kek_version or 0) < newest:
            # the field where the blob does not show its version (gcp, azure): a stale field only
            # skips or repeats a rewrap; retirement still trusts the blob alone
            chosen.append(move)
    return chosen


async def _latest_version(kms: Kms, material: KeyMaterial) -> int | None:
    """The latest version of the KEK that wrapped `material`; None when the provider has none."""
    try:
        adapter = kms_for(kms, material.kms_provider)
        if not adapter.capabilities.kek_versions:
            return None
        return (await adapter.kek_versions(material.kms_key_id)).latest
    except KmsRefused as exc:
        raise KeyRefused(f"KEK {material.kms_key_id}: {exc}", ErrorCode.KMS_REFUSED) from None


def failure(move: Move, error: KmsError) -> KeyledgerError | Unavailable:
    if isinstance(error, Unavailable):
        return error
    return KeyRefused(f"KMS refused to re-wrap {move.entry.key_id}: {error}", ErrorCode.KMS_REFUSED)

