"""Vault / OpenBao tokens: how to get one (token, approle, kubernetes auth) and keeping it alive.

`token`: a fixed token, renewed at half its TTL when renewable. `approle` and
`kubernetes`: log in, renew at half the lease TTL, log in again when renewal
stops or a call is refused with 403. Tokens this session logged in with are
revoked by `aclose`. Messages never carry tokens, secret ids or JWTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.kms import KmsError, KmsRefused
from workers.kms.vault.client import VaultClient, errors

log = logging.getLogger("workers.kms.vault")

DEFAULT_K8S_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class TokenAuth:
    """A fixed token (KEYLEDGER_VAULT_TOKEN or VAULT_TOKEN)."""

    token: str = field(repr=False)
    login_based = False


@dataclass(frozen=True)
class AppRoleAuth:
    """auth/<mount>/login with a role id and a secret id."""

    role_id: str
    secret_id: str = field(repr=False)
    mount: str = "approle"
    login_based = True

    def login_body(self) -> dict[str, str]:
        return {"role_id": self.role_id, "secret_id": self.secret_id}


@dataclass(frozen=True)
class KubernetesAuth:
    """auth/<mount>/login with the pod's service-account JWT, read from its file at every login
    (projected tokens are rotated by the kubelet)."""

    role: str
    jwt_path: str = DEFAULT_K8S_JWT_PATH
    mount: str = "kubernetes"
    login_based = True

    def login_body(self) -> dict[str, str]:
        try:
            jwt = Path(self.jwt_path).read_text().strip()
        except OSError as exc:
            raise KmsRefused(f"vault kubernetes auth: cannot read the service-account token "
                             f"{self.jwt_path}: {exc.strerror or type(exc).__name__}") from None
        return {"role": self.role, "jwt": jwt}


VaultAuth = TokenAuth | AppRoleAuth | KubernetesAuth


class VaultSession:
    """A token for `client`'s calls: obtained at the first call, renewed in the background, replaced
    when a login-based token is refused."""

    def __init__(self, client: VaultClient, auth: VaultAuth) -> None:
        self.client = client
        self.auth = auth
        self.token: str | None = None
        self.logins = 0
        self.renewals = 0
        self._lock = asyncio.Lock()
        self._logged_in_at = 0.0
        self._renewal: asyncio.Task[None] | None = None

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """An authenticated request: (status, parsed JSON) of any non-transient answer. A 403 under a
        login-based auth logs in again once (the token may have expired or been revoked)."""
        token = await self._current()
        status, reply = await self.client.send(method, path, body, token)
        if status == 403 and self.auth.login_based and await self._relogin(token):
            status, reply = await self.client.send(method, path, body, self.token)
        return status, reply

    async def aclose(self) -> None:
        """Stops renewal; a token this session logged in with is revoked (it dies with us)."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            if renewal.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
        if self.token is not None and self.auth.login_based:
            await self.client.send_once("POST", "auth/token/revoke-self", self.token,
                                        timeout=min(self.client.timeout, 2.0))
        self.token = None

    async def _current(self) -> str:
        if self.token is None:
            async with self._lock:
                if self.token is None:
                    await self._authenticate()
        assert self.token is not None
        return self.token

    async def _relogin(self, stale: str) -> bool:
        """Logs in again unless another call just did; True when there is a token to retry with."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self.token != stale:
                return self.token is not None
            if loop.time() - self._logged_in_at < 1.0:
                return False  # a fresh token is refused: the policy, not the token, says no
            await self._authenticate()
            return True

    async def _authenticate(self) -> None:
        """Under `_lock`: a token to use, and its renewal scheduled when it is renewable."""
        if isinstance(self.auth, TokenAuth):
            # its TTL decides renewal; a token the policy forbids to look itself up is used as it is
            status, reply = await self.client.send("GET", "auth/token/lookup-self", None, self.auth.token)
            data = (reply.get("data") or {}) if status == 200 and isinstance(reply, dict) else {}
            ttl, renewable = int(data.get("ttl") or 0), bool(data.get("renewable"))
            self.token = self.auth.token
        else:
            path = f"auth/{self.auth.mount}/login"
            status, reply = await self.client.send("POST", path, self.auth.login_body(), None)
            auth = reply.get("auth") if isinstance(reply, dict) else None
            if status >= 300 or not isinstance(auth, dict) or not auth.get("client_token"):
                raise KmsRefused(f"vault {type(self.auth).__name__} login refused: {status} {errors(reply)}")
            self.token = str(auth["client_token"])
            ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
            self.logins += 1
        self._logged_in_at = asyncio.get_running_loop().time()
        if self._renewal is not None and self._renewal is not asyncio.current_task():
            self._renewal.cancel()  # (a renewal task that logs in again ends by itself)
        self._renewal = (asyncio.get_running_loop().create_task(self._renew(ttl), name="vault-token-renewal")
                         if renewable and ttl > 0 else None)

    async def _renew(self, ttl: int) -> None:
        """renew-self at half the TTL; a login-based auth logs in again when renewal fails or the
        token nears its max TTL. Errors are logged, never raised (calls re-login on 403 anyway)."""
        first_ttl = ttl
        while True:
            await asyncio.sleep(max(ttl / 2, 0.5))
            token = self.token
            try:
                status, reply = await self.client.send("POST", "auth/token/renew-self", {}, token)
                auth = reply.get("auth") if isinstance(reply, dict) else None
                if status >= 300 or not isinstance(auth, dict):
                    raise KmsRefused(f"renew-self: vault {status} {errors(reply)}")
                ttl = int(auth.get("lease_duration") or 0)
                self.renewals += 1
                if ttl >= max(first_ttl / 2, 2) and auth.get("renewable"):
                    continue
                reason = "token near its max TTL"
            except KmsError as exc:
                reason = f"renewal failed: {exc}"
            if not self.auth.login_based:
                log.warning("vault token not renewed (%s); it expires in %ss", reason, ttl)
                return
            try:
                async with self._lock:
                    if self.token == token:
                        await self._authenticate()  # which starts the next renewal task
                return
            except KmsError as exc:
                log.warning("vault login after %s failed: %s; retrying", reason, exc)
                ttl = 4
