"""The process's HTTP endpoint: `/healthz`, `/readyz`, `/metrics` (aiohttp, on the worker's own event loop).

- `/healthz` is answered by the event loop itself: a 200 means the loop is turning. A loop
  blocked or wedged answers nothing, and the liveness probe restarts the process.
- `/readyz` is 200 when the broker answers, the key table has been read to its end
  (KeyFollower finished its start) and every consumer group has joined (received an
  assignment; an empty one counts: a replica beyond the partition count is idle, not broken).
  KMS and ledger reachability, as the latest calls saw it, is in the body; it makes the
  process unready only where nothing could be served without it (see `Dependency.fatal`).
  `failing` names every dependency whose latest calls fail, ready or not, with the settings
  to check.
- `/metrics` is the Prometheus exposition of the process's registry, encoded by
  prometheus_client (text or OpenMetrics, as the scraper asks).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("keyledger.http")

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
Refresh = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Dependency:
    """A dependency's reachability report and whether its absence stops this process from serving."""

    report: dict[str, Any]
    fatal: bool

    @property
    def blocks(self) -> bool:
        return self.fatal and self.report.get("state") == "unavailable"


# the settings to check for each dependency whose latest calls fail
DEPENDENCY_SETTINGS = {
    "broker": "KEYLEDGER_KAFKA_BOOTSTRAP",
    "kms": "KEYLEDGER_KMS_ENDPOINT_URL and KEYLEDGER_AWS_REGION (aws) or KEYLEDGER_VAULT_ADDR (vault), and the "
           "KMS credentials",
    "ledger": "KEYLEDGER_TB_ADDRESSES and KEYLEDGER_TB_CLUSTER_ID",
}


def failing(checks: dict[str, Any]) -> dict[str, str]:
    """Every dependency whose latest calls fail, with what they said and the settings to check: also the
    ones this process stays ready without (a signer serving from cached keys while the KMS is out)."""
    found = {}
    for name, setting in DEPENDENCY_SETTINGS.items():
        check = checks.get(name)
        if not isinstance(check, dict):
            continue
        if check.get("state") == "unavailable" or check.get("ok") is False:
            said = check.get("last_error") or "no answer"
            found[name] = f"{said}; check {setting}"
    return found


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness, refresh: Refresh) -> None:
        self._registry = registry
        self._readiness = readiness
        self._refresh = refresh
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on (host, port); returns the bound port (useful with port 0 in tests)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, checks = await self._readiness()
        except Exception as exc:  # a readiness check that fails is an answer, not a crash
            log.warning("readiness check failed: %s", exc)
            ready, checks = False, {"error": type(exc).__name__}
        return web.json_response({"ready": ready, "checks": checks, "failing": failing(checks)},
                                 status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            await self._refresh()
        except Exception as exc:  # the samples stay as they were; the scrape still answers
            log.debug("metrics refresh failed: %s", exc)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})
