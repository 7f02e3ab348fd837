"""Batch consumption: at-least-once, per-record retries, commits that never pass unfinished work.

The group handles a batch and returns the records it could not finish for a
transient reason (KMS unreachable for that tenant, ledger briefly down); it
raises `Unavailable` (any port's transient error) when nothing could be done. Those records wait in memory
and are retried with exponential backoff while the rest of the stream keeps
flowing; the committed offset of a partition never passes its oldest waiting
record, so a crash or rebalance redelivers it. A record whose processing raises
anything else is retried alone a bounded number of times, then goes to
`kms.dlq` with a typed error; it leaves the waiting set only once its letter is
acknowledged (a letter that cannot be published keeps its record waiting, so
nothing is ever committed past a record that is neither processed nor
dead-lettered). When too many records wait, their partitions are paused
(bounded memory) until they drain.

The decisions are pure and tested apart: which records wait, their attempts and
when they are due, and which partitions to pause (`WaitingSet`, `Backpressure`
in workers/kafka/waiting.py); what each partition may be committed to
(`OffsetTracker`, workers/kafka/offsets.py). `BatchRunner` is the I/O loop around
them and the one place that commits.

Records reach the runner as the broker holds them: `subscribe` gives FastStream
a parser that does not decode headers (a null or non-UTF-8 header value would
make FastStream's own batch parser raise outside the runner and lose the batch).

The runner reports what it does to an optional `RunnerObserver` (metrics, traces,
log context live in workers/app/observability; nothing here imports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.message import FAKE_CONSUMER

from schemas.errors import ErrorCode
from schemas.topics import Topic
from workers.errors import Unavailable, error_info, what_to_check
from workers.kafka.letters import DeadLetters
from workers.kafka.offsets import InFlight, OffsetTracker
from workers.kafka.publisher import Publisher
from workers.kafka.records import InboundRecord, records_of
from workers.kafka.waiting import Backpressure, WaitingSet
from workers.settings import Settings

log = logging.getLogger("keyledger.consume")

Handle = Callable[[Sequence[InboundRecord]], Awaitable[Sequence[InboundRecord]]]

REVOKE_WAIT = 5.0
"""Seconds a revocation waits for the batches in hand before abandoning them: well under the group's
rebalance timeout (aiokafka's default session timeout), so waiting never gets this member evicted."""

STOP_WAIT = 10.0
"""Seconds a stopping runner waits for the batches in hand before abandoning them uncommitted: a stop
ends well inside Kubernetes' default 30-second grace period whatever a batch is waiting on."""

COMMIT_WAIT = 10.0
"""Seconds a commit may take before it counts as failed (offered again at the next commit): aiokafka
retries a commit for as long as the group coordinator answers with a retriable error."""

_REFUSED_AFTER_REBALANCE = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError,
                            UnknownMemberIdError, IllegalStateError)
"""A commit the group refuses because membership moved on: the partitions are someone else's now (or
again ours at a new generation), and their new owner is redelivered everything past the last commit."""


class ConsumerGroup(Protocol):
    """What a consumer group gives the runner: its name, its topics and a batch handler.

    `pipelined` groups (records independent of each other) handle the next batch while the last
    one's outputs are acknowledged; the others handle one batch at a time, in order."""

    name: str
    topics: tuple[str, ...]
    pipelined: bool

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]: ...


@runtime_checkable
class HoldsRecords(Protocol):
    """A group that keeps records after `handle` returns (the audit digest group keeps them until a
    published digest covers them). The runner commits such a group's partition only up to
    `held()[(topic, partition)]` (a partition it does not name is not committed at all), calls
    `flush()` every `flush_every` seconds, never while `handle` runs, and `forget()` with the
    partitions a rebalance takes away."""

    flush_every: float

    def held(self) -> Mapping[tuple[str, int], int]: ...

    async def flush(self) -> None: ...

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None: ...


