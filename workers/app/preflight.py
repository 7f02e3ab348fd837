"""Checks a CLI verb makes before it opens a client: settings load, the broker and ledger answer.

A client library left to find out for itself gives a traceback (aiokafka), retries forever
and prints from native code (TigerBeetle), or waits 40 s; a TCP connect with a deadline
answers in at most `timeout` seconds and names the setting to fix. Passing the probe does not
prove the service is healthy, only that the address is right; later failures are explained
by workers.app.failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from workers.errors import ConfigError
from workers.ledger.addresses import resolved_tb_addresses
from workers.settings import (
    KAFKA_DEFAULT_PORT,
    SECRET_SETTINGS,
    TB_DEFAULT_HOST,
    TB_DEFAULT_PORT,
    KafkaSecurity,
    LedgerKind,
    Settings,
    env_name,
    parse_addresses,
)

PROBE_TIMEOUT = 5.0


def load_settings() -> Settings:
    """Settings from the environment; ConfigError with one line per wrong setting."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError("\n".join(settings_problems(exc))) from exc


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per problem: `KEYLEDGER_NAME=value: what is wrong and the fix` (no pydantic internals)."""
    lines = []
    for error in exc.errors():
        name = env_name(error["loc"])
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if error["type"] == "value_error" and cause is not None else error["msg"]
        if name is None:  # a check of several settings (the production profile) names them itself
            lines.append(message)
            continue
        shown = error.get("input")
        if name not in SECRET_SETTINGS and isinstance(shown, str | int | float):
            name = f"{name}={shown}"
        lines.append(f"{name}: {message[:1].lower()}{message[1:]}")
    return lines


def require_bootstrap(settings: Settings) -> str:
    if not settings.kafka.bootstrap:
        raise ConfigError("KEYLEDGER_KAFKA_BOOTSTRAP is unset: set it to the broker that holds keyledger's topics "
                          "(`keyledger dev` prints an export line for it)")
    return settings.kafka.bootstrap


async def check_kafka(bootstrap: str, *, hint: str = "") -> None:
    """Some bootstrap address answers a Kafka ApiVersions request within PROBE_TIMEOUT (over TLS when
    KEYLEDGER_KAFKA_SECURITY_PROTOCOL says so: a wrong CA or a missing client certificate is named here)."""
    from workers.kafka.security import check_tls

    security = KafkaSecurity.from_environment()
    speaks = None if security.uses_tls else _kafka_answers
    reason = await _first_answer(parse_addresses(bootstrap, default_port=KAFKA_DEFAULT_PORT), speaks=speaks)
    if reason:
        raise ConfigError(f"cannot reach Kafka at {bootstrap} ({reason}): set KEYLEDGER_KAFKA_BOOTSTRAP to a running "
                          f"broker{hint}")
    if security.uses_tls:
        await check_tls(bootstrap, security)


async def check_topics(bootstrap: str, topics: list[str]) -> None:
    """The broker holds `topics` (a reader would otherwise wait its whole timeout for them to appear)."""
    from aiokafka import AIOKafkaConsumer

    from workers.kafka.security import client_options
    from workers.kafka.tap import started

    consumer = await started(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                                **client_options()))
    try:
        missing = sorted(set(topics) - await consumer.topics())
    finally:
        await consumer.stop()
    if missing:
        raise ConfigError(f"{', '.join(missing)} not on the broker at {bootstrap}: no keyledger worker has run against "
                          "it (`keyledger run` or `keyledger dev` creates the topics), or KEYLEDGER_KAFKA_BOOTSTRAP "
                          "names another cluster")


async def check_ledger(settings: Settings) -> None:
    """A TigerBeetle ledger must answer at its address; the memory ledger needs nothing."""
    if settings.ledger.kind is not LedgerKind.TIGERBEETLE:
        return
    if not settings.ledger.tb_addresses:
        raise ConfigError("KEYLEDGER_LEDGER=tigerbeetle needs KEYLEDGER_TB_ADDRESSES (the replicas' host:port list)")
    addresses = resolved_tb_addresses(settings.ledger.tb_addresses)
    reason = await _first_answer(parse_addresses(addresses, default_port=TB_DEFAULT_PORT, default_host=TB_DEFAULT_HOST))
    if reason:
        raise ConfigError(f"cannot reach TigerBeetle at {settings.ledger.tb_addresses} ({reason}): start it, or fix "
                          "KEYLEDGER_TB_ADDRESSES (`keyledger dev` prints the address of the one it runs)")


Speaks = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str | None]]


async def _first_answer(addresses: list[tuple[str, int]], *, speaks: Speaks | None = None,
                        timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when any address answers within `timeout` (connects, and `speaks` finds its protocol), else why
    the first one did not."""
    reasons = await asyncio.gather(*(_probe(host, port, speaks, timeout) for host, port in addresses))
    return None if any(r is None for r in reasons) else reasons[0]


async def _probe(host: str, port: int, speaks: Speaks | None, timeout: float) -> str | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await speaks(reader, writer) if speaks else None
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return _os_reason(exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return (exc.strerror or str(exc)).lower()
    return os.strerror(exc.errno).lower()  # asyncio's own text is "Connect call failed (...)"


_API_VERSIONS = 18
_PROBE_ID = 0x6B6C6467  # any correlation id; the answer must carry it back


async def _kafka_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
    """Send ApiVersions v0 (every Kafka broker answers it, before any other request) and read the reply."""
    client_id = b"keyledger-preflight"
    body = struct.pack(">hhih", _API_VERSIONS, 0, _PROBE_ID, len(client_id)) + client_id
    writer.write(struct.pack(">i", len(body)) + body)
    await writer.drain()
    try:
        _size, correlation = struct.unpack(">ii", await reader.readexactly(8))
    except asyncio.IncompleteReadError:
        return "the connection was closed without a Kafka answer: is it a Kafka broker?"
    return None if correlation == _PROBE_ID else "the answer is not Kafka's: is it a Kafka broker?"
