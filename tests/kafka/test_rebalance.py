"""BatchRunner across rebalances: revoked partitions take no new work, what is finished commits under the
old generation, waiting records are left to the next owner, and a commit refused after a rebalance is
logged, never fatal. The consumer is a stand-in that records commits; tests/faults/test_scaleout.py runs
the same over a real broker with several processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalGenerationError, KafkaConnectionError, RebalanceInProgressError

from tests.kafka.test_consume import Broker, until
from workers.kafka.consume import BatchRunner
from workers.kafka.offsets import OffsetTracker
from workers.kafka.records import InboundRecord
from workers.kafka.waiting import Backpressure, WaitingSet
from workers.settings import Settings

SETTINGS = Settings(retry_attempts=3, retry_backoff=5.0, retry_backoff_max=5.0)  # retries never come in a test
TOPIC = "spans.to-sign"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class Consumer:
    """Holds an assignment like aiokafka's consumer; `refusing` makes every commit raise it."""

    def __init__(self, *partitions: TopicPartition) -> None:
        self.assigned = set(partitions)
        self.commits: list[dict[TopicPartition, int]] = []
        self.refusing: Exception | None = None
        self.unanswered = False
        self.asked = 0
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.asked += 1
        if self.refusing is not None:
            raise self.refusing
        if self.unanswered:
            await asyncio.Event().wait()  # a coordinator that keeps answering "retriable, try again"
        self.commits.append(dict(offsets))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)


def record(partition: int, offset: int, value: bytes = b"{}") -> InboundRecord:
    return InboundRecord(TOPIC, partition, offset, b"acme", value)


class Handler:
    """Answers every record; `blocked` values come back unfinished; `gate` holds a handling until set."""

    def __init__(self) -> None:
        self.handled: list[tuple[int, int]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        self.handled += [(r.partition, r.offset) for r in records]
        return [r for r in records if r.value == b"blocked"]


def joined(runner: BatchRunner, consumer: Consumer) -> None:
    runner._consumer = consumer  # what the subscriber hands over with each batch  # type: ignore[assignment]
    runner.assignments.on_partitions_assigned(consumer.assignment())


def latest(consumer: Consumer) -> dict[TopicPartition, int]:
    merged: dict[TopicPartition, int] = {}
    for commit in consumer.commits:
        merged.update(commit)
    return merged


async def test_revocation_commits_finished_work_and_leaves_waiting_records_to_the_next_owner():
    handler, consumer = Handler(), Consumer(P0, P1)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS)
    joined(runner, consumer)
    await runner([record(0, 0), record(0, 1), record(0, 2, b"blocked"), record(0, 3), record(1, 0)])
    assert runner.waiting == 1 and latest(consumer) == {P0: 2, P1: 1}  # never past the waiting record
    await runner.assignments.on_partitions_revoked({P0, P1})
    assert runner.waiting == 0  # left to whoever gets partition 0: it resumes from offset 2
    assert latest(consumer) == {P0: 2, P1: 1}
    consumer.assigned = {P1}
    runner.assignments.on_partitions_assigned({P1})
    consumer.commits.clear()
    await runner([record(1, 1)])
    assert consumer.commits == [{P1: 2}]
    await runner.aclose()


async def test_a_batch_in_hand_at_revocation_finishes_and_commits_before_the_partitions_go():
    handler, consumer = Handler(), Consumer(P0)
    handler.gate = asyncio.Event()
    runner = BatchRunner("keyledger-pii", handler, Broker(), SETTINGS, depth=2)
    joined(runner, consumer)
    await runner([record(0, 0), record(0, 1)])  # pipelined: returns while the batch is in hand
    await handler.started.wait()
    revoking = asyncio.create_task(runner.assignments.on_partitions_revoked({P0}))
    await asyncio.sleep(0.05)
    assert not revoking.done()  # the revocation waits for the batch
    handler.gate.set()
    await revoking
    assert latest(consumer) == {P0: 2}
    await runner.aclose()


async def test_a_record_left_unfinished_by_a_batch_in_hand_at_revocation_is_not_committed_past():
    handler, consumer = Handler(), Consumer(P0)
    handler.gate = asyncio.Event()
    runner = BatchRunner("keyledger-pii", handler, Broker(), SETTINGS, depth=2)
    joined(runner, consumer)
    await runner([record(0, 0), record(0, 1, b"blocked"), record(0, 2)])
    await handler.started.wait()
    revoking = asyncio.create_task(runner.assignments.on_partitions_revoked({P0}))
    await asyncio.sleep(0.05)
    handler.gate.set()  # the batch ends during the revocation, offset 1 unfinished (a transient failure)
    await revoking
    assert latest(consumer) == {P0: 1}  # up to the unfinished record, never past it
    assert runner.waiting == 0  # then left to the next owner
    await runner.aclose()


