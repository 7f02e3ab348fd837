"""workers/core/policy.py: rotation cut-offs, rounds of ticks, wear-out (pure)."""

from __future__ import annotations

from schemas.messages import RotationReason
from workers.core import policy

NOW = 1_800_000_000 * policy.NS
DAY = 86_400


def test_scheduled_cutoff_is_the_rotation_age_before_now():
    assert policy.rotation_cutoff(NOW, RotationReason.SCHEDULED, 90 * DAY) == NOW - 90 * DAY * policy.NS


def test_manual_and_compromise_rotate_everything_created_before_now():
    for reason in (RotationReason.MANUAL, RotationReason.COMPROMISE):
        assert policy.rotation_cutoff(NOW, reason, 90 * DAY) == NOW


def test_a_key_is_due_only_when_created_strictly_before_the_cutoff():
    cutoff = policy.rotation_cutoff(NOW, RotationReason.SCHEDULED, DAY)
    assert policy.is_due(cutoff - 1, cutoff)
    assert not policy.is_due(cutoff, cutoff)
    assert not policy.is_due(NOW, cutoff)


def test_rounds_take_each_tenants_ticks_in_order():
    per_tenant = {"a": ["a1", "a2", "a3"], "b": ["b1"], "c": ["c1", "c2"]}
    assert policy.rounds(per_tenant) == [["a1", "b1", "c1"], ["a2", "c2"], ["a3"]]
    assert policy.rounds({}) == []

