"""`tigerbeetle` ledger: the real client, with requests cut to the server's size limit.

A production server accepts 8,189 accounts or transfers per request, a `--development`
one 32 KiB (253). `batch_max` is the most this process sends; the client refuses a
larger request before sending it (TooMuchDataError), so the first refusal drops the
size to the development limit, then halves it, and the request is cut again: no
setting to get right, nothing applied twice. Cuts never split a LINKED chain, so a
chain stays atomic however large the batch.

Every request is bounded by `timeout`. The client itself never gives up on a
request, so a timed-out request is left running (shielded) rather than
cancelled: cancelling it would leave the client's bookkeeping behind and break
`aclose`. It may still be applied later, which is harmless because keyledger's
ids are deterministic and a retry answers EXISTS.

Host names in `addresses` are resolved when the client is built (it takes IP addresses only)
and again after every request that found the cluster unreachable (a timeout or a client
error): a replica rescheduled under the same name (a StatefulSet pod's DNS record) gets a new
IP, and the client would otherwise keep calling the old one forever. When the answer differs,
a new client replaces the old one, which is closed (its unanswered requests fail, and are
retried like any unavailable request). A name that does not resolve right now keeps the
client as it was.

A cluster keeps a bounded number of client sessions (64): registering one more evicts the least
recently used, and the evicted client fails that request and every later one (ClientEvictedError,
then ClientClosedError), for good. A process that sat idle while other clients came and went (CLI
runs, CronJobs, restarted pods) would retry forever against a dead session; so a client that
the cluster evicted is replaced by a new one on the same addresses, which registers a new session,
and the failed request is retried like any unavailable one.

Client failures become LedgerUnavailable (back off, retry, do not commit);
requests the server can never accept (too much data, out-of-range integers)
become LedgerError.

Transfers are packed into one C array here and handed to the client's private
`_submit` (`packed_transfers`: the client would otherwise convert and copy each
event in Python), but only on a client release that packing was verified with
(`PACKING_VERIFIED`); any other release gets the public `create_transfers`, and
says so once in the log. Either way the server reads the same bytes
(tests/ledger/test_tigerbeetle_packing.py checks them without a server).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib.metadata
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tigerbeetle as tb
from tigerbeetle import bindings as tb_bindings
from tigerbeetle.lib import IntegerOverflowError, NativeError

from workers.errors import ConfigError
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
PRODUCTION_BATCH_MAX = 8189  # 1 MiB messages less the header, 128-byte events
DEVELOPMENT_BATCH_MAX = 253  # a --development server: 32 KiB less the header and the request's trailer
log = logging.getLogger("keyledger.ledger")

PACKING_VERIFIED = frozenset({"0.17.9"})
"""Releases of the `tigerbeetle` client whose private `ClientAsync._submit(operation, events, event_type,
result_type)` and `CTransfer` layout `packed_transfers` was checked against. Another release is sent
transfers through the public `create_transfers` until its packing is checked (run
tests/ledger/test_tigerbeetle_packing.py against it) and it is added here."""
CLIENT_VERSION = importlib.metadata.version("tigerbeetle")

SendTransfers = Callable[[list[Transfer]], Awaitable[list[CreateTransferResult]]]


class TigerBeetleLedger:
    shared = True  # the cluster every process and the CLI configured alike write to

    def __init__(self, addresses: str, cluster_id: int = 0, batch_max: int = PRODUCTION_BATCH_MAX, timeout: float = 10.0) -> None:
        if not addresses:
            raise ValueError("TigerBeetle needs replica addresses (KEYLEDGER_TB_ADDRESSES)")
        if batch_max < 1 or timeout <= 0:
            raise ValueError("batch_max and timeout must be positive")
        # host names resolved here (the client takes IPs only), so every way of building one accepts them
        self._addresses = addresses
        self._cluster_id = cluster_id
        self._resolved = resolved_tb_addresses(addresses)
        self._client = tb.ClientAsync(cluster_id=cluster_id, replica_addresses=self._resolved)
        self._send_transfers = transfers_sender(self._client, CLIENT_VERSION)
        self._replacing: asyncio.Lock | None = None  # made on first use, inside the running loop
        self._batch_max = batch_max
        self._timeout = timeout
        self._closed = False
        self._unanswered: set[asyncio.Task[Any]] = set()  # timed out, still owned by the client

    @property
    def batch_max(self) -> int:
        """Events per request now: the configured most, or what the server's refusals left of it."""
        return self._batch_max

    @property
    def replica_addresses(self) -> str:
        """The IP addresses the client calls now (KEYLEDGER_TB_ADDRESSES as last resolved)."""
        return self._resolved

    # each call names the client's method at send time: a re-resolution may have replaced the client
    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._in_requests(lambda body: self._client.create_accounts(body), accounts, chains=True)

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._in_requests(lambda body: self._send_transfers(body), transfers, chains=True)

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._in_requests(lambda body: self._client.lookup_accounts(body), ids, chains=False)

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._in_requests(lambda body: self._client.lookup_transfers(body), ids, chains=False)

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        return await self._request(lambda body: self._client.get_account_transfers(body), account_filter)

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await self._request(lambda body: self._client.query_accounts(body), query_filter)

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await self._request(lambda body: self._client.query_transfers(body), query_filter)

    async def reresolve(self) -> bool:
        """Resolve KEYLEDGER_TB_ADDRESSES again; when the IPs changed, replace the client (closing the old
        one). Returns whether it was replaced. A name that does not resolve now changes nothing."""
        if self._closed:
            return False
        if self._replacing is None:
            self._replacing = asyncio.Lock()
        async with self._replacing:
            try:
                resolved = await asyncio.to_thread(resolved_tb_addresses, self._addresses)
            except ConfigError as exc:
                log.warning("TigerBeetle replica names not re-resolved: %s", exc)
                return False
            if resolved == self._resolved or self._closed:
                return False
            log.info("TigerBeetle replicas moved (%s -> %s): reconnecting", self._resolved, resolved)
            old = self._replace_client(resolved)
        await self._close_replaced(old)
        return True

    async def renew_session(self, evicted: tb.ClientAsync) -> bool:
        """`evicted` lost its session (the cluster evicted it, and it closed itself): when it is still the
        client in use, a new one on the same addresses takes its place and registers a new session.
        Returns whether it was replaced (not when another request already did, or after `aclose`)."""
        if self._closed:
            return False
        if self._replacing is None:
            self._replacing = asyncio.Lock()
        async with self._replacing:
            if self._client is not evicted or self._closed:
                return False
            log.warning("TigerBeetle at %s evicted this process's client session (the cluster keeps a bounded "
                        "number of client sessions, the least recently used goes first): registering a new one",
                        self._resolved)
            old = self._replace_client(self._resolved)
        await self._close_replaced(old)
        return True

    def _replace_client(self, resolved: str) -> tb.ClientAsync:
        """A new client on `resolved` becomes the one in use; returns the old one, for the caller to close."""
        old = self._client
        self._client = tb.ClientAsync(cluster_id=self._cluster_id, replica_addresses=resolved)
        self._send_transfers = transfers_sender(self._client, CLIENT_VERSION)
        self._resolved = resolved
        return old

    @staticmethod
    async def _close_replaced(old: tb.ClientAsync) -> None:
        try:
            await old.close()  # fails what is still unanswered there; those requests are retried
        except Exception as exc:
            log.warning("closing a replaced TigerBeetle client failed: %s", type(exc).__name__)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # closing fails whatever is still unanswered; those requests must finish before the client is gone
        closed, *_ = await asyncio.gather(self._client.close(), *self._unanswered, return_exceptions=True)
        if isinstance(closed, BaseException):
            raise closed

    async def _in_requests(self, send: Callable[[list[E]], Awaitable[list[R]]], events: Sequence[E],
                           chains: bool) -> list[R]:
        """`events` in requests of at most `batch_max`, in order; a request the client refuses as too large
        (before sending it) shrinks `batch_max` and is cut again from where it started."""
        results: list[R] = []
        start = 0
        while start < len(events):
            end = _request_end(events, start, self._batch_max, chains)
            try:
                results.extend(await self._request(send, list(events[start:end]), cut_again=True))
            except tb.TooMuchDataError:
                self._shrink(end - start)
                continue
            start = end
        return results

    def _shrink(self, refused: int) -> None:
        if refused <= 1:
            raise LedgerError("TigerBeetle refuses a request of one event as too much data")
        smaller = DEVELOPMENT_BATCH_MAX if refused > DEVELOPMENT_BATCH_MAX else refused // 2
        log.info("TigerBeetle refused %d events in one request; sending at most %d from now on", refused, smaller)
        self._batch_max = smaller

    async def _request(self, send: Callable[[Any], Awaitable[R]], body: Any, cut_again: bool = False) -> R:
        if self._closed:
            raise LedgerUnavailable("TigerBeetle client is closed")
        client = self._client  # the one `send` calls: a failure below is this client's
        request = asyncio.ensure_future(send(body))
        try:
            return await asyncio.wait_for(asyncio.shield(request), self._timeout)
        except TimeoutError:
            await self.reresolve()
            raise LedgerUnavailable(f"TigerBeetle did not answer within {self._timeout:g}s") from None
        except (tb.ClientEvictedError, tb.ClientClosedError) as exc:
            # evicted (or closed by its eviction while this request waited): a new session for the retry;
            # a client this adapter closed itself has been replaced already, and renew_session says so
            if not await self.renew_session(client):
                await self.reresolve()
            raise LedgerUnavailable(f"TigerBeetle: {type(exc).__name__}: {exc}") from exc
        except _UNAVAILABLE as exc:
            await self.reresolve()
            raise LedgerUnavailable(f"TigerBeetle: {type(exc).__name__}: {exc}") from exc
        except tb.TooMuchDataError as exc:
            if cut_again:
                raise  # _in_requests shrinks the request and cuts again
            raise LedgerError(f"TigerBeetle refuses the request: {exc}") from exc
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


