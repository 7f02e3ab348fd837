"""The adapter's packed transfers are the client's own CTransfer array, byte for byte (no server needed)."""

from __future__ import annotations

import pytest
import tigerbeetle as tb
from hypothesis import given, settings
from hypothesis import strategies as st
from tigerbeetle import bindings

from workers.ledger import LedgerError
from workers.ledger.tigerbeetle import packed_transfers

u128, u64, u32, u16 = (st.integers(0, 2**bits - 1) for bits in (128, 64, 32, 16))
transfers = st.builds(tb.Transfer, id=u128, debit_account_id=u128, credit_account_id=u128, amount=u128,
                      pending_id=u128, user_data_128=u128, user_data_64=u64, user_data_32=u32, timeout=u32,
                      ledger=u32, code=u16, flags=u16.map(tb.TransferFlags), timestamp=u64)


@settings(max_examples=300, deadline=None)
@given(st.lists(transfers, min_size=1, max_size=8))
def test_packed_transfers_are_the_array_the_client_builds(batch: list[tb.Transfer]) -> None:
    # what the client's own _acquire_packet builds from these transfers
    clients = (bindings.CTransfer * len(batch))(*map(bindings.CTransfer.from_param, batch))
    packed = packed_transfers(batch)
    assert bytes(packed) == bytes(clients)
    assert len(packed) == len(batch) and type(packed)._type_ is bindings.CTransfer


@pytest.mark.parametrize(("field", "value"), [("id", 2**128), ("amount", -1), ("user_data_64", 2**64),
                                              ("user_data_32", 2**32), ("code", 2**16), ("ledger", -1)])
def test_a_field_out_of_range_is_refused_as_the_client_refuses_it(field: str, value: int) -> None:
    fields = dict(id=1, debit_account_id=2, credit_account_id=3, amount=1, ledger=1, code=8)
    transfer = tb.Transfer(**{**fields, field: value})
    with pytest.raises(Exception):  # noqa: B017 - the client's own check, whatever it raises
        bindings.CTransfer.from_param(transfer)
    with pytest.raises(LedgerError):
        packed_transfers([transfer])
