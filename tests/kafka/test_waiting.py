"""WaitingSet and Backpressure: which records wait, how many attempts they had, when they are due (no broker)."""

from __future__ import annotations

from aiokafka import TopicPartition

from workers.kafka.records import InboundRecord
from workers.kafka.waiting import Backpressure, WaitingSet


def record(offset: int, partition: int = 0, topic: str = "spans.to-sign") -> InboundRecord:
    return InboundRecord(topic, partition, offset, b"acme", b"{}")


def waiting_set(attempts: int = 3) -> WaitingSet:
    return WaitingSet(attempts_allowed=attempts, backoff=1.0, backoff_max=8.0)


def test_a_transient_failure_parks_records_without_counting_an_attempt():
    waiting = waiting_set()
    assert waiting.park([record(1), record(2)], "kms down", now=100.0) == 1.0
    assert len(waiting) == 2 and waiting.get(record(1)).attempts == 0 and waiting.get(record(1)).error == "kms down"
    waiting.park([record(1)], "still down", now=101.0)
    assert waiting.get(record(1)).attempts == 0 and waiting.get(record(1)).error == "still down"


def test_backoff_doubles_up_to_its_cap_and_restarts_after_a_recovery():
    waiting = waiting_set()
    delays = [waiting.park([record(0)], "down", now=0.0) for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert waiting.next_retry == 8.0
    waiting.recovered()
    assert waiting.park([], "down", now=50.0) == 1.0 and waiting.next_retry == 51.0


def test_parking_nothing_while_nothing_waits_schedules_nothing():
    waiting = waiting_set()
    assert waiting.park([], "letter not published", now=5.0) is None
    assert not waiting and waiting.next_retry == 0.0


def test_failed_attempts_count_up_to_the_bound_then_the_record_is_the_callers_to_dead_letter():
    waiting = waiting_set(attempts=3)
    poison = record(7)
    assert waiting.failed(poison, "ValueError") == 1 and not waiting.exhausted(1)
    assert waiting.failed(poison, "ValueError") == 2 and waiting.get(poison).attempts == 2
    attempts = waiting.failed(poison, "ValueError")
    assert attempts == 3 and waiting.exhausted(attempts)
    assert poison in waiting  # it stays until its letter is acknowledged
    waiting.done([poison])
    assert poison not in waiting and not waiting


def test_a_refused_letter_keeps_the_record_one_attempt_short_so_the_next_failure_letters_it_again():
    waiting = waiting_set(attempts=2)
    poison = record(3)
    waiting.failed(poison, "ValueError")
    attempts = waiting.failed(poison, "ValueError")
    assert waiting.exhausted(attempts)
    waiting.letter_refused(poison, attempts, "ValueError")
    assert waiting.get(poison).attempts == 1
    assert waiting.exhausted(waiting.failed(poison, "ValueError"))


def test_a_transient_failure_between_attempts_keeps_the_count():
    waiting = waiting_set(attempts=3)
    flaky = record(4)
    waiting.failed(flaky, "ValueError")
    waiting.park([flaky], "ledger down", now=0.0)
    assert waiting.get(flaky).attempts == 1
    assert waiting.failed(flaky, "ValueError") == 2


def test_a_single_attempt_bound_dead_letters_the_first_failure_without_parking_it():
    waiting = waiting_set(attempts=1)
    assert waiting.exhausted(waiting.failed(record(0), "ValueError")) and not waiting


def test_settle_finishes_all_but_the_blocked_and_counts_distinct_records():
    waiting = waiting_set()
    assert waiting.settle([record(0), record(1)], []) == 2  # nothing waits: nothing to take out
    waiting.park([record(5)], "down", now=0.0)
    batch = [record(5), record(6), record(6), record(7)]  # a retried record, and one delivered twice
    waiting.park([record(7)], "transient", now=0.0)
    assert waiting.settle(batch, [record(7)]) == 2
    assert [w for w in (record(5), record(6), record(7)) if w in waiting] == [record(7)]


def test_due_records_come_in_order_once_their_retry_is_due_and_only_to_one_taker():
    waiting = waiting_set()
    waiting.park([record(9, 1), record(2, 1), record(4, 0), record(1, 0, "kms.audit")], "down", now=10.0)
    assert waiting.due(10.5) == []  # backing off until 11.0
    due = waiting.due(11.0)
    assert [r.coordinates for r in due] == [("kms.audit", 0, 1), ("spans.to-sign", 0, 4),
                                            ("spans.to-sign", 1, 2), ("spans.to-sign", 1, 9)]
    assert waiting.next_retry == 11.0 + 8.0 and waiting.due(12.0) == []  # the taker reports back first
    assert len(waiting) == 4  # taking them is not finishing them


def test_oldest_names_the_lowest_waiting_offset_of_each_partition():
    waiting = waiting_set()
    assert waiting.oldest() == {}
    waiting.park([record(9, 1), record(2, 1), record(4, 0)], "down", now=0.0)
    waiting.failed(record(3, 0), "ValueError")
    assert waiting.oldest() == {TopicPartition("spans.to-sign", 0): 3, TopicPartition("spans.to-sign", 1): 2}
    waiting.done([record(3, 0), record(2, 1)])
    assert waiting.oldest() == {TopicPartition("spans.to-sign", 0): 4, TopicPartition("spans.to-sign", 1): 9}


def test_backpressure_pauses_partitions_with_waiting_records_past_the_bound_and_resumes_them_all_under_it():
    a, b, c = (TopicPartition("spans.to-sign", p) for p in range(3))
    pressure = Backpressure(max_waiting=10)
    assert pressure.update(10, {a}) == (set(), set())  # at the bound: nothing paused
    assert pressure.update(11, {a, b}) == ({a, b}, set())
    assert pressure.update(12, {a, b, c}) == ({c}, set())  # only what is not paused yet
    assert pressure.paused == {a, b, c}
    assert pressure.update(3, {a}) == (set(), {a, b, c})
    assert pressure.paused == set() and pressure.update(0, set()) == (set(), set())
