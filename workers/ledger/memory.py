"""`memory` ledger: TigerBeetle's semantics for what keyledger uses, in process (the embedded default).

Held to the same contract tests as the real server (tests/ledger). Results are
one per event, in order; `EXISTS` carries the existing object's timestamp;
linked chains are atomic; a pending CLOSING_* transfer closes its account.
Timestamps come from a strictly increasing nanosecond clock, like the cluster's.
Post/void of pending transfers is not supported (RESERVED_FLAG): keyledger never
uses them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from workers.ledger import (
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

U128_MAX = 2**128 - 1
_SUPPORTED_ACCOUNT_FLAGS = AccountFlags.LINKED | AccountFlags.HISTORY
_SUPPORTED_TRANSFER_FLAGS = (
    TransferFlags.LINKED | TransferFlags.PENDING | TransferFlags.CLOSING_CREDIT | TransferFlags.CLOSING_DEBIT
)
# LINKED is not stored; a closed account differs from its creation (the server says so too)
_ACCOUNT_FLAGS_IGNORED = AccountFlags.LINKED
_ACCOUNT_FIELDS = ("flags", "user_data_128", "user_data_64", "user_data_32", "ledger", "code")
_TRANSFER_FIELDS = (
    "flags", "pending_id", "timeout", "debit_account_id", "credit_account_id", "amount",
    "user_data_128", "user_data_64", "user_data_32", "ledger", "code",
)


class MemoryLedger:
    def __init__(self) -> None:
        self._accounts: dict[int, Account] = {}
        self._transfers: dict[int, Transfer] = {}
        self._transfer_order: list[Transfer] = []
        self._account_order: list[Account] = []
        self._by_account: dict[int, list[Transfer]] = {}
        self._clock = 0

    def _now(self) -> int:
        self._clock = max(time.time_ns(), self._clock + 1)
        return self._clock

    # --- accounts --------------------------------------------------------------

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return _chains(accounts, self._create_account, CreateAccountStatus, self._snapshot, self._restore)

    def _create_account(self, account: Account) -> tuple[CreateAccountStatus, int]:
        status = _account_invalid(account)
        if status is not None:
            return status, 0
        existing = self._accounts.get(account.id)
        if existing is not None:
            return _exists(existing, account, _ACCOUNT_FIELDS, CreateAccountStatus, _ACCOUNT_FLAGS_IGNORED), existing.timestamp
        created = replace(account, flags=AccountFlags(account.flags) & ~AccountFlags.LINKED, timestamp=self._now())
        self._accounts[account.id] = created
        self._account_order.append(created)
        return CreateAccountStatus.CREATED, created.timestamp

    # --- transfers -------------------------------------------------------------

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return _chains(transfers, self._create_transfer, CreateTransferStatus, self._snapshot, self._restore)

    def _create_transfer(self, transfer: Transfer) -> tuple[CreateTransferStatus, int]:
        status = _transfer_invalid(transfer)
        if status is not None:
            return status, 0
        existing = self._transfers.get(transfer.id)
        if existing is not None:
            return _exists(existing, transfer, _TRANSFER_FIELDS, CreateTransferStatus, TransferFlags.LINKED), existing.timestamp
        debit = self._accounts.get(transfer.debit_account_id)
        credit = self._accounts.get(transfer.credit_account_id)
        status = _transfer_refused(transfer, debit, credit)
        if status is not None:
            return status, 0
        assert debit is not None and credit is not None
        created = replace(transfer, flags=TransferFlags(transfer.flags) & ~TransferFlags.LINKED, timestamp=self._now())
        self._post(created, debit, credit)
        self._transfers[created.id] = created
        self._transfer_order.append(created)
        self._by_account.setdefault(created.debit_account_id, []).append(created)
        self._by_account.setdefault(created.credit_account_id, []).append(created)
        return CreateTransferStatus.CREATED, created.timestamp

    def _post(self, transfer: Transfer, debit: Account, credit: Account) -> None:
        pending = bool(transfer.flags & TransferFlags.PENDING)
        if pending:
            debit.debits_pending += transfer.amount
            credit.credits_pending += transfer.amount
        else:
            debit.debits_posted += transfer.amount
            credit.credits_posted += transfer.amount
        if transfer.flags & TransferFlags.CLOSING_DEBIT:
            debit.flags |= AccountFlags.CLOSED
        if transfer.flags & TransferFlags.CLOSING_CREDIT:
            credit.flags |= AccountFlags.CLOSED

    # --- reads -------------------------------------------------------------------

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return [replace(self._accounts[i]) for i in ids if i in self._accounts]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return [replace(self._transfers[i]) for i in ids if i in self._transfers]

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        f = account_filter
        sides = f.flags & (AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS)
        if not f.account_id or not sides or f.limit == 0:
            return []
        def matches(t: Transfer) -> bool:
            on_side = (bool(sides & AccountFilterFlags.DEBITS) and t.debit_account_id == f.account_id) or (
                bool(sides & AccountFilterFlags.CREDITS) and t.credit_account_id == f.account_id)
            return on_side and _user_data_match(t, f) and (not f.code or t.code == f.code) and _in_range(t, f)
        return _page(self._by_account.get(f.account_id, []), matches, f.limit, bool(f.flags & AccountFilterFlags.REVERSED))

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return _page(self._account_order, lambda a: _query_match(a, query_filter), query_filter.limit,
                     bool(query_filter.flags & QueryFilterFlags.REVERSED))

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return _page(self._transfer_order, lambda t: _query_match(t, query_filter), query_filter.limit,
                     bool(query_filter.flags & QueryFilterFlags.REVERSED))

    async def aclose(self) -> None:
        return None

    # --- linked chains: undo everything a failed chain did -----------------------------

    def _snapshot(self) -> tuple[int, int, dict[int, Account]]:
        return len(self._account_order), len(self._transfer_order), {i: replace(a) for i, a in self._accounts.items()}

    def _restore(self, snapshot: tuple[int, int, dict[int, Account]]) -> None:
        accounts, transfers, balances = snapshot
        for account in self._account_order[accounts:]:
            del self._accounts[account.id]
        del self._account_order[accounts:]
        for transfer in self._transfer_order[transfers:]:
            del self._transfers[transfer.id]
            for account_id in (transfer.debit_account_id, transfer.credit_account_id):
                self._by_account[account_id].remove(transfer)
        del self._transfer_order[transfers:]
        for account_id, saved in balances.items():
            current = self._accounts.get(account_id)
            if current is not None:
                for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "flags"):
                    setattr(current, name, getattr(saved, name))


def _chains(events, create, statuses, snapshot, restore):
    """Apply events in order; a LINKED chain succeeds or fails as a whole."""
    results: list = [None] * len(events)
    index = 0
    result_type = CreateAccountResult if statuses is CreateAccountStatus else CreateTransferResult
    while index < len(events):
        end = index
        while end < len(events) and events[end].flags & 1:  # LINKED is bit 0 for both kinds
            end += 1
        if end == len(events):  # the last event is still linked: the chain never closes
            for i in range(index, len(events)):
                results[i] = result_type(timestamp=0, status=statuses.LINKED_EVENT_CHAIN_OPEN)
            break
        saved = snapshot() if end > index else None
        outcome = []
        for i in range(index, end + 1):
            status, timestamp = create(events[i])
            outcome.append((status, timestamp))
            if status not in (statuses.CREATED, statuses.EXISTS) and saved is not None:
                break
        failed_at = next((k for k, (s, _) in enumerate(outcome) if s not in (statuses.CREATED, statuses.EXISTS)), None)
        if saved is not None and failed_at is not None:
            restore(saved)
            for k, i in enumerate(range(index, end + 1)):
                status = outcome[k][0] if k == failed_at else statuses.LINKED_EVENT_FAILED
                results[i] = result_type(timestamp=0, status=status)
        else:
            for k, i in enumerate(range(index, end + 1)):
                results[i] = result_type(timestamp=outcome[k][1], status=outcome[k][0])
        index = end + 1
    return results


def _account_invalid(a: Account) -> CreateAccountStatus | None:
    if a.timestamp:
        return CreateAccountStatus.TIMESTAMP_MUST_BE_ZERO
    if a.flags & ~_SUPPORTED_ACCOUNT_FLAGS:
        return CreateAccountStatus.RESERVED_FLAG
    if a.id == 0:
        return CreateAccountStatus.ID_MUST_NOT_BE_ZERO
    if a.id == U128_MAX:
        return CreateAccountStatus.ID_MUST_NOT_BE_INT_MAX
    if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
        return CreateAccountStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    for name, status in (
        ("debits_pending", CreateAccountStatus.DEBITS_PENDING_MUST_BE_ZERO),
        ("debits_posted", CreateAccountStatus.DEBITS_POSTED_MUST_BE_ZERO),
        ("credits_pending", CreateAccountStatus.CREDITS_PENDING_MUST_BE_ZERO),
        ("credits_posted", CreateAccountStatus.CREDITS_POSTED_MUST_BE_ZERO),
    ):
        if getattr(a, name):
            return status
    if a.ledger == 0:
        return CreateAccountStatus.LEDGER_MUST_NOT_BE_ZERO
    if a.code == 0:
        return CreateAccountStatus.CODE_MUST_NOT_BE_ZERO
    return None


def _transfer_invalid(t: Transfer) -> CreateTransferStatus | None:
    if t.timestamp:
        return CreateTransferStatus.TIMESTAMP_MUST_BE_ZERO
    if t.flags & ~_SUPPORTED_TRANSFER_FLAGS:
        return CreateTransferStatus.RESERVED_FLAG
    if t.id == 0:
        return CreateTransferStatus.ID_MUST_NOT_BE_ZERO
    if t.id == U128_MAX:
        return CreateTransferStatus.ID_MUST_NOT_BE_INT_MAX
    return None


def _transfer_refused(t: Transfer, debit: Account | None, credit: Account | None) -> CreateTransferStatus | None:
    checks = (
        (t.debit_account_id == 0, CreateTransferStatus.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (t.debit_account_id == U128_MAX, CreateTransferStatus.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (t.credit_account_id == 0, CreateTransferStatus.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (t.credit_account_id == U128_MAX, CreateTransferStatus.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (t.credit_account_id == t.debit_account_id, CreateTransferStatus.ACCOUNTS_MUST_BE_DIFFERENT),
        (t.pending_id != 0, CreateTransferStatus.PENDING_ID_MUST_BE_ZERO),
        (t.timeout != 0 and not t.flags & TransferFlags.PENDING, CreateTransferStatus.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (bool(t.flags & (TransferFlags.CLOSING_DEBIT | TransferFlags.CLOSING_CREDIT)) and not t.flags & TransferFlags.PENDING,
         CreateTransferStatus.CLOSING_TRANSFER_MUST_BE_PENDING),
        (t.ledger == 0, CreateTransferStatus.LEDGER_MUST_NOT_BE_ZERO),
        (t.code == 0, CreateTransferStatus.CODE_MUST_NOT_BE_ZERO),
        (debit is None, CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND),
        (credit is None, CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND),
    )
    for failed, status in checks:
        if failed:
            return status
    assert debit is not None and credit is not None
    if debit.ledger != credit.ledger:
        return CreateTransferStatus.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    if t.ledger != debit.ledger:
        return CreateTransferStatus.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    if debit.flags & AccountFlags.CLOSED:
        return CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED
    if credit.flags & AccountFlags.CLOSED:
        return CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED
    return None


def _exists(existing, new, fields, statuses, ignored_flags: int):
    """TigerBeetle's `exists` check: the first differing field names the status."""
    for name in fields:
        old_value, new_value = getattr(existing, name), getattr(new, name)
        if name == "flags":
            old_value, new_value = int(old_value) & ~ignored_flags, int(new_value) & ~ignored_flags
        if old_value != new_value:
            return getattr(statuses, f"EXISTS_WITH_DIFFERENT_{name.upper()}")
    return statuses.EXISTS


def _user_data_match(obj, f) -> bool:
    return ((not f.user_data_128 or obj.user_data_128 == f.user_data_128)
            and (not f.user_data_64 or obj.user_data_64 == f.user_data_64)
            and (not f.user_data_32 or obj.user_data_32 == f.user_data_32))


def _in_range(obj, f) -> bool:
    return (not f.timestamp_min or obj.timestamp >= f.timestamp_min) and (
        not f.timestamp_max or obj.timestamp <= f.timestamp_max)


def _query_match(obj, f: QueryFilter) -> bool:
    return (_user_data_match(obj, f) and (not f.ledger or obj.ledger == f.ledger)
            and (not f.code or obj.code == f.code) and _in_range(obj, f))


def _page(ordered, matches, limit: int, reverse: bool) -> list:
    found = []
    for obj in reversed(ordered) if reverse else ordered:
        if matches(obj):
            found.append(replace(obj))
            if len(found) >= limit:
                break
    return found