def transfers_sender(client: tb.ClientAsync, version: str) -> SendTransfers:
    """How `client` is sent transfers: packed here and handed to its private `_submit` when `version` is
    one that packing was verified with, else its public `create_transfers`."""
    if packing_verified(version) and callable(getattr(client, "_submit", None)):
        return functools.partial(_submit_packed, client)
    return client.create_transfers


@functools.cache
def packing_verified(version: str) -> bool:
    """Whether `version` of the client is one `packed_transfers` was verified with; the first answer for a
    version that is not says so in the log (cached: once a process)."""
    if version in PACKING_VERIFIED and _TRANSFER.size == ctypes.sizeof(tb_bindings.CTransfer):
        return True
    log.warning("tigerbeetle client %s is not one transfer packing was verified with (%s): transfers go "
                "through its public create_transfers", version, ", ".join(sorted(PACKING_VERIFIED)))
    return False


async def _submit_packed(client: tb.ClientAsync, transfers: list[Transfer]) -> list[CreateTransferResult]:
    """The client's create_transfers, its events packed into one array here (`packed_transfers`) and
    handed over as the request's one element: the client copies that array whole, where it would
    convert and copy each event in Python. The request's bytes are the ones the public call sends."""
    events = packed_transfers(transfers)
    return await client._submit(  # type: ignore[no-any-return]
        tb_bindings.Operation.CREATE_TRANSFERS, [events], type(events), tb_bindings.CCreateTransferResult)


