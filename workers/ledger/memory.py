"""`memory` ledger: TigerBeetle 0.17's state machine for what keyledger uses, in process.

It is the embedded default, held to the same contract tests as a real server
(tests/ledger), and follows the server's `state_machine.zig` where it matters:

- Every event of a batch owns one cluster timestamp (`batch_base + index + 1`),
  whether it succeeds or not; results carry it, except `EXISTS`, which carries
  the existing object's timestamp.
- Validation runs in the server's order; the `exists` check comes before the
  balance/ledger/code checks of a new account and compares the full flags
  (LINKED is stored, and a closed account no longer matches its creation).
- A LINKED chain applies atomically: any result other than CREATED breaks it,
  `EXISTS` included, so a replayed chain answers EXISTS then LINKED_EVENT_FAILED.
- A transfer refused for a transient reason (account missing or closed, limits
  exceeded) burns its id: retrying that id answers ID_ALREADY_FAILED.
- Queries return at most 8,189 objects (one reply); asking for more is refused
  like the client's TooMuchDataError.

Not implemented, refused with RESERVED_FLAG: post/void of pending transfers,
balancing transfers, imported events. Pending transfers never expire here
(their `timeout` is stored, not acted on). `aclose` keeps the state: the
embedded ledger outlives the workers that use it.

All work happens without awaiting, so a batch is applied atomically with
respect to other tasks on the loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from workers.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    LedgerError,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

U128_MAX = 2**128 - 1
TIMESTAMP_MAX = 2**63 - 1  # the top bit of a cluster timestamp is the tombstone flag
RESULTS_MAX = 8189  # objects of 128 bytes in one 1 MiB reply; the client refuses larger limits
_LINKED = 1  # bit 0 in AccountFlags and TransferFlags alike
# Stored objects keep their flags as plain ints (IntFlag arithmetic costs more than the rest of
# a transfer); reads hand out copies with typed flags, as the client does.
_PENDING = int(TransferFlags.PENDING)
_CLOSING_DEBIT = int(TransferFlags.CLOSING_DEBIT)
_CLOSING_CREDIT = int(TransferFlags.CLOSING_CREDIT)
_CLOSED = int(AccountFlags.CLOSED)
_DEBITS_LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_LIMITED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_NS_PER_S = 1_000_000_000

# plain ints: `~` on an IntFlag keeps only the defined bits and would miss reserved ones
_ACCOUNT_FLAGS_IMPLEMENTED = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
    | AccountFlags.CLOSED
)
_TRANSFER_FLAGS_IMPLEMENTED = int(
    TransferFlags.LINKED | TransferFlags.PENDING | TransferFlags.CLOSING_DEBIT | TransferFlags.CLOSING_CREDIT
)
_ACCOUNT_FILTER_FLAGS = int(AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED)
_QUERY_FILTER_FLAGS = int(QueryFilterFlags.REVERSED)

# Transfer outcomes that depend on ledger state rather than on the request: the server
# burns the id. (Only for transfers: account statuses share the same integer values.)
_TRANSIENT_TRANSFER_STATUSES = frozenset({
    CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND,
    CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND,
    CreateTransferStatus.PENDING_TRANSFER_NOT_FOUND,
    CreateTransferStatus.EXCEEDS_CREDITS,
    CreateTransferStatus.EXCEEDS_DEBITS,
    CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED,
    CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED,
})

_Undo = Callable[[], None]


class MemoryLedger:
    shared = False  # one process's own: a pin the CLI wrote is never here (ledger/records.py caller pins)

    def __init__(self) -> None:
        self._accounts: dict[int, Account] = {}
        self._transfers: dict[int, Transfer] = {}
        self._failed_transfer_ids: set[int] = set()
        # creation order is timestamp order, so these lists stay sorted by timestamp
        self._accounts_in_order: list[Account] = []
        self._accounts_by_user_data_128: dict[int, list[Account]] = {}
        self._transfers_in_order: list[Transfer] = []
        self._transfers_by_account: dict[int, list[Transfer]] = {}
        self._last_timestamp = 0
        self._undo: list[_Undo] | None = None  # set while a linked chain is open

    # --- writes ----------------------------------------------------------------------

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self._execute(accounts, self._create_account, CreateAccountResult, CreateAccountStatus, frozenset())

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return self._execute(
            transfers, self._create_transfer, CreateTransferResult, CreateTransferStatus, _TRANSIENT_TRANSFER_STATUSES
        )

    def _reserve_timestamps(self, count: int) -> int:
        """Like a replica's prepare: the batch gets the `count` nanoseconds after max(clock, last)."""
        base = max(time.time_ns(), self._last_timestamp)
        self._last_timestamp = base + count
        return base

    def _execute(
        self, events: Sequence[Any], create: Callable[..., Any], result_type: type, statuses: Any,
        burns_id: frozenset[Any]
    ) -> list[Any]:
        created, failed, open_chain = statuses.CREATED, statuses.LINKED_EVENT_FAILED, statuses.LINKED_EVENT_CHAIN_OPEN
        base = self._reserve_timestamps(len(events))
        last = len(events) - 1
        results: list[Any] = []
        chain_start: int | None = None
        chain_broken = False
        for index, event in enumerate(events):
            linked = int(event.flags) & _LINKED
            if linked and chain_start is None:
                chain_start, self._undo = index, []
            if linked and index == last:
                status, timestamp = open_chain, base + index + 1
            elif chain_broken:
                status, timestamp = failed, base + index + 1
            else:
                status, timestamp = create(event, base + index + 1)
            if status is not created:
                if chain_start is not None and not chain_broken:
                    chain_broken = True
                    self._roll_back_chain()
                    for earlier in results[chain_start:index]:
                        earlier.status = failed
                if status in burns_id:
                    self._failed_transfer_ids.add(event.id)
            results.append(result_type(timestamp=timestamp, status=status))
            if chain_start is not None and (not linked or status is open_chain):
                chain_start, chain_broken, self._undo = None, False, None
        return results

    def _roll_back_chain(self) -> None:
        undo, self._undo = self._undo or [], None
        for step in reversed(undo):
            step()

    # --- accounts ----------------------------------------------------------------------

    def _create_account(self, a: Account, timestamp: int) -> tuple[CreateAccountStatus, int]:
        status = _account_refused_before_lookup(a)
        if status is not None:
            return status, timestamp
        existing = self._accounts.get(a.id)
        if existing is not None:
            status = _account_difference(a, existing)
            return status, existing.timestamp if status is CreateAccountStatus.EXISTS else timestamp
        status = _account_refused(a)
        if status is not None:
            return status, timestamp
        self._insert_account(Account(
            id=a.id, user_data_128=a.user_data_128, user_data_64=a.user_data_64, user_data_32=a.user_data_32,
            ledger=a.ledger, code=a.code, flags=AccountFlags(int(a.flags)), timestamp=timestamp,
        ))
        return CreateAccountStatus.CREATED, timestamp

    def _insert_account(self, account: Account) -> None:
        self._accounts[account.id] = account
        self._accounts_in_order.append(account)
        self._accounts_by_user_data_128.setdefault(account.user_data_128, []).append(account)
        if self._undo is not None:
            self._undo.append(lambda: self._remove_latest_account(account))

    def _remove_latest_account(self, account: Account) -> None:
        del self._accounts[account.id]
        self._accounts_in_order.pop()
        self._accounts_by_user_data_128[account.user_data_128].pop()

    # --- transfers ---------------------------------------------------------------------

    def _create_transfer(self, t: Transfer, timestamp: int) -> tuple[CreateTransferStatus, int]:
        status = _transfer_refused_before_lookup(t)
        if status is not None:
            return status, timestamp
        existing = self._transfers.get(t.id)
        if existing is not None:
            status = _transfer_difference(t, existing)
            return status, existing.timestamp if status is CreateTransferStatus.EXISTS else timestamp
        if t.id in self._failed_transfer_ids:
            return CreateTransferStatus.ID_ALREADY_FAILED, timestamp
        status = _transfer_fields_refused(t)
        if status is not None:
            return status, timestamp
        debit = self._accounts.get(t.debit_account_id)
        if debit is None:
            return CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND, timestamp
        credit = self._accounts.get(t.credit_account_id)
        if credit is None:
            return CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND, timestamp
        status = _transfer_refused_by_accounts(t, debit, credit, timestamp)
        if status is not None:
            return status, timestamp
        self._apply_transfer(Transfer(
            id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
            pending_id=t.pending_id, user_data_128=t.user_data_128, user_data_64=t.user_data_64,
            user_data_32=t.user_data_32, timeout=t.timeout, ledger=t.ledger, code=t.code, flags=TransferFlags(int(t.flags)),
            timestamp=timestamp,
        ), debit, credit)
        return CreateTransferStatus.CREATED, timestamp

    def _apply_transfer(self, transfer: Transfer, debit: Account, credit: Account) -> None:
        if self._undo is not None:
            self._undo.append(self._undo_transfer(transfer, debit, credit))
        if transfer.flags & _PENDING:
            debit.debits_pending += transfer.amount
            credit.credits_pending += transfer.amount
        else:
            debit.debits_posted += transfer.amount
            credit.credits_posted += transfer.amount
        if transfer.flags & _CLOSING_DEBIT:
            debit.flags |= _CLOSED
        if transfer.flags & _CLOSING_CREDIT:
            credit.flags |= _CLOSED
        self._transfers[transfer.id] = transfer
        self._transfers_in_order.append(transfer)
        self._transfers_by_account.setdefault(debit.id, []).append(transfer)
        self._transfers_by_account.setdefault(credit.id, []).append(transfer)

    def _undo_transfer(self, transfer: Transfer, debit: Account, credit: Account) -> _Undo:
        saved = [(account, _balances(account)) for account in (debit, credit)]

        def undo() -> None:
            for account, (debits_pending, debits_posted, credits_pending, credits_posted, flags) in saved:
                account.debits_pending, account.debits_posted = debits_pending, debits_posted
                account.credits_pending, account.credits_posted = credits_pending, credits_posted
                account.flags = AccountFlags(flags)
            del self._transfers[transfer.id]
            self._transfers_in_order.pop()
            self._transfers_by_account[debit.id].pop()
            self._transfers_by_account[credit.id].pop()

        return undo

    # --- reads ---------------------------------------------------------------------------

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        accounts = self._accounts
        return [_account_copy(accounts[i]) for i in ids if i in accounts]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        transfers = self._transfers
        return [_transfer_copy(transfers[i]) for i in ids if i in transfers]

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        f = account_filter
        _refuse_oversized(f.limit)
        if not _account_filter_valid(f):
            return []
        debits = bool(f.flags & AccountFilterFlags.DEBITS)
        credits = bool(f.flags & AccountFilterFlags.CREDITS)
        account_id = f.account_id

        def matches(t: Transfer) -> bool:
            on_side = (debits and t.debit_account_id == account_id) or (credits and t.credit_account_id == account_id)
            return on_side and _user_data_matches(t, f) and (not f.code or t.code == f.code)

        candidates = self._transfers_by_account.get(account_id, [])
        return _page(candidates, f, matches, bool(f.flags & AccountFilterFlags.REVERSED), _transfer_copy)

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        f = query_filter
        _refuse_oversized(f.limit)
        if not _query_filter_valid(f):
            return []
        # tenant queries name user_data_128: its index spares a scan of every account
        if f.user_data_128:
            candidates = self._accounts_by_user_data_128.get(f.user_data_128, [])
        else:
            candidates = self._accounts_in_order
        reverse = bool(f.flags & QueryFilterFlags.REVERSED)
        return _page(candidates, f, lambda a: _query_matches(a, f), reverse, _account_copy)

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        f = query_filter
        _refuse_oversized(f.limit)
        if not _query_filter_valid(f):
            return []
        reverse = bool(f.flags & QueryFilterFlags.REVERSED)
        return _page(self._transfers_in_order, f, lambda t: _query_matches(t, f), reverse, _transfer_copy)

    async def aclose(self) -> None:
        return None


