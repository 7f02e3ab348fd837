"""Cluster time from TigerBeetle itself: key ages are never measured with a worker's clock.

`now(name)` creates (or finds again) a zero-amount transfer between two system
accounts whose id is derived from `name`; the timestamp TigerBeetle gave it is
the answer (LedgerUnavailable, transient, when it cannot be reached). The same name always answers the same instant, so a replayed tick
evaluates exactly the same cut-off.
"""

from __future__ import annotations

from workers.core import ids
from workers.ledger import (
    Account,
    Ledger,
    LedgerError,
    Transfer,
    account_ok,
    transfer_ok,
)

_DEBIT = ids.system_account_id("clock-debit")
_CREDIT = ids.system_account_id("clock-credit")


class LedgerClock:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._ready = False

    async def now(self, name: str) -> int:
        """Nanoseconds since the epoch, as the ledger cluster recorded the instant `name`."""
        await self._accounts()
        tick = Transfer(id=ids.system_transfer_id("clock", name), debit_account_id=_DEBIT, credit_account_id=_CREDIT,
                        amount=0, ledger=ids.LEDGER, code=ids.SYSTEM_CODE)
        [result] = await self._ledger.create_transfers([tick])
        if not transfer_ok(result.status):
            raise LedgerError(f"ledger clock refused: {result.status.name}")
        return result.timestamp

    async def _accounts(self) -> None:
        if self._ready:
            return
        accounts = [Account(id=i, ledger=ids.LEDGER, code=ids.SYSTEM_CODE) for i in (_DEBIT, _CREDIT)]
        results = await self._ledger.create_accounts(accounts)
        if not all(account_ok(r.status) for r in results):
            raise LedgerError("ledger clock accounts refused")
        self._ready = True
