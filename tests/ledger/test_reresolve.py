"""TigerBeetle replica names are resolved again when the cluster stops answering: a replica rescheduled
under the same name (a StatefulSet pod) gets a new IP, and the client is rebuilt for it. The client is a
stand-in recording the addresses it was built with; tests/faults/test_tb_cluster.py runs a real cluster."""

from __future__ import annotations

import asyncio

import pytest

from workers.errors import ConfigError
from workers.ledger import LedgerUnavailable
from workers.ledger import tigerbeetle as adapter


class Client:
    """Never answers while its addresses are `dead` (until closed, as the real client fails what it still
    holds); answers [] otherwise."""

    built: list[str] = []
    dead: set[str] = set()

    def __init__(self, cluster_id: int, replica_addresses: str) -> None:
        self.addresses = replica_addresses
        self.closed = False
        self._closing = asyncio.Event()
        Client.built.append(replica_addresses)

    async def lookup_accounts(self, ids: list[int]) -> list[object]:
        if self.addresses in Client.dead:
            await self._closing.wait()
            raise adapter.tb.ClientClosedError()
        return []

    async def create_transfers(self, transfers: list[object]) -> list[object]:
        return []

    async def close(self) -> None:
        self.closed = True
        self._closing.set()


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What each name resolves to now; a test moves a replica by changing it."""
    table = {"tb-0": "10.0.0.1", "tb-1": "10.0.0.2"}

    def resolve(addresses: str) -> str:
        resolved = []
        for entry in addresses.split(","):
            host, port = entry.rsplit(":", 1)
            if host not in table:
                raise ConfigError(f"KEYLEDGER_TB_ADDRESSES: cannot resolve {host!r}")
            resolved.append(f"{table[host]}:{port}")
        return ",".join(resolved)

    Client.built, Client.dead = [], set()
    monkeypatch.setattr(adapter.tb, "ClientAsync", Client)
    monkeypatch.setattr(adapter, "resolved_tb_addresses", resolve)
    return table


async def test_a_replica_that_moved_is_called_at_its_new_address_after_a_timeout(names):
    ledger = adapter.TigerBeetleLedger("tb-0:3000,tb-1:3000", timeout=0.05)
    first = ledger._client
    Client.dead.add("10.0.0.1:3000,10.0.0.2:3000")
    names["tb-0"] = "10.0.0.9"  # rescheduled
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([1])
    assert ledger.replica_addresses == "10.0.0.9:3000,10.0.0.2:3000"
    assert first.closed and Client.built == ["10.0.0.1:3000,10.0.0.2:3000", "10.0.0.9:3000,10.0.0.2:3000"]
    assert await ledger.lookup_accounts([1]) == []  # the retry reaches the new client
    await ledger.aclose()


async def test_same_addresses_keep_the_client(names):
    ledger = adapter.TigerBeetleLedger("tb-0:3000,tb-1:3000", timeout=0.05)
    Client.dead.add("10.0.0.1:3000,10.0.0.2:3000")
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([1])
    assert len(Client.built) == 1 and not ledger._client.closed
    await ledger.aclose()


async def test_a_name_that_does_not_resolve_now_keeps_the_client(names):
    ledger = adapter.TigerBeetleLedger("tb-0:3000,tb-1:3000", timeout=0.05)
    Client.dead.add("10.0.0.1:3000,10.0.0.2:3000")
    del names["tb-1"]  # DNS briefly without the record
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([1])
    assert await ledger.reresolve() is False
    assert ledger.replica_addresses == "10.0.0.1:3000,10.0.0.2:3000" and len(Client.built) == 1
    await ledger.aclose()