# --- validation, in the server's order ---------------------------------------------------


def _account_refused_before_lookup(a: Account) -> CreateAccountStatus | None:
    if a.timestamp != 0:
        return CreateAccountStatus.TIMESTAMP_MUST_BE_ZERO
    if int(a.flags) & ~_ACCOUNT_FLAGS_IMPLEMENTED:
        return CreateAccountStatus.RESERVED_FLAG
    if a.id == 0:
        return CreateAccountStatus.ID_MUST_NOT_BE_ZERO
    if a.id == U128_MAX:
        return CreateAccountStatus.ID_MUST_NOT_BE_INT_MAX
    return None


def _account_difference(a: Account, e: Account) -> CreateAccountStatus:
    s = CreateAccountStatus
    if int(a.flags) != e.flags:
        return s.EXISTS_WITH_DIFFERENT_FLAGS
    if a.user_data_128 != e.user_data_128:
        return s.EXISTS_WITH_DIFFERENT_USER_DATA_128
    if a.user_data_64 != e.user_data_64:
        return s.EXISTS_WITH_DIFFERENT_USER_DATA_64
    if a.user_data_32 != e.user_data_32:
        return s.EXISTS_WITH_DIFFERENT_USER_DATA_32
    if a.ledger != e.ledger:
        return s.EXISTS_WITH_DIFFERENT_LEDGER
    if a.code != e.code:
        return s.EXISTS_WITH_DIFFERENT_CODE
    return s.EXISTS


