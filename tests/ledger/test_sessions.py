"""A TigerBeetle cluster keeps a bounded number of client sessions and evicts the least recently used one
when one more client registers; the evicted client then fails every request, for good. The adapter
replaces such a client with a new one (a new session), so an idle process is not cut off from the ledger
forever by other clients (CLI runs, CronJobs, restarted pods) coming and going.

The first tests use a stand-in client; the last one crowds a real server's session table."""

from __future__ import annotations

import pytest

from workers.ledger import LedgerUnavailable
from workers.ledger import tigerbeetle as adapter

SESSIONS_MAX = 64  # clients_max of the server release the tests run (0.17): one more evicts


class Client:
    """Answers [] until `evict()`: then fails one request ClientEvictedError and the later ones
    ClientClosedError, as the real client does once the cluster evicted its session."""

    built: list[Client] = []

    def __init__(self, cluster_id: int, replica_addresses: str) -> None:
        self.addresses = replica_addresses
        self.evicted = False
        self.told = False
        self.closed = False
        Client.built.append(self)

    def evict(self) -> None:
        self.evicted = True

    async def lookup_accounts(self, ids: list[int]) -> list[object]:
        if self.evicted:
            if not self.told:
                self.told = True
                raise adapter.tb.ClientEvictedError()
            raise adapter.tb.ClientClosedError()
        return []

    async def create_transfers(self, transfers: list[object]) -> list[object]:
        return await self.lookup_accounts([])

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[Client]:
    Client.built = []
    monkeypatch.setattr(adapter.tb, "ClientAsync", Client)
    monkeypatch.setattr(adapter, "resolved_tb_addresses", lambda addresses: addresses)
    return Client.built


async def test_an_evicted_client_is_replaced_and_the_retry_gets_through(clients):
    ledger = adapter.TigerBeetleLedger("10.0.0.1:3000", timeout=1)
    clients[0].evict()
    with pytest.raises(LedgerUnavailable, match="ClientEvictedError"):
        await ledger.lookup_accounts([1])
    assert len(clients) == 2 and clients[0].closed and clients[1].addresses == "10.0.0.1:3000"
    assert await ledger.lookup_accounts([1]) == []  # the retry, on a new session
    await ledger.aclose()


async def test_a_request_that_finds_its_evicted_client_closed_renews_it_too(clients):
    ledger = adapter.TigerBeetleLedger("10.0.0.1:3000", timeout=1)
    clients[0].evict()
    clients[0].told = True  # another request saw the eviction first; this one finds the client closed
    with pytest.raises(LedgerUnavailable, match="ClientClosedError"):
        await ledger.lookup_accounts([1])
    assert len(clients) == 2 and await ledger.lookup_accounts([1]) == []
    await ledger.aclose()


async def test_a_client_already_replaced_is_not_replaced_again(clients):
    ledger = adapter.TigerBeetleLedger("10.0.0.1:3000", timeout=1)
    evicted = clients[0]
    evicted.evict()
    with pytest.raises(LedgerUnavailable):
        await ledger.lookup_accounts([1])
    assert not await ledger.renew_session(evicted)  # a late failure of the old client changes nothing
    assert len(clients) == 2
    await ledger.aclose()
    assert not await ledger.renew_session(clients[1])  # nor one after aclose
    assert len(clients) == 2


async def test_an_idle_client_survives_more_clients_than_the_cluster_keeps_sessions_for(own_tigerbeetle):
    idle = adapter.TigerBeetleLedger(own_tigerbeetle, timeout=30)
    try:
        assert await idle.lookup_accounts([1]) == []  # its session is registered, then it sits idle
        for _ in range(SESSIONS_MAX):  # as many CLI runs come and go: the idle session is the oldest
            passing = adapter.TigerBeetleLedger(own_tigerbeetle, timeout=30)
            try:
                await passing.lookup_accounts([1])
            finally:
                await passing.aclose()
        with pytest.raises(LedgerUnavailable, match="ClientEvictedError"):
            await idle.lookup_accounts([1])
        assert await idle.lookup_accounts([1]) == []  # not ClientClosedError forever
    finally:
        await idle.aclose()
