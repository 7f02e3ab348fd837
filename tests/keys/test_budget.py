"""keys/budget.py: a key's seals are counted in the ledger, up to exactly the limit, across workers."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.core import ids
from workers.keys.budget import Claim, EncryptionBudget
from workers.ledger.memory import MemoryLedger


def a_key() -> str:
    return ids.to_hex(ids.system_account_id(f"test-key-{uuid.uuid4()}"))


def claim(key_id: str, offset: int, amount: int, partition: int = 0) -> Claim:
    return Claim(key_id, "pii.requests", partition, offset, amount)


async def test_claims_are_granted_in_order_up_to_exactly_the_limit(ledger):
    key = a_key()
    budget = EncryptionBudget(ledger, limit=10)
    granted = await budget.claim([claim(key, 0, 4), claim(key, 1, 5), claim(key, 2, 3), claim(key, 3, 1)])
    assert granted == [True, True, False, True]  # 4 + 5 + 1 = 10: the 3 did not fit, the 1 after it did
    assert await budget.remaining([key]) == {key: 0}
    assert await budget.claim([claim(key, 4, 1)]) == [False]


async def test_a_redelivered_record_is_not_charged_twice_and_a_refused_one_stays_refused(ledger):
    key = a_key()
    budget = EncryptionBudget(ledger, limit=5)
    assert await budget.claim([claim(key, 0, 3), claim(key, 1, 3)]) == [True, False]
    # the same records again, in another batch (a redelivery after a crash): the same answers, nothing moves
    assert await budget.claim([claim(key, 1, 3)]) == [False]
    assert await budget.claim([claim(key, 0, 3)]) == [True]
    assert await budget.remaining([key]) == {key: 2}
    assert await budget.claim([claim(key, 2, 2)]) == [True]
    assert await budget.remaining([key]) == {key: 0}


async def test_two_workers_racing_on_one_key_never_pass_the_limit(ledger):
    key = a_key()
    workers = [EncryptionBudget(ledger, limit=50), EncryptionBudget(ledger, limit=50)]
    rounds = await asyncio.gather(*(
        worker.claim([claim(key, offset, 3, partition=n) for offset in range(20)]) for n, worker in enumerate(workers)))
    granted = sum(3 for answers in rounds for ok in answers if ok)
    assert granted == 48  # 16 claims of 3 fit in 50; no interleaving lets a 17th through
    assert await workers[0].remaining([key]) == {key: 2}


async def test_budgets_are_per_key_and_a_fresh_key_has_the_whole_limit(ledger):
    spent, fresh = a_key(), a_key()
    budget = EncryptionBudget(ledger, limit=4)
    assert await budget.claim([claim(spent, 0, 4)]) == [True]
    assert await budget.remaining([spent, fresh]) == {spent: 0, fresh: 4}
    assert await budget.claim([claim(fresh, 0, 4), claim(spent, 1, 1)]) == [True, False]


async def test_a_changed_limit_never_refunds_an_opened_budget(ledger):
    key = a_key()
    assert await EncryptionBudget(ledger, limit=3).claim([claim(key, 0, 3)]) == [True]
    bigger = EncryptionBudget(ledger, limit=100)  # a restart with a larger KEYLEDGER_ENCRYPT_LIMIT
    assert await bigger.claim([claim(key, 1, 1)]) == [False]
    assert await bigger.remaining([key]) == {key: 0}


# --- one debit per key per batch: the same answers as one debit per record, never past the limit ------------

KEYS = [ids.to_hex(ids.system_account_id(f"budget-property-{n}")) for n in range(3)]
batches = st.lists(st.tuples(st.sampled_from(KEYS), st.integers(1, 6)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(batches, st.integers(1, 60))
async def test_a_batch_is_answered_as_one_debit_per_record_in_order_would_be(drawn, limit):
    budget = EncryptionBudget(MemoryLedger(), limit=limit)
    claims = [claim(key, offset, amount) for offset, (key, amount) in enumerate(drawn)]
    left = dict.fromkeys(KEYS, limit)
    expected = []
    for c in claims:  # the model: TigerBeetle applying one debit per record, in order
        fits = c.amount <= left[c.key_id]
        left[c.key_id] -= c.amount if fits else 0
        expected.append(fits)
    assert await budget.claim(claims) == expected
    assert await budget.remaining(KEYS) == left


@settings(max_examples=100, deadline=None)
@given(batches, st.integers(1, 60), st.lists(st.integers(1, 30), min_size=1, max_size=6))
async def test_redeliveries_batched_otherwise_may_over_claim_but_never_pass_the_limit(drawn, limit, cuts):
    ledger = MemoryLedger()
    budget = EncryptionBudget(ledger, limit=limit)
    claims = [claim(key, offset, amount) for offset, (key, amount) in enumerate(drawn)]
    first = await budget.claim(claims)
    start = 0
    for size in cuts:  # the same records delivered again, in other batches (after a crash)
        await budget.claim(claims[start:start + size])
        start = (start + size) % len(claims)
    used = await budget.used(KEYS)
    assert all(spent <= limit for spent in used.values())
    assert sum(c.amount for c, ok in zip(claims, first, strict=True) if ok) <= sum(used.values())


async def test_the_same_batch_again_is_not_charged_twice(ledger):
    key = a_key()
    budget = EncryptionBudget(ledger, limit=100)
    batch = [claim(key, n, 3) for n in range(5)]
    assert await budget.claim(batch) == [True] * 5
    assert await budget.claim(batch) == [True] * 5
    assert await budget.remaining([key]) == {key: 85}
