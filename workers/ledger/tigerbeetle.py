"""`tigerbeetle` ledger: the real client, with requests cut to the server's size limit.

A `--development` server accepts 32 KiB per request (about 250 transfers), a
production one about 8,190 events; `batch_max` says which. Every call is
bounded by a timeout; client failures become LedgerUnavailable so workers back
off and retry without committing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import tigerbeetle as tb

from workers.ledger import (
    Account,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    LedgerUnavailable,
    QueryFilter,
    Transfer,
)

T = TypeVar("T")
R = TypeVar("R")

_CLIENT_ERRORS = (
    tb.ClientClosedError,
    tb.ClientEvictedError,
    tb.ClientReleaseTooHighError,
    tb.ClientReleaseTooLowError,
    tb.NativeError,
    asyncio.TimeoutError,
)


class TigerBeetleLedger:
    def __init__(self, addresses: str, cluster_id: int = 0, batch_max: int = 250, timeout: float = 10.0) -> None:
        if not addresses:
            raise ValueError("TigerBeetle needs replica addresses (KEYLEDGER_TB_ADDRESSES)")
        if batch_max < 1 or timeout <= 0:
            raise ValueError("batch_max and timeout must be positive")
        self._client = tb.ClientAsync(cluster_id=cluster_id, replica_addresses=addresses)
        self._batch_max = batch_max
        self._timeout = timeout

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._chunked(self._client.create_accounts, list(accounts))

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._chunked(self._client.create_transfers, list(transfers))

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._chunked(self._client.lookup_accounts, list(ids))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._chunked(self._client.lookup_transfers, list(ids))

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        return await self._call(self._client.get_account_transfers(account_filter))

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await self._call(self._client.query_accounts(query_filter))

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await self._call(self._client.query_transfers(query_filter))

    async def aclose(self) -> None:
        await self._client.close()

    async def _chunked(self, request: Callable[[list[T]], Awaitable[list[R]]], events: list[T]) -> list[R]:
        # linked chains never straddle a cut: keyledger sends no chain longer than one request
        results: list[R] = []
        for start in range(0, len(events), self._batch_max):
            results.extend(await self._call(request(events[start : start + self._batch_max])))
        return results

    async def _call(self, pending: Awaitable[R]) -> R:
        try:
            return await asyncio.wait_for(pending, self._timeout)
        except _CLIENT_ERRORS as exc:
            raise LedgerUnavailable(f"TigerBeetle: {type(exc).__name__}") from None
