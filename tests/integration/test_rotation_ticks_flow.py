"""Rotation ticks over a real broker (issue 25 finding 6): a tick naming one key rotates that key alone, and a
compromise fan-out without the operator's signature rotates nothing."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import DeadLetter, RotationTick
from tests.support.kafka import records_for, tenant_created, unique_tenant
from tests.support.processes import in_process_workers
from workers.app.embedded import EmbeddedBroker
from workers.core import ids
from workers.core.b64 import b64url_encode
from workers.core.operator_ticks import sign_tick
from workers.kafka.tap import produce, read_topic
from workers.kafka.topics import ensure_topics
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings

pytestmark = pytest.mark.integration

GROUPS = ["keyledger-keygen", "keyledger-rotation"]
OPERATOR = Ed25519PrivateKey.generate()


@pytest.fixture
def own_broker() -> Iterator[str]:
    """A broker of this test's own: a fan-out covers every tenant on the topics."""
    with EmbeddedBroker() as broker:
        asyncio.run(ensure_topics(broker.bootstrap, Settings(kafka_bootstrap=broker.bootstrap, kafka_partitions=3)))
        yield broker.bootstrap


def tick(tick_id: str, **fields) -> RotationTick:
    return RotationTick.model_validate({"tick_id": tick_id, "issued_at": datetime.now(UTC).isoformat(), **fields})


async def letter_for(bootstrap: str, tick_id: str, timeout: float = 60.0) -> DeadLetter:
    def about(records):
        for record in records:
            letter = DeadLetter.model_validate_json(record.value)
            if letter.payload and json.loads(base64.b64decode(letter.payload)).get("tick_id") == tick_id:
                return letter
        return None

    return about(await read_topic(bootstrap, "kms.dlq", until=lambda rs: about(rs) is not None, timeout=timeout))


async def events_of_tick(bootstrap: str, tick_id: str) -> list[dict]:
    events = [json.loads(r.value) for r in await read_topic(bootstrap, "keys.events") if r.value]
    return [e for e in events if (e.get("tick_id") or "").startswith(tick_id)]


async def test_a_key_tick_rotates_one_key_and_an_unsigned_compromise_fan_out_is_refused(own_broker):
    bootstrap = own_broker
    tenants = [unique_tenant("tk") for _ in range(4)]
    overrides = {"operator_public_key": b64url_encode(OPERATOR.public_key().public_bytes_raw())}
    async with in_process_workers(bootstrap, GROUPS, overrides=overrides, kms=LocalKms(), ledger=MemoryLedger()):
        await produce(bootstrap, "tenants.created", [(t.encode(), tenant_created(t)) for t in tenants])
        keys = {t: await records_for(bootstrap, "keys.events", t, want=2, timeout=120) for t in tenants}
        target = next(e["key_id"] for e in keys[tenants[0]] if e["key_type"] == "signing")

        # finding 6: key_id of one tenant's signing key, compromise, no tenant
        await produce(bootstrap, "keys.rotation-ticks", [(b"ops", tick("one-key", key_id=target, reason="compromise")
                                                          .to_json())])
        mine = await records_for(bootstrap, "keys.events", tenants[0], want=4, timeout=60)
        assert {(e["type"], e["key_id"]) for e in mine if e["type"] == "revoked"} == {("revoked", target)}
        made = await events_of_tick(bootstrap, "one-key")
        assert {e["tenant_id"] for e in made} == {tenants[0]}
        assert sorted(e["type"] for e in made) == ["revoked", "rotated"]

        # a compromise of everyone, unsigned: refused, typed, nothing rotated
        await produce(bootstrap, "keys.rotation-ticks", [(b"ops", tick("everyone", reason="compromise").to_json())])
        letter = await letter_for(bootstrap, "everyone")
        assert letter.error.type.value == "unauthorized_tick"
        # a key of another tenant than the tick's: ambiguous
        await produce(bootstrap, "keys.rotation-ticks", [(tenants[1].encode(), tick(
            "crossed", tenant_id=tenants[1], key_id=ids.key_id_for(tenants[2], "encryption", 1)).to_json())])
        assert (await letter_for(bootstrap, "crossed")).error.type.value == "ambiguous_tick"

        # the same fan-out signed by the operator: every tenant's signing key is revoked
        signed = sign_tick(tick("everyone-signed", reason="compromise", key_type="signing"), OPERATOR)
        await produce(bootstrap, "keys.rotation-ticks", [(b"ops", signed.to_json())])
        for t in tenants[1:]:
            await records_for(bootstrap, "keys.events", t, want=4, timeout=60)
        refused = {ids.child_tick_id("everyone", t) for t in tenants} | {"everyone"}
        assert [e for e in await events_of_tick(bootstrap, "everyone") if e["tick_id"] in refused] == []
        revoked = {e["tenant_id"] for e in await events_of_tick(bootstrap, "everyone-signed") if e["type"] == "revoked"}
        assert revoked == set(tenants)
