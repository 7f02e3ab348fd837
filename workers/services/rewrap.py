"""Rewrap and provider migration: keys.rotation-ticks with `action` rewrap | migrate -> new wrappings.

A rewrap changes how a key is wrapped, never the key: same key id, version
and public key, new `wrapped_key` (and `kek_version`, `kms_provider`,
`kms_key_id` for a migration). Per key, in this order (a crash between any two
steps loses nothing, a replay duplicates nothing):

  1. the record to rewrap is the one the ledger accepted (keys/pins.py), never
     merely the newest on the topic;
  2. the KMS re-wraps it: `rewrap` (Vault transit/rewrap in batches, AWS
     ReEncrypt: the plaintext never reaches this process), or for a migration
     unwrap under the old provider, wrap under the new (batched where the
     provider can) and unwrap the new wrapping once to prove it holds the same key
     before anything is published;
  3. the new `keys.material` record is published (acks=all) and held as a candidate;
  4. a `rewrap` transfer on the key account carries the new record's fingerprint:
     from then on the ledger accepts it (the groups' emitter creates it, then
     publishes the `kms.audit` event with the same id).

The transfer id is derived from the key and the tick that asked (its root: the
fan-out or CLI run), so a replayed tick finds the transfer, republishes its
audit event unchanged (the transfer keeps where its tick was, so a replay that
arrives as another record, e.g. a fan-out done again, still says the same) and
calls no KMS. A crash after step 3 leaves a record
the ledger never accepted: it is ignored, and the replay wraps again. A key
destroyed while its rewrap ran has a closed account, so the ledger refuses the
transfer; its tombstone is then published again, after the new record.

Which keys: live ones (announced, not destroyed). `rewrap` moves keys under a
versioned KEK (Vault) below its latest version; a `manual` tick (the CLI) also
re-wraps every key under an unversioned provider (AWS ReEncrypt picks up
rotated backing keys; AWS exposes no version to compare). `migrate` moves every
key not already under `to_provider` (resumable: moved keys are skipped) that
is under its provider's shared default key; a tenant's own KMS key (BYOK) is
never moved to another provider's default key, it is reported instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from schemas.errors import ErrorCode
from schemas.messages import AuditSource, KeyMaterial, Op, RotationReason, RotationTick, TickAction
from schemas.topics import Topic
from workers.core import ids, signing
from workers.core.b64 import b64decode, b64encode
from workers.core.material import material_fingerprint, provider_name, wrapped_kek_version
from workers.errors import BadInput, KeyledgerError, KeyRefused, Unavailable
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord
from workers.keys.pins import settle
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.kms import (
    DataKey,
    Kms,
    KmsError,
    KmsRefused,
    Rewrapped,
    UnwrapRequest,
    WrapRequest,
    decrypt_many,
    encryption_context,
    is_shared_key,
    kms_for,
    provider_of,
    rewrap_many,
    wrap_many,
)
from workers.ledger import Account, AccountFlags, Ledger
from workers.ledger.records import OpRecord, pack_origin, unpack_origin
from workers.services.outcome import Outcome

log = logging.getLogger("keyledger.rewrap")

Tick = tuple[InboundRecord, RotationTick]
LIVE = (KeyState.ACTIVE, KeyState.ROTATED, KeyState.REVOKED)
REWRAPPING = (TickAction.REWRAP, TickAction.MIGRATE)


@dataclass(slots=True)
class Move:
    """One key to re-wrap for one tick."""

    record: InboundRecord
    tick: RotationTick
    entry: KeyEntry
    old: KeyMaterial | None = None
    new: KeyMaterial | None = None
    error: KeyledgerError | Unavailable | None = None

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


@dataclass(slots=True)
class Pass:
    """What planning found: the moves to make (some already failed), and the ops of moves a crashed
    or repeated run already made, to republish as they were."""

    moves: list[Move] = field(default_factory=list)
    replayed: list[OpRecord] = field(default_factory=list)


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


class RewrapService:
    def __init__(self, keys: KeyService, ledger: Ledger, publisher: Publisher) -> None:
        self._keys = keys
        self._ledger = ledger
        self._publisher = publisher
        self.rewrapped = 0

    @property
    def kms(self) -> Kms:
        return self._keys.kms

    # --- fan-out ------------------------------------------------------------------

    async def fan_out(self, ticks: Sequence[Tick]) -> Outcome:
        """One tick per tenant with a key to move, for each rewrap/migrate tick that names no tenant."""
        outcome = Outcome()
        for record, tick in ticks:
            if tick.action is TickAction.REWRAP and tick.reason is RotationReason.SCHEDULED:
                # what the previous scheduled pass left unneeded; this pass's wrappings retire at the next
                for line in await self.retire_unneeded():
                    log.info("retire (tick %s): %s", tick.tick_id, line)
            try:
                self._check(tick)
                moves = [Move(record, tick, e, old=e.material) for e in live_entries(self._keys, tick)]
                wanted = await self._wanted(moves)
            except KeyledgerError as exc:
                outcome.refuse(record, exc)
                continue
            for move in wanted:
                if move.error is not None:
                    log.warning("key %s: %s", move.entry.key_id, move.error)
            tenants = sorted({m.entry.tenant_id for m in wanted if m.error is None})
            log.info("%s tick %s: %d live keys to move, %d tenants", tick.action, tick.tick_id, len(wanted),
                     len(tenants))
            outcome.outputs += [Outgoing.of(Topic.ROTATION_TICKS, tenant, tick.model_copy(update={
                "tick_id": ids.child_tick_id(tick.tick_id, tenant), "tenant_id": tenant, "parent_tick_id": tick.tick_id}))
                for tenant in tenants]
        return outcome

    # --- retiring KEK versions ------------------------------------------------------

    async def retire(self, ticks: Sequence[Tick]) -> Outcome:
        """`retire` ticks: raise each versioned KEK's min_decryption_version as far as no live key needs."""
        if ticks:
            for line in await self.retire_unneeded():
                log.info("retire (tick %s): %s", ticks[-1][1].tick_id, line)
        return Outcome()

    async def retire_unneeded(self) -> list[str]:
        """For each versioned KEK (Vault transit key) this process uses: the lowest version any live key's
        accepted record is wrapped under (its `vault:vN:` bytes, not its fields) is the new minimum; older
        versions stop unwrapping. Nothing is retired for a KEK when a key under it cannot be proven
        (no accepted record here); the minimum never rises past the latest version."""
        report = []
        for provider, adapter in self._versioned_adapters():
            floors, unproven = await self._floors(provider)
            for kek in sorted(set(floors) | {adapter.default_key_id}):
                if kek in unproven:
                    report.append(f"{provider} KEK {kek}: kept, {unproven[kek]}")
                    continue
                try:
                    versions = await adapter.kek_versions(kek)
                except KmsRefused as exc:  # e.g. a BYOK transit key this token may not read: leave it alone
                    report.append(f"{provider} KEK {kek}: kept, its versions cannot be read ({exc})")
                    continue
                floor, oldest = floors.get(kek, (versions.latest, None))
                floor = min(floor, versions.latest)
                if floor > versions.min_decryption:
                    await adapter.retire_kek_versions(floor, kek)
                    report.append(f"{provider} KEK {kek}: versions below v{floor} retired "
                                  f"(was v{versions.min_decryption}; every live key is at v{floor} or later)")
                else:
                    report.append(f"{provider} KEK {kek}: min_decryption_version stays "
                                  f"v{versions.min_decryption} (oldest version in use: v{floor}"
                                  + (f", by key {oldest}" if oldest and floor < versions.latest else "")
                                  + f", latest v{versions.latest})")
        return report

    def _versioned_adapters(self) -> list[tuple[str, Kms]]:
        """(provider, adapter) of each configured provider whose KEKs have versions."""
        return [(name, a) for name, a in self.kms.providers.items() if a.capabilities.kek_versions]

    async def _floors(self, provider: str) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
        """Per KEK of `provider`: the lowest version a live key needs (and one key that needs it), and
        the KEKs with a key whose record cannot be proven (why)."""
        entries = [e for e in self._keys.directory.entries()
                   if e.state is not KeyState.DESTROYED and (e.newest or e.material) is not None
                   and self._routes_to(e.newest or e.material, provider)]
        accounts = {a.id: a for a in await self._ledger.lookup_accounts([ids.from_hex(e.key_id) for e in entries])}
        floors: dict[str, tuple[int, str]] = {}
        unproven: dict[str, str] = {}
        for entry in entries:
            newest = entry.newest or entry.material
            assert newest is not None
            account = accounts.get(ids.from_hex(entry.key_id))
            if account is not None and account.flags & AccountFlags.CLOSED:
                continue
            record = newest
            if account is not None:  # else a key being created: its newest record is the one it will have
                try:
                    record = await self._accepted(entry, account)
                except KeyledgerError as exc:
                    unproven.setdefault(newest.kms_key_id, f"key {entry.key_id}: {exc}")
                    continue
            version = wrapped_kek_version(record)
            if version is None:
                unproven.setdefault(record.kms_key_id, f"key {entry.key_id} has no versioned wrapping")
                continue
            floors[record.kms_key_id] = min((version, entry.key_id), floors.get(record.kms_key_id, (version, entry.key_id)))
        return floors, unproven

    def _routes_to(self, material: KeyMaterial | None, provider: str) -> bool:
        """Whether `provider` unwraps `material` here (a single adapter unwraps every record)."""
        assert material is not None
        try:
            return provider_of(kms_for(self.kms, material.kms_provider)) == provider
        except KmsRefused:
            return False

    # --- one tenant per tick -------------------------------------------------------

    async def rewrap(self, ticks: Sequence[Tick]) -> Outcome:
        """At most one tick per tenant (a round). Keys whose KMS is out of reach make their tick wait;
        a key the KMS refuses sends its tick to the DLQ once the tenant's other keys are done."""
        outcome = Outcome()
        moves: list[Move] = []
        for record, tick in ticks:
            try:
                self._check(tick)
                moves += self._moves_of(record, tick)
            except KeyledgerError as exc:
                if self._keys.waits_for_tenant(exc, record):
                    outcome.blocked.append(record)  # the key table has not read this tenant yet
                else:
                    outcome.refuse(record, exc)
        found = await self._plan(moves)
        await self._perform(found.moves)
        done = [m for m in found.moves if m.new is not None and m.error is None]
        await self._publish(done)
        outcome.ops += found.replayed + [self._op(m) for m in done]
        outcome.then.append(partial(self._after, done))
        self._settle_ticks(ticks, found.moves, outcome)
        self.rewrapped += len(done)
        if done or found.replayed:
            log.info("re-wrapped %d keys (%d replayed, %d so far)", len(done), len(found.replayed), self.rewrapped)
        return outcome

    def _check(self, tick: RotationTick) -> None:
        if tick.action is not TickAction.MIGRATE:
            return
        if tick.to_provider is None:
            raise BadInput("invalid RotationTick: to_provider: a migrate tick names the provider to move to")
        target = self._target(tick.to_provider)  # refused when this process cannot wrap with it
        if not target.default_key_id:
            raise KeyRefused(f"the {tick.to_provider} provider has no default key", ErrorCode.KMS_REFUSED)

    def _target(self, provider: str) -> Kms:
        try:
            adapter = kms_for(self.kms, provider)
        except KmsRefused as exc:
            raise KeyRefused(str(exc), ErrorCode.KMS_REFUSED) from None
        if provider_of(adapter) != provider:
            raise KeyRefused(f"this process has no {provider} KMS provider (set KEYLEDGER_KMS_PROVIDERS)",
                             ErrorCode.KMS_REFUSED)
        return adapter

    def _moves_of(self, record: InboundRecord, tick: RotationTick) -> list[Move]:
        assert tick.tenant_id is not None
        directory = self._keys.directory
        if not directory.is_known_tenant(tick.tenant_id):
            raise KeyRefused(f"unknown tenant {tick.tenant_id}", ErrorCode.UNKNOWN_TENANT)
        return [Move(record, tick, entry) for entry in live_entries(self._keys, tick)]

    async def _plan(self, moves: list[Move]) -> Pass:
        """Drop keys without a live account, replay what a crashed run finished, settle the rest on
        the record the ledger accepted, and keep those that need moving."""
        found = Pass()
        if not moves:
            return found
        accounts = {a.id: a for a in await self._ledger.lookup_accounts([ids.from_hex(m.entry.key_id) for m in moves])}
        existing = {t.id: t for t in await self._ledger.lookup_transfers([m.transfer_id for m in moves])}
        pending: list[Move] = []
        for move in moves:
            account = accounts.get(ids.from_hex(move.entry.key_id))
            if account is None or account.flags & AccountFlags.CLOSED:
                continue  # not yet created (its keygen completes it) or destroyed meanwhile
            done = existing.get(move.transfer_id)
            if done is not None:  # republished as it was: same fingerprint, same triggering record
                source = unpack_origin(Topic.ROTATION_TICKS, done.user_data_128)
                found.replayed.append(self._op(move, tag=done.user_data_64, source=source))
                self._keys.directory.settle(move.entry.key_id, [done.user_data_64])
                continue
            try:
                move.old = await self._accepted(move.entry, account)
            except KeyledgerError as exc:
                log.warning("key %s not re-wrapped: %s", move.entry.key_id, exc)
                move.error = exc
                found.moves.append(move)
                continue
            pending.append(move)
        found.moves += await self._wanted(pending)
        return found

    async def _accepted(self, entry: KeyEntry, account: Account) -> KeyMaterial:
        return await settle(self._keys.directory, self._ledger, entry, account)

    async def _wanted(self, moves: list[Move]) -> list[Move]:
        """The moves whose key is not yet where the tick wants it (KEK versions read once per KEK and
        call). A KEK the KMS will not describe leaves its keys with that error."""
        latest: dict[tuple[str, str], int | None | KeyledgerError] = {}
        wanted = []
        for move in moves:
            material, tick = move.current, move.tick
            if tick.action is TickAction.MIGRATE:
                if provider_name(material) == tick.to_provider:
                    continue
                if not is_shared_key(self.kms, material.kms_provider, material.kms_key_id):
                    log.warning("key %s is under the tenant's own KMS key %s: not migrated", move.entry.key_id,
                                material.kms_key_id)
                    continue
                wanted.append(move)
                continue
            where = (provider_name(material), material.kms_key_id)
            if where not in latest:
                latest[where] = await self._latest_version(material)
            newest = latest[where]
            if isinstance(newest, KeyledgerError):
                move.error = newest
                wanted.append(move)
            elif newest is None:
                if tick.reason is RotationReason.MANUAL:
                    wanted.append(move)  # unversioned: an explicit request re-wraps under the current backing key
            elif (wrapped_kek_version(material) or 0) < newest:
                wanted.append(move)
        return wanted

    async def _latest_version(self, material: KeyMaterial) -> int | None | KeyledgerError:
        """The latest version of the KEK that wrapped `material`; None when the provider has none."""
        try:
            adapter = kms_for(self.kms, material.kms_provider)
            if not adapter.capabilities.kek_versions:
                return None
            return (await adapter.kek_versions(material.kms_key_id)).latest
        except KmsRefused as exc:
            return KeyRefused(f"KEK {material.kms_key_id}: {exc}", ErrorCode.KMS_REFUSED)

    # --- KMS ---------------------------------------------------------------------------

    async def _perform(self, moves: list[Move]) -> None:
        todo = [m for m in moves if m.error is None]
        groups: dict[tuple[str, str | None], list[Move]] = {}
        for move in todo:
            to = move.tick.to_provider if move.tick.action is TickAction.MIGRATE else None
            groups.setdefault((provider_name(move.current), to), []).append(move)
        for (source, target), group in groups.items():
            try:
                adapter = kms_for(self.kms, source)
            except KmsRefused as exc:
                for move in group:
                    move.error = KeyRefused(str(exc), ErrorCode.KMS_REFUSED)
                continue
            if target is None:
                await self._rewrap(adapter, group)
            else:
                await self._migrate(adapter, self._target(target), group)

    async def _rewrap(self, adapter: Kms, moves: list[Move]) -> None:
        results = await rewrap_many(adapter, [m.unwrap_request() for m in moves])
        for move, result in zip(moves, results, strict=True):
            if isinstance(result, KmsError):
                move.error = _failure(move, result)
            else:
                move.new = _rewrapped(move.current, result, provider_of(adapter))

    async def _migrate(self, source: Kms, target: Kms, moves: list[Move]) -> None:
        """Unwrap under `source`, check a signing key against its public key, wrap under `target`'s default
        key, unwrap that once under `target`: only a wrapping proven to hold the same key is published."""
        unwrapped = await decrypt_many(source, [m.unwrap_request() for m in moves])
        ready: list[tuple[Move, bytes]] = []
        for move, plaintext in zip(moves, unwrapped, strict=True):
            if isinstance(plaintext, KmsError):
                move.error = _failure(move, plaintext)
            elif not _same_key(move, plaintext):
                move.error = KeyRefused(f"key {move.entry.key_id} unwrapped to another key than its public key",
                                        ErrorCode.MATERIAL_MISMATCH)
            else:
                ready.append((move, plaintext))
        del unwrapped
        try:
            wrapped: list[DataKey | KmsError] = await wrap_many(target, [WrapRequest(p, None, m.context)
                                                                          for m, p in ready])
        except KmsRefused as exc:  # an adapter that cannot wrap a given key refuses them all
            wrapped = [exc] * len(ready)
        checks: list[tuple[Move, bytes, DataKey]] = []
        for (move, plaintext), result in zip(ready, wrapped, strict=True):
            if isinstance(result, KmsError):
                move.error = _failure(move, result)
            else:
                checks.append((move, plaintext, result))
        proofs = await decrypt_many(target, [UnwrapRequest(w.wrapped, w.kms_key_id, m.context) for m, _, w in checks])
        for (move, plaintext, data_key), proof in zip(checks, proofs, strict=True):
            if isinstance(proof, KmsError):
                move.error = _failure(move, proof)
            elif proof != plaintext:
                move.error = KeyRefused(f"the {provider_of(target)} wrapping of {move.entry.key_id} did not unwrap "
                                        "to the same key", ErrorCode.KMS_REFUSED)
            else:
                move.new = move.current.model_copy(update={
                    "kms_provider": provider_of(target), "kms_key_id": data_key.kms_key_id,
                    "wrapped_key": b64encode(data_key.wrapped), "kek_version": data_key.kek_version})

    # --- durability ------------------------------------------------------------------

    async def _publish(self, done: list[Move]) -> None:
        """Step 3: the new records are durable before any transfer names them."""
        if not done:
            return
        await self._publisher.publish(Outgoing.of(Topic.KEYS_MATERIAL, m.entry.key_id, m.new) for m in done)
        for move in done:
            assert move.new is not None
            self._keys.directory.apply_material(move.new)

    def _op(self, move: Move, tag: int | None = None, source: AuditSource | None = None) -> OpRecord:
        if tag is None:
            assert move.new is not None
            tag = material_fingerprint(move.new)
        source = source or move.record.source
        return OpRecord(move.transfer_id, move.entry.tenant_id, move.entry.key_id, Op.REWRAP, source,
                        reason=reason_of(move.tick), tag=tag, origin=pack_origin(source))

    async def _after(self, done: list[Move]) -> None:
        """Once the transfers are durable: use the new records here, and tombstone again any key that was
        destroyed while it was re-wrapped (its account is closed: the ledger refused the rewrap)."""
        if not done:
            return
        accounts = await self._ledger.lookup_accounts([ids.from_hex(m.entry.key_id) for m in done])
        closed = {ids.to_hex(a.id) for a in accounts if a.flags & AccountFlags.CLOSED}
        for move in done:
            if move.entry.key_id not in closed:
                assert move.new is not None
                self._keys.directory.settle(move.entry.key_id, [material_fingerprint(move.new)])
        if closed:
            log.warning("%d keys were destroyed while re-wrapped: tombstoned again", len(closed))
            await self._publisher.publish(Outgoing.of(Topic.KEYS_MATERIAL, key_id, None) for key_id in sorted(closed))

    def _settle_ticks(self, ticks: Sequence[Tick], moves: list[Move], outcome: Outcome) -> None:
        """A tick waits while a key of it is out of reach; else a refused key sends it to the DLQ."""
        failures: dict[int, list[Move]] = {}
        for move in moves:
            if move.error is not None:
                failures.setdefault(id(move.record), []).append(move)
        dead = {id(record) for record, _ in outcome.dead} | {id(record) for record in outcome.blocked}
        for record, _ in ticks:
            failed = failures.get(id(record), [])
            if not failed or id(record) in dead:
                continue
            if any(isinstance(m.error, Unavailable) for m in failed):
                outcome.blocked.append(record)
            else:
                first = failed[0].error
                assert isinstance(first, KeyledgerError)
                outcome.refuse(record, KeyRefused(f"{len(failed)} keys not re-wrapped; first: {first}", first.code))


def _failure(move: Move, error: KmsError) -> KeyledgerError | Unavailable:
    if isinstance(error, Unavailable):
        return error
    return KeyRefused(f"KMS refused to re-wrap {move.entry.key_id}: {error}", ErrorCode.KMS_REFUSED)


def _rewrapped(old: KeyMaterial, result: Rewrapped, provider: str) -> KeyMaterial:
    return old.model_copy(update={"wrapped_key": b64encode(result.wrapped), "kek_version": result.kek_version,
                                  "kms_provider": old.kms_provider or provider})


def _same_key(move: Move, plaintext: bytes) -> bool:
    """A signing key unwraps to the seed of its published public key; an encryption key has nothing to
    compare with (the round trip under the target is its proof)."""
    public = move.old.public_key if move.old else None
    if public is None:
        return True
    return b64encode(signing.public_key_bytes(signing.private_key_from_seed(plaintext))) == public