async def test_a_batch_still_running_after_the_wait_is_abandoned_uncommitted():
    handler, consumer = Handler(), Consumer(P0, P1)
    handler.gate = asyncio.Event()
    runner = BatchRunner("keyledger-pii", handler, Broker(), SETTINGS, depth=2, revoke_wait=0.05)
    joined(runner, consumer)
    await runner([record(0, 0), record(0, 1, b"blocked")])
    await handler.started.wait()
    await runner.assignments.on_partitions_revoked({P0, P1})
    consumer.assigned = {P1}
    runner.assignments.on_partitions_assigned({P1})
    handler.gate.set()
    await until(lambda: runner.waiting == 1)  # the abandoned batch parked its unfinished record
    handler.gate = None
    await runner([record(1, 0)])  # pipelined: returns once the batch is in hand
    await until(lambda: P1 in latest(consumer))
    # the batch ended after its partition went: nothing of it is committed (offset 0 is where it started)
    assert latest(consumer).get(P0, 0) == 0 and latest(consumer)[P1] == 1
    assert runner.waiting == 0  # its record is dropped, never retried here: the next owner has it
    assert (0, 1) not in handler.handled[2:]
    await runner.aclose()


async def test_records_of_a_partition_revoked_before_their_batch_arrived_are_not_taken():
    handler, consumer = Handler(), Consumer(P1)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS)
    joined(runner, consumer)
    await runner([record(0, 7), record(1, 0), record(1, 1)])
    assert handler.handled == [(1, 0), (1, 1)]
    assert latest(consumer) == {P1: 2}
    await runner.aclose()


@pytest.mark.parametrize("refusal", [CommitFailedError("membership changed"), IllegalGenerationError(),
                                     RebalanceInProgressError(), KafkaConnectionError()])
async def test_a_refused_commit_is_logged_and_offered_again(refusal, caplog):
    handler, consumer = Handler(), Consumer(P0)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS)
    joined(runner, consumer)
    consumer.refusing = refusal
    with caplog.at_level(logging.WARNING, logger="keyledger.consume"):
        await runner([record(0, 0), record(0, 1)])  # does not raise
    assert consumer.commits == [] and handler.handled == [(0, 0), (0, 1)]
    assert any("commit" in r.getMessage() and type(refusal).__name__ in r.getMessage() for r in caplog.records)
    consumer.refusing = None
    await runner([record(0, 2)])
    assert consumer.commits == [{P0: 3}]
    await runner.aclose()


async def test_a_commit_not_answered_in_time_counts_as_failed_and_is_offered_again(caplog):
    handler, consumer = Handler(), Consumer(P0)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS, commit_wait=0.05)
    joined(runner, consumer)
    consumer.unanswered = True
    with caplog.at_level(logging.WARNING, logger="keyledger.consume"):
        await runner([record(0, 0), record(0, 1)])  # returns: the commit was given up, not waited on forever
    assert consumer.asked == 1 and consumer.commits == [] and handler.handled == [(0, 0), (0, 1)]
    assert any("commit not answered" in r.getMessage() for r in caplog.records)
    consumer.unanswered = False
    await runner([record(0, 2)])
    assert consumer.commits == [{P0: 3}]
    await runner.aclose()


async def test_a_stop_abandons_a_batch_still_running_after_the_wait_and_commits_nothing_more(caplog):
    handler, consumer = Handler(), Consumer(P0, P1)
    runner = BatchRunner("keyledger-pii", handler, Broker(), SETTINGS, depth=2, stop_wait=0.05)
    joined(runner, consumer)
    await runner([record(1, 0)])
    await until(lambda: latest(consumer) == {P1: 1})
    handler.gate = asyncio.Event()
    await runner([record(0, 0), record(0, 1)])  # pipelined: in hand, held at the gate
    await handler.started.wait()
    with caplog.at_level(logging.WARNING, logger="keyledger.consume"):
        await runner.aclose()  # returns after the wait although the batch still runs
    assert any("abandoned" in r.getMessage() for r in caplog.records)
    handler.gate.set()
    await until(lambda: (0, 1) in handler.handled)  # the batch did finish, after the stop
    await asyncio.sleep(0)
    assert latest(consumer) == {P1: 1}  # and nothing was committed for it: its records go to the next reader


async def test_a_batch_cancelled_mid_handling_is_never_committed_past(caplog):
    handler, consumer = Handler(), Consumer(P0)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS)
    joined(runner, consumer)
    await runner([record(0, 0)])
    assert latest(consumer) == {P0: 1}
    handler.gate, handler.started = asyncio.Event(), asyncio.Event()
    feeding = asyncio.create_task(runner([record(0, 1), record(0, 2)]))  # depth 1: the caller awaits the batch
    await handler.started.wait()
    with caplog.at_level(logging.WARNING, logger="keyledger.consume"):
        feeding.cancel()  # what stopping the consumer's loop does to the batch it awaits
        with pytest.raises(asyncio.CancelledError):
            await feeding
    assert any("cancelled" in r.getMessage() for r in caplog.records)
    handler.gate = None
    await runner([record(0, 3)])  # handled, yet no commit passes offsets 1 and 2
    assert (0, 3) in handler.handled and latest(consumer) == {P0: 1}
    await runner.aclose()


