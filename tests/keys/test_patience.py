"""keys/patience.py: a record naming an unknown tenant waits a bounded time, then is refused."""

from __future__ import annotations

import pytest

from workers.keys.patience import TenantPatience
from workers.source import Source


def record(offset: int) -> Source:
    return Source("spans.to-sign", 0, offset)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_record_waits_from_the_first_time_it_is_seen_until_the_bound():
    clock = Clock()
    patience = TenantPatience(30, clock)
    assert patience.waits(record(1))
    clock.now += 29.9
    assert patience.waits(record(1))
    assert patience.waits(record(2))  # a record seen later has its own clock
    clock.now += 0.1
    assert not patience.waits(record(1))
    assert patience.waits(record(2))


def test_zero_seconds_never_waits_and_a_negative_bound_is_refused():
    assert not TenantPatience(0).waits(record(1))
    with pytest.raises(ValueError):
        TenantPatience(-1)
