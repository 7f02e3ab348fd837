"""Rewrap and provider migration of one tenant's keys: a keys.rotation-tick with `action` rewrap |
migrate that names a tenant -> new wrappings (fan-out: services/rewrap_fanout.py; KEK retirement:
services/kek_retirement.py; the KMS side of a migration: services/migration.py).

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
  3. the new `keys.material` record is written (MaterialStore: durable once it returns) and held as a
     candidate;
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
transfer; its tombstone is then written again, after the new record.

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
from schemas.messages import KeyMaterial, Op, RotationTick, TickAction
from schemas.topics import Topic
from workers.core import ids
from workers.core.b64 import b64encode
from workers.core.material import material_fingerprint, provider_name
from workers.errors import KeyledgerError, KeyRefused, Unavailable
from workers.keys.material import MaterialStore
from workers.keys.pins import settle
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry
from workers.kms import Kms, KmsError, KmsRefused, Rewrapped, kms_for, provider_of, rewrap_many
from workers.ledger import Account, AccountFlags, Ledger
from workers.ledger.records import Coordinates, OpRecord, WrapFacts, pack_origin, unpack_origin
from workers.services.migration import migrate
from workers.services.moves import Move, Tick, check_tick, failure, live_entries, reason_of, target_adapter, wanted
from workers.services.outcome import Outcome
from workers.source import Source

log = logging.getLogger("keyledger.rewrap")


@dataclass(slots=True)
class Pass:
    """What planning found: the moves to make (some already failed), and the ops of moves a crashed
    or repeated run already made, to republish as they were."""

    moves: list[Move] = field(default_factory=list)
    replayed: list[OpRecord] = field(default_factory=list)


class RewrapService:
    def __init__(self, keys: KeyService, ledger: Ledger, materials: MaterialStore) -> None:
        self._keys = keys
        self._ledger = ledger
        self._materials = materials
        self.rewrapped = 0

    @property
    def kms(self) -> Kms:
        return self._keys.kms

    # --- one tenant per tick -------------------------------------------------------

    async def rewrap(self, ticks: Sequence[Tick]) -> Outcome[None]:
        """At most one tick per tenant (a round). Keys whose KMS is out of reach make their tick wait;
        a key the KMS refuses sends its tick to the DLQ once the tenant's other keys are done."""
        outcome = Outcome[None]()
        moves: list[Move] = []
        for source, tick in ticks:
            try:
                check_tick(self.kms, tick)
                moves += self._moves_of(source, tick)
            except KeyledgerError as exc:
                if self._keys.waits_for_tenant(exc, source):
                    outcome.blocked.append(source)  # the key table has not read this tenant yet
                else:
                    outcome.refuse(source, exc)
        found = await self._plan(moves)
        await self._perform(found.moves)
        done = [m for m in found.moves if m.new is not None and m.error is None]
        await self._write_material(done)
        outcome.ops += found.replayed + [self._op(m) for m in done]
        outcome.then.append(partial(self._after, done))
        self._settle_ticks(ticks, found.moves, outcome)
        self.rewrapped += len(done)
        if done or found.replayed:
            log.info("re-wrapped %d keys (%d replayed, %d so far)", len(done), len(found.replayed), self.rewrapped)
        return outcome

    def _moves_of(self, source: Source, tick: RotationTick) -> list[Move]:
        assert tick.tenant_id is not None
        directory = self._keys.directory
        if not directory.is_known_tenant(tick.tenant_id):
            raise KeyRefused(f"unknown tenant {tick.tenant_id}", ErrorCode.UNKNOWN_TENANT)
        return [Move(source, tick, entry) for entry in live_entries(self._keys, tick)]

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
        found.moves += await wanted(self.kms, pending)
        return found

    async def _accepted(self, entry: KeyEntry, account: Account) -> KeyMaterial:
        return await settle(self._keys.directory, self._ledger, entry, account)

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
                await migrate(adapter, target_adapter(self.kms, target), group)

    async def _rewrap(self, adapter: Kms, moves: list[Move]) -> None:
        results = await rewrap_many(adapter, [m.unwrap_request() for m in moves])
        for move, result in zip(moves, results, strict=True):
            if isinstance(result, KmsError):
                move.error = failure(move, result)
            else:
                move.new = _rewrapped(move.current, result, provider_of(adapter))

    # --- durability ------------------------------------------------------------------

    async def _write_material(self, done: list[Move]) -> None:
        """Step 3: the new records are durable before any transfer names them."""
        if not done:
            return
        new = [m.new for m in done if m.new is not None]
        await self._materials.write(new)
        for move in done:
            assert move.new is not None
            self._keys.directory.apply_material(move.new)

    def _op(self, move: Move, tag: int | None = None, source: Coordinates | None = None) -> OpRecord:
        """The rewrap's operation; a replay (`tag`: the fingerprint the transfer accepted) names the record
        that fingerprint is of, so it republishes the very same event."""
        if tag is None:
            assert move.new is not None
            tag = material_fingerprint(move.new)
        accepted = move.new if move.new is not None else move.entry.candidates.get(tag)
        source = source or move.source
        return OpRecord(move.transfer_id, move.entry.tenant_id, move.entry.key_id, Op.REWRAP, source,
                        reason=reason_of(move.tick), tag=tag, origin=pack_origin(source),
                        wrap=WrapFacts.of(accepted) if accepted is not None else None)

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
            await self._materials.erase(sorted(closed))

    def _settle_ticks(self, ticks: Sequence[Tick], moves: list[Move], outcome: Outcome[None]) -> None:
        """A tick waits while a key of it is out of reach; else a refused key sends it to the DLQ."""
        failures: dict[Source, list[Move]] = {}
        for move in moves:
            if move.error is not None:
                failures.setdefault(move.source, []).append(move)
        dead = {source for source, _ in outcome.dead} | set(outcome.blocked)
        for source, _ in ticks:
            failed = failures.get(source, [])
            if not failed or source in dead:
                continue
            if any(isinstance(m.error, Unavailable) for m in failed):
                outcome.blocked.append(source)
            else:
                first = failed[0].error
                assert isinstance(first, KeyledgerError)
                outcome.refuse(source, KeyRefused(f"{len(failed)} keys not re-wrapped; first: {first}", first.code))


def _rewrapped(old: KeyMaterial, result: Rewrapped, provider: str) -> KeyMaterial:
    return old.model_copy(update={"wrapped_key": b64encode(result.wrapped), "kek_version": result.kek_version,
                                  "kms_provider": old.kms_provider or provider})
