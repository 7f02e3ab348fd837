"""Ledger port: the subset of TigerBeetle's state machine keyledger uses.

The port speaks TigerBeetle's own types (plain dataclasses, IntEnum/IntFlag
codes), so the `tigerbeetle` adapter is a thin pass-through and the `memory`
adapter is held to the same contract tests. `EXISTS` is success.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tigerbeetle import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

from workers.errors import Unavailable

__all__ = [
    "Account",
    "AccountFilter",
    "AccountFilterFlags",
    "AccountFlags",
    "CreateAccountResult",
    "CreateAccountStatus",
    "CreateTransferResult",
    "CreateTransferStatus",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "QueryFilter",
    "QueryFilterFlags",
    "Transfer",
    "TransferFlags",
    "account_ok",
    "transfer_ok",
]


class LedgerError(Exception):
    """The ledger refused a request in a way that retrying cannot fix."""


class LedgerUnavailable(LedgerError, Unavailable):
    """The ledger could not be reached in time; the caller retries with backoff."""

    setting = "KEYLEDGER_TB_ADDRESSES, KEYLEDGER_TB_CLUSTER_ID and that TigerBeetle is up"


def account_ok(status: CreateAccountStatus) -> bool:
    return status in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS)


def transfer_ok(status: CreateTransferStatus) -> bool:
    return status in (CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS)


class Ledger(Protocol):
    """One result per event, in order, whatever the size of the batch (adapters chunk)."""

    @property
    def shared(self) -> bool:
        """What one process writes, every process configured alike reads (TigerBeetle); False: the ledger
        lives in this process alone (memory), so nothing another process wrote is ever in it."""
        ...

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]: ...

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]: ...

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]: ...

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]: ...

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]: ...

    async def aclose(self) -> None: ...
