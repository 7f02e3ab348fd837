"""Caller policy pins (ledger/records.py) on both adapters: the record's fields, a republish that is
`exists`, the highest pinned version per caller read back by code, and which adapter is shared."""

from __future__ import annotations

import hashlib
import os

from schemas.messages import SYSTEM_TENANT
from workers.core import ids
from workers.ledger import Ledger
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import (
    CALLER_PIN_TRANSFER_CODE,
    CALLER_POLICIES_ACCOUNT,
    CallerPin,
    caller_pin_transfer,
    pin_caller_policy,
    pinned_versions,
    transfers_with_code,
)


async def test_a_caller_pin_round_trips_and_a_republish_is_one_pin(ledger: Ledger):
    caller_id = os.urandom(16).hex()  # the TigerBeetle server is the session's: ids of this test's own
    records = {version: os.urandom(40) for version in (1, 2)}
    for version, record in records.items():
        await pin_caller_policy(ledger, caller_id, version, record)
    await pin_caller_policy(ledger, caller_id, 2, records[2])  # the same record pinned again: `exists`

    mine = [t for t in await transfers_with_code(ledger, CALLER_PIN_TRANSFER_CODE)
            if t.user_data_128 == int(caller_id, 16)]
    assert len(mine) == 2
    for transfer in mine:
        pin = CallerPin.of(transfer)
        record = records[pin.version]
        assert transfer.id == caller_pin_transfer(caller_id, pin.version, record).id
        assert pin.caller_id == caller_id and pin.record_tag == int.from_bytes(hashlib.sha256(record).digest()[:4])
        assert transfer.amount == 0 and transfer.debit_account_id == ids.tenant_ref(SYSTEM_TENANT)
        assert transfer.credit_account_id == CALLER_POLICIES_ACCOUNT and pin.timestamp > 0
    assert (await pinned_versions(ledger))[caller_id] == 2


async def test_only_a_ledger_other_processes_read_is_shared(ledger: Ledger):
    assert ledger.shared is not isinstance(ledger, MemoryLedger)
