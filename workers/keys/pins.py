"""Which `keys.material` record of a key may be unwrapped: the ledger's chain of accepted wrappings.

The key account pins the fingerprint of the record the key was created with
(accounts are immutable); every `rewrap` transfer on the key account carries,
in user_data_64, the fingerprint of the record that rewrap published (KEK
rotation or provider migration). The chain, oldest first, is the pin and then
those transfers in ledger order. A process unwraps the record accepted last
among those it holds, whatever order they arrived in;
a record the chain does not contain (late, forged, or published by a rewrap
that crashed before the ledger accepted it) is never unwrapped, exactly as a
record that does not match the pin was refused before rewrapping existed.

Cost: one `lookup_accounts` per unwrap (as before), plus one
`get_account_transfers` on the key account only when the process has seen
another record than the one the key was created with (after a rewrap, or a
forged or racing record).
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.errors import ErrorCode
from schemas.messages import KeyMaterial, Op
from workers.core import ids
from workers.core.material import material_fingerprint
from workers.errors import KeyRefused
from workers.keystore.directory import KeyDirectory, KeyEntry
from workers.ledger import Account, AccountFilter, AccountFilterFlags, AccountFlags, Ledger

PAGE = 1000  # rewraps of one key: one per KEK rotation or migration, so one page in practice


async def rewrap_chain(ledger: Ledger, key_id: str) -> list[int]:
    """The fingerprints the key's `rewrap` transfers accepted, in ledger order."""
    chain: list[int] = []
    timestamp_min = 0
    while True:
        page = await ledger.get_account_transfers(AccountFilter(
            account_id=ids.from_hex(key_id), user_data_128=0, user_data_64=0, user_data_32=ids.pack_op(Op.REWRAP),
            code=ids.TRANSFER_CODE, timestamp_min=timestamp_min, timestamp_max=0, limit=PAGE,
            flags=AccountFilterFlags.CREDITS))
        chain += [t.user_data_64 for t in page]
        if len(page) < PAGE:
            return chain
        timestamp_min = page[-1].timestamp + 1


async def accepted_chain(ledger: Ledger, account: Account) -> list[int]:
    """The key's whole chain: its pin, then every rewrap's fingerprint."""
    return [account.user_data_64, *await rewrap_chain(ledger, ids.to_hex(account.id))]


async def key_account(ledger: Ledger, entry: KeyEntry) -> Account:
    """The key's ledger account, or a typed refusal when it has none or it is closed (destroyed)."""
    accounts = await ledger.lookup_accounts([ids.from_hex(entry.key_id)])
    if not accounts:
        raise KeyRefused(f"key {entry.key_id} has no ledger account", ErrorCode.KEY_NOT_FOUND)
    if accounts[0].flags & AccountFlags.CLOSED:
        raise KeyRefused(f"key {entry.key_id} was destroyed", ErrorCode.KEY_DESTROYED)
    return accounts[0]


async def accepted_material(directory: KeyDirectory, ledger: Ledger, entry: KeyEntry) -> KeyMaterial:
    """The record of `entry` that may be unwrapped now, or a typed refusal (MATERIAL_MISMATCH when the
    ledger accepted none of the records this process holds)."""
    account = await key_account(ledger, entry)
    return await settle(directory, ledger, entry, account)


async def settle(directory: KeyDirectory, ledger: Ledger, entry: KeyEntry, account: Account) -> KeyMaterial:
    newest = entry.newest or entry.material
    if newest is not None and len(entry.candidates) <= 1 and material_fingerprint(newest) == account.user_data_64:
        return newest  # the one record seen is the one the key was created with: no rewrap to look for
    return settled(directory, entry, await accepted_chain(ledger, account))


def settled(directory: KeyDirectory, entry: KeyEntry, chain: Sequence[int]) -> KeyMaterial:
    """The candidate accepted last in `chain`, which the directory now uses, or MATERIAL_MISMATCH."""
    chosen = directory.settle(entry.key_id, chain)
    if chosen is None:
        raise KeyRefused(f"material of {entry.key_id} does not match its ledger account", ErrorCode.MATERIAL_MISMATCH)
    return chosen