def _account_refused(a: Account) -> CreateAccountStatus | None:
    s = CreateAccountStatus
    flags = int(a.flags)
    if flags & _DEBITS_LIMITED and flags & _CREDITS_LIMITED:
        return s.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if a.debits_pending != 0:
        return s.DEBITS_PENDING_MUST_BE_ZERO
    if a.debits_posted != 0:
        return s.DEBITS_POSTED_MUST_BE_ZERO
    if a.credits_pending != 0:
        return s.CREDITS_PENDING_MUST_BE_ZERO
    if a.credits_posted != 0:
        return s.CREDITS_POSTED_MUST_BE_ZERO
    if a.ledger == 0:
        return s.LEDGER_MUST_NOT_BE_ZERO
    if a.code == 0:
        return s.CODE_MUST_NOT_BE_ZERO
    return None


def _transfer_refused_before_lookup(t: Transfer) -> CreateTransferStatus | None:
    if t.timestamp != 0:
        return CreateTransferStatus.TIMESTAMP_MUST_BE_ZERO
    if int(t.flags) & ~_TRANSFER_FLAGS_IMPLEMENTED:
        return CreateTransferStatus.RESERVED_FLAG
    if t.id == 0:
        return CreateTransferStatus.ID_MUST_NOT_BE_ZERO
    if t.id == U128_MAX:
        return CreateTransferStatus.ID_MUST_NOT_BE_INT_MAX
    return None


