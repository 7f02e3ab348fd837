"""Observability of one process: metrics (always), traces (only when configured), the HTTP endpoint.

Nothing below workers/app imports any of this, nor prometheus_client or OpenTelemetry:
the KMS and ledger ports are wrapped here (MeteredKms, MeteredLedger), the batch
runner and the emitter report through small observer Protocols (RunnerObserver,
EmitObserver), and state (waiting records, keys, caches, lag) is read from public
attributes at scrape time. Logs: `logs.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workers.app.observability.health import HealthServer, Readiness
from workers.app.observability.metrics import Metrics, ProcessObserver, Samplers, StateCollector
from workers.app.observability.ports import MeteredKms, MeteredLedger, Reachability
from workers.kafka.consume import BatchRunner
from workers.kafka.publisher import Publisher
from workers.keys.cache import SingleFlightCache
from workers.keystore.directory import KeyDirectory
from workers.kms import Kms
from workers.ledger import Ledger

if TYPE_CHECKING:
    from workers.app.observability.tracing import Tracing

SCRAPE_WAIT = 2.0  # seconds a scrape waits for fresh lag/usage samples before answering with the last ones

__all__ = ["Observability", "tracing_configured"]


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Tracing is on when an OTLP endpoint is set, unless the SDK or the traces exporter is turned off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class Observability:
    def __init__(self, tracing: Tracing | None = None) -> None:
        self.metrics = Metrics()
        self.tracing = tracing
        self.observer = ProcessObserver(self.metrics, tracing)
        self.kms_reachability = Reachability()
        self.ledger_reachability = Reachability()
        self._samplers: Samplers | None = None
        self._server: HealthServer | None = None

    @classmethod
    def build(cls, tracing: Tracing | None = None) -> Observability:
        """With `tracing` given (tests), that; else tracing from the OTEL_* environment, imported only if on."""
        if tracing is None and tracing_configured():
            from workers.app.observability.tracing import Tracing

            tracing = Tracing.from_env()
        return cls(tracing)

    # --- wrapping the ports ------------------------------------------------------

    def metered_kms(self, kms: Kms) -> MeteredKms:
        metered = MeteredKms(kms, self.metrics, self.tracing.client_span if self.tracing else None)
        self.kms_reachability = metered.reachability
        return metered

    def metered_ledger(self, ledger: Ledger) -> MeteredLedger:
        metered = MeteredLedger(ledger, self.metrics, self.tracing.client_span if self.tracing else None)
        self.ledger_reachability = metered.reachability
        return metered

    def traced_publisher(self, publisher: Publisher) -> Publisher:
        if self.tracing is None:
            return publisher
        from workers.app.observability.tracing import TracingPublisher

        return TracingPublisher(publisher, self.tracing)

    # --- state read at scrape time ------------------------------------------------

    def watch(self, runners: list[BatchRunner], cache: SingleFlightCache[Any], directory: KeyDirectory,
              ledger: Ledger, encrypt_limit: int) -> None:
        """`runners` is the context's own list (groups register later); `ledger` the unmetered adapter, so
        the usage sampler's lookups are not counted or traced as the workers' requests."""
        self._samplers = Samplers(runners, directory, ledger, encrypt_limit)
        self.metrics.registry.register(StateCollector(runners, cache, directory, self._samplers))

    async def refresh(self) -> None:
        if self._samplers is not None:
            await self._samplers.refresh(SCRAPE_WAIT)

    # --- the endpoint --------------------------------------------------------------

    async def serve(self, host: str, port: int, readiness: Readiness) -> int:
        server = HealthServer(self.metrics.registry, readiness, self.refresh)
        bound = await server.start(host, port)
        self._server = server
        return bound

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.aclose()
        if self._samplers is not None:
            await self._samplers.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()
