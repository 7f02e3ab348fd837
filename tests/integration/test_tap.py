"""workers.kafka.tap.Tap over a real broker: each read returns the topic from its beginning, fetching only what is new."""

from __future__ import annotations

import pytest

from tests.support.kafka import unique_tenant
from workers.kafka.tap import Tap, produce, read_topic

pytestmark = pytest.mark.integration


async def test_a_tap_reads_what_came_since_its_last_read_and_returns_the_whole_topic(topics_ready):
    bootstrap, topic = topics_ready, "keys.rotation-ticks"
    tenant = unique_tenant("tap")
    tap = Tap(bootstrap)
    await produce(bootstrap, topic, [(tenant.encode(), f"first-{n}".encode()) for n in range(3)])
    first = await tap.read(topic)
    assert [r.value for r in first if r.key == tenant.encode()] == [b"first-0", b"first-1", b"first-2"]

    await produce(bootstrap, topic, [(tenant.encode(), f"second-{n}".encode()) for n in range(2)])
    second = await tap.read(topic)
    mine = [r.value for r in second if r.key == tenant.encode()]
    assert mine == [b"first-0", b"first-1", b"first-2", b"second-0", b"second-1"]
    assert second[: len(first)] == first  # kept, not fetched again: the same record objects
    assert all(a is b for a, b in zip(first, second, strict=False))
    assert tap.kept(topic) == second

    # a one-shot read (a fresh tap) sees the same topic
    assert sorted((r.partition, r.offset) for r in await read_topic(bootstrap, topic)) == \
        sorted((r.partition, r.offset) for r in second)


async def test_until_is_answered_from_what_the_tap_kept(topics_ready):
    bootstrap, topic = topics_ready, "keys.rotation-ticks"
    tenant = unique_tenant("tap-until")
    tap = Tap(bootstrap)
    await produce(bootstrap, topic, [(tenant.encode(), b"x")])

    def seen(records) -> bool:
        return any(r.key == tenant.encode() for r in records)

    read = await tap.read(topic, until=seen, timeout=30)
    assert seen(read)
    assert await tap.read(topic, until=seen, timeout=0.001) == read  # no broker needed: already kept
