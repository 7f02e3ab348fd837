"""OffsetTracker: what may be committed per partition, never past an unfinished record (no broker)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from workers.kafka.offsets import InFlight, OffsetTracker
from workers.kafka.records import InboundRecord

TOPIC = "spans.to-sign"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def record(offset: int, partition: int = 0) -> InboundRecord:
    return InboundRecord(TOPIC, partition, offset, b"acme", b"{}")


def test_a_finished_batch_is_committable_to_the_offset_after_its_last_record():
    offsets = OffsetTracker()
    batch = offsets.begin([record(0), record(1), record(2), record(5, 1)])
    assert offsets.committable({}) == {P0: 0, P1: 5}  # in flight: nothing of it yet
    offsets.end(batch)
    assert offsets.committable({}) == {P0: 3, P1: 6}


def test_a_waiting_record_holds_its_partition_back_and_only_its_own():
    offsets = OffsetTracker()
    offsets.end(offsets.begin([record(o) for o in range(10)] + [record(o, 1) for o in range(4)]))
    assert offsets.committable({P0: 4}) == {P0: 4, P1: 4}


def test_commits_only_grow_and_a_partition_is_offered_again_only_when_it_can_go_further():
    offsets = OffsetTracker()
    offsets.end(offsets.begin([record(0), record(1)]))
    offsets.mark_committed(offsets.committable({}))
    assert offsets.committed() == {P0: 2} and offsets.committable({}) == {}
    offsets.end(offsets.begin([record(1)]))  # a redelivery below what is committed
    assert offsets.committable({P0: 1}) == {}


def test_pipelined_batches_hold_back_to_the_oldest_one_still_in_flight():
    offsets = OffsetTracker()
    first = offsets.begin([record(0), record(1)])
    second = offsets.begin([record(2), record(3)])
    offsets.end(second)  # the later batch finishes first
    assert offsets.committable({}) == {P0: 0} and offsets.in_flight == 1
    offsets.end(first)
    assert offsets.committable({}) == {P0: 4} and offsets.in_flight == 0


def test_ending_a_batch_that_is_not_in_flight_is_a_bug():
    offsets = OffsetTracker()
    batch = offsets.begin([record(0)])
    offsets.end(batch)
    with pytest.raises(ValueError):
        offsets.end(batch)


def test_a_holding_group_commits_only_what_its_holder_covered():
    offsets = OffsetTracker()
    offsets.end(offsets.begin([record(o, p) for p in (0, 1) for o in range(8)]))
    assert offsets.committable({}, held={}) == {}  # the holder covered nothing yet
    assert offsets.committable({}, held={(TOPIC, 0): 5}) == {P0: 5}
    assert offsets.committable({P0: 2}, held={(TOPIC, 0): 5, (TOPIC, 1): 99}) == {P0: 2, P1: 8}


class Consuming(RuleBasedStateMachine):
    """Batches on two partitions handed over, handled in any order (pipelined), some records left waiting
    and finished later, commits at any point: a committed offset never passes an unfinished record."""

    @initialize()
    def start(self) -> None:
        self.offsets = OffsetTracker()
        self.next = {0: 0, 1: 0}
        self.in_flight: list[tuple[InFlight, list[InboundRecord]]] = []
        self.waiting: set[InboundRecord] = set()
        self.committed: dict[TopicPartition, int] = {}

    def unfinished(self) -> list[InboundRecord]:
        return [r for _, records in self.in_flight for r in records] + list(self.waiting)

    @rule(counts=st.tuples(st.integers(0, 4), st.integers(0, 4)), redeliver=st.booleans())
    def hand_over(self, counts: tuple[int, int], redeliver: bool) -> None:
        records = []
        for partition, count in enumerate(counts):
            # after a rebalance the broker hands over again from what was committed
            first = self.committed.get(TopicPartition(TOPIC, partition), 0) if redeliver else self.next[partition]
            records += [record(o, partition) for o in range(first, first + count)]
            self.next[partition] = max(self.next[partition], first + count)
        self.in_flight.append((self.offsets.begin(records), records))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def end_batch(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.in_flight) - 1), label="batch")
        batch, records = self.in_flight.pop(index)
        blocked = data.draw(st.lists(st.sampled_from(records), unique=True) if records else st.just([]), label="blocked")
        self.waiting.update(blocked)
        self.offsets.end(batch)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def finish_waiting(self, data: st.DataObject) -> None:
        done = data.draw(st.lists(st.sampled_from(sorted(self.waiting, key=lambda r: r.coordinates)), min_size=1))
        self.waiting.difference_update(done)

    @rule(holding=st.booleans(), covered=st.tuples(st.integers(0, 20), st.integers(0, 20) | st.none()))
    def commit(self, holding: bool, covered: tuple[int, int | None]) -> None:
        oldest: dict[TopicPartition, int] = {}
        for r in self.waiting:
            tp = TopicPartition(r.topic, r.partition)
            oldest[tp] = min(r.offset, oldest.get(tp, r.offset))
        held = {(TOPIC, p): c for p, c in enumerate(covered) if c is not None} if holding else None
        offsets = self.offsets.committable(oldest, held)
        for tp, offset in offsets.items():
            assert offset > self.committed.get(tp, -1), "committed offsets only grow"
            assert offset <= self.next[tp.partition], "never past what was handed over"
            assert all(r.offset >= offset for r in self.unfinished() if r.partition == tp.partition), \
                "never past an unfinished record"
            if held is not None:
                assert offset <= held[(tp.topic, tp.partition)], "never past what the holder covered"
        self.offsets.mark_committed(offsets)
        self.committed.update(offsets)

    @invariant()
    def everything_finished_is_committable(self) -> None:
        if self.in_flight or self.waiting or not hasattr(self, "offsets"):
            return
        expected = {TopicPartition(TOPIC, p): n for p, n in self.next.items()
                    if n > 0 and n > self.committed.get(TopicPartition(TOPIC, p), -1)}
        assert self.offsets.committable({}) == expected


Consuming.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_commits_never_pass_an_unfinished_record = Consuming.TestCase
