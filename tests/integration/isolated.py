"""Helpers for tests on a broker (and TigerBeetle) of their own: those that run the audit digest group.

The digest key is a singleton: one `keyledger-system` key per (broker, ledger) pair, made
by whichever digest worker needs it first, wrapped by that worker's KMS and pinned by
that worker's ledger. Digest tests therefore never share the session broker or ledger
with other tests, whose workers may use another KMS or ledger: they take the `own_broker`
and `own_tigerbeetle` fixtures (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.support.kafka import read
from workers.kafka.topics import ensure_topics
from workers.settings import Settings
from workers.tools.audit_check import ChainReport, Logged, verify_chain

PARTITIONS = 3
SPANS = re.compile(r"partition (\d+) offsets (\d+)\.\.(\d+)")


def start_worker(bootstrap: str, groups: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`keyledger run --group ...` as its own process (local KMS: every process shares the dev KEK)."""
    args = [sys.executable, "-m", "workers.app.cli", "run"] + [a for g in groups for a in ("--group", g)]
    full_env = {**os.environ, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap, "KEYLEDGER_KAFKA_PARTITIONS": str(PARTITIONS),
                "KEYLEDGER_KMS_PROVIDER": "local", "KEYLEDGER_PROFILE": "dev", **env}
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT)


async def wait_for_chain(bootstrap: str, *, min_records: int, timeout: float = 90) -> ChainReport:
    """Until the chain covers every audit record (at least `min_records` of them) and nothing waits for a digest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        report = await verify_chain(bootstrap)
        if report.records >= min_records and not report.not_yet_digested and report.digests:
            return report
        if loop.time() > deadline:
            raise TimeoutError(f"the chain did not cover kms.audit: {report}")
        await asyncio.sleep(0.5)


async def read_logged(bootstrap: str, topic: str) -> dict[int, list[Logged]]:
    """The topic per partition, in offset order."""
    by_partition: dict[int, list[Logged]] = {p: [] for p in range(PARTITIONS)}
    for r in await read(bootstrap, topic):
        by_partition[r.partition].append(Logged(r.partition, r.offset, r.key, r.value))
    for records in by_partition.values():
        records.sort(key=lambda r: r.offset)
    return by_partition


async def write_copy(bootstrap: str, topic: str, by_partition: dict[int, list[Logged]]) -> str:
    """A fresh topic holding these records, each partition's in the order given (offsets restart at 0)."""
    await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=PARTITIONS), [topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, r.value, key=r.key, partition=p)
                   for p, records in by_partition.items() for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topic


def spans_of(problems: list[str]) -> set[tuple[int, int, int]]:
    """(partition, first, last) named by each problem."""
    return {(int(p), int(a), int(b)) for text in problems for p, a, b in SPANS.findall(text)}
