"""The compact key table behaves as the model-per-record table did, operation for operation.

Random sequences of material records (as models, as the bytes keyledger writes, as bytes it did not
write: spaced out, or naming another tenant or version than the key's entry), events, tombstones and
settle/pin calls are applied to both tables; after every step everything a consumer can read must
agree: states, active keys, versions, materials (newest, in use, candidates and their order),
public keys, pins, fingerprints, destroyed tenants, evictions, and what settle/pin returned.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from tests.keystore import reference_directory as reference
from workers.core.b64 import b64encode
from workers.core.ids import event_id, key_id_for
from workers.core.material import material_fingerprint
from workers.keystore import compact
from workers.keystore.directory import MAX_CANDIDATES, KeyDirectory

TENANTS = ("acme", "globex")
KEYS = [(tenant, kind, version) for tenant in TENANTS for kind in KeyType for version in (1, 2)]
KEY_IDS = [key_id_for(*key) for key in KEYS]
WRAPPED = [b64encode(bytes([i]) * 184) for i in range(MAX_CANDIDATES + 4)]  # enough to overflow the bound
PUBLIC = [None, b64encode(b"\x01" * 32), b64encode(b"\x02" * 32)]
CREATED = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, 12, 30, 15, 250000, tzinfo=UTC)]
PROVIDERS = [None, "aws", "vault"]
KEKS = [None, 1, 7]
FORGERIES = [None, "tenant", "version"]
ENCODINGS = ["model", "record", "spaced"]
CHECK = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def material(key: int, wrapped: int, public: int, created: int, provider: int, kek: int,
             forged: str | None) -> KeyMaterial:
    tenant, kind, version = KEYS[key]
    return KeyMaterial(key_id=KEY_IDS[key], tenant_id="initech" if forged == "tenant" else tenant, key_type=kind,
                       version=version + 10 if forged == "version" else version, kms_key_id="alias/k",
                       wrapped_key=WRAPPED[wrapped], public_key=PUBLIC[public], created_at=CREATED[created],
                       kms_provider=PROVIDERS[provider], kek_version=KEKS[kek])


materials = st.builds(material, st.integers(0, len(KEYS) - 1), st.integers(0, len(WRAPPED) - 1),
                      st.integers(0, len(PUBLIC) - 1), st.integers(0, 1), st.integers(0, 2), st.integers(0, 2),
                      st.sampled_from(FORGERIES))
keys = st.integers(0, len(KEYS) - 1)
ops = st.one_of(
    st.tuples(st.just("material"), materials, st.sampled_from(ENCODINGS)),
    st.tuples(st.just("event"), st.sampled_from(KeyEventType), keys, st.none() | keys,
              st.integers(0, len(PUBLIC) - 1), st.booleans()),
    st.tuples(st.just("tombstone"), keys),
    st.tuples(st.just("settle"), keys, st.lists(materials, max_size=4)),
    st.tuples(st.just("pin"), keys, materials),
)


def event(kind: KeyEventType, key: int, previous: int | None, public: int) -> KeyEvent:
    tenant, key_type, version = KEYS[key]
    return KeyEvent(event_id=event_id(kind, KEY_IDS[key]), type=kind, tenant_id=tenant, key_id=KEY_IDS[key],
                    key_type=key_type, version=version, occurred_at=CREATED[0], public_key=PUBLIC[public],
                    previous_key_id=None if previous is None else KEY_IDS[previous])


def apply(new: KeyDirectory, old: reference.KeyDirectory, op: tuple[Any, ...]) -> tuple[Any, Any]:
    """Apply `op` to both tables; returns what each answered (settle/pin), else (None, None)."""
    match op:
        case ("material", m, "model"):
            new.apply_material(m)
            old.apply_material(m)
        case ("material", m, encoding):
            raw = m.to_json() if encoding == "record" else json.dumps(json.loads(m.to_json()), indent=1).encode()
            assert new.apply_material_record(raw)
            old.apply_material(KeyMaterial.model_validate_json(raw))
        case ("event", kind, key, previous, public, as_record):
            e = event(kind, key, previous, public)
            if as_record:
                assert new.apply_event_record(e.to_json())
            else:
                new.apply_event(e)
            old.apply_event(e)
        case ("tombstone", key):
            new.apply_tombstone(KEY_IDS[key])
            old.apply_tombstone(KEY_IDS[key])
        case ("settle", key, chain):
            fingerprints = [material_fingerprint(m) for m in chain]
            return new.settle(KEY_IDS[key], fingerprints), old.settle(KEY_IDS[key], fingerprints)
        case ("pin", key, m):
            return new.pin(KEY_IDS[key], material_fingerprint(m)), old.pin(KEY_IDS[key], material_fingerprint(m))
    return None, None


def assert_same(new: KeyDirectory, old: reference.KeyDirectory) -> None:
    assert len(new) == len(old)
    for key_id in KEY_IDS:
        a, b = new.get(key_id), old.get(key_id)
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        assert (a.tenant_id, a.key_type, a.version, a.state, a.pinned, a.public_key) == \
            (b.tenant_id, b.key_type, b.version, b.state, b.pinned, b.public_key)
        assert a.material == b.material and a.newest == b.newest and a.fingerprint == b.fingerprint
        assert a.has_material == (b.material is not None)
        assert a.kms_key_id == (b.material.kms_key_id if b.material else None)
        assert list(a.candidates) == list(b.candidates)
        assert [a.candidates[f] for f in a.candidates] == list(b.candidates.values())
    for tenant in (*TENANTS, "initech"):
        assert new.is_known_tenant(tenant) == old.is_known_tenant(tenant)
        assert new.is_destroyed_tenant(tenant) == old.is_destroyed_tenant(tenant)
        assert [e.key_id for e in new.tenant_keys(tenant)] == [e.key_id for e in old.tenant_keys(tenant)]
        for kind in KeyType:
            assert [e.key_id for e in new.versions(tenant, kind)] == [e.key_id for e in old.versions(tenant, kind)]
            assert getattr(new.active(tenant, kind), "key_id", None) == getattr(old.active(tenant, kind), "key_id", None)
    assert new.tenants() == old.tenants()
    for kind in KeyType:
        assert {e.key_id for e in new.active_keys(kind)} == {e.key_id for e in old.active_keys(kind)}
    assert {(k, s.value): n for (k, s), n in new.census().items()} == {(k, s.value): n for (k, s), n in old.census().items()}


@CHECK
@given(st.lists(ops, max_size=40))
def test_the_compact_table_answers_as_the_model_table_did(steps):
    new, old = KeyDirectory(), reference.KeyDirectory()
    evicted_new: list[str] = []
    evicted_old: list[str] = []
    new.on_evict(evicted_new.append)
    old.on_evict(evicted_old.append)
    for op in steps:
        answers = apply(new, old, op)
        assert answers[0] == answers[1]
        assert_same(new, old)
        assert evicted_new == evicted_old


def test_a_record_keyledger_wrote_is_packed_and_one_naming_another_tenant_stays_raw():
    d = KeyDirectory()
    genuine = material(0, 0, 1, 1, 2, 2, None)
    d.apply_material_record(genuine.to_json())
    forged = material(0, 1, 1, 1, 2, 2, "tenant")
    d.apply_material_record(forged.to_json())
    entry = d.get(genuine.key_id)
    stored = entry._stored_candidates()
    assert compact.is_packed(stored[material_fingerprint(genuine)])
    assert stored[material_fingerprint(forged)] == forged.to_json()  # not the entry's tenant: kept as read
    assert entry.newest == forged and entry.candidates[material_fingerprint(genuine)] == genuine


def test_one_record_needs_no_fingerprint_dict_and_the_same_bytes_again_add_none():
    d = KeyDirectory()
    m = material(1, 0, 0, 0, 0, 0, None)
    for _ in range(3):
        d.apply_material_record(m.to_json())
    entry = d.get(m.key_id)
    assert entry._candidates is None and list(entry.candidates) == [material_fingerprint(m)]
    d.apply_material_record(material(1, 1, 0, 0, 0, 0, None).to_json())
    assert entry._candidates is not None and len(entry.candidates) == 2