_U64 = 2**64 - 1
# CTransfer's layout: six u128 (low, high), user_data_64, user_data_32, timeout, ledger, code, flags, timestamp
_TRANSFER = struct.Struct("<12QQIIIHHQ")


def packed_transfers(transfers: Sequence[Transfer]) -> ctypes.Array[tb_bindings.CTransfer]:
    """`transfers` as one C array of CTransfer, from one buffer of one `struct.pack` each, where the
    client's own from_param validates and converts each field in Python and builds one struct per event
    (one transfer is made per signed span, so this is on the signer's path for every record)."""
    return (tb_bindings.CTransfer * len(transfers)).from_buffer_copy(b"".join([_packed(t) for t in transfers]))


def _packed(t: Transfer) -> bytes:
    """The CTransfer bytes of `t`. struct refuses what the client's ranges refuse (a negative or too large
    integer), which becomes LedgerError like the client's own check."""
    try:
        return _TRANSFER.pack(
            t.id & _U64, t.id >> 64, t.debit_account_id & _U64, t.debit_account_id >> 64,
            t.credit_account_id & _U64, t.credit_account_id >> 64, t.amount & _U64, t.amount >> 64,
            t.pending_id & _U64, t.pending_id >> 64, t.user_data_128 & _U64, t.user_data_128 >> 64,
            t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags, t.timestamp)
    except struct.error as exc:
        raise LedgerError(f"TigerBeetle refuses the request: a transfer field is out of range ({exc})") from None


def _request_end(events: Sequence[E], start: int, size: int, chains: bool) -> int:
    """Where the request starting at `start` ends: at most `size` events, and (with `chains`) where a
    LINKED chain ends."""
    end = min(start + size, len(events))
    if chains and end < len(events):
        while end > start and events[end - 1].flags & _LINKED:  # type: ignore[attr-defined]
            end -= 1
        if end == start:
            raise LedgerError(f"a linked chain longer than batch_max={size} cannot be sent in one request")
    return end
