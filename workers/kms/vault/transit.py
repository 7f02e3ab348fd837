"""`vault` KMS provider: HashiCorp Vault / OpenBao Transit, over client.py (HTTP) and auth.py (tokens).

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

Errors: what client.py does not retry or report as unavailable (connection
failures, timeouts, 5xx, 429), Transit answers 400 (wrong context, tampered or
retired ciphertext, unknown key), 403 (permission denied) or 404 -> KmsRefused.

Capabilities: batching, native rewrap (transit/rewrap: the plaintext never
leaves Vault) and KEK versions: `rotate_kek`, `kek_versions`,
`retire_kek_versions` (raises min_decryption_version: older blobs stop
unwrapping).

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
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from workers.core.canonical import canonical_json
from workers.kms import (
    DATA_KEY_BYTES,
    MAX_WRAPPED_BYTES,
    DataKey,
    DataKeyRequest,
    KekVersions,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsUnavailable,
    Rewrapped,
    UnwrapRequest,
    WrapRequest,
)
from workers.kms.vault.auth import TokenAuth, VaultAuth, VaultSession
from workers.kms.vault.client import VaultClient, errors, op, short

T = TypeVar("T")
log = logging.getLogger("workers.kms.vault")

KEY_TYPE = "aes256-gcm96"
# Transit key and mount names go into URL paths: no "/", "..", "?" or "%" from a tenant's BYOK id
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,7}")
_CIPHERTEXT = re.compile(rb"vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/]+={0,2}")


class VaultKms(Kms):
    capabilities = KmsCapabilities("vault", batching=True, native_rewrap=True, kek_versions=True)

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
        client = VaultClient(addr, namespace=namespace, ca_cert=ca_cert, timeout=timeout,
                             max_attempts=max_attempts, concurrency=concurrency)
        mount = mount.strip("/")
        if not _MOUNT.fullmatch(mount):
            raise ValueError(f"not a valid transit mount path: {mount!r}")
        if not isinstance(auth, TokenAuth) and not _MOUNT.fullmatch(auth.mount):
            raise ValueError(f"not a valid auth mount path: {auth.mount!r}")
        _check_name(default_key_id)
        self.default_key_id = default_key_id
        self.mount = mount
        self.batch_max = batch_max
        self.concurrency = concurrency
        self.session = VaultSession(client, auth)
        self._keys_checked: set[str] = set()
        self._keys_lock = asyncio.Lock()

    @property
    def calls(self) -> int:
        """HTTP requests made (attempts included)."""
        return self.session.client.requests

    # --- single calls -----------------------------------------------------------------

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        name = self._name(kms_key_id)
        if len(plaintext) != DATA_KEY_BYTES:
            raise KmsRefused("a data key to wrap is 32 bytes")
        await self._ensure_key(name)
        data = await self._call("POST", f"{self.mount}/encrypt/{name}",
                                {"plaintext": _b64(plaintext), "context": transit_context(context)})
        return _data_key(plaintext, data, name)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        name = self._name(kms_key_id)
        ciphertext = _ciphertext(wrapped)
        data = await self._call("POST", f"{self.mount}/decrypt/{name}",
                                {"ciphertext": ciphertext, "context": transit_context(context)})
        return _plaintext(data)

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        name = self._name(kms_key_id)
        data = await self._call("POST", f"{self.mount}/rewrap/{name}",
                                {"ciphertext": _ciphertext(wrapped), "context": transit_context(context)})
        return _rewrapped(data)

    # --- batches ------------------------------------------------------------------------

    async def generate_data_keys(self, requests: Sequence[DataKeyRequest]) -> list[DataKey | KmsError]:
        return await self.wrap_many([WrapRequest(os.urandom(DATA_KEY_BYTES), r.kms_key_id, r.context)
                                     for r in requests])

    async def wrap_many(self, requests: Sequence[WrapRequest]) -> list[DataKey | KmsError]:
        """transit/encrypt of each given key, `batch_max` per request, per Transit key, in order."""
        results: list[DataKey | KmsError | None] = [None] * len(requests)

        async def chunk(name: str, slots: list[int]) -> None:
            items = [{"plaintext": _b64(requests[i].plaintext), "context": transit_context(requests[i].context)}
                     for i in slots]
            try:
                replies = await self._batch(f"{self.mount}/encrypt/{name}", items)
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
        await asyncio.gather(*(chunk(name, slots[start:start + self.batch_max])
                               for name, slots in groups.items()
                               for start in range(0, len(slots), self.batch_max)))
        return results  # type: ignore[return-value]

    async def decrypt_many(self, requests: Sequence[UnwrapRequest]) -> list[bytes | KmsError]:
        return await self._per_blob("decrypt", requests, _plaintext)

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
            items = [{"ciphertext": ciphertext, "context": transit_context(requests[i].context)}
                     for i, ciphertext in slots]
            try:
                replies = await self._batch(f"{self.mount}/{endpoint}/{name}", items)
            except KmsError as exc:
                replies = [exc] * len(slots)
            for (i, _), reply in zip(slots, replies, strict=True):
                results[i] = reply if isinstance(reply, KmsError) else _guarded(parse, reply)

        await asyncio.gather(*(chunk(name, slots[start:start + self.batch_max])
                               for name, slots in groups.items()
                               for start in range(0, len(slots), self.batch_max)))
        return results  # type: ignore[return-value]

    # --- KEK versions ---------------------------------------------------------------------

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        """A new version of the Transit key; new wraps use it, older blobs still unwrap. Returns it."""
        name = self._name(kms_key_id)
        data = await self._call("POST", f"{self.mount}/keys/{name}/rotate", {})
        if isinstance(data.get("latest_version"), int):  # OpenBao and recent Vault answer with the key
            return int(data["latest_version"])
        return (await self.kek_versions(name)).latest

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        name = self._name(kms_key_id)
        data = await self._call("GET", f"{self.mount}/keys/{name}")
        try:
            return KekVersions(int(data["latest_version"]), int(data["min_decryption_version"]))
        except (KeyError, TypeError, ValueError):
            raise KmsUnavailable(f"transit/keys/{name}: unexpected response") from None

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        """Blobs wrapped by versions below `min_version` stop unwrapping (rewrap them first)."""
        name = self._name(kms_key_id)
        if min_version < 1:
            raise ValueError("min_version must be at least 1")
        await self._call("POST", f"{self.mount}/keys/{name}/config", {"min_decryption_version": min_version})

    # --- keys ---------------------------------------------------------------------------------

    def transit_path(self, operation: str, kms_key_id: str | None = None) -> str:
        """The API path of a Transit `operation` (encrypt, decrypt, rewrap) on a key (default: the default key)."""
        return f"{self.mount}/{operation}/{self._name(kms_key_id)}"

    async def token_capabilities(self, paths: Sequence[str]) -> dict[str, list[str]]:
        """This token's capabilities on each path (sys/capabilities-self; logs in first under a login-based
        auth): what the policy lets the process do, asked without doing it."""
        data = await self._call("POST", "sys/capabilities-self", {"paths": list(paths)})
        return {path: [str(c) for c in data.get(path) or []] for path in paths}

    async def describe_key(self, kms_key_id: str) -> str:
        """A transit key is its name under its mount (no aliases)."""
        return f"vault:{self.mount}/{self._name(kms_key_id)}"

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
        await self.session.aclose()
        await self.session.client.aclose()

    async def _ensure_key(self, name: str) -> None:
        """Once per key: it is aes256-gcm96 and derived, or it is created so (when the token may)."""
        if name in self._keys_checked:
            return
        async with self._keys_lock:
            if name in self._keys_checked:
                return
            status, body = await self.session.request("GET", f"{self.mount}/keys/{name}")
            if status == 200:
                data = body.get("data") or {}
                if data.get("type") != KEY_TYPE or data.get("derived") is not True:
                    raise KmsRefused(
                        f"vault transit key {name!r} is type {data.get('type')!r} with derived="
                        f"{data.get('derived')!r}; keyledger needs type={KEY_TYPE} derived=true (use another key name)")
            elif status == 404:
                status, body = await self.session.request("POST", f"{self.mount}/keys/{name}",
                                                          {"type": KEY_TYPE, "derived": True})
                if status >= 300:
                    raise KmsRefused(
                        f"vault transit key {name!r} does not exist and could not be created "
                        f"({status} {errors(body)}); create it with `bao write -f {self.mount}/keys/{name} "
                        f"type={KEY_TYPE} derived=true`")
                log.info("created vault transit key %s (%s, derived)", name, KEY_TYPE)
            elif status == 403:
                # the policy may allow encrypt/decrypt but not reading the key: trust it. (Were it
                # missing, a token allowed to create it gets it upserted derived, as context is sent.)
                pass
            else:
                raise KmsRefused(f"{self.mount}/keys/{name}: vault {status} {errors(body)}")
            self._keys_checked.add(name)

    def _name(self, kms_key_id: str | None) -> str:
        return _check_name(kms_key_id or self.default_key_id)

    # --- requests -------------------------------------------------------------------------------

    async def _batch(self, path: str, items: list[dict[str, str]]) -> list[dict[str, Any] | KmsError]:
        """One batch_input request; per-item results in order (a failed item is its KmsRefused).
        A server whose JSON limits refuse the batch (OpenBao's max_request_json_strings, 1000 by
        default: 4 per item) gets it in halves, and smaller batches from then on."""
        status, body = await self.session.request("POST", path, {"batch_input": items})
        results = (body.get("data") or {}).get("batch_results") if isinstance(body, dict) else None
        if status == 400 and results is None and len(items) > 1 and "complexity" in errors(body):
            half = len(items) // 2
            if half < self.batch_max:
                log.warning("vault refused a batch of %d items as too complex; sending at most %d",
                            len(items), half)
                self.batch_max = half
            return await self._batch(path, items[:half]) + await self._batch(path, items[half:])
        if not isinstance(results, list) or len(results) != len(items):
            if status >= 300:
                raise KmsRefused(f"{op(path)}: vault {status} {errors(body)}")
            raise KmsUnavailable(f"{op(path)}: unexpected batch response")
        return [KmsRefused(f"{op(path)}: {short(str(r['error']))}") if isinstance(r, dict) and r.get("error")
                else r if isinstance(r, dict) else KmsUnavailable(f"{op(path)}: unexpected batch item")
                for r in results]

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a successful answer; KmsRefused for any 4xx."""
        status, reply = await self.session.request(method, path, body)
        if status >= 300:
            raise KmsRefused(f"{op(path)}: vault {status} {errors(reply)}")
        return (reply.get("data") or {}) if isinstance(reply, dict) else {}


# --- Transit's forms ----------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KmsRefused(f"not a vault transit key name: {name[:64]!r}")
    return name


def transit_context(context: dict[str, str]) -> str:
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
