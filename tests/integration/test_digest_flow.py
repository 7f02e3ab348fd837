"""The audit digest chain over a real broker: tampering with either topic is caught, a hard crash forks nothing.

Tampering is done the way someone with write access to the cluster would leave it: a rewritten
copy of a topic (records removed, altered, reordered; digests dropped, altered, forged) in a
fresh topic, which the checker reads in place of the original.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.isolated import (
    PARTITIONS,
    read_logged,
    spans_of,
    start_worker,
    wait_for_chain,
    write_copy,
)
from tests.support.harness import span_job
from tests.support.kafka import committed_offset, read, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.core.digest import encode, sign_digest
from workers.kafka.tap import produce
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.tools.audit_check import Logged, verify_chain

pytestmark = pytest.mark.integration

DIGEST_GROUP = "keyledger-audit-digest"


async def traffic(bootstrap: str, tenants: list[str], spans: int) -> None:
    await produce(bootstrap, "spans.to-sign", [(t.encode(), span_job(t)) for t in tenants for _ in range(spans)])


async def onboard(bootstrap: str, tenants: list[str]) -> None:
    await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
    await read(bootstrap, "keys.events", timeout=60, until=lambda rs: len(
        {json.loads(r.value)["tenant_id"] for r in rs} & set(tenants)) == len(tenants))


def replace(records: list[Logged], index: int, value: bytes | None) -> list[Logged]:
    return [r if i != index else Logged(r.partition, r.offset, r.key, value) for i, r in enumerate(records)]


async def test_each_kind_of_tampering_is_detected_with_its_partition_and_offsets(own_broker, monkeypatch):
    bootstrap = own_broker
    monkeypatch.setenv("KEYLEDGER_DIGEST_INTERVAL", "0.5")
    tenants = [unique_tenant("dg") for _ in range(6)]
    async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer", DIGEST_GROUP]):
        await onboard(bootstrap, tenants)
        chain = await wait_for_chain(bootstrap, min_records=2 * len(tenants))
        for _ in range(3):  # rounds of traffic, each digested before the next: several links per partition
            await traffic(bootstrap, tenants, 5)
            chain = await wait_for_chain(bootstrap, min_records=chain.records + 1)
    assert chain.intact and chain.duplicates == 0

    audit = await read_logged(bootstrap, "kms.audit")
    digests = await read_logged(bootstrap, "kms.audit.digests")
    linked = [json.loads(r.value) for records in digests.values() for r in records]
    # the partition whose chain is longest, and one of its digests covering more than one record
    busiest = max(range(PARTITIONS), key=lambda p: sum(d["partition"] == p for d in linked))
    chain_links = [d for d in linked if d["partition"] == busiest]
    # a link with a successor (dropping the newest digest would only shorten the chain, see the README)
    # covering at least two records (so that two can be swapped)
    target = next(d for d in chain_links[:-1] if d["count"] >= 2)
    records = audit[busiest]
    index = next(i for i, r in enumerate(records) if r.offset == target["first_offset"])
    where = (busiest, target["first_offset"], target["last_offset"])

    async def check(name: str, audit_copy: dict[int, list[Logged]] | None = None,
                    digest_copy: dict[int, list[Logged]] | None = None):
        a = await write_copy(bootstrap, f"copy.{name}.audit", audit_copy or audit)
        d = await write_copy(bootstrap, f"copy.{name}.digests", digest_copy or digests)
        return await verify_chain(bootstrap, audit_topic=a, digest_topic=d)

    baseline = await check("baseline")
    assert baseline.intact and baseline.digests == chain.digests  # the copies line up offset for offset

    removed = await check("delete", audit_copy={**audit, busiest: records[:index] + records[index + 1:]})
    assert not removed.intact and where in spans_of(removed.problems)

    event = json.loads(records[index].value)
    altered = await check("alter", audit_copy={**audit, busiest: replace(records, index, json.dumps(
        {**event, "count": event["count"] + 1}).encode())})
    assert not altered.intact and spans_of(altered.problems) == {where}
    assert "do not hash" in " ".join(altered.problems)

    swapped = replace(replace(records, index, records[index + 1].value), index + 1, records[index].value)
    reordered = await check("reorder", audit_copy={**audit, busiest: swapped})
    assert not reordered.intact and spans_of(reordered.problems) == {where}

    digest_records = digests[next(p for p, rs in digests.items() if any(
        json.loads(r.value) == target for r in rs))]
    at = next(i for i, r in enumerate(digest_records) if json.loads(r.value) == target)
    digest_partition = digest_records[at].partition
    dropped = await check("drop-digest", digest_copy={
        **digests, digest_partition: digest_records[:at] + digest_records[at + 1:]})
    assert not dropped.intact
    assert any("chain broken" in p for p in dropped.problems)  # the next link no longer matches
    assert any(f"partition {busiest} offsets {target['first_offset']}..{target['last_offset']}: "
               f"{target['count']} records covered by no digest" in p for p in dropped.problems)

    inflated = {**target, "count": target["count"] + 1}
    changed = await check("alter-digest", digest_copy={
        **digests, digest_partition: replace(digest_records, at, encode(inflated))})
    assert not changed.intact and any("signature does not verify" in p for p in changed.problems)
    assert (busiest, target["first_offset"], target["last_offset"]) in spans_of(changed.problems)

    forger = Ed25519PrivateKey.generate()
    body = {k: v for k, v in inflated.items() if k != "signature"}
    forged_same_key = await check("forge", digest_copy={
        **digests, digest_partition: replace(digest_records, at, encode(sign_digest(forger, body)))})
    assert any("signature does not verify" in p for p in forged_same_key.problems)
    forged_own_key = await check("forge-own-key", digest_copy={**digests, digest_partition: replace(
        digest_records, at, encode(sign_digest(forger, {**body, "key_id": "ab" * 16})))})
    assert any("not a keyledger digest key" in p for p in forged_own_key.problems)


async def test_a_clean_chain_after_kill_9_of_the_digest_worker(own_broker, own_tigerbeetle, tmp_path):
    bootstrap = own_broker
    tb_env = {"KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": own_tigerbeetle}
    tenants = [unique_tenant("kd") for _ in range(3)]
    ledger = TigerBeetleLedger(own_tigerbeetle)
    try:
        async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer"], ledger=ledger):
            first = start_worker(bootstrap, [DIGEST_GROUP], {**tb_env, "KEYLEDGER_DIGEST_INTERVAL": "3"},
                                 tmp_path / "digest-1.log")
            await onboard(bootstrap, tenants)
            await traffic(bootstrap, tenants, 10)
            before = await wait_for_chain(bootstrap, min_records=3 * len(tenants))

            await traffic(bootstrap, tenants, 10)  # these records reach the worker; it dies before digesting them
            await read(bootstrap, "kms.audit", timeout=60, until=lambda rs: len(rs) > before.records)
            first.send_signal(signal.SIGKILL)
            first.wait()
            crashed = await verify_chain(bootstrap)
            assert crashed.intact
            for partition in range(PARTITIONS):  # nothing was committed past a published digest
                committed = await committed_offset(bootstrap, DIGEST_GROUP, "kms.audit", partition)
                assert committed <= crashed.digested_to.get(partition, -1) + 1

            await traffic(bootstrap, tenants, 5)
            second = start_worker(bootstrap, [DIGEST_GROUP], {**tb_env, "KEYLEDGER_DIGEST_INTERVAL": "1"},
                                  tmp_path / "digest-2.log")
            try:
                after = await wait_for_chain(bootstrap, min_records=crashed.records + 1)
            finally:
                second.terminate()
                second.wait(timeout=30)
    finally:
        await ledger.aclose()

    log = (tmp_path / "digest-2.log").read_text()
    assert "the chain continues after offset" in log  # the restart read its state back from the topic
    assert after.intact and after.duplicates == 0, after.problems
    assert after.digests > before.digests and after.records > crashed.records
    ranges = [(p, first_last) for p, spans in after.covered.items() for first_last in spans]
    assert len(ranges) == len(set(ranges)) == after.digests  # one digest per range, every one verified

    cli = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "workers.app.cli", "audit", "verify"],
                                  env={**os.environ, **tb_env, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap},
                                  capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "digest chain intact" in cli.stdout and "agrees with TigerBeetle" in cli.stdout
