"""One contract, two adapters: the memory ledger must behave as the real TigerBeetle server does."""

from __future__ import annotations

import secrets

import pytest

from workers.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
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
from workers.ledger.memory import MemoryLedger


@pytest.fixture(params=["memory", "tigerbeetle"])
async def ledger(request):
    if request.param == "memory":
        adapter = MemoryLedger()
    else:
        from workers.ledger.tigerbeetle import TigerBeetleLedger

        adapter = TigerBeetleLedger(request.getfixturevalue("tigerbeetle_address"), 0, batch_max=250)
    yield adapter
    await adapter.aclose()


def uid() -> int:
    return secrets.randbits(127) + 1


def account(tag: int, **fields) -> Account:
    return Account(id=uid(), user_data_128=tag, ledger=1, code=8, **fields)


def transfer(debit: Account, credit: Account, amount: int = 1, **fields) -> Transfer:
    return Transfer(id=uid(), debit_account_id=debit.id, credit_account_id=credit.id, amount=amount,
                    ledger=1, code=8, **fields)


async def pair(ledger, tag=None):
    tag = tag or uid()
    a, b = account(tag), account(tag)
    assert [r.status for r in await ledger.create_accounts([a, b])] == [A.CREATED, A.CREATED]
    return a, b


async def test_accounts_created_exist_and_differ(ledger):
    a = account(uid(), user_data_64=7, user_data_32=3)
    [created] = await ledger.create_accounts([a])
    assert created.status is A.CREATED and created.timestamp > 0
    [again] = await ledger.create_accounts([a])
    assert again.status is A.EXISTS and again.timestamp == created.timestamp
    cases = [
        (dict(user_data_128=a.user_data_128 + 1), A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (dict(user_data_64=8), A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(user_data_32=4), A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (dict(ledger=2), A.EXISTS_WITH_DIFFERENT_LEDGER),
        (dict(code=9), A.EXISTS_WITH_DIFFERENT_CODE),
        (dict(flags=AccountFlags.HISTORY), A.EXISTS_WITH_DIFFERENT_FLAGS),
    ]
    for change, status in cases:
        fields = {**a.__dict__} if hasattr(a, "__dict__") else {f: getattr(a, f) for f in a.__dataclass_fields__}
        fields.update(change)
        [result] = await ledger.create_accounts([Account(**fields)])
        assert result.status is status, change


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (dict(id=0), A.ID_MUST_NOT_BE_ZERO),
        (dict(id=2**128 - 1), A.ID_MUST_NOT_BE_INT_MAX),
        (dict(ledger=0), A.LEDGER_MUST_NOT_BE_ZERO),
        (dict(code=0), A.CODE_MUST_NOT_BE_ZERO),
        (dict(timestamp=1), A.TIMESTAMP_MUST_BE_ZERO),
        (dict(credits_posted=1), A.CREDITS_POSTED_MUST_BE_ZERO),
    ],
)
async def test_invalid_accounts_are_refused(ledger, fields, status):
    base = dict(id=uid(), ledger=1, code=8)
    [result] = await ledger.create_accounts([Account(**{**base, **fields})])
    assert result.status is status


async def test_transfers_count_usage_and_replays_are_exists(ledger):
    tenant, key = await pair(ledger)
    batch = [transfer(tenant, key, amount=n, user_data_32=2) for n in (1, 5, 10)]
    assert [r.status for r in await ledger.create_transfers(batch)] == [T.CREATED] * 3
    assert [r.status for r in await ledger.create_transfers(batch)] == [T.EXISTS] * 3
    [t, k] = await ledger.lookup_accounts([tenant.id, key.id])
    assert (t.debits_posted, k.credits_posted) == (16, 16)
    changed = Transfer(**{**{f: getattr(batch[0], f) for f in batch[0].__dataclass_fields__}, "amount": 2})
    [result] = await ledger.create_transfers([changed])
    assert result.status is T.EXISTS_WITH_DIFFERENT_AMOUNT


