"""The adapter's packed transfers are the client's own CTransfer array, byte for byte, and the private
`_submit` is used only on a verified client release, the public `create_transfers` otherwise (no server needed)."""

from __future__ import annotations

import ctypes
import logging

import pytest
import tigerbeetle as tb
from hypothesis import given, settings
from hypothesis import strategies as st
from tigerbeetle import bindings
from tigerbeetle import client as tb_client

from workers.app.embedded import free_port
from workers.ledger import LedgerError, tigerbeetle
from workers.ledger.tigerbeetle import PACKING_VERIFIED, packed_transfers

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


def _request_bytes(operations: list, event_type: type) -> tuple[int, int, bytes]:
    """(operation, size, bytes) of the request the client's own `_acquire_packet` builds: what it hands
    the native client, so what the server reads."""
    inflight = tb_client.Client._acquire_packet(None, bindings.Operation.CREATE_TRANSFERS, operations, event_type,
                                                bindings.CCreateTransferResult)
    packet = inflight.packet
    return packet.operation, packet.data_size, ctypes.string_at(packet.data, packet.data_size)


@settings(max_examples=100, deadline=None)
@given(st.lists(transfers, min_size=1, max_size=8))
def test_the_packed_request_is_the_request_public_create_transfers_builds(batch: list[tb.Transfer]) -> None:
    packed = packed_transfers(batch)
    assert _request_bytes([packed], type(packed)) == _request_bytes(batch, bindings.CTransfer)


def test_the_installed_client_is_one_packing_was_verified_with() -> None:
    # a new release takes the public path until this file passes against it and it joins PACKING_VERIFIED
    assert tigerbeetle.packing_verified(tigerbeetle.CLIENT_VERSION) is (tigerbeetle.CLIENT_VERSION in PACKING_VERIFIED)


class Client:
    """Records how it was asked to create transfers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    async def _submit(self, *args: object) -> list[object]:
        self.calls.append(("_submit", args))
        return []

    async def create_transfers(self, transfers: list[tb.Transfer]) -> list[object]:
        self.calls.append(("create_transfers", (transfers,)))
        return []


TRANSFER = tb.Transfer(id=1, debit_account_id=2, credit_account_id=3, amount=1, ledger=1, code=8)


async def test_a_verified_client_is_handed_the_packed_array() -> None:
    client = Client()
    await tigerbeetle.transfers_sender(client, sorted(PACKING_VERIFIED)[0])([TRANSFER])  # type: ignore[arg-type]
    [(name, (operation, [events], event_type, result_type))] = client.calls
    assert name == "_submit" and operation == bindings.Operation.CREATE_TRANSFERS
    assert bytes(events) == bytes(packed_transfers([TRANSFER])) and event_type is type(events)
    assert result_type is bindings.CCreateTransferResult


async def test_another_release_takes_the_public_create_transfers_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    client = Client()
    with caplog.at_level(logging.WARNING, logger="keyledger.ledger"):
        for _ in range(2):
            await tigerbeetle.transfers_sender(client, "0.16.99-unverified")([TRANSFER])  # type: ignore[arg-type]
    assert client.calls == [("create_transfers", ([TRANSFER],)), ("create_transfers", ([TRANSFER],))]
    [line] = [r.getMessage() for r in caplog.records if "0.16.99-unverified" in r.getMessage()]
    assert "public create_transfers" in line


async def test_the_ledger_takes_the_public_path_when_the_installed_release_is_not_verified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tigerbeetle, "CLIENT_VERSION", "0.16.98-unverified")
    ledger = tigerbeetle.TigerBeetleLedger(f"127.0.0.1:{free_port()}", 0, timeout=0.5)  # no server: not asked
    try:
        assert ledger._send_transfers == ledger._client.create_transfers
    finally:
        await ledger.aclose()
