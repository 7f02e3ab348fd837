"""Only a wrapping the ledger accepted is ever unwrapped: the account's pin, or a rewrap transfer's fingerprint.

A forged keys.material record here is as valid-looking as it gets: the key's own ids, type, version and
public key, and a wrapped key the KMS *would* unwrap (a real data key wrapped under the same KMS key and
the key's exact encryption context). Only the ledger tells it apart, before any KMS call."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial, KeyType
from tests.support.harness import handler_harness, span_job, tenant_created
from workers.core import ids
from workers.core.b64 import b64decode, b64encode
from workers.core.signing import Verdict
from workers.errors import KeyRefused
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService
from workers.keystore.directory import KeyDirectory
from workers.kms import encryption_context
from workers.kms.local import LocalKms
from workers.tools.verify import PublicKeyBook, verify_signed_span


class RecordingKms(LocalKms):
    """The local KMS, remembering every blob it was asked to unwrap."""

    def __init__(self) -> None:
        super().__init__()
        self.unwrapped: list[bytes] = []

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        self.unwrapped.append(wrapped)
        return await super().decrypt(wrapped, kms_key_id, context)


@pytest.fixture
async def harness():
    kms = RecordingKms()
    async with handler_harness(["keyledger-keygen", "keyledger-signer", "keyledger-rotation"], kms=kms) as parts:
        context, broker, captured = parts
        await broker.publish(tenant_created("acme"), "tenants.created", key=b"acme")
        yield (*parts, kms)


SIGNING = ids.key_id_for("acme", KeyType.SIGNING, 1)


async def forge(kms: LocalKms, genuine: KeyMaterial) -> KeyMaterial:
    """The genuine record with another data key, properly wrapped for this very key's context."""
    context = encryption_context(genuine.tenant_id, genuine.key_id, genuine.key_type)
    other = await kms.generate_data_key(genuine.kms_key_id, context)
    assert await kms.decrypt(other.wrapped, other.kms_key_id, context) == other.plaintext  # the KMS would unwrap it
    return genuine.model_copy(update={"wrapped_key": b64encode(other.wrapped)})


def cold_process(context, kms) -> tuple[KeyService, KeyDirectory]:
    """Another process on the same ledger and KMS, with an empty cache and its own key table."""
    directory = KeyDirectory()
    return KeyService(directory, kms, context.ledger, SingleFlightCache(ttl=60, max_entries=10)), directory


def announce(directory: KeyDirectory, material: KeyMaterial) -> None:
    directory.apply_material(material)
    directory.apply_event(KeyEvent(event_id="e", type=KeyEventType.GENERATED, tenant_id=material.tenant_id,
                                   key_id=material.key_id, key_type=material.key_type, version=material.version,
                                   occurred_at=datetime.now(UTC), public_key=material.public_key))


def tick(tick_id: str, **fields) -> bytes:
    return json.dumps({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields}).encode()


async def test_a_forged_record_read_after_the_genuine_one_is_ignored_and_never_unwrapped(harness):
    context, broker, captured, kms = harness
    genuine = context.directory.get(SIGNING).material
    forged = await forge(kms, genuine)
    context.directory.apply_material(forged)  # as the follower would read it off keys.material
    context.keys.secrets.clear()
    kms.unwrapped.clear()
    await broker.publish(span_job("acme"), "spans.to-sign", key=b"acme")
    assert kms.unwrapped == [b64decode(genuine.wrapped_key)]
    book = PublicKeyBook()
    for event in captured.values("keys.events", KeyEvent):
        book.learn(event)
    assert verify_signed_span(book, captured.values("spans.signed")[-1]) is Verdict.VALID


async def test_a_forged_record_alone_is_refused_as_material_mismatch_before_any_kms_call(harness):
    context, broker, captured, kms = harness
    forged = await forge(kms, context.directory.get(SIGNING).material)
    keys, directory = cold_process(context, kms)
    announce(directory, forged)  # compaction kept only the forged record
    kms.unwrapped.clear()
    with pytest.raises(KeyRefused) as refused:
        await keys.secret(directory.get(SIGNING))
    assert refused.value.code.value == "material_mismatch"
    assert kms.unwrapped == []
    # the genuine record arriving later is used at once
    genuine = [m for m in captured.values("keys.material", KeyMaterial) if m.key_id == SIGNING][0]
    directory.apply_material(genuine)
    assert await keys.secret(directory.get(SIGNING)) is not None
    assert kms.unwrapped == [b64decode(genuine.wrapped_key)]


async def test_after_a_rewrap_only_the_chain_is_accepted(harness):
    context, broker, captured, kms = harness
    original = context.directory.get(SIGNING).material
    await broker.publish(tick("rw-1", tenant_id="acme", action="rewrap", reason="manual"), "keys.rotation-ticks",
                         key=b"acme")
    rewrapped = [m for m in captured.values("keys.material", KeyMaterial) if m.key_id == SIGNING][-1]
    assert rewrapped.wrapped_key != original.wrapped_key
    forged = await forge(kms, rewrapped)  # the rewrapped record's fields, an unaccepted wrapping

    # each accepted record alone unwraps (the original until its KEK version is retired) ...
    for accepted in (original, rewrapped):
        keys, directory = cold_process(context, kms)
        announce(directory, accepted)
        kms.unwrapped.clear()
        assert await keys.secret(directory.get(SIGNING)) is not None
        assert kms.unwrapped == [b64decode(accepted.wrapped_key)]
    # ... every record together: the one accepted last, whatever order they arrive in ...
    for order in ([original, rewrapped, forged], [rewrapped, forged, original], [forged, original, rewrapped]):
        keys, directory = cold_process(context, kms)
        for material in order:
            announce(directory, material)
        kms.unwrapped.clear()
        assert await keys.secret(directory.get(SIGNING)) is not None
        assert kms.unwrapped == [b64decode(rewrapped.wrapped_key)]
    # ... and the forged one alone is refused exactly as before rewrapping existed
    keys, directory = cold_process(context, kms)
    announce(directory, forged)
    kms.unwrapped.clear()
    with pytest.raises(KeyRefused) as refused:
        await keys.secret(directory.get(SIGNING))
    assert refused.value.code.value == "material_mismatch" and kms.unwrapped == []


async def test_a_rewrap_transfer_of_another_key_accepts_nothing_here(harness):
    context, broker, captured, kms = harness
    await broker.publish(tenant_created("globex"), "tenants.created", key=b"globex")
    await broker.publish(tick("rw-1", tenant_id="globex", action="rewrap", reason="manual"), "keys.rotation-ticks",
                         key=b"globex")
    theirs = [m for m in captured.values("keys.material", KeyMaterial)
              if m.key_id == ids.key_id_for("globex", KeyType.SIGNING, 1)][-1]
    # their accepted record, relabelled as acme's key: the fingerprint is not in acme's chain
    relabelled = theirs.model_copy(update={"key_id": SIGNING, "tenant_id": "acme"})
    keys, directory = cold_process(context, kms)
    announce(directory, relabelled)
    with pytest.raises(KeyRefused) as refused:
        await keys.secret(directory.get(SIGNING))
    assert refused.value.code.value == "material_mismatch"
