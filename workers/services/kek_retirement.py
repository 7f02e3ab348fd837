"""Retiring KEK versions: `retire` ticks (and each scheduled rewrap fan-out) raise each versioned KEK's
(Vault transit key's) min_decryption_version as far as no live key needs.

A version is retired only when every live key under the KEK is proven to be wrapped at that version or
later: the record each key's ledger account accepted (keys/pins.py) is read, never merely the newest on
the topic. A key whose record cannot be proven keeps every version of its KEK.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from schemas.messages import KeyMaterial
from workers.core import ids
from workers.core.material import wrapped_kek_version
from workers.errors import KeyledgerError
from workers.keys.pins import settle
from workers.keys.service import KeyService
from workers.keystore.directory import KeyState
from workers.kms import Kms, KmsRefused, kms_for, provider_of
from workers.ledger import AccountFlags, Ledger
from workers.services.moves import Tick
from workers.services.outcome import Outcome

log = logging.getLogger("keyledger.rewrap")


class KekRetirement:
    def __init__(self, keys: KeyService, ledger: Ledger) -> None:
        self._keys = keys
        self._ledger = ledger

    @property
    def kms(self) -> Kms:
        return self._keys.kms

    async def retire(self, ticks: Sequence[Tick]) -> Outcome[None]:
        """`retire` ticks: raise each versioned KEK's min_decryption_version as far as no live key needs."""
        if ticks:
            for line in await self.retire_unneeded():
                log.info("retire (tick %s): %s", ticks[-1][1].tick_id, line)
        return Outcome[None]()

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
                    record = await settle(self._keys.directory, self._ledger, entry, account)
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
