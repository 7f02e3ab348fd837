"""Prometheus metrics of one process: what the runners, emitters and ports report, and state read at scrape time.

Counters and histograms are updated where things happen (ProcessObserver for
batches and outcomes, MeteredKms/MeteredLedger for calls). Everything that is a
state rather than an event (records waiting, keys by state, cache counters,
consumer lag, key usage) is read when Prometheus scrapes, by `StateCollector`;
lag and key usage need the network, so `Samplers` refresh them on a scrape at
most every LAG_EVERY / USAGE_EVERY seconds, and a scrape never waits long for them.
Labels are bounded: group, topic, partition, operation, outcome, code, key type,
state, reason. A tenant id is never a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.errors import ErrorCode
from schemas.messages import KeyEventType, KeyType
from workers.app.observability.logs import batch_context
from workers.kafka.consume import BatchRunner
from workers.kafka.records import InboundRecord
from workers.keys.budget import EncryptionBudget
from workers.keys.cache import SingleFlightCache
from workers.keystore.directory import KeyDirectory
from workers.ledger import Ledger
from workers.services.outcome import Outcome

log = logging.getLogger("keyledger.metrics")

OUTCOMES = ("processed", "dead_lettered", "retried")
BATCH_SIZES = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CALL_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_EVERY = 10.0  # seconds: lag costs a ListOffsets and one OffsetFetch per partition
USAGE_EVERY = 30.0  # seconds: key usage costs a ledger lookup of every active encryption key

# the `_created` series double every counter for no question an operator asks
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Every metric family of the process, in its own registry (two contexts in one test process never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.records = Counter("keyledger_records", "Input records by what became of them: processed (outputs "
                               "published), dead_lettered (sent to kms.dlq), retried (parked for another attempt).",
                               ["group", "outcome"], registry=r)
        self.dead_letters = Counter("keyledger_dead_letters", "Records sent to kms.dlq, by error code.",
                                    ["group", "code"], registry=r)
        self.batch_size = Histogram("keyledger_batch_size", "Records per handled batch.", ["group"],
                                    buckets=BATCH_SIZES, registry=r)
        self.batch_seconds = Histogram("keyledger_batch_seconds", "Seconds to handle one batch, outputs acknowledged.",
                                       ["group"], buckets=BATCH_SECONDS, registry=r)
        self.kms_calls = Counter("keyledger_kms_calls", "KMS calls by operation and outcome "
                                 "(success, refused, unavailable, error).", ["operation", "outcome"], registry=r)
        self.kms_seconds = Histogram("keyledger_kms_seconds", "KMS call latency in seconds.", ["operation"],
                                     buckets=CALL_SECONDS, registry=r)
        self.ledger_requests = Counter("keyledger_ledger_requests", "Ledger requests by operation and outcome "
                                       "(success, unavailable, error).", ["operation", "outcome"], registry=r)
        self.ledger_seconds = Histogram("keyledger_ledger_seconds", "Ledger request latency in seconds.",
                                        ["operation"], buckets=CALL_SECONDS, registry=r)
        self.rotations = Counter("keyledger_rotations", "Key rotations this process made durable, by reason.",
                                 ["reason"], registry=r)

    def watch_group(self, group: str) -> None:
        """Create the group's series at zero, so rates and alerts see them before the first event."""
        for outcome in OUTCOMES:
            self.records.labels(group, outcome)
        self.batch_size.labels(group)
        self.batch_seconds.labels(group)


@dataclass(slots=True)
class _Tally:
    dead: int = 0  # records of this batch the emitter dead-lettered: finished, but not `processed`


_tally: ContextVar[_Tally | None] = ContextVar("keyledger_batch_tally", default=None)


class ProcessObserver:
    """The runners' and emitters' observer (workers.kafka.consume.RunnerObserver, workers.groups.base.EmitObserver).

    Each record counts once: `processed` or `dead_lettered` when it is finished, `retried` each time it is
    parked. The emitter's dead letters happen inside the batch that finishes their records, so the batch's
    tally moves them from `processed` to `dead_lettered`."""

    def __init__(self, metrics: Metrics, tracing: Any = None) -> None:
        self._metrics = metrics
        self._tracing = tracing

    @contextlib.contextmanager
    def batch(self, group: str, records: Sequence[InboundRecord]) -> Iterator[object]:
        token = _tally.set(_Tally())
        started = time.perf_counter()
        try:
            with batch_context(group), (self._tracing.batch(group, records) if self._tracing
                                        else contextlib.nullcontext()):
                yield None
        finally:
            _tally.reset(token)
            self._metrics.batch_size.labels(group).observe(len(records))
            self._metrics.batch_seconds.labels(group).observe(time.perf_counter() - started)

    def finished(self, group: str, count: int) -> None:
        tally = _tally.get()
        dead = min(tally.dead, count) if tally else 0
        if tally:
            tally.dead -= dead
        if count > dead:
            self._metrics.records.labels(group, "processed").inc(count - dead)

    def retried(self, group: str, count: int) -> None:
        self._metrics.records.labels(group, "retried").inc(count)

    def dead_lettered(self, group: str, code: ErrorCode) -> None:
        self._metrics.records.labels(group, "dead_lettered").inc()
        self._metrics.dead_letters.labels(group, ErrorCode(code).value).inc()

    def emitted(self, group: str, outcome: Outcome[Any]) -> None:
        if outcome.dead:
            for _, error in outcome.dead:
                self._metrics.dead_letters.labels(group, error.code.value).inc()
            self._metrics.records.labels(group, "dead_lettered").inc(len(outcome.dead))
            tally = _tally.get()
            if tally:
                tally.dead += len(outcome.dead)
        for event in outcome.events:
            if event.type is KeyEventType.ROTATED:
                self._metrics.rotations.labels(event.reason.value if event.reason else "unknown").inc()


