"""Shared bench plumbing: a fresh broker, moto's KMS, worker processes, topic counting."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import boto3

from workers.app.embedded import (
    EmbeddedBroker,
    TigerBeetleServer,
    free_port,
    tigerbeetle_binary,
    wait_for_port,
)


@contextmanager
def moto_kms() -> Iterator[tuple[str, str]]:
    """moto's KMS server in its own process (its own interpreter lock), spoken to over HTTP."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 30, server)
        key_id = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
        yield endpoint, key_id
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def broker() -> Iterator[str]:
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap


class CpuSplit(NamedTuple):
    """CPU seconds of a process by where they ran: its main thread (the event loop: Python, aiokafka) in user
    and in kernel mode, and every other thread (the TigerBeetle client's, executor threads)."""

    main_user: float
    main_kernel: float
    other_threads: float

    @property
    def total(self) -> float:
        return self.main_user + self.main_kernel + self.other_threads


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _ticks(stat: str) -> tuple[float, float]:
    """(user, kernel) CPU seconds from a /proc stat file."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


class Worker:
    """`keyledger run` as its own process, as an operator runs it."""

    started = 0

    def __init__(self, bootstrap: str, kms: tuple[str, str], *groups: str, **env: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="keyledger-bench-", suffix=".log")[1])
        self.http_port = free_port()
        Worker.started += 1
        # BENCH_PROFILE=path: each worker runs under cProfile and writes path.<n>.<groups> (pstats reads it)
        profile = os.environ.get("BENCH_PROFILE")
        runner = ["-m", "cProfile", "-o", f"{profile}.{Worker.started}.{'+'.join(groups)}"] if profile else []
        args = [sys.executable, *runner, "-m", "workers.app.cli", "run"] + [a for g in groups for a in ("--group", g)]
        environment = {
            **os.environ,
            "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap,
            "KEYLEDGER_PROFILE": "dev",  # the memory ledger unless `env` names TigerBeetle
            "KEYLEDGER_KMS_PROVIDER": "aws",
            "KEYLEDGER_AWS_REGION": "us-east-1",
            "KEYLEDGER_KMS_ENDPOINT_URL": kms[0],
            "KEYLEDGER_KMS_KEY_ID": kms[1],
            "KEYLEDGER_HTTP_PORT": str(self.http_port),
            **env,
        }
        self.process = subprocess.Popen(args, env=environment, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self._samples: list[tuple[float, CpuSplit]] = []  # (wall clock, CPU of the process so far)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        pid = self.process.pid
        while self.process.poll() is None:
            try:
                total, main = _ticks(f"/proc/{pid}/stat"), _ticks(f"/proc/{pid}/task/{pid}/stat")
            except OSError:
                return
            self._samples.append((time.time(), CpuSplit(main[0], main[1], total[0] + total[1] - main[0] - main[1])))
            time.sleep(0.05)

    def cpu_split(self, start: float, end: float) -> CpuSplit:
        """CPU the worker used between two wall-clock times (from samples every 50 ms), by where it ran."""
        def at(moment: float) -> CpuSplit:
            before = [cpu for t, cpu in self._samples if t <= moment]
            return before[-1] if before else CpuSplit(0.0, 0.0, 0.0)
        first, last = at(start), at(end)
        return CpuSplit(*(b - a for a, b in zip(first, last, strict=True)))

    async def ready(self, timeout: float = 180) -> float:
        """The wall-clock time its `/readyz` first answered 200 (the key table read, every group joined), polled
        every 50 ms: from then on the process works on its backlog, so its CPU from then until the backlog is
        committed is the backlog's, with none of its start-up."""
        import aiohttp

        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the worker exited; log {self.log}")
                try:
                    async with session.get(url) as answer:
                        if answer.status == 200:
                            return time.time()
                except (TimeoutError, OSError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"the worker was not ready in {timeout}s; log {self.log}")

    def cpu_seconds(self, start: float, end: float) -> float:
        return self.cpu_split(start, end).total

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._sampler.join(timeout=5)
        match = re.search(r"stats (\{.*\})", self.log.read_text())
        return json.loads(match.group(1)) if match else {}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


logging.getLogger("werkzeug").setLevel(logging.ERROR)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def elapsed(start: float) -> float:
    return time.perf_counter() - start


@contextmanager
def tigerbeetle() -> Iterator[str | None]:
    """A TigerBeetle server when a binary is installed (TIGERBEETLE_BIN or PATH), else None.

    A production replica (8,189 events a request) where the file system takes Direct IO, as TigerBeetle
    asks of benchmarks; else a `--development` one (253), said on stderr. With it the ledger outlives
    worker processes, so the bench can onboard in one process and measure another that starts cold on a
    backlog (its KMS calls are then real cache misses).
    """
    binary = tigerbeetle_binary()
    if not binary:
        yield None
        return
    # beside the project, not in /tmp: a tmpfs takes no Direct IO
    with tempfile.TemporaryDirectory(prefix="keyledger-bench-tb-", dir=Path(__file__).resolve().parent) as folder:
        try:
            server = TigerBeetleServer(binary, Path(folder), development=False).start()
            mode = "production"
        except (subprocess.CalledProcessError, RuntimeError, TimeoutError, OSError):
            (Path(folder) / "development").mkdir()
            server = TigerBeetleServer(binary, Path(folder) / "development").start()
            mode = "--development"
        say(f"  TigerBeetle: a {mode} replica")
        try:
            yield server.address
        finally:
            server.stop()


async def wait_group_done(bootstrap: str, group: str, topic: str, timeout: float = 900) -> None:
    """Until `group` has committed every record of `topic`: cheaper than reading the outputs as they come."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
        if not partitions:
            await probe._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
        ends = await probe.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = [await probe.committed(tp) or 0 for tp in partitions]
            if all(c >= ends[tp] for c, tp in zip(committed, partitions, strict=True)):
                return
            await asyncio.sleep(1.0)
        raise TimeoutError(f"{group} did not finish {topic} in {timeout}s")
    finally:
        await probe.stop()
