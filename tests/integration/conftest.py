"""Integration fixtures: workers over a real broker, as a separate `keyledger run` process or in-process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from tests.support.callers import Operator, RegisteredCaller
from workers.app.context import ProcessContext
from workers.app.embedded import free_port
from workers.kafka.tap import read_topic
from workers.kafka.topics import ensure_topics
from workers.kms.factory import open_kms
from workers.settings import Settings

pytestmark = pytest.mark.integration


def unique_tenant(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def tenant_created(tenant: str, event_id: str | None = None, **extra) -> bytes:
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat(), **extra}).encode()


async def records_for(bootstrap: str, topic: str, tenant: str, want: int = 0, timeout: float = 30.0) -> list[dict]:
    """The JSON values of `topic` keyed by `tenant` or naming it (waits until `want` are there)."""
    def mine(records):
        values = [(r.key, _json_object(r.value)) for r in records]
        return [v for key, v in values if v is not None and (key == tenant.encode() or v.get("tenant_id") == tenant)]

    records = await read_topic(bootstrap, topic, until=(lambda rs: len(mine(rs)) >= want) if want else None,
                               timeout=timeout)
    return mine(records)


def _json_object(value: bytes | None) -> dict | None:
    """A record's JSON object, or None: input topics also hold the hostile records tests send."""
    try:
        decoded = json.loads(value) if value is not None else None
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None


async def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    # an unsubscribed consumer only fetches the group's offsets; it never joins the group
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, partition))
        return committed if committed is not None else -1
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, topic: str, partition: int, past: int, timeout: float = 30.0) -> None:
    """Wait until `group` committed beyond offset `past`: it processed that record and everything before."""
    deadline = time.monotonic() + timeout
    while await committed_offset(bootstrap, group, topic, partition) <= past:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{group} did not commit past {topic}[{partition}]@{past}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
def topics_ready(kafka_bootstrap: str) -> str:
    asyncio.run(ensure_topics(kafka_bootstrap, Settings(kafka_bootstrap=kafka_bootstrap, kafka_partitions=3)))
    return kafka_bootstrap


@pytest.fixture
def aws_env(moto_endpoint: str, moto_kms_key: str) -> dict[str, str]:
    return {
        "KEYLEDGER_PROFILE": "dev",  # `keyledger run` with the memory ledger
        "KEYLEDGER_KMS_PROVIDER": "aws",
        "KEYLEDGER_AWS_REGION": "us-east-1",  # moto's key is there
        "KEYLEDGER_KMS_ENDPOINT_URL": moto_endpoint,
        "KEYLEDGER_KMS_KEY_ID": moto_kms_key,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture
def worker_process(topics_ready: str, aws_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Starts `keyledger run` as its own process; yields a function that starts one, stops all at the end."""
    started: list[subprocess.Popen] = []

    def start(*groups: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115
        args = [sys.executable, "-m", "workers.app.cli", "run"] + [a for g in groups for a in ("--group", g)]
        # each worker its own health/metrics port: several may run at once
        full_env = {**os.environ, **aws_env, "KEYLEDGER_KAFKA_BOOTSTRAP": topics_ready,
                    "KEYLEDGER_KAFKA_PARTITIONS": "3", "KEYLEDGER_HTTP_PORT": str(free_port()),
                    # an unknown tenant is refused after 5 s, not 30: tests that expect unknown_tenant stay short
                    "KEYLEDGER_KEY_TABLE_WAIT": "5", **(env or {})}
        proc = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = tmp_path / f"worker-{len(started)}.log"
        proc.http_port = int(full_env["KEYLEDGER_HTTP_PORT"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@asynccontextmanager
async def in_process_workers(bootstrap: str, groups: list[str], *, overrides: dict | None = None,
                             **components) -> AsyncIterator[ProcessContext]:
    settings = Settings(**{"kafka_bootstrap": bootstrap, "kafka_partitions": 3, "retry_backoff": 0.05,
                           "retry_backoff_max": 0.2, "key_table_wait": 5, **(overrides or {})})
    context = ProcessContext.build(settings, bootstrap, **components)
    context.register(groups)
    await context.start()
    try:
        yield context
    finally:
        await context.aclose()


async def register_caller(bootstrap: str, folder: Path, name: str, kms_env: dict[str, str] | None = None,
                          **policy: Any) -> tuple[Operator, RegisteredCaller]:
    """A new operator and one caller it registers (tests/support/callers.py); the caller's secret is wrapped
    by the KMS the workers are configured with in `kms_env` (KEYLEDGER_* variables), the local one by default.
    Start the workers with KEYLEDGER_OPERATOR_PUBLIC_KEY=operator.public."""
    operator = Operator()
    kms_settings = {key.removeprefix("KEYLEDGER_").lower(): value for key, value in (kms_env or {}).items()
                    if key.startswith(("KEYLEDGER_KMS_", "KEYLEDGER_AWS_", "KEYLEDGER_VAULT_"))}
    kms = open_kms(Settings(**kms_settings).kms)
    try:
        caller = await operator.register(bootstrap, folder, name, kms=kms, **policy)
    finally:
        await kms.aclose()
    return operator, caller
