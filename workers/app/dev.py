"""`keyledger dev`: the embedded stack and every worker in one process, like `vault server -dev`.

- Kafka: KEYLEDGER_KAFKA_BOOTSTRAP when set; else an embedded broker (tansu, memory storage) on
  KEYLEDGER_DEV_PORT, by default 9092 when it is free, else any free port (the banner says which
  and why).
- Ledger: KEYLEDGER_LEDGER when set; else a TigerBeetle server when a binary is found
  (TIGERBEETLE_BIN or PATH), its data file in a temporary directory removed at exit, so that
  `keyledger audit verify` and `keyledger status` in another shell read the same ledger; else
  the memory ledger, which lives inside this process only.
- KMS: the configured provider (`local` by default: a fixed, public development KEK).
- Callers: KEYLEDGER_OPERATOR_PUBLIC_KEY when set; else dev is the operator: it makes an operator
  key pair in a temporary directory removed at exit, and the banner exports its public half and
  the private key's path (`DEV_OPERATOR_KEY`, for `keyledger caller add --operator-key`).

The banner comes once every group is running; it prints the `export` lines the CLI verbs need
and warns that everything is in memory or in temporary files, gone at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.app.embedded import EmbeddedBroker, TigerBeetleServer, free_port, port_is_free, tigerbeetle_binary
from workers.app.preflight import check_kafka, check_ledger
from workers.app.runtime import running_workers, settle_the_heap, until_signalled
from workers.errors import ConfigError
from workers.groups import ALL_GROUPS
from workers.ledger.factory import describe_ledger
from workers.settings import KmsProvider, LedgerKind, Profile, Settings
from workers.tools.callers import operator_keygen

log = logging.getLogger("keyledger.dev")

DEFAULT_DEV_PORT = 9092


@dataclass
class DevStack:
    """What dev runs on, for the banner: the settings the workers use and how they came about."""

    settings: Settings
    bootstrap: str
    embedded_broker: bool
    notes: list[str]
    tb_folder: str | None = None
    operator_key: str | None = None
    """The development operator key file dev made (KEYLEDGER_OPERATOR_PUBLIC_KEY was unset)."""


def choose_port(settings: Settings) -> tuple[int, str | None]:
    """The embedded broker's port and, when it is not the one asked for, why."""
    if settings.dev_port is not None:
        if not port_is_free(settings.dev_port):
            raise ConfigError(f"KEYLEDGER_DEV_PORT={settings.dev_port} is in use: choose another port, "
                              f"or unset it (dev then takes {DEFAULT_DEV_PORT} or any free port)")
        return settings.dev_port, None
    if port_is_free(DEFAULT_DEV_PORT):
        return DEFAULT_DEV_PORT, None
    port = free_port()
    return port, (f"port {DEFAULT_DEV_PORT} is in use (another broker or dev?), so the broker took {port}; "
                  "set KEYLEDGER_DEV_PORT to choose one")


def wants_tigerbeetle(settings: Settings) -> str | None:
    """The TigerBeetle binary dev should start: one is found and KEYLEDGER_LEDGER was not set."""
    return None if "kind" in settings.ledger.model_fields_set else tigerbeetle_binary()


async def dev(settings: Settings) -> None:
    if settings.profile is Profile.PRODUCTION:
        raise ConfigError("keyledger dev runs the development stack: unset KEYLEDGER_PROFILE=production")
    settings = settings.updated(profile=Profile.DEV)  # dev is the development profile, whether named or not
    started = time.monotonic()
    if settings.kafka.bootstrap:
        await check_kafka(settings.kafka.bootstrap, hint=", or unset it so that dev starts its own")
    await check_ledger(settings)
    with contextlib.ExitStack() as cleanup:
        stack = await start_stack(settings, cleanup)
        if not settings.callers.operator_public_key:
            operator_key, public = operator_keygen(Path(cleanup.enter_context(
                tempfile.TemporaryDirectory(prefix="keyledger-dev-operator-"))))
            stack.settings = stack.settings.updated(operator_public_key=public.read_text().strip())
            stack.operator_key = str(operator_key)
        async with running_workers(stack.settings, stack.bootstrap, ALL_GROUPS) as context:
            print("\n".join(banner(stack, time.monotonic() - started, context.http_url, list(context.groups))),
                  flush=True)
            settle_the_heap()
            await until_signalled()


