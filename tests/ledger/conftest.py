"""One `ledger` fixture, two adapters: the in-process memory ledger and a real TigerBeetle server.

The server is the session's `tigerbeetle_address` (tests/conftest.py: formats and
starts a `--development` replica from TIGERBEETLE_BIN or PATH, or skips saying
why). It is shared by every test of the session, so tests use fresh random ids
and user_data values and never assume an empty ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from workers.ledger import Ledger, LedgerUnavailable
from workers.ledger.memory import MemoryLedger
from workers.ledger.tigerbeetle import TigerBeetleLedger

BATCH_MAX = 250  # under what a --development server accepts per request (32 KiB: 253)
_answering: set[str] = set()


@pytest.fixture(params=["memory", "tigerbeetle"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        adapter: Ledger = MemoryLedger()
    else:
        address = request.getfixturevalue("tigerbeetle_address")
        adapter = TigerBeetleLedger(address, 0, batch_max=BATCH_MAX, timeout=30.0)
        await _until_answering(adapter, address)
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def _until_answering(adapter: TigerBeetleLedger, address: str) -> None:
    """An open port is not yet a serving replica: the first test waits for a real reply."""
    if address in _answering:
        return
    try:
        await adapter.lookup_accounts([1])
    except LedgerUnavailable as exc:
        pytest.fail(f"TigerBeetle at {address} never answered: {exc}")
    _answering.add(address)
