"""The process context: every adapter and service, built once, closed once with `aclose()`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream.kafka import KafkaBroker

from workers.groups import GROUPS
from workers.groups.base import Deps
from workers.kafka.broker import build_broker, start_concurrently
from workers.kafka.consume import BatchRunner, ConsumerGroup, run_group
from workers.kafka.publisher import BrokerPublisher, KafkaPublisher, Publisher
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService, SecretKey
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
    groups: dict[str, ConsumerGroup] = field(default_factory=dict)
    runners: list[BatchRunner] = field(default_factory=list)
    bootstrap: str = ""

    @classmethod
    def build(
        cls,
        settings: Settings,
        bootstrap: str,
        *,
        kms: Kms | None = None,
        ledger: Ledger | None = None,
        follow: bool = True,
        test_broker: bool = False,
    ) -> ProcessContext:
        """Wire everything; nothing connects until `start()`.

        `test_broker`: outputs go through the FastStream broker itself, so a TestKafkaBroker captures them."""
        broker = build_broker(settings, bootstrap)
        publisher: Publisher = BrokerPublisher(broker) if test_broker else KafkaPublisher(bootstrap, settings)
        kms = kms or open_kms(settings)
        ledger = ledger or open_ledger(settings)
        directory = KeyDirectory()
        secrets: SingleFlightCache[SecretKey] = SingleFlightCache(
            ttl=settings.cache_private_ttl, max_entries=settings.cache_max_entries
        )
        keys = KeyService(directory, kms, ledger, secrets)
        follower = KeyFollower(bootstrap, directory, startup_timeout=settings.startup_timeout) if follow else None
        return cls(settings, broker, publisher, kms, ledger, directory, keys, AuditTrail(ledger), follower,
                   bootstrap=bootstrap)

    @property
    def deps(self) -> Deps:
        return Deps(self.settings, self.keys, self.ledger, self.audit, self.publisher, self.bootstrap)

    def register(self, names: Sequence[str]) -> None:
        """Build the named consumer groups and subscribe them; `aclose()` stops their runners."""
        deps = self.deps
        for name in names:
            group = self.groups[name] = GROUPS[name](deps)
            self.runners.append(run_group(self.broker, self.publisher, self.settings, group))

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
        await self.publisher.start()
        await start_concurrently(self.broker)

    async def aclose(self) -> None:
        closers: list[Callable[[], Any]] = [r.aclose for r in self.runners] + [self.broker.stop, self.publisher.aclose]
        if self.follower is not None:
            closers.append(self.follower.aclose)
        closers += [self.kms.aclose, self.ledger.aclose]
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
