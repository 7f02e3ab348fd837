"""The process context: every adapter and service, built once, closed once with `aclose()`.

The KMS and ledger are the configured adapters behind metering wrappers (metrics, and spans
when tracing is on); runners and emitters report to the process's observer; `serve_http()`
opens `/healthz`, `/readyz` and `/metrics` (workers/app/observability).

The caller policy table (`keys.callers`, verified against KEYLEDGER_OPERATOR_PUBLIC_KEY) is read
whole before any group starts, like the key table: no request is judged before every caller is
known. Without an operator key no caller is trusted (every request that needs one is denied).
The ledger's caller pins are read before that topic (a shared ledger only: TigerBeetle), so a record
rolled back below its caller's pin is refused from the first record on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker

from schemas.topics import Topic
from workers.app.observability import Observability
from workers.app.observability.health import Dependency
from workers.core.callers import CallerTable, operator_public_key
from workers.groups import GROUPS
from workers.groups.base import Deps
from workers.groups.pii import PiiGroup
from workers.groups.signer import SignerGroup
from workers.kafka.broker import build_broker, start_concurrently
from workers.kafka.consume import STOP_WAIT, BatchRunner, ConsumerGroup, run_group
from workers.kafka.follow import PartitionFollower, TopicFollower
from workers.kafka.partitioning import tenant_partition
from workers.kafka.publisher import BrokerPublisher, KafkaPublisher, Publisher
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.patience import TenantPatience
from workers.keys.service import KeyService, SecretKey
from workers.keystore.callers import CallerPolicies
from workers.keystore.directory import KeyDirectory
from workers.keystore.follower import FOLLOWED, KeyRecords
from workers.keystore.shards import KeyShards
from workers.kms import Kms
from workers.kms.factory import open_kms
from workers.ledger import Ledger
from workers.ledger.factory import open_ledger
from workers.ledger.records import pinned_versions
from workers.settings import Profile, RequireCaller, Settings

if TYPE_CHECKING:
    from workers.app.observability.tracing import Tracing

log = logging.getLogger("keyledger")

SLOW_CLOSE = 2.0
"""Seconds after which closing one part is named in the log (a stop that drags says where)."""
CLOSE_WAIT = STOP_WAIT + 5.0
"""Seconds one part may take to close before it is left behind: longer than a runner's own wait for its
batches in hand (STOP_WAIT), so a runner always settles that itself."""

# groups that keep serving from cached unwrapped keys while the KMS is out of reach
SERVE_FROM_CACHE = frozenset({SignerGroup.name, PiiGroup.name})
# groups served by a key table held per partition (KEYLEDGER_KEY_TABLE_SHARDED): they use a tenant's keys only
# for that tenant's records. The audit digest group uses the system keys alone, held in every process; keygen
# (BYOK ownership) and rotation (its fan-out's tenant list) need every tenant, so a process running either
# holds every partition.
SHARDED_GROUPS = frozenset({SignerGroup.name, PiiGroup.name})
WHOLE_TABLE_GROUPS = frozenset({"keyledger-keygen", "keyledger-rotation"})
BROKER_PING_TIMEOUT = 2.0


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
    follower: TopicFollower | None = None
    observability: Observability = field(default_factory=Observability)
    groups: dict[str, ConsumerGroup] = field(default_factory=dict)
    runners: list[BatchRunner] = field(default_factory=list)
    bootstrap: str = ""
    key_table_loaded: bool = False
    http_url: str | None = None
    callers: CallerTable = field(default_factory=CallerTable)
    caller_follower: TopicFollower | None = None
    callers_loaded: bool = False
    caller_policies: CallerPolicies | None = None
    shards: KeyShards | None = None
    shard_reader: PartitionFollower | None = None
    whole_table: bool = True

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
        tracing: Tracing | None = None,
    ) -> ProcessContext:
        """Wire everything; nothing connects until `start()`.

        `test_broker`: outputs go through the FastStream broker itself, so a TestKafkaBroker captures them.
        `tracing`: a given tracer (tests); by default tracing follows the OTEL_* environment."""
        observability = Observability.build(tracing)
        # the KMS first: a setting it lacks (an AWS region) stops the process before any client exists
        metered_kms = observability.metered_kms(kms or open_kms(settings.kms))
        adapter = ledger or open_ledger(settings.ledger)
        broker = build_broker(settings.kafka, bootstrap)
        publisher: Publisher = BrokerPublisher(broker) if test_broker else KafkaPublisher(bootstrap, settings)
        publisher = observability.traced_publisher(publisher)
        metered_ledger = observability.metered_ledger(adapter)
        directory = KeyDirectory()
        secrets: SingleFlightCache[SecretKey] = SingleFlightCache(
            ttl=settings.cache.private_ttl, max_entries=settings.cache.max_entries
        )
        shard_reader = shards = follower = None
        if follow and settings.limits.key_table_sharded:
            shard_reader = PartitionFollower(bootstrap, FOLLOWED, KeyRecords(directory).apply,
                                             client_id="keyledger-keystore", startup_timeout=settings.limits.startup_timeout)
            shards = KeyShards(directory, shard_reader, tenant_partition)
        elif follow:
            follower = TopicFollower(bootstrap, FOLLOWED, KeyRecords(directory).apply, client_id="keyledger-keystore",
                                     startup_timeout=settings.limits.startup_timeout, bulk_load=True)
        keys = KeyService(directory, metered_kms, metered_ledger, secrets, TenantPatience(settings.limits.key_table_wait),
                          shards)
        callers = CallerTable()
        caller_follower = policies = None
        if follow and settings.callers.operator_public_key:
            policies = CallerPolicies(callers, metered_kms, operator_public_key(settings.callers.operator_public_key))

            async def apply_policy(_topic: str, key: bytes | None, value: bytes | None) -> None:
                await policies.apply(key, value)

            caller_follower = TopicFollower(bootstrap, [Topic.KEYS_CALLERS.value], apply_policy,
                                            client_id="keyledger-callers", startup_timeout=settings.limits.startup_timeout)
        context = cls(settings, broker, publisher, metered_kms, metered_ledger, directory, keys,
                      AuditTrail(metered_ledger), follower, observability, bootstrap=bootstrap, callers=callers,
                      caller_follower=caller_follower, shards=shards, shard_reader=shard_reader,
                      whole_table=shards is None, caller_policies=policies)
        observability.watch(context.runners, secrets, directory, adapter, settings.limits.encrypt_limit)
        return context

    @property
    def deps(self) -> Deps:
        return Deps(self.settings, self.keys, self.ledger, self.audit, self.publisher, self.bootstrap,
                    self.observability.observer, self.callers)

    def register(self, names: Sequence[str]) -> None:
        """Build the named consumer groups and subscribe them; `aclose()` stops their runners."""
        deps = self.deps
        if self.shards is not None and WHOLE_TABLE_GROUPS & set(names):
            log.info("KEYLEDGER_KEY_TABLE_SHARDED: %s need every tenant's keys; this process holds them all",
                     ", ".join(sorted(WHOLE_TABLE_GROUPS & set(names))))
            self.whole_table = True
        for name in names:
            group = self.groups[name] = GROUPS[name](deps)
            self.observability.metrics.watch_group(name)
            sharded = self.shards if name in SHARDED_GROUPS and not self.whole_table else None
            self.runners.append(run_group(self.broker, self.publisher, self.settings, group,
                                          self.observability.observer, sharded))

    def stats(self) -> dict[str, Any]:
        """Counters safe to log: no key material, no payloads."""
        figures: dict[str, Any] = {
            "kms_calls": self.kms.calls,
            "published": self.publisher.published,
            "cache_hits": self.keys.secrets.hits,
            "cache_misses": self.keys.secrets.misses,
            "keys_known": len(self.directory),
        }
        for runner in self.runners:
            figures[runner.group] = {"records": runner.records, "dead": runner.dead, "waiting": runner.waiting}
        return figures

    async def start(self) -> None:
        """Load the caller policies and the key table first, then connect the producer and start consuming.

        A process whose every group is served by a sharded key table joins its groups while those load (a
        group join takes seconds): their records wait in `KeyShards.serve` until `KeyShards.start` returned,
        which is after the caller policies loaded, and each assigned partition's keys load as it is assigned."""
        if self.settings.require_caller is RequireCaller.NONE:
            log.warning("KEYLEDGER_REQUIRE_CALLER=none: anyone who can write to pii.requests can have any tenant's "
                        "fields decrypted; adopt callers (README \"Callers\") and unset it")
        if self.shards is None or self.whole_table or not set(self.groups) <= SHARDED_GROUPS:
            await self._load_tables()
            await self._consume()
            return
        await self.shards.connect()
        joining = asyncio.create_task(self._consume(), name="join")
        try:
            await self._load_tables()
        except BaseException:
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await joining
            raise
        await joining

    async def _consume(self) -> None:
        await self.publisher.start()
        await start_concurrently(self.broker)

    async def _load_tables(self) -> None:
        """The caller policies, then the key table (whole, or the sharded table's global part)."""
        if self.caller_follower is not None:
            if self.ledger.shared:
                self.callers.pin(await pinned_versions(self.ledger))
            await self.caller_follower.start()
            if self.caller_policies is not None:
                self.caller_policies.read_done()
            log.info("caller policies loaded: %d callers from %d records", len(self.callers), self.caller_follower.read)
        elif not self.settings.callers.operator_public_key:
            log.info("KEYLEDGER_OPERATOR_PUBLIC_KEY is unset: no caller is trusted")
        self.callers_loaded = True
        if self.follower is not None:
            started = time.monotonic()
            await self.follower.start()
            log.info("key table loaded: %d keys from %d records in %.1fs", len(self.directory), self.follower.read,
                     time.monotonic() - started)
        if self.shards is not None:
            started = time.monotonic()
            await self.shards.start()
            if self.whole_table:
                await self.shards.hold("whole", range(self.shards.partitions))
            log.info("key table loaded: %d keys of key partitions %s (sharded) in %.1fs", len(self.directory),
                     sorted(self.shards.loaded), time.monotonic() - started)
        self.key_table_loaded = True

    async def serve_http(self) -> str | None:
        """Open `/healthz`, `/readyz`, `/metrics` (before `start()`: liveness answers while the key table loads).

        Off with KEYLEDGER_HTTP_PORT=0. A port in use stops a production process; in dev it is only a warning."""
        port = self.settings.http.port
        if port == 0:
            return None
        try:
            bound = await self.observability.serve(self.settings.http.host, port, self.readiness)
        except OSError as exc:
            if self.settings.profile is Profile.PRODUCTION:
                raise SystemExit(f"keyledger: cannot listen on KEYLEDGER_HTTP_PORT={port}: {exc.strerror}") from None
            log.warning("no health/metrics endpoint: port %d: %s (set KEYLEDGER_HTTP_PORT)", port, exc.strerror)
            return None
        host = "127.0.0.1" if self.settings.http.host in ("0.0.0.0", "::", "") else self.settings.http.host
        self.http_url = f"http://{host}:{bound}"
        return self.http_url

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: the broker answers, the key table is loaded, every group has joined; a KMS or ledger
        known to be out of reach counts only where this process cannot serve without it."""
        broker = await self.broker.ping(BROKER_PING_TIMEOUT)
        groups = {r.group: {"joined": r.assignments.joined, "partitions": len(r.assignments.partitions)}
                  for r in self.runners}
        kms = Dependency(self.observability.kms_reachability.report(),
                         fatal=bool(self.runners) and not SERVE_FROM_CACHE & set(self.groups))
        ledger = Dependency(self.observability.ledger_reachability.report(), fatal=bool(self.runners))
        # sharded: the keys of the assigned partitions are read too (records wait for them meanwhile)
        key_table = self.key_table_loaded and (self.shards is None or not self.shards.pending)
        ready = (broker and key_table and self.callers_loaded and all(g["joined"] for g in groups.values())
                 and not kms.blocks and not ledger.blocks)
        return ready, {
            "broker": {"ok": broker},
            "key_table": {"loaded": key_table, "keys": len(self.directory),
                          **({"partitions": sorted(self.shards.loaded)} if self.shards is not None else {})},
            "callers": {"loaded": self.callers_loaded, "callers": len(self.callers)},
            "groups": groups,
            "kms": {**kms.report, "fatal": kms.fatal},
            "ledger": {**ledger.report, "fatal": ledger.fatal},
        }

    async def aclose(self) -> None:
        closers: list[Callable[[], Any]] = [r.aclose for r in self.runners] + [self.broker.stop, self.publisher.aclose]
        if self.follower is not None:
            closers.append(self.follower.aclose)
        if self.shards is not None and self.shard_reader is not None:
            closers += [self.shards.aclose, self.shard_reader.aclose]
        if self.caller_follower is not None:
            closers.append(self.caller_follower.aclose)
        closers += [self.kms.aclose, self.ledger.aclose, self.observability.aclose]
        started = time.monotonic()
        await close_in_turn(closers)
        log.info("stopped in %.1f s", time.monotonic() - started)


async def close_in_turn(closers: Sequence[Callable[[], Awaitable[Any]]], wait: float = CLOSE_WAIT) -> None:
    """Each closer in order, each given `wait` seconds: one that fails or hangs (a group coordinator
    that never answers a leave) is named in the log and left behind, and the rest still close. Offsets
    are safe either way: only the runners commit, and they have settled first."""
    for close in closers:
        name = getattr(close, "__qualname__", repr(close))
        began = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                await close()
        except TimeoutError:
            log.warning("closing %s: no end after %g s; left behind", name, wait)
            continue
        except Exception as exc:
            log.warning("closing %s failed: %s", name, type(exc).__name__)
            continue
        if time.monotonic() - began > SLOW_CLOSE:
            log.warning("closing %s took %.1f s", name, time.monotonic() - began)