def _transfer_difference(t: Transfer, e: Transfer) -> CreateTransferStatus:
    s = CreateTransferStatus
    # flags first: they change what the other fields mean
    for name, status in (
        ("flags", s.EXISTS_WITH_DIFFERENT_FLAGS),
        ("pending_id", s.EXISTS_WITH_DIFFERENT_PENDING_ID),
        ("timeout", s.EXISTS_WITH_DIFFERENT_TIMEOUT),
        ("debit_account_id", s.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
        ("credit_account_id", s.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
        ("amount", s.EXISTS_WITH_DIFFERENT_AMOUNT),
        ("user_data_128", s.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        ("user_data_64", s.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        ("user_data_32", s.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        ("ledger", s.EXISTS_WITH_DIFFERENT_LEDGER),
        ("code", s.EXISTS_WITH_DIFFERENT_CODE),
    ):
        if int(getattr(t, name)) != int(getattr(e, name)):
            return status
    return s.EXISTS


def _transfer_fields_refused(t: Transfer) -> CreateTransferStatus | None:
    s = CreateTransferStatus
    if t.debit_account_id == 0:
        return s.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.debit_account_id == U128_MAX:
        return s.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if t.credit_account_id == 0:
        return s.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.credit_account_id == U128_MAX:
        return s.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if t.credit_account_id == t.debit_account_id:
        return s.ACCOUNTS_MUST_BE_DIFFERENT
    if t.pending_id != 0:
        return s.PENDING_ID_MUST_BE_ZERO
    flags = int(t.flags)
    if not flags & _PENDING:
        if t.timeout != 0:
            return s.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if flags & (_CLOSING_DEBIT | _CLOSING_CREDIT):
            return s.CLOSING_TRANSFER_MUST_BE_PENDING
    if t.ledger == 0:
        return s.LEDGER_MUST_NOT_BE_ZERO
    if t.code == 0:
        return s.CODE_MUST_NOT_BE_ZERO
    return None


def _transfer_refused_by_accounts(t: Transfer, dr: Account, cr: Account, timestamp: int) -> CreateTransferStatus | None:
    s = CreateTransferStatus
    if dr.ledger != cr.ledger:
        return s.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    if t.ledger != dr.ledger:
        return s.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    if dr.flags & _CLOSED:
        return s.DEBIT_ACCOUNT_ALREADY_CLOSED
    if cr.flags & _CLOSED:
        return s.CREDIT_ACCOUNT_ALREADY_CLOSED
    amount = t.amount
    if int(t.flags) & _PENDING:
        if amount + dr.debits_pending > U128_MAX:
            return s.OVERFLOWS_DEBITS_PENDING
        if amount + cr.credits_pending > U128_MAX:
            return s.OVERFLOWS_CREDITS_PENDING
    if amount + dr.debits_posted > U128_MAX:
        return s.OVERFLOWS_DEBITS_POSTED
    if amount + cr.credits_posted > U128_MAX:
        return s.OVERFLOWS_CREDITS_POSTED
    if amount + dr.debits_pending + dr.debits_posted > U128_MAX:
        return s.OVERFLOWS_DEBITS
    if amount + cr.credits_pending + cr.credits_posted > U128_MAX:
        return s.OVERFLOWS_CREDITS
    if timestamp + t.timeout * _NS_PER_S > TIMESTAMP_MAX:
        return s.OVERFLOWS_TIMEOUT
    if dr.flags & _DEBITS_LIMITED and \
            dr.debits_pending + dr.debits_posted + amount > dr.credits_posted:
        return s.EXCEEDS_CREDITS
    if cr.flags & _CREDITS_LIMITED and \
            cr.credits_pending + cr.credits_posted + amount > cr.debits_posted:
        return s.EXCEEDS_DEBITS
    return None


def _balances(a: Account) -> tuple[int, int, int, int, int]:
    return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.flags


def _account_copy(a: Account) -> Account:
    return Account(
        id=a.id, debits_pending=a.debits_pending, debits_posted=a.debits_posted, credits_pending=a.credits_pending,
        credits_posted=a.credits_posted, user_data_128=a.user_data_128, user_data_64=a.user_data_64,
        user_data_32=a.user_data_32, ledger=a.ledger, code=a.code, flags=AccountFlags(a.flags), timestamp=a.timestamp,
    )


def _transfer_copy(t: Transfer) -> Transfer:
    return Transfer(
        id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
        pending_id=t.pending_id, user_data_128=t.user_data_128, user_data_64=t.user_data_64,
        user_data_32=t.user_data_32, timeout=t.timeout, ledger=t.ledger, code=t.code, flags=TransferFlags(t.flags),
        timestamp=t.timestamp,
    )


# --- queries ---------------------------------------------------------------------------------


def _refuse_oversized(limit: int) -> None:
    if limit > RESULTS_MAX:
        raise LedgerError(f"a query returns at most {RESULTS_MAX} objects; limit={limit} asks for more")


def _timestamps_valid(f: AccountFilter | QueryFilter) -> bool:
    return (f.timestamp_min == 0 or 1 <= f.timestamp_min <= TIMESTAMP_MAX) and \
        (f.timestamp_max == 0 or 1 <= f.timestamp_max <= TIMESTAMP_MAX) and \
        (f.timestamp_max == 0 or f.timestamp_min <= f.timestamp_max)


def _account_filter_valid(f: AccountFilter) -> bool:
    return f.account_id not in (0, U128_MAX) and _timestamps_valid(f) and f.limit != 0 and \
        bool(f.flags & (AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS)) and \
        not int(f.flags) & ~_ACCOUNT_FILTER_FLAGS


def _query_filter_valid(f: QueryFilter) -> bool:
    return _timestamps_valid(f) and f.limit != 0 and not int(f.flags) & ~_QUERY_FILTER_FLAGS


def _user_data_matches(obj: Account | Transfer, f: AccountFilter | QueryFilter) -> bool:
    return (not f.user_data_128 or obj.user_data_128 == f.user_data_128) and \
        (not f.user_data_64 or obj.user_data_64 == f.user_data_64) and \
        (not f.user_data_32 or obj.user_data_32 == f.user_data_32)


def _query_matches(obj: Account | Transfer, f: QueryFilter) -> bool:
    return _user_data_matches(obj, f) and (not f.ledger or obj.ledger == f.ledger) and \
        (not f.code or obj.code == f.code)


def _page(
    ordered: list[Any], f: AccountFilter | QueryFilter, matches: Callable[[Any], bool], reverse: bool,
    copy: Callable[[Any], Any]
) -> list[Any]:
    """Up to `f.limit` copies of matching objects within the timestamp range, oldest (or newest) first."""
    low = bisect_left(ordered, f.timestamp_min, key=_timestamp) if f.timestamp_min else 0
    high = bisect_right(ordered, f.timestamp_max, key=_timestamp) if f.timestamp_max else len(ordered)
    window: Iterable[int] = reversed(range(low, high)) if reverse else range(low, high)
    found = []
    for index in window:
        obj = ordered[index]
        if matches(obj):
            found.append(copy(obj))
            if len(found) == f.limit:
                break
    return found


def _timestamp(obj: Account | Transfer) -> int:
    return obj.timestamp
