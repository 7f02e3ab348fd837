"""`keyledger rotate` follows its tick's fan-out by the children's derived ids, never by prefix, and
counting rotations survives records that are not key events."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.messages import KeyEvent
from workers.core import ids
from workers.tools.rotate import _key_event, _rotated_by

TENANT = "t" + "x" * 127


def rotated(tenant: str, tick_id: str, kind: str = "rotated") -> bytes:
    return KeyEvent(event_id="e", type=kind, tenant_id=tenant, key_id="ab" * 16, key_type="signing", version=2,
                    occurred_at=datetime.now(UTC), tick_id=tick_id).to_json()


def test_a_rotation_by_the_tick_itself_or_by_its_child_for_that_tenant_counts():
    parent = "cli-" + "p" * 196
    assert _rotated_by(rotated(TENANT, parent), parent)
    assert _rotated_by(rotated(TENANT, ids.child_tick_id(parent, TENANT)), parent)
    assert _rotated_by(rotated("acme", "short/acme"), "short")


def test_other_ticks_and_other_tenants_do_not_count():
    parent = "cli-" + "p" * 196
    child = ids.child_tick_id(parent, TENANT)
    assert not _rotated_by(rotated("other", child), parent)  # the child of another tenant's id
    assert not _rotated_by(rotated(TENANT, child, kind="revoked"), parent)
    # a tick whose id merely starts like ours (the old prefix rule counted these)
    assert not _rotated_by(rotated("b", "short/a/b"), "short")
    assert not _rotated_by(rotated("acme", "short-2/acme"), "short")
    assert not _rotated_by(rotated("acme", "cli-10"), "cli-1")


def test_records_that_are_not_key_events_are_skipped_not_fatal():
    assert _key_event(None) is None and _key_event(b"not json") is None and _key_event(b'{"type": "rotated"}') is None
    assert not _rotated_by(b"not json", "cli-1")
