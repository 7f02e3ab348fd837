"""HTTP to one Vault / OpenBao server (async httpx): TLS trust, namespace, a bounded pool, retries.

Each call is retried while transient, with jittered exponential backoff, as
long as its deadline (`timeout` seconds from its first attempt) allows:
connection failures, timeouts and 5xx (a sealed Vault answers 503, a standby
412) -> KmsUnavailable; 429 -> KmsThrottled (Retry-After honoured within the
deadline). Any other answer is returned as (status, parsed JSON) for the
caller to judge. `concurrency` bounds requests in flight (each HTTP connection
of the pool is one).

Tokens are the caller's (auth.py); this module never logs or raises one.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from typing import Any

import httpx

from workers.kms import KmsRefused, KmsThrottled, KmsUnavailable

_ERROR_COUNT = re.compile(r"^\d+ errors? occurred:\s*(\*\s*)?")
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class VaultClient:
    def __init__(self, addr: str, *, namespace: str | None = None, ca_cert: str | None = None,
                 timeout: float = 5.0, max_attempts: int = 4, concurrency: int = 8) -> None:
        if concurrency < 1 or max_attempts < 1 or timeout <= 0:
            raise ValueError("concurrency, max_attempts and timeout must be positive")
        if not addr.startswith(("http://", "https://")):
            raise ValueError("the vault address must be an http:// or https:// URL")
        self.base = addr.rstrip("/") + "/v1/"
        self.namespace = namespace
        self.ca_cert = ca_cert
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.requests = 0  # HTTP requests made (attempts included)
        self._limit = asyncio.Semaphore(concurrency)
        self._http: httpx.AsyncClient | None = None

    @property
    def is_open(self) -> bool:
        return self._http is not None

    async def send(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
        """One API call with bounded retries while transient (transport errors, 5xx, 429) and within
        `timeout` seconds of the first attempt; raises KmsUnavailable/KmsThrottled when they run out."""
        client = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        backoff = _FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - loop.time(), 0.05)
            retry_after = 0.0
            try:
                async with self._limit:
                    self.requests += 1
                    response = await client.request(method, self.base + path, json=body,
                                                    headers=self._headers(token), timeout=remaining)
            except httpx.TransportError as exc:
                failure: KmsUnavailable = KmsUnavailable(f"{op(path)}: {type(exc).__name__}{_reason(exc)}")
            else:
                status = response.status_code
                if status == 429:
                    failure = KmsThrottled(f"{op(path)}: vault 429 {errors(_json(response))}")
                    retry_after = _retry_after(response)
                elif status >= 500 or status == 412:  # 503: sealed or standby; 412: not yet replicated
                    failure = KmsUnavailable(f"{op(path)}: vault {status} {errors(_json(response))}")
                else:
                    reply = _json(response)
                    if 200 <= status < 300 and reply is None and response.content:
                        raise KmsUnavailable(f"{op(path)}: vault answered {status} without JSON")
                    return status, reply if reply is not None else {}
            wait = max(backoff * random.uniform(0.5, 1.0), retry_after)
            if attempt >= self.max_attempts or loop.time() + wait >= deadline:
                raise failure
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def send_once(self, method: str, path: str, token: str | None, *, timeout: float) -> None:
        """One attempt whose answer does not matter (a token revoked on the way out); never raises."""
        if self._http is None:
            return
        try:
            await self._http.request(method, self.base + path, headers=self._headers(token), timeout=timeout)
        except httpx.HTTPError:
            pass

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self.ca_cert:
                try:
                    verify = ssl.create_default_context(cafile=self.ca_cert)
                except (OSError, ssl.SSLError) as exc:
                    raise KmsRefused(f"vault CA certificate {self.ca_cert}: {type(exc).__name__}") from None
            self._http = httpx.AsyncClient(
                verify=verify,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            )
        return self._http

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        return headers


def errors(body: Any) -> str:
    """Vault's error strings (they never echo plaintexts, ciphertexts or tokens), on one short line."""
    found = body.get("errors") if isinstance(body, dict) else None
    if not found:
        return "(no detail)"
    return short("; ".join(str(e) for e in found))


def short(text: str) -> str:
    """One line: Vault's multi-error form ("1 error occurred:\n\t* permission denied\n\n") flattened."""
    text = _ERROR_COUNT.sub("", text.strip())
    text = " ".join(text.replace("\n\t* ", "; ").split())
    return text if len(text) <= 200 else text[:197] + "..."


def op(path: str) -> str:
    """The API path a message names (no query string)."""
    return path.split("?", 1)[0]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f" ({short(text)})" if text else ""


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "0")), 0.0), 30.0)
    except ValueError:
        return 0.0
