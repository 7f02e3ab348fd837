"""TigerBeetle replica addresses: host names are resolved before the client sees them (it takes IPs only)."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.ledger import AccountFilter, AccountFilterFlags
from workers.ledger.addresses import resolved_tb_addresses as resolve_addresses
from workers.ledger.tigerbeetle import TigerBeetleLedger


def test_ip_literals_and_bare_ports_pass_through():
    assert resolve_addresses("127.0.0.1:3000, 3001,[::1]:3002") == "127.0.0.1:3000,127.0.0.1:3001,[::1]:3002"


def test_host_names_resolve_to_ipv4():
    assert resolve_addresses("localhost:3000") == "127.0.0.1:3000"


def test_an_unresolvable_name_names_the_setting():
    with pytest.raises(ConfigError, match="KEYLEDGER_TB_ADDRESSES: cannot resolve"):
        resolve_addresses("no-such-host.invalid:3000")


def test_a_malformed_address_is_refused():
    with pytest.raises(ValueError, match="is not host:port"):
        resolve_addresses("tb-0:http")


async def test_a_client_given_a_host_name_reaches_a_real_server(tigerbeetle_address):
    port = tigerbeetle_address.rsplit(":", 1)[1]
    ledger = TigerBeetleLedger(f"localhost:{port}")
    try:
        found = await ledger.get_account_transfers(AccountFilter(
            account_id=1, user_data_128=0, user_data_64=0, user_data_32=0, code=0, timestamp_min=0,
            timestamp_max=0, limit=1, flags=AccountFilterFlags.DEBITS))
        assert found == []  # answered by the server: the request went through
    finally:
        await ledger.aclose()
