"""The records a consumer group must handle again, and when: pure bookkeeping, no I/O, no clock.

`BatchRunner` (workers/kafka/consume.py) owns one `WaitingSet` and one `Backpressure`;
every decision about a record that is not finished yet is made here, every effect
(handling, publishing a letter, committing, pausing) is the runner's.

Invariants of a `WaitingSet`:
- a record is in it from the moment a handling of it ends unfinished until a later
  handling finishes it (`settle`, `done`) or its dead letter is acknowledged (`done`
  after `exhausted`); nothing else takes it out, so nothing is lost while it waits;
- a transient failure (`park`) never counts against a record's attempts; a failed
  attempt (`failed`) counts one, and `attempts_allowed` of them make the record the
  caller's to dead-letter;
- a dead letter that could not be published (`letter_refused`) leaves the record
  waiting one attempt short of the bound, so the next failure publishes the letter again;
- `oldest()` names, per partition, the lowest offset waiting: the runner never commits
  past it;
- `drop` (a revocation) is the one other way out: the caller has committed no further than
  `oldest()`, so the partition's next owner is redelivered every dropped record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from workers.kafka.records import InboundRecord

RecordKey = tuple[str, int, int]


@dataclass(slots=True)
class Waiting:
    """A record waiting to be handled again: its failed attempts so far and the last error."""

    record: InboundRecord
    attempts: int
    error: str


class WaitingSet:
    """Records to retry, their failed attempts and the retry schedule (exponential backoff, capped).

    Times are the caller's monotonic clock, passed in, so every decision is a plain function of
    what happened."""

    def __init__(self, attempts_allowed: int, backoff: float, backoff_max: float) -> None:
        self.attempts_allowed = attempts_allowed
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._records: dict[RecordKey, Waiting] = {}
        self._streak = 0  # transient failures in a row, for the backoff's exponent
        self.next_retry = 0.0  # when the waiting records are due again

    def __len__(self) -> int:
        return len(self._records)

    def __bool__(self) -> bool:
        return bool(self._records)

    def __contains__(self, record: InboundRecord) -> bool:
        return record.coordinates in self._records

    def get(self, record: InboundRecord) -> Waiting | None:
        return self._records.get(record.coordinates)

    def park(self, records: Sequence[InboundRecord], error: str, now: float) -> float | None:
        """Park `records` for a later retry (a transient failure: their attempts stay as they were) and
        back off. With no records, only backs off (those that failed already wait). Returns the delay
        until the next retry, or None when nothing waits (nothing to schedule)."""
        for record in records:
            key = record.coordinates
            previous = self._records.get(key)
            self._records[key] = Waiting(record, previous.attempts if previous else 0, error)
        if not self._records:
            return None
        self._streak += 1
        delay = min(self.backoff * 2.0 ** (self._streak - 1), self.backoff_max)
        self.next_retry = now + delay
        return delay

    def recovered(self) -> None:
        """A handling went through without a transient failure: the next one backs off from the start."""
        self._streak = 0

    def failed(self, record: InboundRecord, error: str) -> int:
        """Count a failed attempt of `record` and return how many it has had. Below `attempts_allowed`
        the record waits with that count; at the bound (`exhausted`) it is left as it was for the caller
        to dead-letter: `done` once the letter is acknowledged, `letter_refused` if it is not."""
        previous = self._records.get(record.coordinates)
        attempts = (previous.attempts if previous else 0) + 1
        if attempts < self.attempts_allowed:
            self._records[record.coordinates] = Waiting(record, attempts, error)
        return attempts

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.attempts_allowed

    def letter_refused(self, record: InboundRecord, attempts: int, error: str) -> None:
        """The dead letter of `record` after `attempts` was not acknowledged: the record waits one attempt
        short of the bound, so the next failure tries the letter again."""
        self._records[record.coordinates] = Waiting(record, attempts - 1, error)

    def done(self, records: Iterable[InboundRecord]) -> None:
        """`records` are finished (outputs acknowledged, or their dead letter): they wait no more."""
        for record in records:
            self._records.pop(record.coordinates, None)

    def drop(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the waiting records of `partitions` (revoked: their next owner is redelivered them, since
        nothing was committed past them). Returns how many were dropped."""
        gone = set(partitions)
        keys = [key for key in self._records if (key[0], key[1]) in gone]
        for key in keys:
            del self._records[key]
        return len(keys)

    def settle(self, records: Sequence[InboundRecord], blocked: Sequence[InboundRecord]) -> int:
        """A handling of `records` returned `blocked` unfinished (already `park`ed): the others are done.
        Returns how many distinct records finished."""
        if not blocked and not self._records:
            return len(records)  # nothing waits, so nothing to take out
        finished = {r.coordinates for r in records} - {r.coordinates for r in blocked}
        for key in finished:
            self._records.pop(key, None)
        return len(finished)

    def due(self, now: float) -> list[InboundRecord]:
        """The waiting records in (topic, partition, offset) order if their retry is due, else none.
        Taking them pushes the next retry a full `backoff_max` away: one taker at a time, the next retry
        is due only after this one reported back (`park` or `recovered`)."""
        if not self._records or now < self.next_retry:
            return []
        self.next_retry = now + self.backoff_max
        return [self._records[key].record for key in sorted(self._records)]

    def oldest(self) -> dict[TopicPartition, int]:
        """The lowest waiting offset of each partition that has a waiting record."""
        oldest: dict[TopicPartition, int] = {}
        for topic, partition, offset in self._records:
            tp = TopicPartition(topic, partition)
            if offset < oldest.get(tp, offset + 1):
                oldest[tp] = offset
        return oldest


class Backpressure:
    """Which partitions to pause so that waiting records stay bounded in memory.

    While more than `max_waiting` records wait, every partition holding one is paused (no new
    records from it); once the count is back under, every paused partition resumes at once."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.paused: set[TopicPartition] = set()

    def update(self, waiting: int, partitions: Iterable[TopicPartition]) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """(to pause, to resume) given `waiting` records in `partitions`; the caller applies both."""
        if waiting > self.max_waiting:
            newly = set(partitions) - self.paused
            self.paused |= newly
            return newly, set()
        resumed, self.paused = self.paused, set()
        return set(), resumed

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """`partitions` were revoked: a rebalance resets their pause, and they are not resumed later."""
        self.paused -= set(partitions)
