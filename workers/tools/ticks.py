"""Operator runs over keys.rotation-ticks (rewrap, migrate): one tick per tenant, followed to the end.

The CLI reads the key table from keys.material + keys.events (as every worker
does), publishes one tick per tenant in scope (key = tenant, so a tenant's
ticks stay in order on one partition), and waits until `keyledger-rotation`
has committed past every one of them: each was handled (or dead-lettered,
which the run then reports from kms.dlq). Progress goes to stderr: a bar on a
terminal, plain lines otherwise (tools/progress.py). Nothing here touches a KMS or the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas.messages import DeadLetter, KeyEvent, KeyMaterial, RotationTick
from schemas.topics import Topic
from workers.core.material import provider_name, wrapped_kek_version
from workers.kafka.security import client_options
from workers.kafka.tap import read_topic
from workers.keystore.directory import KeyDirectory, KeyEntry, KeyState
from workers.tools.progress import Progress

ROTATION_GROUP = "keyledger-rotation"
LIVE = (KeyState.ACTIVE, KeyState.ROTATED, KeyState.REVOKED)


async def load_directory(bootstrap: str, timeout: float = 120.0) -> KeyDirectory:
    """The key table as a worker builds it: keys.material, then keys.events."""
    directory = KeyDirectory()
    for record in await read_topic(bootstrap, Topic.KEYS_MATERIAL, timeout=timeout):
        try:
            if record.value is None:
                if record.key:
                    directory.apply_tombstone(record.key.decode())
            else:
                directory.apply_material(KeyMaterial.model_validate_json(record.value))
        except (ValidationError, UnicodeDecodeError):
            continue
    for record in await read_topic(bootstrap, Topic.KEYS_EVENTS, timeout=timeout):
        if record.value is not None:
            try:
                directory.apply_event(KeyEvent.model_validate_json(record.value))
            except ValidationError:
                continue
    return directory


def live_keys(directory: KeyDirectory, tenant: str | None = None) -> list[KeyEntry]:
    entries = directory.tenant_keys(tenant) if tenant else directory.entries()
    return [e for e in entries if e.state in LIVE and e.newest is not None]


def wrapping_of(entry: KeyEntry) -> tuple[str, str, int | None]:
    """(provider, KMS key, KEK version) of the newest record of a key."""
    assert entry.newest is not None
    return provider_name(entry.newest), entry.newest.kms_key_id, wrapped_kek_version(entry.newest)


def wrappings(entries: Iterable[KeyEntry]) -> Counter[tuple[str, str, int | None]]:
    return Counter(wrapping_of(e) for e in entries)


def describe(counts: Counter[tuple[str, str, int | None]]) -> list[str]:
    return [f"  {count:>7} keys under {provider} key {kms_key_id}" + (f" v{version}" if version else "")
            for (provider, kms_key_id, version), count in sorted(counts.items(), key=lambda i: str(i[0]))]


@dataclass(frozen=True, slots=True)
class Sent:
    tick: RotationTick
    partition: int
    offset: int


async def send_ticks(bootstrap: str, ticks: Sequence[RotationTick]) -> list[Sent]:
    """Publish each tick keyed by its tenant (or `ops`); returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **client_options())
    await producer.start()
    try:
        futures = [await producer.send(Topic.ROTATION_TICKS, t.to_json(), key=(t.tenant_id or "ops").encode())
                   for t in ticks]
        landed = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(t, m.partition, m.offset) for t, m in zip(ticks, landed, strict=True)]


async def committed(bootstrap: str, partitions: Iterable[int], group: str = ROTATION_GROUP) -> dict[int, int]:
    """The group's committed offset per partition of keys.rotation-ticks (-1: none yet)."""
    # an unsubscribed consumer only fetches the group's offsets; it never joins the group
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                **client_options())
    await consumer.start()
    try:
        found = {}
        for partition in partitions:
            offset = await consumer.committed(TopicPartition(Topic.ROTATION_TICKS, partition))
            found[partition] = offset if offset is not None else -1
        return found
    finally:
        await consumer.stop()


async def follow(bootstrap: str, sent: Sequence[Sent], progress: Progress, idle_timeout: float) -> bool:
    """Wait until the rotation group committed past every sent tick; False when nothing moved for
    `idle_timeout` seconds (no rotation worker running, or one stuck on an outage: see its log)."""
    last_done, last_change = -1, time.monotonic()
    partitions = {s.partition for s in sent}
    with progress:
        while True:
            offsets = await committed(bootstrap, partitions)
            done = sum(1 for s in sent if offsets[s.partition] > s.offset)
            progress.update_to(done)
            if done >= len(sent):
                return True
            if done != last_done:
                last_done, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > idle_timeout:
                return False
            await asyncio.sleep(0.5)


async def dead_letters_for(bootstrap: str, tick_ids: set[str]) -> list[tuple[str, str]]:
    """(tick id, error) of every kms.dlq letter about one of these ticks."""
    found = []
    for record in await read_topic(bootstrap, Topic.DLQ, timeout=120):
        if record.value is None:
            continue
        try:
            letter = DeadLetter.model_validate_json(record.value)
            if letter.topic != Topic.ROTATION_TICKS or letter.payload is None:
                continue
            tick_id = json.loads(base64.b64decode(letter.payload)).get("tick_id")
        except (ValidationError, ValueError, AttributeError):
            continue
        if tick_id in tick_ids:
            found.append((tick_id, f"{letter.error.type.value}: {letter.error.message}"))
    return found
