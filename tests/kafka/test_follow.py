"""PartitionFollower's tenant filter (a partition followed for the system tenant's records alone): what it
lets through. The follower itself runs over a broker in tests/integration/test_sharded_flow.py."""

from __future__ import annotations

from schemas.messages import SYSTEM_TENANT, KeyType
from tests.keystore.test_directory import material
from workers.kafka.follow import _names

ONLY = frozenset([SYSTEM_TENANT.encode()])


def test_an_event_is_let_through_by_its_tenant_key():
    assert _names(SYSTEM_TENANT.encode(), b"{}", ONLY)
    assert not _names(b"acme", b'{"tenant_id":"acme"}', ONLY)


def test_a_material_record_is_let_through_by_the_tenant_id_in_its_value():
    system, other = material(SYSTEM_TENANT, KeyType.SIGNING, 1), material("acme", KeyType.SIGNING, 1)
    assert _names(system.key_id.encode(), system.to_json(), ONLY)
    assert not _names(other.key_id.encode(), other.to_json(), ONLY)


def test_a_tombstone_is_always_let_through():
    """It changes only a key already held (an unknown key id is ignored by the key table)."""
    assert _names(b"0" * 32, None, ONLY)
