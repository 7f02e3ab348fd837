"""Patience with tenants the key table has not seen yet.

A producer that creates a tenant and streams its spans at once races keygen: the
spans can reach the signer before keygen has made the keys and before this
process's key table (keystore/follower.py) has read them. Such a record waits,
uncommitted, like one whose key the KMS cannot unwrap right now, and is tried
again with backoff; only a record still naming an unknown tenant
`KEYLEDGER_KEY_TABLE_WAIT` seconds after this process first saw it is refused
as `unknown_tenant`. The clock starts per record and per process: a restart
grants the wait again, which only delays a refusal, never loses a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from workers.source import Source

_PRUNE_AT = 100_000  # records remembered before the ones whose wait is long over are forgotten


class TenantPatience:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError("a wait is zero or more seconds")
        self._seconds = seconds
        self._clock = clock
        self._first_seen: dict[Source, float] = {}

    def waits(self, source: Source) -> bool:
        """True while the request from `source` may still wait for its tenant's keys; False once its wait is over."""
        if self._seconds == 0:
            return False
        now = self._clock()
        first = self._first_seen.setdefault(source, now)
        if now - first < self._seconds:
            if len(self._first_seen) > _PRUNE_AT:
                self._prune(now)
            return True
        del self._first_seen[source]
        return False

    def _prune(self, now: float) -> None:
        self._first_seen = {k: t for k, t in self._first_seen.items() if now - t < 2 * self._seconds}
