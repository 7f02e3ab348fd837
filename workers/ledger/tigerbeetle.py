"""`tigerbeetle` ledger: the real client, with requests cut to the server's size limit.

A `--development` server accepts 32 KiB per request (250 accounts or transfers),
a production one about 8,190 events; `batch_max` says which. Cuts never split a
LINKED chain, so a chain stays atomic however large the batch.

Every request is bounded by `timeout`. The client itself never gives up on a
request, so a timed-out request is left running (shielded) rather than
cancelled: cancelling it would leave the client's bookkeeping behind and break
`aclose`. It may still be applied later, which is harmless because keyledger's
ids are deterministic and a retry answers EXISTS.

Client failures become LedgerUnavailable (back off, retry, do not commit);
requests the server can never accept (too much data, out-of-range integers)
become LedgerError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tigerbeetle as tb
from tigerbeetle.lib import IntegerOverflowError, NativeError

from workers.ledger import (
    Account,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    LedgerError,
    LedgerUnavailable,
    QueryFilter,
    Transfer,
)
from workers.ledger.addresses import resolved_tb_addresses

E = TypeVar("E")
R = TypeVar("R")

_LINKED = 1  # bit 0 in AccountFlags and TransferFlags alike

_UNAVAILABLE = (
    tb.ClientClosedError,
    tb.ClientEvictedError,
    tb.ClientReleaseTooHighError,
    tb.ClientReleaseTooLowError,
    NativeError,
)
_REFUSED = (tb.TooMuchDataError, IntegerOverflowError)


class TigerBeetleLedger:
    def __init__(self, addresses: str, cluster_id: int = 0, batch_max: int = 250, timeout: float = 10.0) -> None:
        if not addresses:
            raise ValueError("TigerBeetle needs replica addresses (KEYLEDGER_TB_ADDRESSES)")
        if batch_max < 1 or timeout <= 0:
            raise ValueError("batch_max and timeout must be positive")
        # host names resolved once here (the client takes IPs only), so every way of building one accepts them
        self._client = tb.ClientAsync(cluster_id=cluster_id, replica_addresses=resolved_tb_addresses(addresses))
        self._batch_max = batch_max
        self._timeout = timeout
        self._closed = False
        self._unanswered: set[asyncio.Task[Any]] = set()  # timed out, still owned by the client

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._in_requests(self._client.create_accounts, _cut_between_chains(accounts, self._batch_max))

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._in_requests(self._client.create_transfers, _cut_between_chains(transfers, self._batch_max))

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._in_requests(self._client.lookup_accounts, _cut(ids, self._batch_max))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._in_requests(self._client.lookup_transfers, _cut(ids, self._batch_max))

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        return await self._request(self._client.get_account_transfers, account_filter)

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await self._request(self._client.query_accounts, query_filter)

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await self._request(self._client.query_transfers, query_filter)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # closing fails whatever is still unanswered; those requests must finish before the client is gone
        closed, *_ = await asyncio.gather(self._client.close(), *self._unanswered, return_exceptions=True)
        if isinstance(closed, BaseException):
            raise closed

    async def _in_requests(self, send: Callable[[list[E]], Awaitable[list[R]]], chunks: list[list[E]]) -> list[R]:
        results: list[R] = []
        for chunk in chunks:
            results.extend(await self._request(send, chunk))
        return results

    async def _request(self, send: Callable[[Any], Awaitable[R]], body: Any) -> R:
        if self._closed:
            raise LedgerUnavailable("TigerBeetle client is closed")
        request = asyncio.ensure_future(send(body))
        try:
            return await asyncio.wait_for(asyncio.shield(request), self._timeout)
        except TimeoutError:
            raise LedgerUnavailable(f"TigerBeetle did not answer within {self._timeout:g}s") from None
        except _UNAVAILABLE as exc:
            raise LedgerUnavailable(f"TigerBeetle: {type(exc).__name__}: {exc}") from exc
        except _REFUSED as exc:
            raise LedgerError(f"TigerBeetle refuses the request: {exc}") from exc
        finally:
            if not request.done():
                self._keep_until_answered(request)

    def _keep_until_answered(self, request: asyncio.Task[Any]) -> None:
        self._unanswered.add(request)
        request.add_done_callback(self._forget_answered)

    def _forget_answered(self, request: asyncio.Task[Any]) -> None:
        self._unanswered.discard(request)
        if not request.cancelled():
            request.exception()  # nobody awaits it any more; mark its failure as seen


def _cut(events: Sequence[E], size: int) -> list[list[E]]:
    return [list(events[start : start + size]) for start in range(0, len(events), size)]


def _cut_between_chains(events: Sequence[E], size: int) -> list[list[E]]:
    """Requests of at most `size` events, each ending where a LINKED chain ends (all cut before any is sent)."""
    chunks: list[list[E]] = []
    start = 0
    while start < len(events):
        end = min(start + size, len(events))
        if end < len(events):
            while end > start and events[end - 1].flags & _LINKED:  # type: ignore[attr-defined]
                end -= 1
            if end == start:
                raise LedgerError(f"a linked chain longer than batch_max={size} cannot be sent in one request")
        chunks.append(list(events[start:end]))
        start = end
    return chunks
