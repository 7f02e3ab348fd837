import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.messages import TENANT_ID_PATTERN, KeyType, Op, RotationTick
from workers.core import ids


def test_key_ids_are_deterministic_32_lowercase_hex():
    a = ids.key_id_for("acme", KeyType.SIGNING, 1)
    assert a == ids.key_id_for("acme", KeyType.SIGNING, 1)
    assert re.fullmatch(r"[0-9a-f]{32}", a)


def test_key_ids_differ_by_tenant_type_and_version():
    seen = {
        ids.key_id_for(t, k, v)
        for t in ("acme", "acme1", "globex")
        for k in KeyType
        for v in (1, 2, 11)
    }
    assert len(seen) == 3 * 2 * 3


def test_parts_are_length_prefixed_so_concatenation_cannot_collide():
    assert ids.transfer_id(Op.SIGN, "ab" * 16, "t", 12) != ids.transfer_id(Op.SIGN, "ab" * 16, "t1", 2)


def test_a_pinned_key_id_known_answer():
    # fixed forever: a change here would orphan every existing key account
    assert ids.key_id_for("acme", KeyType.SIGNING, 1) == KNOWN_ACME_SIGNING_V1


def test_hex_round_trip_and_strictness():
    value = ids.key_account_id("acme", KeyType.ENCRYPTION, 3)
    assert ids.from_hex(ids.to_hex(value)) == value
    with pytest.raises(ValueError):
        ids.from_hex(ids.to_hex(value).upper())
    with pytest.raises(ValueError):
        ids.from_hex("abc")


@pytest.mark.parametrize("version", [0, -1, 2**24])
def test_versions_out_of_range_are_refused(version):
    with pytest.raises(ValueError):
        ids.key_account_id("acme", KeyType.SIGNING, version)


def test_packing_round_trips():
    for key_type in KeyType:
        assert ids.unpack_key_kind(ids.pack_key_kind(key_type, 77)) == (key_type, 77)
    for op in Op:
        for failed in (False, True):
            assert ids.unpack_op(ids.pack_op(op, failed)) == (op, failed)


def test_ids_avoid_tigerbeetle_reserved_values():
    assert 0 < ids.tenant_ref("acme") < ids.U128_MAX


KNOWN_ACME_SIGNING_V1 = "5ee4077609c2b6ac7a398645876aad47"


# --- fan-out child tick ids (issue 9, item 9) ------------------------------------------------------

LONGEST_TENANT = "t" + "x" * 127


@pytest.mark.parametrize(("parent", "tenant"), [
    ("p" * 200, LONGEST_TENANT), ("p" * 150, LONGEST_TENANT), ("p" * 71, LONGEST_TENANT), ("p" * 200, "a"),
])
def test_child_tick_ids_always_fit_an_event_id(parent, tenant):
    child = ids.child_tick_id(parent, tenant)
    RotationTick(tick_id=child, issued_at="2026-01-01T00:00:00Z", tenant_id=tenant, parent_tick_id=parent)
    assert len(child) <= 200 and child == ids.child_tick_id(parent, tenant)


def test_a_child_id_that_fits_stays_readable():
    assert ids.child_tick_id("sched-1", "acme") == "sched-1/acme"
    assert ids.child_tick_id("p" * 71, LONGEST_TENANT) == "p" * 71 + "/" + LONGEST_TENANT  # exactly 200


def test_hashed_child_ids_differ_by_parent_and_tenant_and_never_look_readable():
    parent = "p" * 150
    a, b = ids.child_tick_id(parent, LONGEST_TENANT), ids.child_tick_id(parent, LONGEST_TENANT[:-1] + "y")
    c = ids.child_tick_id(parent + "q" * 50, LONGEST_TENANT)  # same first 100 characters
    assert len({a, b, c}) == 3
    assert all(re.fullmatch(r"p{100}/~[0-9a-f]{32}", x) for x in (a, b, c))
    assert not re.fullmatch(TENANT_ID_PATTERN, a.rsplit("/", 1)[1])  # a tenant id never has `~`


# Known answers, computed by the original part-by-part implementation: ledgers written by any earlier
# release hold these ids, so any derivation must give exactly them (a replay must answer `exists`).
@pytest.mark.parametrize(("derive", "args", "expected"), [
    (ids.transfer_id, (Op.SIGN, "ab" * 16, "spans.to-sign", 3, 123456), 0x620f5f7e36c93d845d4a10d9c8757ca1),
    (ids.transfer_id, (Op.ENCRYPT, "cd" * 16, "ok", "pii.requests", 0, 7), 0x70fd813b02ee8f8d06cab5d40d363a81),
    (ids.tenant_ref, ("tenant-001",), 0x5527ab89df18a1bba62a440aac184389),
    (ids.key_account_id, ("tenant-001", KeyType.SIGNING, 1), 0x50ce66a325d30a3e3cad0c16c17781),
    (ids.event_id, ("generated", "ab" * 16), "8a47df76bcfbdc474e19a6d5cd50de83"),
    (ids.budget_account_id, ("ab" * 16,), 0xb31da573cc23e4b121d206d5703a32bb),
    (ids.budget_transfer_id, ("seal", "ab" * 16, "pii.requests", 2, 9), 0xc407f7b99b43a1bc03e1e144c19d663),
])
def test_ids_are_the_ones_every_earlier_release_derived(derive, args, expected):
    assert derive(*args) == expected


def _reference_hash128(label: str, *parts: str | int) -> int:
    """The derivation spelled out part by part, as the first release wrote it."""
    state = hashlib.blake2b(digest_size=16, person=b"keyledger-v1")
    for part in (label, *parts):
        raw = str(part).encode()
        state.update(len(raw).to_bytes(4, "big"))
        state.update(raw)
    value = int.from_bytes(state.digest(), "big")
    return value if 0 < value < 2**128 - 1 else 1


_PART = st.one_of(st.text(max_size=100), st.integers(min_value=-(2**70), max_value=2**70), st.booleans())


@given(label=st.text(max_size=80), parts=st.lists(_PART, max_size=6))
def test_the_seeded_hash_is_the_part_by_part_hash(label, parts):
    assert ids._hash128(label, *parts) == _reference_hash128(label, *parts)


@given(key_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), source=st.lists(_PART, max_size=4))
def test_transfer_ids_are_the_part_by_part_hash(key_id, source):
    assert ids.transfer_id(Op.ENCRYPT, key_id, *source) == _reference_hash128("transfer", "encrypt", key_id, *source)
    assert ids.budget_transfer_id("seal", key_id, *source) == _reference_hash128("budget-seal", key_id, *source)
