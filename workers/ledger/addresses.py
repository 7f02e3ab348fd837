"""TigerBeetle replica addresses: KEYLEDGER_TB_ADDRESSES as the client needs them."""

from __future__ import annotations

import ipaddress
import socket

from workers.errors import ConfigError
from workers.settings import TB_DEFAULT_HOST, TB_DEFAULT_PORT, parse_addresses


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