async def start_stack(settings: Settings, cleanup: contextlib.ExitStack) -> DevStack:
    """The broker and TigerBeetle, started side by side; each is stopped by `cleanup`, even half-started."""
    notes: list[str] = []
    broker: EmbeddedBroker | None = None
    if not settings.kafka.bootstrap:
        port, note = choose_port(settings)
        notes += [note] if note else []
        broker = EmbeddedBroker(port)
        cleanup.callback(broker.stop)
    server: TigerBeetleServer | None = None
    folder: str | None = None
    binary = wants_tigerbeetle(settings)
    if binary:
        folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="keyledger-dev-"))
        server = TigerBeetleServer(binary, Path(folder))
        cleanup.callback(server.stop)  # after the workers close, before the folder goes
    # both start in threads (they wait for a port); a failure is raised only once both are settled
    starting = asyncio.gather(asyncio.to_thread(broker.start) if broker else _nothing(),
                              asyncio.to_thread(server.start) if server else _nothing(), return_exceptions=True)
    try:
        broker_started, tb_started = await asyncio.shield(starting)
    except asyncio.CancelledError:
        await starting  # Ctrl-C while starting: a thread cannot be cancelled; let it finish so `cleanup` stops it
        raise
    if isinstance(broker_started, BaseException):
        raise broker_started
    if server is not None and isinstance(tb_started, BaseException):
        notes.append(f"TigerBeetle ({binary}) did not start ({_why(tb_started)}); using the ledger (memory)")
        server, folder = None, None
    if server is not None:
        settings = settings.updated(ledger=LedgerKind.TIGERBEETLE, tb_addresses=server.address)
    bootstrap = broker.bootstrap if broker else str(settings.kafka.bootstrap)
    return DevStack(settings, bootstrap, broker is not None, notes, folder)


async def _nothing() -> None:
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"`{Path(str(exc.cmd[0])).name} {exc.cmd[1]}` exited with {exc.returncode}"
    return str(exc) or type(exc).__name__


def banner(stack: DevStack, seconds: float, http_url: str | None = None,
           groups: Sequence[str] = ALL_GROUPS) -> list[str]:
    """The lines printed once every group runs (stdout; nothing secret in them). `groups`: those running,
    counted and named as they are."""
    settings = stack.settings
    tigerbeetle = settings.ledger.kind is LedgerKind.TIGERBEETLE
    lines = [f"keyledger dev: {len(groups)} consumer groups running after {seconds:.1f}s",
             f"  Kafka   {stack.bootstrap}" + (" (embedded tansu broker, memory storage)" if stack.embedded_broker else "")]
    if settings.kms.provider is KmsProvider.LOCAL:
        kek = "the KEK from KEYLEDGER_LOCAL_KEK" if settings.kms.local_kek else "a fixed, public development KEK"
        lines.append(f"  KMS     local, in this process ({kek})")
    else:
        lines.append(f"  KMS     {settings.kms.provider.value}" + (f" at {settings.kms.aws.endpoint_url}"
                                                                   if settings.kms.aws.endpoint_url else ""))
    if tigerbeetle:
        where = f" (data file in {stack.tb_folder}, removed at exit)" if stack.tb_folder else ""
        lines.append(f"  ledger  {describe_ledger(settings.ledger)}{where}")
    else:
        lines.append(f"  ledger  {describe_ledger(settings.ledger)}, inside this process: `keyledger audit verify` "
                     "cannot read it (a TigerBeetle binary on PATH or in TIGERBEETLE_BIN gives dev one it can)")
    lines.append(f"  groups  {', '.join(groups)}")
    if stack.operator_key:
        lines.append(f"  callers operator key {stack.operator_key} (development, removed at exit; "
                     "`keyledger caller add --operator-key`)")
    lines.append(f"  metrics {http_url}/metrics   health {http_url}/healthz, {http_url}/readyz" if http_url
                 else "  metrics off (KEYLEDGER_HTTP_PORT=0, or the port was taken)")
    lines += [f"note: {note}" for note in stack.notes]
    lines += ["", "In another shell, for the CLI verbs (verify, rotate, status, audit verify, caller, client):",
              f"  export KEYLEDGER_KAFKA_BOOTSTRAP={stack.bootstrap}"]
    if tigerbeetle:
        cluster = f" KEYLEDGER_TB_CLUSTER_ID={settings.ledger.tb_cluster_id}" if settings.ledger.tb_cluster_id else ""
        lines.append(f"  export KEYLEDGER_LEDGER=tigerbeetle KEYLEDGER_TB_ADDRESSES={settings.ledger.tb_addresses}{cluster}")
    if stack.operator_key:
        lines.append(f"  export KEYLEDGER_OPERATOR_PUBLIC_KEY={settings.callers.operator_public_key} "
                     f"DEV_OPERATOR_KEY={stack.operator_key}")
    gone = (["topics", "keys"] if stack.embedded_broker else []) + (["ledger"] if stack.tb_folder or not tigerbeetle else [])
    if gone:
        temporary = " (TigerBeetle: a temporary data file)" if stack.tb_folder else ""
        lines += ["", f"WARNING: development only. Everything runs in memory{temporary}: the {_and(gone)} "
                      "are gone when dev stops."]
    lines.append("Ctrl-C stops.")
    return lines


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
