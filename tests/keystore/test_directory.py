from datetime import UTC, datetime

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from workers.core.ids import event_id, key_id_for
from workers.core.material import material_fingerprint
from workers.keystore.directory import KeyDirectory, KeyState

NOW = datetime.now(UTC)


def material(tenant: str, key_type: KeyType, version: int) -> KeyMaterial:
    return KeyMaterial(key_id=key_id_for(tenant, key_type, version), tenant_id=tenant, key_type=key_type,
                       version=version, kms_key_id="k", wrapped_key="d3JhcHBlZA==", created_at=NOW)


def event(kind: KeyEventType, m: KeyMaterial, previous: str | None = None) -> KeyEvent:
    return KeyEvent(event_id=event_id(kind, m.key_id), type=kind, tenant_id=m.tenant_id, key_id=m.key_id,
                    key_type=m.key_type, version=m.version, occurred_at=NOW, previous_key_id=previous)


def test_material_alone_is_pending_and_not_active():
    d = KeyDirectory()
    m = material("acme", KeyType.SIGNING, 1)
    d.apply_material(m)
    assert d.get(m.key_id).state is KeyState.PENDING
    assert d.active("acme", KeyType.SIGNING) is None


def test_generated_then_rotated_moves_the_active_key_and_evicts_the_old():
    d = KeyDirectory()
    evicted = []
    d.on_evict(evicted.append)
    v1, v2 = material("acme", KeyType.SIGNING, 1), material("acme", KeyType.SIGNING, 2)
    d.apply_material(v1)
    d.apply_event(event(KeyEventType.GENERATED, v1))
    assert d.active("acme", KeyType.SIGNING).key_id == v1.key_id
    d.apply_material(v2)
    d.apply_event(event(KeyEventType.ROTATED, v2, previous=v1.key_id))
    assert d.active("acme", KeyType.SIGNING).key_id == v2.key_id
    assert d.get(v1.key_id).state is KeyState.ROTATED and evicted == [v1.key_id]


def test_tombstone_destroys_and_late_material_cannot_resurrect():
    d = KeyDirectory()
    m = material("acme", KeyType.ENCRYPTION, 1)
    d.apply_material(m)
    d.apply_event(event(KeyEventType.GENERATED, m))
    d.apply_tombstone(m.key_id)
    d.apply_material(m)
    assert d.get(m.key_id).state is KeyState.DESTROYED and d.get(m.key_id).material is None


def test_a_tenant_is_destroyed_when_all_its_keys_are():
    d = KeyDirectory()
    keys = [material("acme", t, 1) for t in KeyType]
    for m in keys:
        d.apply_material(m)
        d.apply_event(event(KeyEventType.GENERATED, m))
    d.apply_event(event(KeyEventType.DESTROYED, keys[0]))
    assert not d.is_destroyed_tenant("acme")
    d.apply_event(event(KeyEventType.DESTROYED, keys[1]))
    assert d.is_destroyed_tenant("acme") and d.active("acme", KeyType.SIGNING) is None


def test_replayed_events_change_nothing():
    d = KeyDirectory()
    m = material("acme", KeyType.SIGNING, 1)
    d.apply_material(m)
    for _ in range(3):
        d.apply_event(event(KeyEventType.GENERATED, m))
    assert len(d) == 1 and d.active("acme", KeyType.SIGNING).version == 1


def test_settle_uses_the_record_accepted_last_and_later_records_do_not_replace_it():
    from workers.core.material import material_fingerprint

    d = KeyDirectory()
    first = material("acme", KeyType.SIGNING, 1)
    second = first.model_copy(update={"wrapped_key": "c2Vjb25k"})
    forged = first.model_copy(update={"wrapped_key": "Zm9yZ2Vk"})
    for m in (first, second, forged):
        d.apply_material(m)
    entry = d.get(first.key_id)
    # records are held as bytes and parsed when read: equal models, not the objects given
    assert entry.newest == forged and entry.material == forged  # nothing settled yet
    chain = [material_fingerprint(first), material_fingerprint(second)]
    assert d.settle(first.key_id, chain) == second and entry.pinned
    d.apply_material(forged.model_copy(update={"wrapped_key": "bGF0ZXI="}))
    assert entry.material == second  # a later record is a candidate, not the record in use
    assert d.pin(first.key_id, material_fingerprint(first)) == first


def test_candidates_are_bounded_and_the_record_in_use_is_kept():
    from workers.core.material import material_fingerprint
    from workers.keystore.directory import MAX_CANDIDATES

    d = KeyDirectory()
    first = material("acme", KeyType.ENCRYPTION, 1)
    d.apply_material(first)
    d.pin(first.key_id, material_fingerprint(first))
    for i in range(3 * MAX_CANDIDATES):
        d.apply_material(first.model_copy(update={"wrapped_key": f"{i:08d}"}))
    entry = d.get(first.key_id)
    assert len(entry.candidates) == MAX_CANDIDATES and entry.material == first
    assert material_fingerprint(first) in entry.candidates
    assert entry.newest.wrapped_key == f"{3 * MAX_CANDIDATES - 1:08d}"


def test_a_record_naming_another_tenant_is_a_candidate_kept_as_read_and_never_the_key_in_use_once_settled():
    genuine = material("acme", KeyType.SIGNING, 1)
    forged = genuine.model_copy(update={"tenant_id": "globex", "wrapped_key": "Zm9yZ2Vk"})
    d = KeyDirectory()
    d.apply_material_record(genuine.to_json())
    d.apply_material_record(forged.to_json())
    entry = d.get(genuine.key_id)
    assert entry.newest == forged and entry.candidates[material_fingerprint(genuine)] == genuine
    assert entry._stored_candidates()[material_fingerprint(forged)] == forged.to_json()
    assert d.pin(genuine.key_id, material_fingerprint(genuine)) == genuine and entry.material == genuine


def test_one_record_needs_no_fingerprint_dict_and_the_same_bytes_again_add_none():
    d = KeyDirectory()
    m = material("acme", KeyType.ENCRYPTION, 1)
    for _ in range(3):
        d.apply_material_record(m.to_json())
    entry = d.get(m.key_id)
    assert entry._candidates is None and list(entry.candidates) == [material_fingerprint(m)]
    d.apply_material_record(m.model_copy(update={"wrapped_key": "b3RoZXI="}).to_json())
    assert entry._candidates is not None and len(entry.candidates) == 2