class RunnerObserver(Protocol):
    """What a runner reports as it goes. Calls are cheap and never raise; none is required."""

    def batch(self, group: str, records: Sequence[InboundRecord]) -> AbstractContextManager[object]:
        """Wraps one handling of `records` (a batch, or waiting records tried again)."""
        ...

    def finished(self, group: str, count: int) -> None:
        """`count` records are done: each has its outputs or its typed dead letter."""
        ...

    def retried(self, group: str, count: int) -> None:
        """`count` records were parked to be tried again (a transient failure or a failed attempt)."""
        ...

    def dead_lettered(self, group: str, code: ErrorCode) -> None:
        """One record went to the DLQ after its attempts ran out."""
        ...


class NoObserver:
    def batch(self, group: str, records: Sequence[InboundRecord]) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def finished(self, group: str, count: int) -> None:
        pass

    def retried(self, group: str, count: int) -> None:
        pass

    def dead_lettered(self, group: str, code: ErrorCode) -> None:
        pass


Revoked = Callable[[frozenset[TopicPartition]], Awaitable[None]]
Assigned = Callable[[frozenset[TopicPartition]], None]


class PartitionKeys(Protocol):
    """A key table held per partition (workers/keystore/shards.py `KeyShards`, KEYLEDGER_KEY_TABLE_SHARDED):
    told of the group's assignments, asked before each handling for the keys of the records' tenants."""

    def assigned(self, group: str, numbers: frozenset[int]) -> None:
        """Start loading these partitions' keys (a rebalance listener must not block the group's join)."""
        ...

    async def revoked(self, group: str, numbers: frozenset[int]) -> None: ...

    async def serve(self, group: str, arrived: Iterable[tuple[str, int]]) -> None:
        """Returns once the keys of each (tenant id, partition its record arrived on) are loaded."""
        ...


class Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """The group's partitions as the last rebalance left them; `joined` once the first assignment arrived
    (an empty one too: a replica beyond the partition count has joined, it just has nothing to do).

    On a revocation the partitions are gone from `partitions` before anything else happens (no new work
    is taken from them), then `on_revoked` runs (the runner settles its batches in hand and commits while
    the consumer still holds the old generation), then a holding group forgets what it kept of them."""

    def __init__(self, holder: HoldsRecords | None = None, on_revoked: Revoked | None = None,
                 on_assigned: Assigned | None = None, group: str = "") -> None:
        self.group = group
        self.joined = False
        self.partitions: frozenset[TopicPartition] = frozenset()
        self._holder = holder
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    def owns(self, topic: str, partition: int) -> bool:
        """Whether the record of `topic`/`partition` is this process's to work on: always before the
        first assignment (no consumer group yet, e.g. a runner driven directly), else only while assigned."""
        return not self.joined or TopicPartition(topic, partition) in self.partitions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        gone = frozenset(revoked)
        self.partitions = self.partitions - gone
        if self._on_revoked is not None and gone:
            await self._on_revoked(gone)
        if self._holder is not None:  # a holding group drops what it kept of partitions now someone else's
            self._holder.forget((tp.topic, tp.partition) for tp in gone)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True
        self.partitions = frozenset(assigned)
        log.info("%s: %d partitions assigned (%s)", self.group or "group", len(assigned),
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "none",
                 extra={"group": self.group})
        if self._on_assigned is not None and assigned:
            self._on_assigned(self.partitions)


