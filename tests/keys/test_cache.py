import asyncio

import pytest

from workers.keys.cache import SingleFlightCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_misses_share_one_load():
    cache: SingleFlightCache[str] = SingleFlightCache(ttl=60, max_entries=10)
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "key"

    values = await asyncio.gather(*(cache.get("k", load) for _ in range(50)))
    assert values == ["key"] * 50 and calls == 1


async def test_a_failed_load_is_not_cached_and_all_waiters_see_it():
    cache: SingleFlightCache[str] = SingleFlightCache(ttl=60, max_entries=10)

    async def fail() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("kms down")

    results = await asyncio.gather(*(cache.get("k", fail) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)

    async def ok() -> str:
        return "key"

    assert await cache.get("k", ok) == "key"


async def test_entries_expire_after_the_ttl():
    clock = Clock()
    cache: SingleFlightCache[str] = SingleFlightCache(ttl=3600, max_entries=10, timer=clock)
    cache.put("k", "v")
    clock.now = 3599
    assert cache.peek("k") == "v"
    clock.now = 3601
    assert cache.peek("k") is None


def test_size_is_bounded():
    cache: SingleFlightCache[int] = SingleFlightCache(ttl=60, max_entries=3)
    for i in range(10):
        cache.put(str(i), i)
    assert len(cache) == 3


def test_evict_removes_and_repr_has_no_values():
    cache: SingleFlightCache[str] = SingleFlightCache(ttl=60, max_entries=3)
    cache.put("k", "secret-value")
    cache.evict("k")
    assert cache.peek("k") is None
    cache.put("k", "secret-value")
    assert "secret-value" not in repr(cache)


def test_limits_are_validated():
    with pytest.raises(ValueError):
        SingleFlightCache(ttl=0, max_entries=1)
    with pytest.raises(ValueError):
        SingleFlightCache(ttl=1, max_entries=0)
