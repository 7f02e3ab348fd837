"""The key table reads `keys.material` and `keys.events` records through the models, whatever the bytes.

The table takes a record exactly when `KeyMaterial` (or `KeyEvent`) does, reads back that very model
(its fingerprint the one the ledger pinned), and a record it refuses changes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.messages import KeyEvent, KeyMaterial
from tests.support.strategies import json_objects, json_values, models
from workers.core.b64 import b64encode
from workers.core.ids import key_id_for
from workers.core.material import material_fingerprint
from workers.keystore.directory import KeyDirectory
from workers.keystore.follower import KeyRecords

CHECK = settings(max_examples=400, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
base64_text = st.binary(max_size=300).map(b64encode)
# KMS key ids as AWS and Vault spell them: ARNs, aliases, key ids, transit key names
kms_key_ids = st.from_regex(r"[A-Za-z0-9:/_.-]{1,120}", fullmatch=True)


def written(m: KeyMaterial, wrapped: str, public: str | None, kms_key_id: str) -> KeyMaterial:
    return m.model_copy(update={"wrapped_key": wrapped, "public_key": public, "kms_key_id": kms_key_id})


# what keyledger publishes: valid fields, base64 material
keyledger_records = st.builds(written, models(KeyMaterial), base64_text, st.none() | base64_text, kms_key_ids)


def _vary(members: dict[str, Any], how: str, value: Any) -> bytes:
    """The members of a record written some other way than keyledger writes them."""
    if how == "drop" and members:
        members.pop(sorted(members)[value % len(members)])
    elif how == "null":
        members[("public_key", "kms_provider", "kek_version", "wrapped_key")[value % 4]] = None
    elif how == "set":
        members[("version", "kek_version", "wrapped_key", "created_at", "kms_provider")[value % 5]] = value
    elif how == "reorder":
        members = dict(sorted(members.items(), reverse=bool(value % 2)))
    elif how == "extra":
        members[f"x{value}"] = value
    elif how == "b64":
        members["wrapped_key"] = ("QR==", "QQ", "Q Q==", "QQ==\n", "@@@@", "")[value % 6]  # non-canonical or not base64
    elif how == "spaced":
        return json.dumps(members, indent=value % 3, ensure_ascii=bool(value % 2)).encode()
    return json.dumps(members, separators=(",", ":"), ensure_ascii=False).encode()


variants = st.builds(lambda m, how, value: _vary(json.loads(m.to_json()), how, value), keyledger_records,
                     st.sampled_from(["drop", "null", "set", "reorder", "extra", "b64", "spaced", "none"]),
                     st.integers(0, 2**32))
records = st.one_of(
    keyledger_records.map(lambda m: m.to_json()),
    models(KeyMaterial, extras=True).map(lambda m: m.to_json()),
    variants,
    json_objects().map(lambda o: json.dumps(o).encode()),
    json_values().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
)


def model_of(raw: bytes) -> KeyMaterial | None:
    try:
        return KeyMaterial.model_validate_json(raw)
    except ValidationError:
        return None


@CHECK
@given(records)
def test_the_table_takes_a_record_exactly_when_the_model_does_and_reads_back_that_model(raw):
    d = KeyDirectory()
    expected = model_of(raw)
    assert d.apply_material_record(raw) is (expected is not None)
    if expected is None:
        assert len(d) == 0
        return
    entry = d.get(expected.key_id)
    assert entry.newest == expected and entry.material == expected
    assert entry.fingerprint == material_fingerprint(expected)  # what the ledger pinned still matches
    assert entry.kms_key_id == expected.kms_key_id and entry.public_key == (expected.public_key or None)
    assert (entry.tenant_id, entry.key_type, entry.version) == (expected.tenant_id, expected.key_type, expected.version)


def event_variants(e: KeyEvent, how: int) -> bytes:
    members = json.loads(e.to_json())
    name = sorted(members)[how % len(members)]
    if how % 3 == 0:
        members.pop(name)
    elif how % 3 == 1:
        members[name] = how
    return json.dumps(members).encode()


events = st.one_of(models(KeyEvent, extras=True).map(lambda e: e.to_json()),
                   st.builds(event_variants, models(KeyEvent), st.integers(0, 2**16)),
                   json_objects().map(lambda o: json.dumps(o).encode()), st.binary(max_size=80))


@CHECK
@given(events)
def test_an_event_is_taken_exactly_when_the_model_takes_it(raw):
    d = KeyDirectory()
    try:
        expected: KeyEvent | None = KeyEvent.model_validate_json(raw)
    except ValidationError:
        expected = None
    assert d.apply_event_record(raw) is (expected is not None)
    assert len(d) == (0 if expected is None else 1)


async def test_the_follower_ignores_malformed_records_with_a_warning(caplog):
    d = KeyDirectory()
    follower = KeyRecords(d)
    good = KeyMaterial(key_id=key_id_for("acme", "signing", 1), tenant_id="acme", key_type="signing", version=1,
                       kms_key_id="alias/k", wrapped_key=b64encode(b"w" * 184), created_at="2026-01-01T00:00:00Z")
    bad_tenant = json.loads(good.to_json()) | {"tenant_id": "no spaces allowed"}
    with caplog.at_level(logging.WARNING, logger="keyledger.keystore"):
        for value in (b"not json", b"[]", b'{"key_id": "x"}', json.dumps(bad_tenant).encode(), b"\xff\xfe"):
            follower.apply("keys.material", good.key_id.encode(), value)
        follower.apply("keys.events", b"acme", b'{"type": "generated"}')
        follower.apply("keys.material", b"\xff", None)  # a tombstone whose key is not UTF-8
    assert len(d) == 0 and len(caplog.records) == 7
    assert all("ignored a malformed" in r.getMessage() for r in caplog.records)
    follower.apply("keys.material", good.key_id.encode(), good.to_json())
    follower.apply("keys.events", b"acme", None)  # a null event value: nothing to say
    assert d.get(good.key_id).newest == good and len(caplog.records) == 7
    follower.apply("keys.material", good.key_id.encode(), None)
    assert d.get(good.key_id).material is None
