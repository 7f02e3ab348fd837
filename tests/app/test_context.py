"""ProcessContext start-up: the KEYLEDGER_REQUIRE_CALLER=none warning, readiness waiting for the caller
policy table, a sharded process joining its groups while its tables load (no broker: the followers,
producer and consumers are stood in for)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from schemas.messages import SYSTEM_TENANT
from tests.keystore.test_shards import Partitions
from workers.app import context as context_module
from workers.app.context import ProcessContext
from workers.kafka.partitioning import tenant_partition
from workers.keystore.shards import KeyShards
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings


class HeldFollower:
    """A caller follower whose initial read finishes when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.read = 0

    async def start(self) -> None:
        await self.release.wait()

    async def aclose(self) -> None:
        return None


def offline_context(monkeypatch: pytest.MonkeyPatch, **settings: object) -> ProcessContext:
    context = ProcessContext.build(Settings(kafka_bootstrap="unused:9092", **settings), "unused:9092",
                                   kms=LocalKms(), ledger=MemoryLedger(), follow=False, test_broker=True)

    async def nothing(*_args: object) -> None:
        return None

    async def answers(*_args: object) -> bool:
        return True

    monkeypatch.setattr(context.publisher, "start", nothing)
    monkeypatch.setattr(context_module, "start_concurrently", nothing)
    monkeypatch.setattr(context.broker, "ping", answers)
    return context


@pytest.mark.parametrize(("require", "warned"), [("none", True), ("decrypt", False), ("all", False)])
async def test_start_warns_only_when_no_caller_is_required(monkeypatch, caplog, require, warned):
    context = offline_context(monkeypatch, require_caller=require)
    with caplog.at_level(logging.WARNING):
        await context.start()
    warnings = [r for r in caplog.records if "KEYLEDGER_REQUIRE_CALLER=none" in r.getMessage()]
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].levelno == logging.WARNING and "adopt callers" in warnings[0].getMessage()


async def test_readiness_waits_for_the_caller_table_before_the_key_table(monkeypatch):
    context = offline_context(monkeypatch)
    follower = HeldFollower()
    context.caller_follower = follower  # type: ignore[assignment]
    starting = asyncio.create_task(context.start())
    await asyncio.sleep(0.05)
    ready, checks = await context.readiness()
    assert not ready and checks["callers"] == {"loaded": False, "callers": 0}
    assert not checks["key_table"]["loaded"]  # the key table is read only after the callers
    follower.release.set()
    await asyncio.wait_for(starting, 5)
    ready, checks = await context.readiness()
    assert ready and checks["callers"]["loaded"] and checks["key_table"]["loaded"]


async def test_closing_leaves_a_hanging_or_failing_part_behind_and_closes_the_rest(caplog):
    closed: list[str] = []

    async def hangs() -> None:
        closed.append("hangs: started")
        await asyncio.Event().wait()  # a group coordinator that never answers a leave

    async def fails() -> None:
        closed.append("fails: started")
        raise ConnectionError("gone")

    async def ledger() -> None:
        closed.append("ledger")

    with caplog.at_level(logging.WARNING, logger="keyledger"):
        await context_module.close_in_turn([hangs, fails, ledger], wait=0.05)
    assert closed == ["hangs: started", "fails: started", "ledger"]
    said = [r.getMessage() for r in caplog.records]
    assert any("hangs" in m and "left behind" in m for m in said)
    assert any("fails" in m and "ConnectionError" in m for m in said)
    assert not any("gone" in m for m in said)  # the type, not what the exception carries


def sharded(context: ProcessContext, groups: list[str]) -> Partitions:
    """`context` with a sharded key table over a stand-in reader, running `groups` (not subscribed)."""
    reader = Partitions(context.directory)
    reader.add_tenant(SYSTEM_TENANT)
    context.shards = KeyShards(context.directory, reader, tenant_partition)
    context.whole_table = False
    context.groups = dict.fromkeys(groups)  # type: ignore[arg-type]
    return reader


@pytest.mark.parametrize(("groups", "joins_early"), [
    (["keyledger-signer", "keyledger-pii"], True),
    # the digest group's records do not pass through the sharded table's gate: it joins after the tables
    (["keyledger-signer", "keyledger-audit-digest"], False),
])
async def test_a_sharded_process_joins_while_its_tables_load_and_serves_after(monkeypatch, groups, joins_early):
    context = offline_context(monkeypatch)
    joined = asyncio.Event()

    async def join(*_args: object) -> None:
        joined.set()

    monkeypatch.setattr(context_module, "start_concurrently", join)
    follower = HeldFollower()
    context.caller_follower = follower  # type: ignore[assignment]
    sharded(context, groups)
    starting = asyncio.create_task(context.start())
    await asyncio.sleep(0.05)
    assert joined.is_set() is joins_early
    assert context.shards is not None
    serving = asyncio.create_task(context.shards.serve("keyledger-pii", []))  # a record keyed by no tenant
    await asyncio.sleep(0.05)
    assert not serving.done()  # no record is handled before the caller policies and the system keys
    follower.release.set()
    await asyncio.wait_for(starting, 5)
    await asyncio.wait_for(serving, 1)
    assert joined.is_set() and context.callers_loaded and context.key_table_loaded


@pytest.mark.parametrize("shared", [True, False])
async def test_the_caller_pins_are_read_before_keys_callers_on_a_shared_ledger_only(monkeypatch, shared):
    from tests.support.callers import SharedMemoryLedger
    from workers.core.callers import caller_id_for
    from workers.ledger.records import pin_caller_policy

    context = offline_context(monkeypatch)
    ledger = SharedMemoryLedger() if shared else MemoryLedger()
    caller_id = caller_id_for("billing")
    await pin_caller_policy(ledger, caller_id, 2, b"a signed record")
    context.ledger.inner = ledger  # type: ignore[attr-defined]
    seen: list[int] = []

    class Follower(HeldFollower):
        async def start(self) -> None:
            seen.append(context.callers.pinned(caller_id))

    context.caller_follower = Follower()  # type: ignore[assignment]
    await asyncio.wait_for(context.start(), 5)
    assert seen == [2 if shared else 0]  # the memory ledger holds no other process's pin: never read
