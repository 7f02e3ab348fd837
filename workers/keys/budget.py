"""Encryption budgets: how many more AES-GCM seals a key may make, counted in the ledger so every
worker process shares one counter.

AES-GCM with random 96-bit nonces must stop before 2^32 encryptions under one key. Key accounts are
immutable and carry no balance limit, so each encryption key gets a companion budget account
(code BUDGET_CODE, flag DEBITS_MUST_NOT_EXCEED_CREDITS), funded once with KEYLEDGER_ENCRYPT_LIMIT
from a system issuer account. Before a record's fields are sealed, one transfer debits the key's
budget by the number of fields the record will seal. TigerBeetle applies a request's transfers in
order and refuses a debit that would take the budget below zero (`exceeds_credits`), so across
every worker a key seals at most its limit, and within a batch it seals up to exactly what is left,
record by record.

One debit per key per batch: the records of a batch that claim the same key are charged by one
transfer of their summed amount, its id derived from the key and every claim it covers (each
record's coordinates and amount). When it does not fit (or fitted no earlier delivery of the same
batch), that key's records are claimed one by one, each by a debit whose id comes from the key and
the record's coordinates (topic, partition, offset), in order: so a key still seals up to exactly
what is left. A redelivery of the same batch finds its debit `exists` and is not charged twice; a
record that did not fit fails the same id again (`id_already_failed`: TigerBeetle keeps failed ids)
until the tenant's next key version is active. A redelivery batched otherwise is charged again
(another batch, another id): over-claiming only retires a key early, never past its limit.
The budget transfers are keyledger's bookkeeping between its own accounts, not key operations:
`kms.audit` and the tenant's transfers record the seals themselves (the `encrypt`/`reencrypt`
transfers, whose amounts equal the ciphertexts produced), so `audit verify` is unchanged.
A debit made just before a crash whose record is then sealed under the next version stays charged
to the old key: the error is always towards retiring a key early, never late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workers.core import ids
from workers.ledger import (
    Account,
    AccountFlags,
    CreateTransferStatus,
    Ledger,
    LedgerError,
    Transfer,
    account_ok,
    transfer_ok,
)

ISSUER = ids.system_account_id("budget-issuer")
_OUT_OF_BUDGET = {CreateTransferStatus.EXCEEDS_CREDITS, CreateTransferStatus.ID_ALREADY_FAILED}
# a fund transfer made under another KEYLEDGER_ENCRYPT_LIMIT keeps its first amount: a key's budget never moves
_FUNDED = {CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS,
           CreateTransferStatus.EXISTS_WITH_DIFFERENT_AMOUNT}


@dataclass(frozen=True, slots=True)
class Claim:
    """`amount` seals under `key_id` for the record at (topic, partition, offset)."""

    key_id: str
    topic: str
    partition: int
    offset: int
    amount: int


class EncryptionBudget:
    def __init__(self, ledger: Ledger, limit: int) -> None:
        if not 0 < limit <= 2**32:
            raise ValueError("an encryption limit is between 1 and 2^32 seals")
        self._ledger = ledger
        self._limit = limit
        self._funded: set[str] = set()  # keys whose budget account exists and is funded (this process saw it)

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        """One answer per claim, in order: True when the seals are granted (now or by an earlier delivery).

        Invariant (tests/keys/test_budget.py): on a fresh budget the answers are those of one debit per
        claim in order; the ledger never lets a key's debits pass its limit."""
        if not claims:
            return []
        await self._fund({c.key_id for c in claims} - self._funded)
        by_key: dict[str, list[int]] = {}
        for index, claim in enumerate(claims):
            by_key.setdefault(claim.key_id, []).append(index)
        grouped = [indexes for indexes in by_key.values() if len(indexes) > 1]
        singles = [indexes[0] for indexes in by_key.values() if len(indexes) == 1]
        debits = [_batch_debit([claims[i] for i in indexes]) for indexes in grouped]
        results = await self._ledger.create_transfers([*debits, *(_debit(claims[i]) for i in singles)])
        granted = [False] * len(claims)
        one_by_one: list[int] = []
        for indexes, result in zip(grouped, results, strict=False):
            if _granted(result.status):
                for i in indexes:
                    granted[i] = True
            else:
                one_by_one += indexes
        for i, result in zip(singles, results[len(grouped):], strict=True):
            granted[i] = _granted(result.status)
        if one_by_one:
            one_by_one.sort()
            retried = await self._ledger.create_transfers([_debit(claims[i]) for i in one_by_one])
            for i, result in zip(one_by_one, retried, strict=True):
                granted[i] = _granted(result.status)
        return granted

    async def used(self, key_ids: Sequence[str]) -> dict[str, int]:
        """Seals charged per key so far (0 for a key whose budget was never opened)."""
        accounts = {a.id: a for a in await self._ledger.lookup_accounts([ids.budget_account_id(k) for k in key_ids])}
        return {k: accounts[ids.budget_account_id(k)].debits_posted if ids.budget_account_id(k) in accounts else 0
                for k in key_ids}

    async def remaining(self, key_ids: Sequence[str]) -> dict[str, int]:
        """Seals left per key (the limit for a key whose budget was never opened)."""
        accounts = {a.id: a for a in await self._ledger.lookup_accounts([ids.budget_account_id(k) for k in key_ids])}
        left = {}
        for key_id in key_ids:
            account = accounts.get(ids.budget_account_id(key_id))
            left[key_id] = self._limit if account is None else account.credits_posted - account.debits_posted
        return left

    async def _fund(self, key_ids: set[str]) -> None:
        if not key_ids:
            return
        ordered = sorted(key_ids)
        accounts = [Account(id=ISSUER, ledger=ids.LEDGER, code=ids.SYSTEM_CODE)]
        accounts += [Account(id=ids.budget_account_id(k), user_data_128=ids.from_hex(k), ledger=ids.LEDGER,
                             code=ids.BUDGET_CODE, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for k in ordered]
        for account, result in zip(accounts, await self._ledger.create_accounts(accounts), strict=True):
            if not account_ok(result.status):
                raise LedgerError(f"ledger refused budget account {account.id:032x}: {result.status.name}")
        funds = [Transfer(id=ids.budget_transfer_id("fund", k), debit_account_id=ISSUER,
                          credit_account_id=ids.budget_account_id(k), amount=self._limit, ledger=ids.LEDGER,
                          code=ids.BUDGET_CODE) for k in ordered]
        for funded in await self._ledger.create_transfers(funds):
            if funded.status not in _FUNDED:
                raise LedgerError(f"ledger refused a budget funding: {funded.status.name}")
        self._funded.update(ordered)


def _granted(status: CreateTransferStatus) -> bool:
    if transfer_ok(status):
        return True
    if status in _OUT_OF_BUDGET:
        return False
    raise LedgerError(f"ledger refused a budget debit: {status.name}")


def _batch_debit(claims: Sequence[Claim]) -> Transfer:
    """One debit for several records' claims on one key: its id covers every claim (place and amount)."""
    key_id = claims[0].key_id
    covered = [part for c in claims for part in (c.topic, c.partition, c.offset, c.amount)]
    return Transfer(id=ids.budget_transfer_id("batch", key_id, *covered),
                    debit_account_id=ids.budget_account_id(key_id), credit_account_id=ISSUER,
                    amount=sum(c.amount for c in claims), ledger=ids.LEDGER, code=ids.BUDGET_CODE)


def _debit(claim: Claim) -> Transfer:
    return Transfer(id=ids.budget_transfer_id("seal", claim.key_id, claim.topic, claim.partition, claim.offset),
                    debit_account_id=ids.budget_account_id(claim.key_id), credit_account_id=ISSUER,
                    amount=claim.amount, ledger=ids.LEDGER, code=ids.BUDGET_CODE)