class Samplers:
    """Consumer lag and key usage: both need the network, so they are refreshed on a scrape when stale."""

    def __init__(self, runners: list[BatchRunner], directory: KeyDirectory, ledger: Ledger, encrypt_limit: int) -> None:
        self._runners = runners
        self._directory = directory
        self._ledger = ledger
        self._encrypt_limit = encrypt_limit
        self.lag: dict[tuple[str, str, int], int] = {}
        self.usage_ratio: float | None = None
        self._lag_at = -math.inf
        self._usage_at = -math.inf
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, wait: float) -> None:
        """Start a refresh of whatever is stale and wait for it at most `wait` seconds (it goes on after that)."""
        now = time.monotonic()
        stale = now - self._lag_at >= LAG_EVERY or now - self._usage_at >= USAGE_EVERY
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._sample(), name="keyledger-metrics-sample")
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=wait)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _sample(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= LAG_EVERY:
            self._lag_at = now
            try:
                self.lag = await self._lags()
            except Exception as exc:  # a broker hiccup: keep the last figures, try again next time
                log.debug("consumer lag not sampled: %s", exc)
        if now - self._usage_at >= USAGE_EVERY:
            self._usage_at = now
            try:
                self.usage_ratio = await self._usage_ratio()
            except Exception as exc:
                log.debug("key usage not sampled: %s", exc)

    async def _lags(self) -> dict[tuple[str, str, int], int]:
        """Per assigned partition: log end offset minus the group's committed offset (what KEDA scales on)."""
        lags: dict[tuple[str, str, int], int] = {}
        for runner in list(self._runners):
            consumer = runner.consumer()
            partitions = sorted(runner.assignments.partitions)
            if consumer is None or not partitions:
                continue
            ends = await consumer.end_offsets(partitions)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
            never = [tp for tp, offset in zip(partitions, committed, strict=True) if offset is None]
            starts = await consumer.beginning_offsets(never) if never else {}
            for tp, offset in zip(partitions, committed, strict=True):
                base = offset if offset is not None else starts.get(tp, 0)
                lags[(runner.group, tp.topic, tp.partition)] = max(ends.get(tp, base) - base, 0)
        return lags

    async def _usage_ratio(self) -> float:
        """The highest share of its encryption budget (keys/budget.py: seals charged before sealing) that an
        active encryption key has used."""
        entries = self._directory.active_keys(KeyType.ENCRYPTION)
        if not entries:
            return 0.0
        used = await EncryptionBudget(self._ledger, self._encrypt_limit).used([e.key_id for e in entries])
        return max(used.values()) / self._encrypt_limit


class StateCollector(Collector):
    """State read at scrape time: waiting records, lag, cache counters, keys by type and state, key usage."""

    def __init__(self, runners: list[BatchRunner], cache: SingleFlightCache[Any], directory: KeyDirectory,
                 samplers: Samplers) -> None:
        self._runners = runners
        self._cache = cache
        self._directory = directory
        self._samplers = samplers

    def collect(self) -> Iterable[Metric]:
        waiting = GaugeMetricFamily("keyledger_records_waiting", "Records parked for a retry (their offsets are "
                                    "not committed).", labels=["group"])
        for runner in self._runners:
            waiting.add_metric([runner.group], runner.waiting)
        yield waiting
        lag = GaugeMetricFamily("keyledger_consumer_lag", "Log end offset minus the group's committed offset, per "
                                "partition this process is assigned (sampled at most every "
                                f"{LAG_EVERY:g}s).", labels=["group", "topic", "partition"])
        for (group, topic, partition), value in sorted(self._samplers.lag.items()):
            lag.add_metric([group, topic, str(partition)], value)
        yield lag
        yield CounterMetricFamily("keyledger_cache_hits", "Unwrapped-key cache hits.", value=self._cache.hits)
        yield CounterMetricFamily("keyledger_cache_misses", "Unwrapped-key cache misses (each one KMS Decrypt, "
                                  "shared by concurrent askers).", value=self._cache.misses)
        yield CounterMetricFamily("keyledger_cache_evictions", "Unwrapped keys dropped from the cache: capacity, "
                                  "expiry, or invalidation by a rotation/revocation/destruction.",
                                  value=self._cache.evictions)
        keys = GaugeMetricFamily("keyledger_keys", "Keys in this process's key table, by type and state.",
                                 labels=["key_type", "state"])
        for (key_type, state), count in self._directory.census().items():
            keys.add_metric([key_type.value, state.value], count)
        yield keys
        if self._samplers.usage_ratio is not None:
            yield GaugeMetricFamily("keyledger_key_usage_ratio", "Highest share of its encryption budget spent among "
                                    "active encryption keys (seals charged to the key's budget account / "
                                    f"KEYLEDGER_ENCRYPT_LIMIT; sampled at most every {USAGE_EVERY:g}s). At 1 the "
                                    "key stops encrypting.",
                                    value=self._samplers.usage_ratio)
