"""Builds the configured ledger adapter."""

from __future__ import annotations

import ipaddress
import socket

from workers.errors import ConfigError
from workers.ledger import Ledger
from workers.settings import TB_DEFAULT_HOST, TB_DEFAULT_PORT, LedgerKind, Settings, parse_addresses


def open_ledger(settings: Settings) -> Ledger:
    if settings.ledger is LedgerKind.TIGERBEETLE:
        from workers.ledger.tigerbeetle import TigerBeetleLedger

        addresses = resolved_tb_addresses(settings.tb_addresses or "") if settings.tb_addresses else ""
        return TigerBeetleLedger(addresses, settings.tb_cluster_id, settings.tb_batch_max)
    from workers.ledger.memory import MemoryLedger

    return MemoryLedger()


def describe_ledger(settings: Settings) -> str:
    """How outputs name the ledger: TigerBeetle only when one is used."""
    if settings.ledger is LedgerKind.TIGERBEETLE:
        return f"TigerBeetle at {settings.tb_addresses}"
    return "the ledger (memory)"


def resolved_tb_addresses(addresses: str) -> str:
    """KEYLEDGER_TB_ADDRESSES with host names resolved: the TigerBeetle client takes IP addresses only.

    The order is kept (it is significant: address i is replica i)."""
    resolved = []
    for host, port in parse_addresses(addresses, default_port=TB_DEFAULT_PORT, default_host=TB_DEFAULT_HOST):
        ip = host if _is_ip(host) else _resolve(host, port)
        resolved.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return ",".join(resolved)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> str:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"KEYLEDGER_TB_ADDRESSES: cannot resolve {host!r} ({exc.strerror or exc}); "
                          "name reachable replicas or give their IP addresses") from None
    return str(found[0][4][0])