class BatchRunner:
    """Runs a group's `handle` over the batches its consumer delivers, and is the one place that commits.

    Invariants (each record of the group's topics):
    - at-least-once: an offset is committed only past records that are finished, so a crash or a
      rebalance redelivers whatever was not;
    - a record is finished when `handle` returned without it (its outputs are acknowledged by the
      broker: handlers publish before they return) or when its dead letter is acknowledged; it
      leaves in no other way, so a record is never dropped, only answered or dead-lettered;
    - commits never pass an unfinished record: one in a batch still in hand (with `depth` > 1 the
      next batch is handled while the previous one's outputs are still being acknowledged: only for
      groups whose records are independent of each other), one waiting for a retry (`WaitingSet`),
      or, for a group that holds records (`HoldsRecords`), one its holder has not covered
      (`OffsetTracker.committable`);
    - rebalances: records of a partition no longer assigned are not taken (a batch delivered across
      the revocation drops them) nor retried; on revocation the batches in hand get `revoke_wait`
      seconds to finish, what is finished is committed under the old generation (never past a
      record they left unfinished), then the revoked partitions' waiting records and bookkeeping are
      dropped (their new owner is redelivered everything past that commit); a batch still running
      after `revoke_wait` is abandoned: its outputs may appear twice (replays are idempotent), its
      offsets are never committed, and what it leaves unfinished is dropped before the next
      handling; a commit the group refuses after a rebalance is logged and skipped, never fatal.

    The pure decisions live in `WaitingSet` and `Backpressure` (workers/kafka/waiting.py) and in
    `OffsetTracker` (workers/kafka/offsets.py); this class does the I/O: handling, dead letters,
    the retry and flush timers, commits, pausing partitions."""

    def __init__(self, group: str, handle: Handle, publisher: Publisher, settings: Settings, depth: int = 1,
                 holder: HoldsRecords | None = None, observer: RunnerObserver | None = None,
                 revoke_wait: float = REVOKE_WAIT, keys: PartitionKeys | None = None,
                 stop_wait: float = STOP_WAIT, commit_wait: float = COMMIT_WAIT) -> None:
        if depth < 1:
            raise ValueError("pipeline depth must be at least 1")
        if holder is not None and depth != 1:
            raise ValueError("a group that holds records handles one batch at a time")
        self.group = group
        self._handle = handle
        self._publisher = publisher
        self._letters = DeadLetters.of(group, settings)
        self._waiting = WaitingSet(settings.retry.attempts, settings.retry.backoff, settings.retry.backoff_max)
        self._backpressure = Backpressure(settings.kafka.batch_max * 20)
        self._offsets = OffsetTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # serialises offset bookkeeping and commits
        self._slots = asyncio.Semaphore(depth)
        # one batch at a time also means retries never overlap a batch (order-dependent groups)
        self._serial = asyncio.Lock() if depth == 1 else None
        self._depth = depth
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_task: asyncio.Task[None] | None = None
        self._holder = holder
        self._flush_task: asyncio.Task[None] | None = None
        self._observer: RunnerObserver = observer or NoObserver()
        self._revoke_wait = revoke_wait
        self._revoking = False  # between a revocation's start and its commit: waiting records still count
        self._stop_wait, self._commit_wait = stop_wait, commit_wait
        # off once a batch was cancelled or abandoned at a stop: its records are not finished, and nothing
        # this process still commits may pass them
        self._committing = True
        self._keys = keys
        self.assignments = Assignments(holder, self._revoked, None if keys is None else self._assigned, group)
        self.subscriber: Any = None  # FastStream's subscriber, set by `subscribe`: its consumer exists once started
        self.records = 0
        self.dead = 0

    async def __call__(self, records: Sequence[InboundRecord], consumer: Any = None) -> None:
        if isinstance(consumer, AIOKafkaConsumer):
            self._consumer = consumer
        owns = self.assignments.owns
        if self.assignments.joined and not all(owns(r.topic, r.partition) for r in records):
            records = [r for r in records if owns(r.topic, r.partition)]  # fetched before a revocation
        await self._slots.acquire()  # backpressure: at most `depth` batches in hand
        batch = self._offsets.begin(records)
        if self._holder is not None and self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_loop(self._holder), name=f"{self.group}-flush")
        task = asyncio.create_task(self._run(list(records), batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._depth == 1:
            await task

    async def _run(self, records: list[InboundRecord], batch: InFlight) -> None:
        try:
            async with self._serial or contextlib.nullcontext():
                self._drop_disowned()
                taken = self._waiting.due(time.monotonic()) + records
                try:
                    await self._process(taken)
                except Exception as exc:
                    # a bug of ours: the batch waits (replaying done records is idempotent) rather than being
                    # committed past
                    log.exception("%s: batch failed outside its handler", self.group)
                    self._wait(taken, type(exc).__name__)
        except asyncio.CancelledError:
            # cancelled mid-handling (the process is going down): its records are neither finished nor
            # parked, so this process commits nothing more; whoever reads the partitions next redoes them
            self._stop_committing("a batch was cancelled")
            raise
        finally:
            self._offsets.end(batch)
            self._slots.release()
            await self._commit()
        if self._waiting and self._retry_task is None:
            self._retry_task = asyncio.create_task(self._retry_loop(), name=f"{self.group}-retry")

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def consumer(self) -> AIOKafkaConsumer | None:
        """The group's consumer once it started (for lag: its assignment, end offsets, committed offsets)."""
        consumer = self._consumer or getattr(self.subscriber, "consumer", None)
        return consumer if isinstance(consumer, AIOKafkaConsumer) else None

    async def _revoked(self, partitions: frozenset[TopicPartition]) -> None:
        """`partitions` are being taken away (the consumer still holds the old generation): let the
        batches in hand finish for up to `revoke_wait` seconds, commit what is finished, then drop the
        partitions' waiting records and offset bookkeeping: they are redelivered to whoever gets them."""
        self._revoking = True
        try:
            in_hand = [task for task in self._tasks if not task.done()]
            if in_hand:
                _, running = await asyncio.wait(in_hand, timeout=self._revoke_wait)
                if running:
                    log.warning("%s: %d batches still running at revocation are abandoned; their records are "
                                "redelivered to the partitions' next owner", self.group, len(running),
                                extra={"group": self.group})
            await self._commit()
            async with self._lock:  # no commit between dropping the partitions' records and forgetting them
                dropped = self._waiting.drop({(tp.topic, tp.partition) for tp in partitions})
                self._offsets.forget(partitions)
                self._backpressure.forget(partitions)
        finally:
            self._revoking = False
        log.info("%s: %d partitions revoked, %d waiting records left to their next owner", self.group,
                 len(partitions), dropped, extra={"group": self.group})
        if self._keys is not None:  # after the batches in hand settled: nothing of these partitions runs now
            await self._keys.revoked(self.group, frozenset(tp.partition for tp in partitions))

    def _assigned(self, partitions: frozenset[TopicPartition]) -> None:
        assert self._keys is not None
        self._keys.assigned(self.group, frozenset(tp.partition for tp in partitions))

    def _drop_disowned(self) -> None:
        """Forget waiting records of partitions no longer assigned (parked by a batch abandoned at a
        revocation): their new owner is redelivered them. Never during a revocation, whose commit must
        still count them; after it, nothing of those partitions is committed (`OffsetTracker.forget`)."""
        if not self.assignments.joined or self._revoking or not self._waiting:
            return
        owns = self.assignments.owns
        disowned = {(tp.topic, tp.partition) for tp in self._waiting.oldest() if not owns(tp.topic, tp.partition)}
        if disowned:
            self._waiting.drop(disowned)

    async def aclose(self) -> None:
        """Finish the batches in hand (their offsets commit), stop retrying the waiting ones. Batches still
        running after `stop_wait` seconds are abandoned: from then on this runner commits nothing, so
        their records (and everything after them) are redelivered to the partitions' next reader."""
        in_hand = [task for task in self._tasks if not task.done()]
        if in_hand:
            _, running = await asyncio.wait(in_hand, timeout=self._stop_wait)
            if running:
                self._stop_committing(f"{len(running)} batches still running after {self._stop_wait:g} s at stop "
                                      "are abandoned")
        for background in (self._retry_task, self._flush_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background

    # --- processing ------------------------------------------------------------

    async def _process(self, records: list[InboundRecord]) -> None:
        if not records:
            return
        if self._keys is not None and not await self._keys_loaded(records):
            return
        with self._observer.batch(self.group, records):
            await self._process_batch(records)

    async def _process_batch(self, records: list[InboundRecord]) -> None:
        try:
            blocked = list(await self._handle(records))
        except Unavailable as exc:
            self._wait(records, what_to_check(exc))
            return
        except Exception:
            await self._isolate(records)
            return
        if blocked:
            self._wait(blocked, "transient")
        else:
            self._waiting.recovered()
        finished = self._waiting.settle(records, blocked)
        self.records += finished
        self._observer.finished(self.group, finished)

    async def _keys_loaded(self, records: list[InboundRecord]) -> bool:
        """Load the keys of the records' tenants (a sharded key table) before they are handled; when that
        fails, the records wait like any transient failure (never handled against a partial table)."""
        assert self._keys is not None
        arrived = {(r.key.decode(errors="replace"), r.partition) for r in records if r.key}
        try:
            await self._keys.serve(self.group, arrived)
        except Exception as exc:
            self._wait(records, f"keys of their tenants not loaded: {what_to_check(exc) or type(exc).__name__}")
            return False
        return True

    async def _isolate(self, records: list[InboundRecord]) -> None:
        """One failing record must not hold the others: process each alone."""
        for record in records:
            try:
                blocked = await self._handle([record])
            except Unavailable as exc:
                self._wait([record], what_to_check(exc))
                continue
            except Exception as exc:
                await self._failed(record, type(exc).__name__)
                continue
            if blocked:
                self._wait([record], "transient")
            else:
                self._waiting.done([record])
                self.records += 1
                self._observer.finished(self.group, 1)

    async def _failed(self, record: InboundRecord, error: str) -> None:
        """Count a failed attempt; the last one dead-letters the record, which leaves the waiting set
        only once its letter is acknowledged."""
        attempts = self._waiting.failed(record, error)
        allowed = self._waiting.attempts_allowed
        where = {"group": self.group, "topic": record.topic, "partition": record.partition, "offset": record.offset}
        if not self._waiting.exhausted(attempts):
            log.warning("%s: %s:%d@%d failed (%s), attempt %d of %d", self.group, record.topic,
                        record.partition, record.offset, error, attempts, allowed, extra=where)
            self._observer.retried(self.group, 1)
            return
        log.error("%s: %s:%d@%d to %s after %d attempts (%s)", self.group, record.topic, record.partition,
                  record.offset, Topic.DLQ.value, attempts, error, extra={**where, "code": ErrorCode.PROCESSING_FAILED.value})
        info = error_info(ErrorCode.PROCESSING_FAILED, f"{error} after {attempts} attempts")
        try:
            await self._publisher.publish([self._letters.letter(record, info, attempts)])
        except Exception as exc:
            # the next retry handles the record again, and a failure then tries the letter again
            self._waiting.letter_refused(record, attempts, error)
            self._wait([], f"letter not published: {type(exc).__name__}")
            return
        self._waiting.done([record])
        self.dead += 1
        self._observer.dead_lettered(self.group, info.type)

    def _wait(self, records: Sequence[InboundRecord], error: str) -> None:
        """Park records for a later retry; a transient error never counts against their attempts.
        With no records, only backs off (the records are already waiting). Records of a partition being
        revoked are parked too: the revocation's commit must not pass them (it drops them after)."""
        delay = self._waiting.park(records, error, time.monotonic())
        if delay is None:
            return
        self._observer.retried(self.group, len(records))
        log.warning("%s: %d records wait (%s); retry in %.1fs, offsets not committed past them",
                    self.group, len(self._waiting), error, delay, extra={"group": self.group})

    async def _retry_loop(self) -> None:
        """Retries waiting records until none is left; nothing but cancellation ends it early."""
        while True:
            await asyncio.sleep(max(self._waiting.next_retry - time.monotonic(), 0.01))
            if not self._waiting:
                self._retry_task = None
                return
            try:
                async with self._serial or contextlib.nullcontext():
                    self._drop_disowned()
                    await self._process(self._waiting.due(time.monotonic()))
                await self._commit()
            except Exception as exc:
                log.exception("%s: retry failed", self.group)
                self._wait([], type(exc).__name__)

    async def _flush_loop(self, holder: HoldsRecords) -> None:
        """The holder's timer: what it flushes becomes committable, so commit right after.
        Failed flushes back off like retries (doubling, capped), so an outage is not logged every tick."""
        failures = 0
        backoff_max = self._waiting.backoff_max
        while True:
            await asyncio.sleep(min(holder.flush_every * 2 ** min(failures, 10), max(backoff_max, holder.flush_every)))
            try:
                async with self._serial or contextlib.nullcontext():
                    await holder.flush()
                failures = 0
            except Unavailable as exc:
                failures += 1
                log.warning("%s: flush waits (%s); offsets not committed past what it holds", self.group,
                            what_to_check(exc))
            except Exception:
                failures += 1
                log.exception("%s: flush failed; retried at the next tick", self.group)
            await self._commit()

    # --- offsets -----------------------------------------------------------------

    def _stop_committing(self, why: str) -> None:
        if self._committing:
            self._committing = False
            log.warning("%s: %s; nothing more is committed by this process, their records are redelivered to "
                        "the partitions' next reader", self.group, why, extra={"group": self.group})

    async def _commit(self) -> None:
        """Commit what `OffsetTracker.committable` allows, of the partitions still assigned; then pause or
        resume partitions as the waiting set's size asks. Nothing once a batch was cancelled or abandoned."""
        async with self._lock:
            if not self._committing:
                return
            waiting = self._waiting.oldest()
            held = self._holder.held() if self._holder is not None else None
            offsets = self._offsets.committable(waiting, held)
            if offsets and self._consumer is not None:
                assigned = self._consumer.assignment()
                offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
                if offsets and not await self._commit_offsets(self._consumer, offsets):
                    offsets = {}
            self._offsets.mark_committed(offsets)
            self._apply_backpressure(waiting)

    async def _commit_offsets(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Commit `offsets`; False when the group or the broker refused (nothing is marked committed, so
        the next commit offers them again, or the rebalance hands the partitions to someone else)."""
        try:
            async with asyncio.timeout(self._commit_wait):
                await consumer.commit(offsets)
        except TimeoutError:
            log.warning("%s: commit not answered within %g s; tried again at the next commit", self.group,
                        self._commit_wait, extra={"group": self.group})
            return False
        except _REFUSED_AFTER_REBALANCE as exc:
            log.warning("%s: commit refused after a rebalance (%s); the partitions' next owner is redelivered "
                        "what this commit would have covered", self.group, type(exc).__name__,
                        extra={"group": self.group})
            return False
        except KafkaError as exc:
            log.warning("%s: commit failed (%s); tried again at the next commit", self.group,
                        type(exc).__name__, extra={"group": self.group})
            return False
        return True

    def _apply_backpressure(self, waiting: Mapping[TopicPartition, int]) -> None:
        if self._consumer is None:
            return
        pause, resume = self._backpressure.update(len(self._waiting), waiting)
        assigned = self._consumer.assignment()  # a rebalance resets pauses; only assigned partitions take one
        pause, resume = pause & assigned, resume & assigned
        if pause:
            self._consumer.pause(*pause)
        if resume:
            self._consumer.resume(*resume)


async def _no_decode(message: Any) -> None:
    """Records are decoded by the services (typed errors, DLQ); FastStream must not try."""
    return None


async def _raw_batch(records: tuple[ConsumerRecord[Any, Any], ...]) -> KafkaMessage:
    """The batch as FastStream's message, headers untouched: FastStream's own parser decodes every
    header value as UTF-8 and raises on a null or binary one, outside the runner, losing the batch."""
    # FastStream acknowledges nothing itself (AckPolicy.MANUAL): the runner commits
    return KafkaMessage(body=b"", raw_message=records, consumer=FAKE_CONSUMER)


def subscribe(broker: KafkaBroker, topics: Sequence[str], group: str, runner: BatchRunner, settings: Settings) -> None:
    subscriber = broker.subscriber(
        *topics,
        group_id=group,
        batch=True,
        max_records=settings.kafka.batch_max,
        batch_timeout_ms=settings.kafka.batch_timeout_ms,
        # the runner commits itself, never past a record still waiting for a retry
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        parser=_raw_batch,
        decoder=_no_decode,
        listener=runner.assignments,
    )
    runner.subscriber = subscriber

    @subscriber
    async def on_batch(body: Any, message: KafkaMessage) -> None:
        await runner(records_of(message), subscriber.consumer)


def run_group(broker: KafkaBroker, publisher: Publisher, settings: Settings, group: ConsumerGroup,
              observer: RunnerObserver | None = None, keys: PartitionKeys | None = None) -> BatchRunner:
    """Subscribe `group` on `broker`; the caller owns the returned runner and closes it. `keys`: a key
    table held per partition, loaded for the group's records before they are handled."""
    depth = settings.kafka.pipeline_depth if group.pipelined else 1
    holder = group if isinstance(group, HoldsRecords) else None
    runner = BatchRunner(group.name, group.handle, publisher, settings, depth, holder, observer, keys=keys)
    subscribe(broker, group.topics, group.name, runner, settings)
    return runner
