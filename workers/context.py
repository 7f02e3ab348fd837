"""The process context: every adapter and service, built once, closed once with `aclose()`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream.kafka import KafkaBroker

from workers.audit import AuditTrail
from workers.cache import SingleFlightCache
from workers.kafka.broker import build_broker
from workers.kafka.publisher import Publisher
from workers.keys import KeyService, SecretKey
from workers.keystore.directory import KeyDirectory
from workers.keystore.follower import KeyFollower
from workers.kms import Kms
from workers.kms.factory import open_kms
from workers.ledger import Ledger
from workers.ledger.factory import open_ledger
from workers.settings import Settings


@dataclass
class ProcessContext:
    settings: Settings
    broker: KafkaBroker
    publisher: Publisher
    kms: Kms
    ledger: Ledger
    directory: KeyDirectory
    keys: KeyService
    audit: AuditTrail
    follower: KeyFollower | None = None
    services: dict[str, Any] = field(default_factory=dict)
    runners: list[Any] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        bootstrap: str,
        *,
        kms: Kms | None = None,
        ledger: Ledger | None = None,
        follow: bool = True,
    ) -> ProcessContext:
        """Wire everything; nothing connects until `start()`."""
        broker = build_broker(settings, bootstrap)
        kms = kms or open_kms(settings)
        ledger = ledger or open_ledger(settings)
        directory = KeyDirectory()
        secrets: SingleFlightCache[SecretKey] = SingleFlightCache(
            ttl=settings.cache_private_ttl, max_entries=settings.cache_max_entries
        )
        keys = KeyService(directory, kms, ledger, secrets)
        follower = KeyFollower(bootstrap, directory, startup_timeout=settings.startup_timeout) if follow else None
        return cls(settings, broker, Publisher(broker), kms, ledger, directory, keys, AuditTrail(ledger), follower)

    def register(self, groups: Sequence[str]) -> None:
        from workers.groups import REGISTRARS

        for group in groups:
            self.services[group] = REGISTRARS[group](self.broker, self)

    def stats(self) -> dict[str, Any]:
        """Counters safe to log: no key material, no payloads."""
        figures: dict[str, Any] = {
            "kms_calls": getattr(self.kms, "calls", None),
            "published": self.publisher.published,
            "cache_hits": self.keys.secrets.hits,
            "cache_misses": self.keys.secrets.misses,
            "keys_known": len(self.directory),
        }
        for runner in self.runners:
            figures[runner.group] = {"records": runner.records, "dead": runner.dead, "waiting": runner.waiting}
        return figures

    async def start(self) -> None:
        """Load the key table first, then connect the producer and start consuming."""
        if self.follower is not None:
            await self.follower.start()
        await self.broker.start()

    async def aclose(self) -> None:
        closers: list[Callable[[], Any]] = [r.aclose for r in self.runners] + [self.broker.stop]
        if self.follower is not None:
            closers.append(self.follower.aclose)
        closers += [self.kms.aclose, self.ledger.aclose]
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
