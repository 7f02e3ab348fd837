"""`vault` KMS provider: HashiCorp Vault / OpenBao Transit over HTTP (async httpx).

The KEK is a Transit key of type `aes256-gcm96` with `derived=true`, so every
wrap and unwrap carries a `context`: base64 of the canonical JSON (sorted keys,
compact) of the same encryption context the AWS provider sends,
{"tenant_id", "key_id", "key_type"}. Transit derives a per-context key from it,
so a blob never unwraps under another tenant's, key's or key type's context.
The key is created at first use when it is missing and the token may create
it; an existing key of another type, or not derived, is refused (never used).

Data keys are 32 bytes from `os.urandom`, wrapped by `transit/encrypt` (Transit
has no data-key endpoint). The wrapped blob is Vault's ciphertext string
`vault:vN:<base64>` as ASCII bytes; N is the Transit key version, recorded as
`DataKey.kek_version`. `generate_data_keys`, `wrap_many`, `decrypt_many` and
`rewrap_many` send up to
`batch_max` items per request with `batch_input`, per Transit key (200 by
default: OpenBao's default max_request_json_strings of 1000 refuses 250 items of
4 strings each; a refused batch is split in halves and the limit lowered).

`concurrency` bounds requests in flight (each HTTP connection of the pool is one;
httpx's pool slows down with many connections, and one batch request carries
`batch_max` keys, so a few suffice).

Errors: connection failures, timeouts, 5xx (a sealed Vault answers 503) ->
KmsUnavailable, retried with jittered exponential backoff while the call's
deadline (`timeout` seconds from its first attempt) allows; 429 -> KmsThrottled
(Retry-After honoured within the deadline); 400 (wrong context, tampered or
retired ciphertext, unknown key), 403 (permission denied), 404 -> KmsRefused.

Auth: `token` (a fixed token; renewed at half its TTL when renewable),
`approle` and `kubernetes` (log in, renew at half the lease TTL, log in again
when renewal stops or a call is refused with 403). Tokens this adapter logged
in with are revoked by `aclose`.

KEK versions: `rotate_kek`, `kek_versions`, `retire_kek_versions` (raises
min_decryption_version: older blobs stop unwrapping) and `rewrap`
(transit/rewrap: the plaintext never leaves Vault).

Deletion: the default Transit key wraps every tenant without BYOK, so
`schedule_key_deletion` refuses it ("vault provider does not delete transit
keys; ..."). Any other key name is a tenant's BYOK key, which keyledger binds
to one live tenant only; for it, deletion is "rotate, then raise
min_decryption_version to the new version": nothing wrapped before unwraps
again, while the key itself stays, so an operator can undo it (lower
min_decryption_version) during the pending window and delete the key after it
(`deletion_allowed=true`, then DELETE transit/keys/<name>). Transit has no
pending-deletion window of its own, and keyledger never destroys a KEK outright.

Messages never carry key material, tokens or secret ids.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import random
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from workers.core.canonical import canonical_json
from workers.kms import (
    DATA_KEY_BYTES,
    MAX_WRAPPED_BYTES,
    DataKey,
    DataKeyRequest,
    KekVersions,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
    Rewrapped,
    UnwrapRequest,
    WrapRequest,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

KEY_TYPE = "aes256-gcm96"
DEFAULT_K8S_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Transit key and mount names go into URL paths: no "/", "..", "?" or "%" from a tenant's BYOK id
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,7}")
_CIPHERTEXT = re.compile(rb"vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/]+={0,2}")
_ERROR_COUNT = re.compile(r"^\d+ errors? occurred:\s*(\*\s*)?")
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


# --- auth methods -----------------------------------------------------------


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


# --- the adapter --------------------------------------------------------------


class VaultKms:
    provider = "vault"

    def __init__(
        self,
        addr: str,
        auth: VaultAuth,
        *,
        default_key_id: str = "keyledger",
        mount: str = "transit",
        namespace: str | None = None,
        ca_cert: str | None = None,
        timeout: float = 5.0,
        max_attempts: int = 4,
        concurrency: int = 8,
        batch_max: int = 200,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or timeout <= 0 or batch_max < 1:
            raise ValueError("concurrency, max_attempts, timeout and batch_max must be positive")
        if not addr.startswith(("http://", "https://")):
            raise ValueError("the vault address must be an http:// or https:// URL")
        mount = mount.strip("/")
        if not _MOUNT.fullmatch(mount):
            raise ValueError(f"not a valid transit mount path: {mount!r}")
        if not isinstance(auth, TokenAuth) and not _MOUNT.fullmatch(auth.mount):
            raise ValueError(f"not a valid auth mount path: {auth.mount!r}")
        _check_name(default_key_id)
        self.default_key_id = default_key_id
        self._base = addr.rstrip("/") + "/v1/"
        self._mount = mount
        self._auth = auth
        self._namespace = namespace
        self._ca_cert = ca_cert
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._concurrency = concurrency
        self._batch_max = batch_max
        self._limit = asyncio.Semaphore(concurrency)
        self._http: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        self._logged_in_at = 0.0
        self._renewal: asyncio.Task[None] | None = None
        self._keys_checked: set[str] = set()
        self._keys_lock = asyncio.Lock()
        self.calls = 0  # HTTP requests made (attempts included)
        self.logins = 0
        self.renewals = 0

    # --- the Kms port ---------------------------------------------------------

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        name = self._name(kms_key_id)
        await self._ensure_key(name)
        plaintext = os.urandom(DATA_KEY_BYTES)
        data = await self._call("POST", f"{self._mount}/encrypt/{name}",
                                {"plaintext": _b64(plaintext), "context": _context(context)})
        return _data_key(plaintext, data, name)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        name = self._name(kms_key_id)
        ciphertext = _ciphertext(wrapped)
        data = await self._call("POST", f"{self._mount}/decrypt/{name}",
                                {"ciphertext": ciphertext, "context": _context(context)})
        return _plaintext(data)

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
        return await self.wrap_many([WrapRequest(os.urandom(DATA_KEY_BYTES), r.kms_key_id, r.context)
                                     for r in requests])

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
        """transit/encrypt of each given key, `batch_max` per request, per Transit key, in order."""
        results: list[DataKey | KmsError | None] = [None] * len(requests)

        async def chunk(name: str, slots: list[int]) -> None:
            items = [{"plaintext": _b64(requests[i].plaintext), "context": _context(requests[i].context)}
                     for i in slots]
            try:
                replies = await self._batch(f"{self._mount}/encrypt/{name}", items)
            except KmsError as exc:
                replies = [exc] * len(slots)
            for i, reply in zip(slots, replies, strict=True):
                results[i] = (reply if isinstance(reply, KmsError)
                              else _guarded(_data_key, requests[i].plaintext, reply, name))

        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                name = self._name(request.kms_key_id)
                if len(request.plaintext) != DATA_KEY_BYTES:
                    raise KmsRefused("a data key to wrap is 32 bytes")
            except KmsError as exc:
                results[i] = exc
                continue
            groups.setdefault(name, []).append(i)
        for name in list(groups):
            try:
                await self._ensure_key(name)
            except KmsError as exc:
                for i in groups.pop(name):
                    results[i] = exc
        await asyncio.gather(*(chunk(name, slots[start:start + self._batch_max])
                               for name, slots in groups.items()
                               for start in range(0, len(slots), self._batch_max)))
        return results  # type: ignore[return-value]

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
        return await self._per_blob("decrypt", requests, _plaintext)

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        name = self._name(kms_key_id)
        data = await self._call("POST", f"{self._mount}/rewrap/{name}",
                                {"ciphertext": _ciphertext(wrapped), "context": _context(context)})
        return _rewrapped(data)

    async def rewrap_many(self, requests: Sequence[UnwrapRequest]) -> list[Rewrapped | KmsError]:
        """transit/rewrap with `batch_input`: each blob re-wrapped under its Transit key's latest version
        (the plaintexts never leave Vault), `batch_max` per request, in order, one result each."""
        return await self._per_blob("rewrap", requests, _rewrapped)

    async def _per_blob(self, endpoint: str, requests: Sequence[UnwrapRequest],
                        parse: Callable[[dict[str, Any]], T]) -> list[T | KmsError]:
        """transit/<endpoint> of wrapped blobs with `batch_input`, grouped per Transit key, `batch_max` per
        request, in order; a blob or a batch that fails gives its own KmsError, never the others'."""
        results: list[T | KmsError | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, str]]] = {}
        for i, request in enumerate(requests):
            try:
                groups.setdefault(self._name(request.kms_key_id), []).append((i, _ciphertext(request.wrapped)))
            except KmsError as exc:
                results[i] = exc

        async def chunk(name: str, slots: list[tuple[int, str]]) -> None:
            items = [{"ciphertext": ciphertext, "context": _context(requests[i].context)} for i, ciphertext in slots]
            try:
                replies = await self._batch(f"{self._mount}/{endpoint}/{name}", items)
            except KmsError as exc:
                replies = [exc] * len(slots)
            for (i, _), reply in zip(slots, replies, strict=True):
                results[i] = reply if isinstance(reply, KmsError) else _guarded(parse, reply)

        await asyncio.gather(*(chunk(name, slots[start:start + self._batch_max])
                               for name, slots in groups.items()
                               for start in range(0, len(slots), self._batch_max)))
        return results  # type: ignore[return-value]

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        """A new version of the Transit key; new wraps use it, older blobs still unwrap. Returns it."""
        name = self._name(kms_key_id)
        data = await self._call("POST", f"{self._mount}/keys/{name}/rotate", {})
        if isinstance(data.get("latest_version"), int):  # OpenBao and recent Vault answer with the key
            return int(data["latest_version"])
        return (await self.kek_versions(name)).latest

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        name = self._name(kms_key_id)
        data = await self._call("GET", f"{self._mount}/keys/{name}")
        try:
            return KekVersions(int(data["latest_version"]), int(data["min_decryption_version"]))
        except (KeyError, TypeError, ValueError):
            raise KmsUnavailable(f"transit/keys/{name}: unexpected response") from None

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        """Blobs wrapped by versions below `min_version` stop unwrapping (rewrap them first)."""
        name = self._name(kms_key_id)
        if min_version < 1:
            raise ValueError("min_version must be at least 1")
        await self._call("POST", f"{self._mount}/keys/{name}/config", {"min_decryption_version": min_version})

    async def describe_key(self, kms_key_id: str) -> str:
        """A transit key is its name under its mount (no aliases)."""
        return f"vault:{self._mount}/{self._name(kms_key_id)}"

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        name = self._name(kms_key_id)
        if name == self.default_key_id:
            raise KmsRefused(
                f"vault provider does not delete transit keys; {name!r} is the shared key that wraps every "
                "tenant without its own key (shredding a tenant tombstones its wrapped keys instead)")
        # a tenant's own key: make everything wrapped so far unusable, reversibly (see the module doc)
        latest = await self.rotate_kek(name)
        await self.retire_kek_versions(latest, name)
        log.info("vault transit key %s retired up to version %d (pending deletion, %d days)",
                 name, latest, pending_days)

    async def aclose(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            if renewal.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
        if self._http is not None:
            if self._token is not None and self._auth.login_based:
                try:  # tokens we logged in with die with us
                    await self._http.post(self._base + "auth/token/revoke-self", headers=self._headers(self._token),
                                          timeout=min(self._timeout, 2.0))
                except httpx.HTTPError:
                    pass
            await self._http.aclose()
            self._http = None
        self._token = None

    # --- the Transit key --------------------------------------------------------

    async def _ensure_key(self, name: str) -> None:
        """Once per key: it is aes256-gcm96 and derived, or it is created so (when the token may)."""
        if name in self._keys_checked:
            return
        async with self._keys_lock:
            if name in self._keys_checked:
                return
            status, body = await self._request("GET", f"{self._mount}/keys/{name}")
            if status == 200:
                data = body.get("data") or {}
                if data.get("type") != KEY_TYPE or data.get("derived") is not True:
                    raise KmsRefused(
                        f"vault transit key {name!r} is type {data.get('type')!r} with derived="
                        f"{data.get('derived')!r}; keyledger needs type={KEY_TYPE} derived=true (use another key name)")
            elif status == 404:
                status, body = await self._request("POST", f"{self._mount}/keys/{name}",
                                                   {"type": KEY_TYPE, "derived": True})
                if status >= 300:
                    raise KmsRefused(
                        f"vault transit key {name!r} does not exist and could not be created "
                        f"({status} {_errors(body)}); create it with `bao write -f {self._mount}/keys/{name} "
                        f"type={KEY_TYPE} derived=true`")
                log.info("created vault transit key %s (%s, derived)", name, KEY_TYPE)
            elif status == 403:
                # the policy may allow encrypt/decrypt but not reading the key: trust it. (Were it
                # missing, a token allowed to create it gets it upserted derived, as context is sent.)
                pass
            else:
                raise KmsRefused(f"{self._mount}/keys/{name}: vault {status} {_errors(body)}")
            self._keys_checked.add(name)

    def _name(self, kms_key_id: str | None) -> str:
        return _check_name(kms_key_id or self.default_key_id)

    # --- requests -------------------------------------------------------------------

    async def _batch(self, path: str, items: list[dict[str, str]]) -> list[dict[str, Any] | KmsError]:
        """One batch_input request; per-item results in order (a failed item is its KmsRefused).
        A server whose JSON limits refuse the batch (OpenBao's max_request_json_strings, 1000 by
        default: 4 per item) gets it in halves, and smaller batches from then on."""
        status, body = await self._request("POST", path, {"batch_input": items})
        results = (body.get("data") or {}).get("batch_results") if isinstance(body, dict) else None
        if status == 400 and results is None and len(items) > 1 and "complexity" in _errors(body):
            half = len(items) // 2
            if half < self._batch_max:
                log.warning("vault refused a batch of %d items as too complex; sending at most %d",
                            len(items), half)
                self._batch_max = half
            return await self._batch(path, items[:half]) + await self._batch(path, items[half:])
        if not isinstance(results, list) or len(results) != len(items):
            if status >= 300:
                raise KmsRefused(f"{_op(path)}: vault {status} {_errors(body)}")
            raise KmsUnavailable(f"{_op(path)}: unexpected batch response")
        return [KmsRefused(f"{_op(path)}: {_short(str(r['error']))}") if isinstance(r, dict) and r.get("error")
                else r if isinstance(r, dict) else KmsUnavailable(f"{_op(path)}: unexpected batch item")
                for r in results]

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a successful answer; KmsRefused for any 4xx."""
        status, reply = await self._request(method, path, body)
        if status >= 300:
            raise KmsRefused(f"{_op(path)}: vault {status} {_errors(reply)}")
        return (reply.get("data") or {}) if isinstance(reply, dict) else {}

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """An authenticated request: (status, parsed JSON) of any non-transient answer. A 403 under a
        login-based auth logs in again once (the token may have expired or been revoked)."""
        token = await self._current_token()
        status, reply = await self._send(method, path, body, token)
        if status == 403 and self._auth.login_based and await self._relogin(token):
            status, reply = await self._send(method, path, body, self._token)
        return status, reply

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
        """One API call with bounded retries while transient (transport errors, 5xx, 429) and within
        `timeout` seconds of the first attempt; raises KmsUnavailable/KmsThrottled when they run out."""
        client = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        backoff = _FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - loop.time(), 0.05)
            retry_after = 0.0
            try:
                async with self._limit:
                    self.calls += 1
                    response = await client.request(method, self._base + path, json=body,
                                                    headers=self._headers(token), timeout=remaining)
            except httpx.TransportError as exc:
                failure: KmsUnavailable = KmsUnavailable(f"{_op(path)}: {type(exc).__name__}{_reason(exc)}")
            else:
                status = response.status_code
                if status == 429:
                    failure = KmsThrottled(f"{_op(path)}: vault 429 {_errors(_json(response))}")
                    retry_after = _retry_after(response)
                elif status >= 500 or status == 412:  # 503: sealed or standby; 412: not yet replicated
                    failure = KmsUnavailable(f"{_op(path)}: vault {status} {_errors(_json(response))}")
                else:
                    reply = _json(response)
                    if 200 <= status < 300 and reply is None and response.content:
                        raise KmsUnavailable(f"{_op(path)}: vault answered {status} without JSON")
                    return status, reply if reply is not None else {}
            wait = max(backoff * random.uniform(0.5, 1.0), retry_after)
            if attempt >= self._max_attempts or loop.time() + wait >= deadline:
                raise failure
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._ca_cert:
                try:
                    verify = ssl.create_default_context(cafile=self._ca_cert)
                except (OSError, ssl.SSLError) as exc:
                    raise KmsRefused(f"vault CA certificate {self._ca_cert}: {type(exc).__name__}") from None
            self._http = httpx.AsyncClient(
                verify=verify,
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency),
            )
        return self._http

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        return headers

    # --- tokens --------------------------------------------------------------------

    async def _current_token(self) -> str:
        if self._token is None:
            async with self._token_lock:
                if self._token is None:
                    await self._authenticate()
        assert self._token is not None
        return self._token

    async def _relogin(self, stale: str) -> bool:
        """Logs in again unless another call just did; True when there is a token to retry with."""
        async with self._token_lock:
            loop = asyncio.get_running_loop()
            if self._token != stale:
                return self._token is not None
            if loop.time() - self._logged_in_at < 1.0:
                return False  # a fresh token is refused: the policy, not the token, says no
            await self._authenticate()
            return True

    async def _authenticate(self) -> None:
        """Under `_token_lock`: a token to use, and its renewal scheduled when it is renewable."""
        if isinstance(self._auth, TokenAuth):
            # its TTL decides renewal; a token the policy forbids to look itself up is used as it is
            status, reply = await self._send("GET", "auth/token/lookup-self", None, self._auth.token)
            data = (reply.get("data") or {}) if status == 200 and isinstance(reply, dict) else {}
            ttl, renewable = int(data.get("ttl") or 0), bool(data.get("renewable"))
            self._token = self._auth.token
        else:
            path = f"auth/{self._auth.mount}/login"
            status, reply = await self._send("POST", path, self._auth.login_body(), None)
            auth = reply.get("auth") if isinstance(reply, dict) else None
            if status >= 300 or not isinstance(auth, dict) or not auth.get("client_token"):
                raise KmsRefused(f"vault {type(self._auth).__name__} login refused: {status} {_errors(reply)}")
            self._token = str(auth["client_token"])
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
            token = self._token
            try:
                status, reply = await self._send("POST", "auth/token/renew-self", {}, token)
                auth = reply.get("auth") if isinstance(reply, dict) else None
                if status >= 300 or not isinstance(auth, dict):
                    raise KmsRefused(f"renew-self: vault {status} {_errors(reply)}")
                ttl = int(auth.get("lease_duration") or 0)
                self.renewals += 1
                if ttl >= max(first_ttl / 2, 2) and auth.get("renewable"):
                    continue
                reason = "token near its max TTL"
            except KmsError as exc:
                reason = f"renewal failed: {exc}"
            if not self._auth.login_based:
                log.warning("vault token not renewed (%s); it expires in %ss", reason, ttl)
                return
            try:
                async with self._token_lock:
                    if self._token == token:
                        await self._authenticate()  # which starts the next renewal task
                return
            except KmsError as exc:
                log.warning("vault login after %s failed: %s; retrying", reason, exc)
                ttl = 4


# --- helpers ----------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KmsRefused(f"not a vault transit key name: {name[:64]!r}")
    return name


def _context(context: dict[str, str]) -> str:
    """The Transit `context`: base64 of the canonical JSON (sorted keys, compact) of the encryption context."""
    return _b64(canonical_json(context))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _ciphertext(wrapped: bytes) -> str:
    if not 0 < len(wrapped) <= MAX_WRAPPED_BYTES or not _CIPHERTEXT.fullmatch(wrapped):
        raise KmsRefused("invalid ciphertext: not a vault transit ciphertext")
    return wrapped.decode("ascii")


def _version_of(wrapped: bytes) -> int:
    match = _CIPHERTEXT.fullmatch(wrapped)
    if match is None:
        raise KmsUnavailable("vault returned a ciphertext of an unknown form")
    return int(match.group(1))


def _wrapped(data: dict[str, Any]) -> bytes:
    ciphertext = data.get("ciphertext")
    if not isinstance(ciphertext, str) or not ciphertext.isascii():
        raise KmsUnavailable("vault returned no ciphertext")
    return ciphertext.encode("ascii")


def _rewrapped(data: dict[str, Any]) -> Rewrapped:
    blob = _wrapped(data)
    if len(blob) > MAX_WRAPPED_BYTES:
        raise KmsUnavailable("vault returned a ciphertext of an impossible length")
    return Rewrapped(blob, _version_of(blob))


def _data_key(plaintext: bytes, data: dict[str, Any], name: str) -> DataKey:
    wrapped = _wrapped(data)
    return DataKey(plaintext=plaintext, wrapped=wrapped, kms_key_id=name, kek_version=_version_of(wrapped))


def _plaintext(data: dict[str, Any]) -> bytes:
    try:
        plaintext = base64.b64decode(data.get("plaintext") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise KmsUnavailable("vault returned an undecodable plaintext") from None
    if len(plaintext) != DATA_KEY_BYTES:
        raise KmsRefused("vault unwrapped a value that is not a 32-byte data key")
    return plaintext


def _guarded(build: Any, *args: Any) -> Any:
    try:
        return build(*args)
    except KmsError as exc:
        return exc


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _errors(body: Any) -> str:
    """Vault's error strings (they never echo plaintexts, ciphertexts or tokens), on one short line."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return "(no detail)"
    return _short("; ".join(str(e) for e in errors))


def _short(text: str) -> str:
    """One line: Vault's multi-error form ("1 error occurred:\n\t* permission denied\n\n") flattened."""
    text = _ERROR_COUNT.sub("", text.strip())
    text = " ".join(text.replace("\n\t* ", "; ").split())
    return text if len(text) <= 200 else text[:197] + "..."


def _op(path: str) -> str:
    return path.split("?", 1)[0]


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f" ({_short(text)})" if text else ""


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "0")), 0.0), 30.0)
    except ValueError:
        return 0.0
