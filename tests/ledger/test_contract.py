"""One contract, two adapters: the memory ledger must answer exactly as a real TigerBeetle 0.17 server.

Every test runs against both (`ledger` fixture, tests/ledger/conftest.py); the
server is the reference. Tests share one server per session, so every id and
every user_data value a test filters on is fresh and random.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace

import pytest

from workers.app.embedded import free_port
from workers.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)
from workers.ledger import (
    CreateAccountStatus as A,
)
from workers.ledger import (
    CreateTransferStatus as T,
)
from workers.ledger import tigerbeetle as tigerbeetle_module
from workers.ledger.factory import open_ledger
from workers.ledger.memory import RESULTS_MAX, MemoryLedger
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.settings import LedgerKind, Settings

U128_MAX = 2**128 - 1
LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING


def uid() -> int:
    return secrets.randbits(127) + 1


def account(tag: int = 0, code: int = 8, **fields) -> Account:
    return Account(id=uid(), user_data_128=tag or uid(), ledger=1, code=code, **fields)


def transfer(debit: Account, credit: Account, amount: int = 1, **fields) -> Transfer:
    return Transfer(id=uid(), debit_account_id=debit.id, credit_account_id=credit.id, amount=amount,
                    ledger=1, code=8, **fields)


def query(**fields) -> QueryFilter:
    return QueryFilter(**{**dict(user_data_128=0, user_data_64=0, user_data_32=0, ledger=0, code=0, timestamp_min=0,
                                 timestamp_max=0, limit=100, flags=QueryFilterFlags.NONE), **fields})


def of_account(account_id: int, flags: AccountFilterFlags, **fields) -> AccountFilter:
    return AccountFilter(**{**dict(account_id=account_id, user_data_128=0, user_data_64=0, user_data_32=0, code=0,
                                   timestamp_min=0, timestamp_max=0, limit=100, flags=flags), **fields})


def statuses(results) -> list:
    return [r.status for r in results]


async def created(ledger: Ledger, *accounts: Account) -> list[Account]:
    assert statuses(await ledger.create_accounts(accounts)) == [A.CREATED] * len(accounts)
    return list(accounts)


async def balances(ledger: Ledger, *accounts: Account) -> list[tuple[int, int, int, int]]:
    found = {a.id: a for a in await ledger.lookup_accounts([a.id for a in accounts])}
    return [(found[a.id].debits_pending, found[a.id].debits_posted, found[a.id].credits_pending,
             found[a.id].credits_posted) for a in accounts]


# --- accounts ------------------------------------------------------------------------------


async def test_an_account_is_created_once_then_exists_or_exists_with_the_first_difference(ledger):
    key = account(user_data_64=7, user_data_32=3)
    [first] = await ledger.create_accounts([key])
    assert first.status is A.CREATED and first.timestamp > 0
    [again] = await ledger.create_accounts([key])
    assert again.status is A.EXISTS and again.timestamp == first.timestamp
    cases = [
        (dict(flags=AccountFlags.HISTORY), A.EXISTS_WITH_DIFFERENT_FLAGS),
        (dict(user_data_128=key.user_data_128 + 1), A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (dict(user_data_64=8), A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(user_data_32=4), A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (dict(ledger=2), A.EXISTS_WITH_DIFFERENT_LEDGER),
        (dict(code=9), A.EXISTS_WITH_DIFFERENT_CODE),
        # the server compares fields in this order and names the first difference
        (dict(flags=AccountFlags.HISTORY, user_data_128=1, code=9), A.EXISTS_WITH_DIFFERENT_FLAGS),
        (dict(user_data_64=8, ledger=2), A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(ledger=2, code=9), A.EXISTS_WITH_DIFFERENT_LEDGER),
    ]
    results = await ledger.create_accounts([replace(key, **change) for change, _ in cases])
    assert statuses(results) == [status for _, status in cases]
    assert all(r.timestamp != first.timestamp for r in results)  # only EXISTS carries the account's own


async def test_an_existing_id_is_answered_before_the_new_account_rules_apply(ledger):
    [key] = await created(ledger, account())
    results = await ledger.create_accounts([replace(key, credits_posted=5), replace(key, code=0)])
    assert statuses(results) == [A.EXISTS, A.EXISTS_WITH_DIFFERENT_CODE]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (dict(timestamp=1), A.TIMESTAMP_MUST_BE_ZERO),
        (dict(flags=AccountFlags(1 << 10)), A.RESERVED_FLAG),
        (dict(id=0), A.ID_MUST_NOT_BE_ZERO),
        (dict(id=U128_MAX), A.ID_MUST_NOT_BE_INT_MAX),
        (dict(flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
         A.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (dict(debits_pending=1), A.DEBITS_PENDING_MUST_BE_ZERO),
        (dict(debits_posted=1), A.DEBITS_POSTED_MUST_BE_ZERO),
        (dict(credits_pending=1), A.CREDITS_PENDING_MUST_BE_ZERO),
        (dict(credits_posted=1), A.CREDITS_POSTED_MUST_BE_ZERO),
        (dict(ledger=0), A.LEDGER_MUST_NOT_BE_ZERO),
        (dict(code=0), A.CODE_MUST_NOT_BE_ZERO),
        (dict(timestamp=1, id=0, code=0), A.TIMESTAMP_MUST_BE_ZERO),
        (dict(id=0, ledger=0), A.ID_MUST_NOT_BE_ZERO),
        (dict(credits_posted=1, ledger=0), A.CREDITS_POSTED_MUST_BE_ZERO),
    ],
)
async def test_invalid_accounts_are_refused_in_the_servers_order(ledger, fields, status):
    [result] = await ledger.create_accounts([replace(account(), **fields)])
    assert result.status is status
    assert result.timestamp > 0


async def test_account_timestamps_come_from_the_ledger_and_only_increase(ledger):
    before = time.time_ns()
    first = await ledger.create_accounts([account(), account()])
    second = await ledger.create_accounts([account(), replace(account(), code=0), account()])
    stamps = [r.timestamp for r in first + second]
    # every event owns a timestamp, refused ones too
    assert stamps == sorted(set(stamps)) and len(stamps) == 5
    assert abs(stamps[0] - before) < 60 * 10**9  # cluster time: this machine's clock, give or take
    [refused] = await ledger.create_accounts([replace(account(), timestamp=before)])
    assert refused.status is A.TIMESTAMP_MUST_BE_ZERO


async def test_lookups_answer_found_ids_in_order_and_leave_out_missing_ones(ledger):
    tenant, key = await created(ledger, account(), account())
    found = await ledger.lookup_accounts([key.id, uid(), tenant.id])
    assert [a.id for a in found] == [key.id, tenant.id]
    assert found[0].timestamp > 0 and found[0].user_data_128 == key.user_data_128
    assert await ledger.lookup_accounts([uid(), uid()]) == []
    sent = transfer(tenant, key)
    await ledger.create_transfers([sent])
    assert [t.id for t in await ledger.lookup_transfers([uid(), sent.id, uid()])] == [sent.id]
    assert await ledger.lookup_transfers([uid()]) == []


# --- transfers -----------------------------------------------------------------------------


async def test_balances_count_usage_and_a_replayed_batch_is_all_exists(ledger):
    tenant, key = await created(ledger, account(code=1), account())
    batch = [transfer(tenant, key, amount=n, user_data_32=2) for n in (1, 5, 10)]
    first = await ledger.create_transfers(batch)
    assert statuses(first) == [T.CREATED] * 3
    replay = await ledger.create_transfers(batch)
    assert statuses(replay) == [T.EXISTS] * 3
    assert [r.timestamp for r in replay] == [r.timestamp for r in first]
    assert await balances(ledger, tenant, key) == [(0, 16, 0, 0), (0, 0, 0, 16)]
    stored = await ledger.lookup_transfers([t.id for t in batch])
    assert [(t.amount, t.timestamp) for t in stored] == [(t.amount, r.timestamp) for t, r in zip(batch, first, strict=True)]


async def test_a_transfer_exists_with_the_first_difference_in_the_servers_order(ledger):
    tenant, key, other = await created(ledger, account(), account(), account())
    sent = transfer(tenant, key, amount=3, user_data_128=5, user_data_64=6, user_data_32=7)
    assert statuses(await ledger.create_transfers([sent])) == [T.CREATED]
    cases = [
        (dict(flags=PENDING), T.EXISTS_WITH_DIFFERENT_FLAGS),
        (dict(pending_id=uid()), T.EXISTS_WITH_DIFFERENT_PENDING_ID),
        (dict(timeout=5), T.EXISTS_WITH_DIFFERENT_TIMEOUT),
        (dict(debit_account_id=other.id), T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
        (dict(credit_account_id=other.id), T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
        (dict(amount=4), T.EXISTS_WITH_DIFFERENT_AMOUNT),
        (dict(user_data_128=1), T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (dict(user_data_64=1), T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(user_data_32=1), T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (dict(ledger=2), T.EXISTS_WITH_DIFFERENT_LEDGER),
        (dict(code=9), T.EXISTS_WITH_DIFFERENT_CODE),
        (dict(amount=4, user_data_32=1, code=9), T.EXISTS_WITH_DIFFERENT_AMOUNT),
        (dict(flags=PENDING, debit_account_id=0), T.EXISTS_WITH_DIFFERENT_FLAGS),  # before field validation
        (dict(), T.EXISTS),
    ]
    results = await ledger.create_transfers([replace(sent, **change) for change, _ in cases])
    assert statuses(results) == [status for _, status in cases]
    assert await balances(ledger, key) == [(0, 0, 0, 3)]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (dict(timestamp=1), T.TIMESTAMP_MUST_BE_ZERO),
        (dict(flags=TransferFlags(1 << 12)), T.RESERVED_FLAG),
        (dict(id=0), T.ID_MUST_NOT_BE_ZERO),
        (dict(id=U128_MAX), T.ID_MUST_NOT_BE_INT_MAX),
        (dict(debit_account_id=0), T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (dict(debit_account_id=U128_MAX), T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (dict(credit_account_id=0), T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (dict(credit_account_id=U128_MAX), T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (dict(pending_id=5), T.PENDING_ID_MUST_BE_ZERO),
        (dict(timeout=5), T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (dict(flags=TransferFlags.CLOSING_CREDIT), T.CLOSING_TRANSFER_MUST_BE_PENDING),
        (dict(flags=TransferFlags.CLOSING_DEBIT), T.CLOSING_TRANSFER_MUST_BE_PENDING),
        (dict(ledger=0), T.LEDGER_MUST_NOT_BE_ZERO),
        (dict(code=0), T.CODE_MUST_NOT_BE_ZERO),
        (dict(ledger=2), T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
        (dict(id=0, timestamp=1), T.TIMESTAMP_MUST_BE_ZERO),
        (dict(debit_account_id=0, code=0), T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (dict(pending_id=5, timeout=5, code=0), T.PENDING_ID_MUST_BE_ZERO),
    ],
)
async def test_invalid_transfers_are_refused_in_the_servers_order(ledger, fields, status):
    tenant, key = await created(ledger, account(), account())
    [result] = await ledger.create_transfers([replace(transfer(tenant, key), **fields)])
    assert result.status is status
    assert await balances(ledger, tenant, key) == [(0, 0, 0, 0), (0, 0, 0, 0)]


async def test_transfers_between_accounts_that_cannot_trade_are_refused(ledger):
    tenant, key = await created(ledger, account(), account())
    [elsewhere] = await created(ledger, replace(account(), ledger=2))
    ghost = account()
    cases = [
        (transfer(tenant, tenant), T.ACCOUNTS_MUST_BE_DIFFERENT),
        (transfer(ghost, key), T.DEBIT_ACCOUNT_NOT_FOUND),
        (transfer(tenant, ghost), T.CREDIT_ACCOUNT_NOT_FOUND),
        (transfer(ghost, ghost), T.ACCOUNTS_MUST_BE_DIFFERENT),
        (transfer(tenant, elsewhere), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
        (replace(transfer(elsewhere, tenant), ledger=2), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
    ]
    assert statuses(await ledger.create_transfers([case for case, _ in cases])) == [status for _, status in cases]


async def test_an_id_refused_for_a_missing_account_is_spent_but_a_malformed_one_is_not(ledger):
    tenant, key = await created(ledger, account(), account())
    ghost = account()
    too_early = transfer(tenant, ghost)
    malformed = replace(transfer(tenant, key), code=0)
    assert statuses(await ledger.create_transfers([too_early, malformed])) == [
        T.CREDIT_ACCOUNT_NOT_FOUND, T.CODE_MUST_NOT_BE_ZERO]
    await created(ledger, ghost)
    # the outcome depended on the ledger's state: the server burns the id so a retry cannot change history
    retried = await ledger.create_transfers([too_early, replace(malformed, code=8)])
    assert statuses(retried) == [T.ID_ALREADY_FAILED, T.CREATED]
    assert await ledger.lookup_transfers([too_early.id]) == []


async def test_balance_limits_and_overflows_are_refused(ledger):
    tenant, key = await created(ledger, account(flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS), account())
    over = transfer(tenant, key, amount=1)
    assert statuses(await ledger.create_transfers([over])) == [T.EXCEEDS_CREDITS]
    assert statuses(await ledger.create_transfers([over])) == [T.ID_ALREADY_FAILED]
    a, b = await created(ledger, account(), account())
    results = await ledger.create_transfers([transfer(a, b, amount=U128_MAX), transfer(a, b, amount=1),
                                             transfer(b, a, amount=1, flags=PENDING, timeout=2**32 - 1)])
    assert statuses(results) == [T.CREATED, T.OVERFLOWS_DEBITS_POSTED, T.CREATED]


# --- closing ----------------------------------------------------------------------------------


async def test_a_pending_closing_credit_transfer_closes_the_account_for_good(ledger):
    tenant, key, other_key = await created(ledger, account(code=1), account(), account())
    close = transfer(tenant, key, amount=2, flags=PENDING | TransferFlags.CLOSING_CREDIT)
    [closing] = await ledger.create_transfers([close])
    assert closing.status is T.CREATED
    [closed] = await ledger.lookup_accounts([key.id])
    assert closed.flags == AccountFlags.CLOSED
    assert await balances(ledger, tenant, key) == [(2, 0, 0, 0), (0, 0, 2, 0)]  # pending, not posted
    later = transfer(tenant, key)
    assert statuses(await ledger.create_transfers([later, transfer(tenant, other_key)])) == [
        T.CREDIT_ACCOUNT_ALREADY_CLOSED, T.CREATED]
    assert statuses(await ledger.create_transfers([close])) == [T.EXISTS]
    # the closed account no longer matches its creation, and an id refused by a closed account is spent
    assert statuses(await ledger.create_accounts([key])) == [A.EXISTS_WITH_DIFFERENT_FLAGS]
    assert statuses(await ledger.create_transfers([later])) == [T.ID_ALREADY_FAILED]


async def test_a_pending_closing_debit_transfer_closes_the_debit_account(ledger):
    tenant, key = await created(ledger, account(code=1), account())
    assert statuses(await ledger.create_transfers(
        [transfer(tenant, key, flags=PENDING | TransferFlags.CLOSING_DEBIT)])) == [T.CREATED]
    [closed_tenant, open_key] = await ledger.lookup_accounts([tenant.id, key.id])
    assert closed_tenant.flags & AccountFlags.CLOSED and not open_key.flags & AccountFlags.CLOSED
    assert statuses(await ledger.create_transfers([transfer(tenant, key)])) == [T.DEBIT_ACCOUNT_ALREADY_CLOSED]


# --- linked chains ------------------------------------------------------------------------------


async def test_a_linked_chain_fails_as_a_whole_and_leaves_its_neighbours_alone(ledger):
    tenant, key = await created(ledger, account(), account())
    ghost = account()
    before = transfer(tenant, key, amount=1)
    chain = [transfer(tenant, key, amount=10, flags=LINKED),
             transfer(tenant, key, amount=20, flags=PENDING | TransferFlags.CLOSING_CREDIT | LINKED),
             transfer(tenant, ghost, amount=30)]
    after = transfer(tenant, key, amount=2)
    results = await ledger.create_transfers([before, *chain, after])
    assert statuses(results) == [T.CREATED, T.LINKED_EVENT_FAILED, T.LINKED_EVENT_FAILED,
                                 T.CREDIT_ACCOUNT_NOT_FOUND, T.CREATED]
    stamps = [r.timestamp for r in results]
    assert stamps == sorted(set(stamps))
    [key_now] = await ledger.lookup_accounts([key.id])
    assert (key_now.credits_posted, key_now.credits_pending, key_now.flags) == (3, 0, AccountFlags.NONE)
    assert await ledger.lookup_transfers([t.id for t in chain]) == []
    # rolled-back members were never refused themselves: their ids can still be used
    retry = [chain[0], replace(chain[1], flags=PENDING | TransferFlags.CLOSING_CREDIT)]
    assert statuses(await ledger.create_transfers(retry)) == [T.CREATED] * 2
    assert await balances(ledger, key) == [(0, 0, 20, 13)]


async def test_events_after_the_break_of_a_chain_fail_with_it(ledger):
    tenant, key = await created(ledger, account(), account())
    chain = [transfer(tenant, account(), flags=LINKED), transfer(tenant, key, flags=LINKED), transfer(tenant, key)]
    assert statuses(await ledger.create_transfers(chain)) == [
        T.CREDIT_ACCOUNT_NOT_FOUND, T.LINKED_EVENT_FAILED, T.LINKED_EVENT_FAILED]
    accounts = [replace(account(), flags=AccountFlags.LINKED), replace(account(), code=0), account()]
    assert statuses(await ledger.create_accounts(accounts)) == [
        A.LINKED_EVENT_FAILED, A.CODE_MUST_NOT_BE_ZERO, A.CREATED]
    assert [a.id for a in await ledger.lookup_accounts([a.id for a in accounts])] == [accounts[2].id]


async def test_a_chain_left_open_at_the_end_of_a_batch_applies_nothing(ledger):
    tenant, key = await created(ledger, account(), account())
    results = await ledger.create_transfers([transfer(tenant, key), transfer(tenant, key, flags=LINKED),
                                             transfer(tenant, key, flags=LINKED)])
    assert statuses(results) == [T.CREATED, T.LINKED_EVENT_FAILED, T.LINKED_EVENT_CHAIN_OPEN]
    assert await balances(ledger, key) == [(0, 0, 0, 1)]
    [alone] = await ledger.create_accounts([replace(account(), flags=AccountFlags.LINKED)])
    assert alone.status is A.LINKED_EVENT_CHAIN_OPEN


async def test_a_replayed_chain_answers_exists_once_and_fails_the_rest(ledger):
    tenant, key = await created(ledger, account(), account())
    chain = [transfer(tenant, key, amount=2, flags=LINKED), transfer(tenant, key, amount=3)]
    first = await ledger.create_transfers(chain)
    assert statuses(first) == [T.CREATED, T.CREATED]
    # EXISTS is not CREATED, so it breaks the chain like any other outcome would
    replay = await ledger.create_transfers(chain)
    assert statuses(replay) == [T.EXISTS, T.LINKED_EVENT_FAILED]
    assert replay[0].timestamp == first[0].timestamp
    # each event alone is EXISTS; the LINKED flag is part of what was stored
    assert statuses(await ledger.create_transfers([chain[1]])) == [T.EXISTS]
    assert statuses(await ledger.create_transfers([replace(chain[0], flags=TransferFlags.NONE)])) == [
        T.EXISTS_WITH_DIFFERENT_FLAGS]
    assert (await ledger.lookup_transfers([chain[0].id]))[0].flags == LINKED
    assert await balances(ledger, key) == [(0, 0, 0, 5)]


# --- queries ------------------------------------------------------------------------------------


async def test_query_accounts_by_tenant_and_code_returns_exactly_that_tenants_keys(ledger):
    tag = uid()
    tenant = await created(ledger, account(tag, code=1))
    keys = await created(ledger, account(tag, user_data_32=1), account(tag, user_data_32=2))
    await created(ledger, account(code=8), account(tag + 1, code=8))  # other tenants' keys
    found = await ledger.query_accounts(query(user_data_128=tag, code=8))
    assert [a.id for a in found] == [k.id for k in keys]
    assert found[0].timestamp < found[1].timestamp
    everything = await ledger.query_accounts(query(user_data_128=tag))
    assert [a.id for a in everything] == [tenant[0].id, *(k.id for k in keys)]
    newest_first = await ledger.query_accounts(query(user_data_128=tag, code=8, flags=QueryFilterFlags.REVERSED))
    assert [a.id for a in newest_first] == [keys[1].id, keys[0].id]
    assert [a.id for a in await ledger.query_accounts(query(user_data_128=tag, code=8, limit=1))] == [keys[0].id]
    assert [a.id for a in await ledger.query_accounts(query(user_data_128=tag, user_data_32=2))] == [keys[1].id]
    since = await ledger.query_accounts(query(user_data_128=tag, timestamp_min=found[1].timestamp))
    until = await ledger.query_accounts(query(user_data_128=tag, code=8, timestamp_max=found[0].timestamp))
    assert ([a.id for a in since], [a.id for a in until]) == ([keys[1].id], [keys[0].id])
    assert await ledger.query_accounts(query(user_data_128=tag, ledger=2)) == []


async def test_get_account_transfers_filters_by_side_user_data_code_and_time(ledger):
    tenant, key = await created(ledger, account(code=1), account())
    sent = [transfer(tenant, key, user_data_32=2), transfer(tenant, key, user_data_32=6),
            transfer(tenant, key, user_data_32=2), transfer(key, tenant, user_data_32=2)]
    results = await ledger.create_transfers(sent)
    signs = await ledger.get_account_transfers(of_account(key.id, AccountFilterFlags.CREDITS, user_data_32=2))
    assert [t.id for t in signs] == [sent[0].id, sent[2].id]
    assert [t.timestamp for t in signs] == [results[0].timestamp, results[2].timestamp]
    both = await ledger.get_account_transfers(
        of_account(key.id, AccountFilterFlags.CREDITS | AccountFilterFlags.DEBITS))
    assert [t.id for t in both] == [t.id for t in sent]
    debits = await ledger.get_account_transfers(of_account(key.id, AccountFilterFlags.DEBITS))
    assert [t.id for t in debits] == [sent[3].id]
    newest = await ledger.get_account_transfers(of_account(
        tenant.id, AccountFilterFlags.DEBITS | AccountFilterFlags.REVERSED, limit=2))
    assert [t.id for t in newest] == [sent[2].id, sent[1].id]
    page = await ledger.get_account_transfers(of_account(
        key.id, AccountFilterFlags.CREDITS, timestamp_min=results[1].timestamp, timestamp_max=results[2].timestamp))
    assert [t.id for t in page] == [sent[1].id, sent[2].id]
    assert await ledger.get_account_transfers(of_account(key.id, AccountFilterFlags.CREDITS, code=9)) == []
    assert await ledger.get_account_transfers(of_account(uid(), AccountFilterFlags.CREDITS)) == []


async def test_query_transfers_by_user_data(ledger):
    tenant, key = await created(ledger, account(), account())
    tag = uid()
    sent = [transfer(tenant, key, user_data_128=tag), transfer(tenant, key), transfer(tenant, key, user_data_128=tag)]
    await ledger.create_transfers(sent)
    found = await ledger.query_transfers(query(user_data_128=tag, code=8))
    assert [t.id for t in found] == [sent[0].id, sent[2].id]
    newest = await ledger.query_transfers(query(user_data_128=tag, flags=QueryFilterFlags.REVERSED, limit=1))
    assert [t.id for t in newest] == [sent[2].id]


async def test_malformed_filters_find_nothing(ledger):
    tenant, key = await created(ledger, account(), account())
    await ledger.create_transfers([transfer(tenant, key)])
    both = AccountFilterFlags.CREDITS | AccountFilterFlags.DEBITS
    for account_filter in (
        of_account(key.id, both, limit=0),
        of_account(key.id, AccountFilterFlags.NONE),
        of_account(key.id, AccountFilterFlags.REVERSED),
        of_account(0, both),
        of_account(U128_MAX, both),
        of_account(key.id, both, timestamp_min=5, timestamp_max=4),
        of_account(key.id, both, timestamp_max=2**63),
        of_account(key.id, AccountFilterFlags(both | 1 << 3)),
    ):
        assert await ledger.get_account_transfers(account_filter) == [], account_filter
    for query_filter in (
        query(user_data_128=key.user_data_128, limit=0),
        query(user_data_128=key.user_data_128, timestamp_min=5, timestamp_max=4),
        query(user_data_128=key.user_data_128, flags=QueryFilterFlags(1 << 1)),
    ):
        assert await ledger.query_accounts(query_filter) == [], query_filter


async def test_a_query_asking_for_more_than_one_reply_holds_is_refused(ledger):
    [key] = await created(ledger, account())
    assert len(await ledger.query_accounts(query(user_data_128=key.user_data_128, limit=RESULTS_MAX))) == 1
    with pytest.raises(LedgerError):
        await ledger.query_accounts(query(user_data_128=key.user_data_128, limit=RESULTS_MAX + 1))
    with pytest.raises(LedgerError):
        await ledger.get_account_transfers(of_account(key.id, AccountFilterFlags.CREDITS, limit=RESULTS_MAX + 1))


# --- batches larger than one request -------------------------------------------------------------


async def test_a_batch_larger_than_a_request_comes_back_whole_and_in_order(ledger):
    tenant, key = await created(ledger, account(code=1), account())
    batch = [transfer(tenant, key, amount=n + 1) for n in range(600)]
    results = await ledger.create_transfers(batch)
    assert statuses(results) == [T.CREATED] * 600
    stamps = [r.timestamp for r in results]
    assert stamps == sorted(set(stamps))
    stored = await ledger.lookup_transfers([t.id for t in batch])
    assert [t.amount for t in stored] == list(range(1, 601))
    assert await balances(ledger, key) == [(0, 0, 0, sum(range(1, 601)))]
    assert statuses(await ledger.create_transfers(batch)) == [T.EXISTS] * 600
    accounts = [account() for _ in range(600)]
    assert statuses(await ledger.create_accounts(accounts)) == [A.CREATED] * 600
    assert [a.id for a in await ledger.lookup_accounts([a.id for a in accounts])] == [a.id for a in accounts]


async def test_a_linked_chain_across_a_request_boundary_stays_atomic(ledger):
    tenant, key = await created(ledger, account(code=1), account())
    batch = [transfer(tenant, key) for _ in range(600)]
    for index in range(245, 255):  # a chain over the 250th event, broken by its last member
        batch[index] = replace(batch[index], flags=LINKED)
    batch[255] = transfer(tenant, account())
    results = await ledger.create_transfers(batch)
    assert statuses(results[245:256]) == [T.LINKED_EVENT_FAILED] * 10 + [T.CREDIT_ACCOUNT_NOT_FOUND]
    assert statuses(results[:245] + results[256:]) == [T.CREATED] * 589
    assert await balances(ledger, key) == [(0, 0, 0, 589)]


# --- adapter plumbing (no server needed) ---------------------------------------------------------


async def test_an_unreachable_cluster_is_unavailable_within_the_timeout_and_closes_cleanly():
    ledger = TigerBeetleLedger(f"127.0.0.1:{free_port()}", 0, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable):
        await ledger.create_accounts([account()])
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([uid()])
    assert time.monotonic() - started < 5
    await ledger.aclose()
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([uid()])
    await ledger.aclose()


async def test_a_chain_longer_than_a_request_is_refused_before_anything_is_sent():
    ledger = TigerBeetleLedger(f"127.0.0.1:{free_port()}", 0, batch_max=10, timeout=0.5)
    tenant, key = account(), account()
    try:
        with pytest.raises(LedgerError) as refused:
            await ledger.create_transfers([*(transfer(tenant, key, flags=LINKED) for _ in range(11)),
                                           transfer(tenant, key)])
        assert not isinstance(refused.value, LedgerUnavailable)
    finally:
        await ledger.aclose()


async def test_open_ledger_builds_the_configured_adapter():
    memory = open_ledger(Settings(ledger=LedgerKind.MEMORY).ledger)
    assert isinstance(memory, MemoryLedger)
    real = open_ledger(Settings(ledger=LedgerKind.TIGERBEETLE, tb_addresses=f"127.0.0.1:{free_port()}", tb_batch_max=7).ledger)
    try:
        assert isinstance(real, TigerBeetleLedger)
    finally:
        await real.aclose()


async def test_a_server_with_a_smaller_request_limit_shrinks_the_requests_and_loses_nothing(tigerbeetle_address):
    """The production default (8,189 a request) against a --development server (253): the first request is
    refused by the client before it is sent, the adapter cuts again, every event lands exactly once."""
    ledger = TigerBeetleLedger(tigerbeetle_address, 0, timeout=30.0)
    try:
        assert ledger.batch_max == 8189
        accounts = [account() for _ in range(700)]
        results = await ledger.create_accounts(accounts)
        assert [r.status for r in results] == [A.CREATED] * 700
        assert ledger.batch_max == 253
        tenant, key = accounts[0], accounts[1]
        transfers = [transfer(tenant, key) for _ in range(600)]
        assert [r.status for r in await ledger.create_transfers(transfers)] == [T.CREATED] * 600
        found = await ledger.lookup_transfers([t.id for t in transfers])
        assert [t.id for t in found] == [t.id for t in transfers]
        assert len(await ledger.lookup_accounts([a.id for a in accounts])) == 700
    finally:
        await ledger.aclose()


async def test_the_public_create_transfers_fallback_answers_as_the_packed_path(tigerbeetle_address, monkeypatch):
    """A client release packing was not verified with sends transfers through the client's public call
    (workers/ledger/tigerbeetle.py `transfers_sender`): the server answers both paths alike."""
    answers = []
    for version in (tigerbeetle_module.CLIENT_VERSION, "0.16.97-unverified"):
        monkeypatch.setattr(tigerbeetle_module, "CLIENT_VERSION", version)
        ledger = TigerBeetleLedger(tigerbeetle_address, 0, batch_max=250, timeout=30.0)
        try:
            tenant, key = account(), account()
            await ledger.create_accounts([tenant, key])
            batch = [transfer(tenant, key), transfer(tenant, key, flags=LINKED), replace(transfer(tenant, key), code=0),
                     replace(transfer(tenant, key), ledger=2)]
            answers.append(statuses(await ledger.create_transfers(batch)))
            assert [t.id for t in await ledger.lookup_transfers([t.id for t in batch])] == [batch[0].id]
        finally:
            await ledger.aclose()
    assert answers[0] == answers[1] and answers[0][0] == T.CREATED and answers[0][1] == T.LINKED_EVENT_FAILED