async def test_transfer_refusals(ledger):
    tenant, key = await pair(ledger)
    ghost = account(uid())
    other_ledger = Account(id=uid(), ledger=2, code=8)
    assert (await ledger.create_accounts([other_ledger]))[0].status is A.CREATED
    cases = [
        (transfer(tenant, tenant), T.ACCOUNTS_MUST_BE_DIFFERENT),
        (transfer(tenant, ghost), T.CREDIT_ACCOUNT_NOT_FOUND),
        (transfer(ghost, key), T.DEBIT_ACCOUNT_NOT_FOUND),
        (transfer(tenant, other_ledger), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
        (transfer(tenant, key, flags=TransferFlags.CLOSING_CREDIT), T.CLOSING_TRANSFER_MUST_BE_PENDING),
    ]
    results = await ledger.create_transfers([case for case, _ in cases])
    assert [r.status for r in results] == [status for _, status in cases]


async def test_a_pending_closing_transfer_closes_the_account_for_good(ledger):
    tenant, key = await pair(ledger)
    close = transfer(tenant, key, flags=TransferFlags.PENDING | TransferFlags.CLOSING_CREDIT)
    assert (await ledger.create_transfers([close]))[0].status is T.CREATED
    [closed] = await ledger.lookup_accounts([key.id])
    assert closed.flags & AccountFlags.CLOSED
    [refused] = await ledger.create_transfers([transfer(tenant, key)])
    assert refused.status is T.CREDIT_ACCOUNT_ALREADY_CLOSED
    # creating it again cannot reopen it: the closed account now differs in its flags
    assert (await ledger.create_accounts([key]))[0].status is A.EXISTS_WITH_DIFFERENT_FLAGS


async def test_a_linked_chain_is_atomic(ledger):
    tenant, key = await pair(ledger)
    ghost = account(uid())
    chain = [transfer(tenant, key, amount=3, flags=TransferFlags.LINKED), transfer(tenant, ghost)]
    results = await ledger.create_transfers(chain)
    assert [r.status for r in results] == [T.LINKED_EVENT_FAILED, T.CREDIT_ACCOUNT_NOT_FOUND]
    assert (await ledger.lookup_accounts([key.id]))[0].credits_posted == 0
    assert await ledger.lookup_transfers([chain[0].id]) == []


async def test_queries_by_user_data_and_account(ledger):
    tag = uid()
    tenant, key = await pair(ledger, tag)
    other = account(uid())
    await ledger.create_accounts([other])
    found = await ledger.query_accounts(QueryFilter(user_data_128=tag, user_data_64=0, user_data_32=0, ledger=0,
                                                    code=8, timestamp_min=0, timestamp_max=0, limit=10,
                                                    flags=QueryFilterFlags.NONE))
    assert sorted(a.id for a in found) == sorted([tenant.id, key.id])
    assert found[0].timestamp < found[1].timestamp
    await ledger.create_transfers([transfer(tenant, key, user_data_32=2), transfer(tenant, key, user_data_32=6),
                                   transfer(tenant, key, user_data_32=2)])
    signs = await ledger.get_account_transfers(AccountFilter(
        account_id=key.id, user_data_128=0, user_data_64=0, user_data_32=2, code=0, timestamp_min=0,
        timestamp_max=0, limit=10, flags=AccountFilterFlags.CREDITS))
    assert len(signs) == 2 and all(t.user_data_32 == 2 for t in signs)
    debits_of_key = await ledger.get_account_transfers(AccountFilter(
        account_id=key.id, user_data_128=0, user_data_64=0, user_data_32=0, code=0, timestamp_min=0,
        timestamp_max=0, limit=10, flags=AccountFilterFlags.DEBITS))
    assert debits_of_key == []


async def test_lookups_leave_out_missing_ids(ledger):
    tenant, key = await pair(ledger)
    found = await ledger.lookup_accounts([tenant.id, uid(), key.id])
    assert [a.id for a in found] == [tenant.id, key.id]
    assert await ledger.lookup_transfers([uid()]) == []


async def test_big_batches_come_back_whole_and_in_order(ledger):
    tenant, key = await pair(ledger)
    batch = [transfer(tenant, key) for _ in range(600)]
    results = await ledger.create_transfers(batch)
    assert len(results) == 600 and all(r.status is T.CREATED for r in results)
    stamps = [r.timestamp for r in results]
    assert stamps == sorted(stamps)
    assert len(await ledger.lookup_transfers([t.id for t in batch])) == 600
