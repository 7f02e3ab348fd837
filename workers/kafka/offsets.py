"""What a consumer group may commit, partition by partition: pure bookkeeping, no I/O.

`BatchRunner` (workers/kafka/consume.py) tells an `OffsetTracker` which records it was
handed (`begin`) and when a batch's handling ended (`end`); it asks `committable` with
the oldest waiting record of each partition (workers/kafka/waiting.py) and, for a group
that holds records, what the holder has covered, then reports what it committed.

Invariant: the offset `committable` gives a partition is never past a record of it that
is unfinished: one in a batch still being handled (pipelined batches included: the
oldest record of every batch in hand counts), one waiting for a retry, or one a holder
has not covered. Committed offsets only grow while a partition stays assigned; `forget`
(a revocation) starts it afresh, so a partition that comes back is never committed to an
offset seen before it left (that would move the group's offset back). So a crash or a rebalance redelivers
every unfinished record (at-least-once), and never skips one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition

from workers.kafka.records import InboundRecord

InFlight = dict[TopicPartition, int]
"""One batch being handled: the oldest offset it holds of each partition."""


class OffsetTracker:
    def __init__(self) -> None:
        self._seen: dict[TopicPartition, int] = {}  # next offset after the highest record handed over
        self._in_flight: list[InFlight] = []
        self._committed: dict[TopicPartition, int] = {}

    def begin(self, records: Iterable[InboundRecord]) -> InFlight:
        """`records` are handed over as one batch; returns the batch's token for `end`."""
        oldest: InFlight = {}
        seen = self._seen
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            following = record.offset + 1
            if following > seen.get(tp, 0):
                seen[tp] = following
            if record.offset < oldest.get(tp, following):
                oldest[tp] = record.offset
        self._in_flight.append(oldest)
        return oldest

    def end(self, batch: InFlight) -> None:
        """The batch's handling ended: each of its records is finished or waiting (the caller parked it)."""
        for index, held in enumerate(self._in_flight):
            if held is batch:
                del self._in_flight[index]
                return
        raise ValueError("no such batch in flight")

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def committed(self) -> dict[TopicPartition, int]:
        """The offsets committed so far, per partition."""
        return dict(self._committed)

    def committable(self, waiting: Mapping[TopicPartition, int],
                    held: Mapping[tuple[str, int], int] | None = None) -> dict[TopicPartition, int]:
        """The offset each partition may be committed to now, where that is past what was committed:
        the next offset after the highest record handed over, lowered to the oldest record of the
        partition that is `waiting` or in a batch in flight; with `held` (a holding group), lowered to
        what the holder covered, and a partition it does not name is not committed at all."""
        unfinished = dict(waiting)
        for batch in self._in_flight:
            for tp, offset in batch.items():
                if offset < unfinished.get(tp, offset + 1):
                    unfinished[tp] = offset
        offsets: dict[TopicPartition, int] = {}
        for tp, seen in self._seen.items():
            safe = min(seen, unfinished.get(tp, seen))
            if held is not None:
                covered = held.get((tp.topic, tp.partition))
                if covered is None:
                    continue  # the holder has not covered anything of it yet
                safe = min(safe, covered)
            if safe > self._committed.get(tp, -1):
                offsets[tp] = safe
        return offsets

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """`partitions` were revoked: what was seen and committed of them is another owner's to move now.
        A batch still in flight keeps its oldest offsets, so if a partition comes back its commits stay
        below that batch until it ends."""
        for tp in partitions:
            self._seen.pop(tp, None)
            self._committed.pop(tp, None)

    def mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """`offsets` were committed: `committable` offers a partition again only once it can go further."""
        self._committed.update(offsets)