async def test_a_partition_that_comes_back_is_never_committed_to_an_offset_seen_before_it_left():
    handler, consumer = Handler(), Consumer(P0)
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS)
    joined(runner, consumer)
    await runner([record(0, 0), record(0, 1)])
    await runner.assignments.on_partitions_revoked({P0})
    # meanwhile another member committed up to 50; the partition comes back and resumes from there
    runner.assignments.on_partitions_assigned({P0})
    consumer.commits.clear()
    await runner([record(0, 50)])
    assert consumer.commits == [{P0: 51}]
    await runner.aclose()


async def test_paused_partitions_that_were_revoked_are_not_resumed():
    handler, consumer = Handler(), Consumer(P0, P1)
    runner = BatchRunner("keyledger-signer", handler, Broker(), Settings(kafka_batch_max=1, retry_backoff=5.0,
                                                                           retry_backoff_max=5.0))
    joined(runner, consumer)
    await runner([record(0, n, b"blocked") for n in range(25)])  # more than 20 * kafka_batch_max wait
    assert consumer.paused == {P0}
    await runner.assignments.on_partitions_revoked({P0, P1})
    consumer.assigned, consumer.paused = {P1}, set()  # the rebalance reset every pause
    runner.assignments.on_partitions_assigned({P1})
    await runner([record(1, 0)])
    assert consumer.paused == set()
    await runner.aclose()


def test_waiting_records_of_revoked_partitions_are_dropped_and_the_rest_kept():
    waiting = WaitingSet(3, 1.0, 1.0)
    waiting.park([record(0, 4), record(0, 5), record(1, 2)], "transient", now=0.0)
    assert waiting.drop([(TOPIC, 0)]) == 2
    assert waiting.oldest() == {P1: 2}


def test_offsets_forget_a_revoked_partition():
    offsets = OffsetTracker()
    offsets.end(offsets.begin([record(0, 0), record(1, 0)]))
    offsets.mark_committed(offsets.committable({}))
    offsets.forget([P0])
    assert offsets.committed() == {P1: 1}
    assert offsets.committable({}) == {}


def test_backpressure_forgets_revoked_partitions():
    backpressure = Backpressure(0)
    backpressure.update(1, [P0, P1])
    backpressure.forget([P0])
    assert backpressure.update(0, []) == (set(), {P1})


class PartitionKeys:
    """A sharded key table as the runner sees it: what it was told, what it was asked; `gate` holds `serve`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.gate: asyncio.Event | None = None
        self.failing: Exception | None = None

    def assigned(self, group: str, numbers: frozenset[int]) -> None:
        self.events.append(("assigned", numbers))

    async def revoked(self, group: str, numbers: frozenset[int]) -> None:
        self.events.append(("revoked", numbers))

    async def serve(self, group: str, arrived) -> None:
        self.events.append(("serve", frozenset(arrived)))
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing


async def test_a_sharded_runner_handles_records_only_once_their_tenants_keys_are_loaded():
    handler, consumer, keys = Handler(), Consumer(P0, P1), PartitionKeys()
    runner = BatchRunner("keyledger-signer", handler, Broker(), SETTINGS, keys=keys)
    joined(runner, consumer)
    assert keys.events == [("assigned", frozenset({0, 1}))]
    keys.gate = asyncio.Event()
    batch = asyncio.create_task(runner([record(0, 0), record(1, 0)]))
    await until(lambda: len(keys.events) == 2)
    assert keys.events[1] == ("serve", frozenset({("acme", 0), ("acme", 1)}))
    await asyncio.sleep(0.02)
    assert handler.handled == [] and not batch.done()  # not handled before the keys are in
    keys.gate.set()
    await batch
    assert handler.handled == [(0, 0), (1, 0)] and latest(consumer) == {P0: 1, P1: 1}
    await runner.assignments.on_partitions_revoked({P0})
    assert keys.events[-1] == ("revoked", frozenset({0}))  # after the revocation's commit
    await runner.aclose()


async def test_records_whose_keys_cannot_be_loaded_wait_uncommitted():
    handler, consumer, keys = Handler(), Consumer(P0), PartitionKeys()
    runner = BatchRunner("keyledger-pii", handler, Broker(), SETTINGS, keys=keys)
    joined(runner, consumer)
    keys.failing = TimeoutError("key partitions not read in time")
    await runner([record(0, 0), record(0, 1)])
    assert handler.handled == [] and runner.waiting == 2 and latest(consumer).get(P0, 0) == 0
    keys.failing = None
    await runner._process(runner._waiting.due(float("inf")))  # the retry loop's next turn, now
    await runner._commit()
    assert handler.handled == [(0, 0), (0, 1)] and latest(consumer) == {P0: 2}
    await runner.aclose()
