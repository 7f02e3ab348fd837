"""Key caches: unwrapped secret keys (60 min) and public keys (24 h), bounded, single-flight.

Concurrent misses on one key share one loader call (so one KMS Decrypt). A
failed load is not cached: the next caller tries again. Entries hold key
objects, never printable secrets; `repr` shows counts only. `hits`, `misses`
and `evictions` (entries removed by capacity, expiry or invalidation) are plain
counters, read by the metrics at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class _CountedTTLCache(TTLCache[str, V]):
    """A TTLCache that counts what it drops on its own (capacity, expiry)."""

    dropped = 0

    def popitem(self) -> tuple[str, V]:
        item = super().popitem()
        self.dropped += 1
        return item

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)
        self.dropped += len(expired)
        return expired


class SingleFlightCache(Generic[V]):
    def __init__(self, *, ttl: float, max_entries: int, timer: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("cache ttl and max_entries must be positive")
        self._entries: _CountedTTLCache[V] = _CountedTTLCache(maxsize=max_entries, ttl=ttl, timer=timer)
        self._inflight: dict[str, asyncio.Future[V]] = {}
        self._invalidated = 0
        self.hits = 0
        self.misses = 0

    def peek(self, key: str) -> V | None:
        """The cached value, or None; never loads. The hot path of signing and encrypting."""
        value = self._entries.get(key)
        if value is not None:
            self.hits += 1
        return value

    async def get(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        value = self.peek(key)
        if value is not None:
            return value
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        else:
            self._entries[key] = value
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    def put(self, key: str, value: V) -> None:
        self._entries[key] = value

    def evict(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._invalidated += 1

    @property
    def evictions(self) -> int:
        return self._invalidated + self._entries.dropped

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SingleFlightCache(entries={len(self._entries)}, hits={self.hits}, misses={self.misses})"
