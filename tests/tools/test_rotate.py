"""workers/tools/rotate.py: counting rotations survives records that are not key events."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.messages import KeyEvent, KeyEventType, KeyType
from workers.tools.rotate import _key_event, _rotated_by


def rotated(tick_id: str) -> bytes:
    return KeyEvent(event_id="e", type=KeyEventType.ROTATED, tenant_id="acme", key_id="a" * 32, key_type=KeyType.SIGNING,
                    version=2, occurred_at=datetime.now(UTC), tick_id=tick_id).to_json()


def test_a_rotation_counts_for_its_tick_and_the_ticks_it_fanned_out():
    assert _rotated_by(rotated("cli-1"), "cli-1") and _rotated_by(rotated("cli-1/acme"), "cli-1")
    assert not _rotated_by(rotated("cli-10"), "cli-1")


def test_records_that_are_not_key_events_are_skipped_not_fatal():
    assert _key_event(None) is None and _key_event(b"not json") is None and _key_event(b'{"type": "rotated"}') is None
    assert not _rotated_by(b"not json", "cli-1")
