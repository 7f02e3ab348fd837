"""`azure` KMS provider: Azure Key Vault or Managed HSM keys, through the official async clients
(`azure-keyvault-keys` CryptographyClient for wrapKey/unwrapKey, KeyClient for versions).

The KEK is a Key Vault key: RSA (2048+ bits) wrapped with RSA-OAEP-256 in a Key Vault, or an AES-256
`oct-HSM` key wrapped with A256KW in a Managed HSM (`KEYLEDGER_AZURE_ALGORITHM`). Data keys are 32
bytes from `os.urandom` (the port's default `generate_data_key`; Key Vault makes no data keys).

Binding the encryption context: Key Vault's wrapKey has no associated data, so (as for the pkcs11
provider) what is wrapped is the envelope of workers/kms/envelope (`data key (32) || salt (8) ||
SHA-256(canonical JSON of {"context", "kms_key_id"})`) and unwrap compares the digest with the
caller's context. The wrap is the authenticator: A256KW (RFC 3394) checks the integrity of the whole
payload and RSA-OAEP is non-malleable, so the digest cannot be changed without the unwrap failing;
a key derived under the context would unwrap to another key instead of being refused. RSA caveat:
whoever holds the public key can wrap a payload for any context; such a blob still unwraps only under
the context it names, and keyledger accepts only wrappings its ledger pinned.

Wrapped blob: b"KLA1" || len(version) (1) || the Key Vault key version (ASCII) || the wrapped payload.
Key Vault versions are opaque strings; `DataKey.kek_version` is a version's position in creation order
(1 = oldest), from the key's version list (cached; re-read when a wrap names a version not yet seen).
`rotate_kek` creates a new version; `retire_kek_versions` disables the enabled versions below the
minimum (Key Vault refuses a disabled version from then on); no native rewrap (the port's default
unwraps and wraps here). With keys/get granted, the SDK wraps with an RSA public key locally: a
disabled RSA key then still wraps, but nothing it wraps unwraps.

Deletion: `schedule_key_deletion` of a tenant's own key disables every version (reversible); deleting
it (soft delete, then purge after the retention) is the operator's (docs/runbooks/azure.md). The
default key is never scheduled.

Errors: connection failures and timeouts, 5xx -> KmsUnavailable; 429 -> KmsThrottled; other HTTP
answers (403 forbidden or disabled, 404, 400 bad ciphertext) -> KmsRefused.

Tested through the official clients against a local HTTPS server speaking the documented wrapkey /
unwrapkey REST surface (tests/kms/azure_double.py), never against Azure.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workers.errors import ConfigError
from workers.kms import (
    DataKey,
    KekVersions,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
)
from workers.kms.envelope import open_sealed, seal
from workers.settings import AzureSettings, AzureWrapAlgorithm

log = logging.getLogger("workers.kms.azure")

MAGIC = b"KLA1"
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_VERSION = re.compile(rb"[0-9A-Za-z]{1,64}")
LATEST_TTL = 30.0  # seconds a process trusts its view of the latest version (another process may rotate)


class TokenFileCredential:
    """An async azure-core credential that reads a bearer token from a file at every call, so a renewed token
    is used at once. The token is never logged; its expiry is not in the file, so it is given a short one and
    azure-core asks again soon."""

    REREAD_SECONDS = 60

    def __init__(self, path: str) -> None:
        self._path = path

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        token = (await asyncio.to_thread(Path(self._path).read_text, encoding="utf-8")).strip()
        if not token:
            raise ConfigError(f"KEYLEDGER_AZURE_TOKEN_FILE={self._path} is empty")
        return AccessToken(token, int(time.time()) + self.REREAD_SECONDS)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> TokenFileCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def _credential(settings: AzureSettings) -> Any:
    """The token file when one is named, else azure-identity's chain. azure-identity is not a dependency of
    the `azure` extra: its msal release pins cryptography below the version keyledger's result sealing needs,
    so it is used only where an operator installed it beside keyledger."""
    if settings.token_file:
        return TokenFileCredential(settings.token_file)
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise ConfigError("KEYLEDGER_KMS_PROVIDER=azure needs KEYLEDGER_AZURE_TOKEN_FILE (a file holding a Key Vault "
                          "bearer token) or the azure-identity package for DefaultAzureCredential") from None
    return DefaultAzureCredential()


class AzureKms(Kms):
    """wrapKey/unwrapKey under versioned Key Vault keys, the context sealed in the payload."""

    capabilities = KmsCapabilities("azure", kek_versions=True)

    def __init__(self, vault_url: str, credential: Any, *, default_key_id: str = "keyledger-kek",
                 algorithm: AzureWrapAlgorithm = AzureWrapAlgorithm.RSA_OAEP_256, ca_cert: str | None = None,
                 timeout: float = 5.0, max_attempts: int = 3, concurrency: int = 32,
                 verify_challenge_resource: bool = True) -> None:
        address = urlsplit(vault_url)
        if address.scheme != "https" or not address.hostname:
            raise ConfigError("KEYLEDGER_AZURE_VAULT_URL must be an https:// URL")
        self.vault_url = f"https://{address.netloc}"
        self.default_key_id = _check_name(default_key_id)
        self.algorithm = AzureWrapAlgorithm(algorithm)
        self.concurrency = concurrency
        self._credential = credential
        self._options: dict[str, Any] = {
            "retry_total": max_attempts - 1, "connection_timeout": timeout, "read_timeout": timeout,
            "verify_challenge_resource": verify_challenge_resource,
            **({"connection_verify": ca_cert} if ca_cert else {})}
        self._timeout = timeout
        self._crypto: dict[tuple[str, str], Any] = {}
        self._keys: Any = None
        self._order: dict[str, list[str]] = {}  # key name -> its versions, oldest first
        self._latest: dict[str, tuple[str, float]] = {}
        self._calls = 0

    @classmethod
    def from_settings(cls, settings: AzureSettings) -> AzureKms:
        if not settings.vault_url:
            raise ConfigError("KEYLEDGER_KMS_PROVIDER=azure needs KEYLEDGER_AZURE_VAULT_URL")
        return cls(settings.vault_url, _credential(settings), default_key_id=settings.key_name,
                   algorithm=settings.algorithm, ca_cert=settings.ca_cert, timeout=settings.timeout,
                   max_attempts=settings.max_attempts, concurrency=settings.concurrency)

    # --- the port ------------------------------------------------------------------------

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        name = _check_name(kms_key_id or self.default_key_id)
        version = await self._latest_version(name)
        payload = seal(plaintext, name, context, "azure wrapKey")
        result = await self._call("wrapKey", self._crypto_client(name, version).wrap_key(self._sdk_algorithm(), payload))
        tag = version.encode()
        return DataKey(plaintext=plaintext, wrapped=MAGIC + bytes([len(tag)]) + tag + bytes(result.encrypted_key),
                       kms_key_id=name, kek_version=await self._ordinal(name, version))

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        name = _check_name(kms_key_id)
        head = len(MAGIC) + 1
        if len(wrapped) <= head or not wrapped.startswith(MAGIC):
            raise KmsRefused("azure unwrapKey: not an azure-wrapped key")
        tag = wrapped[head:head + wrapped[len(MAGIC)]]
        sealed = wrapped[head + len(tag):]
        if not _VERSION.fullmatch(tag) or not sealed:
            raise KmsRefused("azure unwrapKey: not an azure-wrapped key")
        result = await self._call("unwrapKey", self._crypto_client(name, tag.decode()).unwrap_key(
            self._sdk_algorithm(), sealed))
        return open_sealed(bytes(result.key), name, context, "azure unwrapKey")

    async def describe_key(self, kms_key_id: str) -> str:
        name = _check_name(kms_key_id)
        await self._call("getKey", self._key_client().get_key(name))
        return f"{self.vault_url}/keys/{name}"

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        name = _check_name(kms_key_id)
        if name == self.default_key_id:
            raise KmsRefused(f"azure provider does not delete {name!r}: it is the shared key that wraps every "
                             "tenant without its own key (shredding a tenant tombstones its wrapped keys instead)")
        for version, enabled in (await self._versions(name)).items():
            if enabled:
                await self._call("updateKey", self._key_client().update_key_properties(name, version, enabled=False))
        log.info("azure key %s disabled, every version (pending deletion, %d days)", name, pending_days)

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        name = _check_name(kms_key_id or self.default_key_id)
        keys = self._key_client()
        if self.algorithm is AzureWrapAlgorithm.A256KW:
            created = await self._call("createKey", keys.create_oct_key(name, size=256, hardware_protected=True))
        else:
            created = await self._call("createKey", keys.create_rsa_key(name, size=3072))
        version = str(created.properties.version)
        self._latest[name] = (version, time.monotonic())
        return await self._ordinal(name, version, refresh=True)

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        name = _check_name(kms_key_id or self.default_key_id)
        versions = await self._versions(name)
        if not versions:
            raise KmsRefused(f"azure: no key {name!r}")
        order = self._order[name]
        enabled = [order.index(v) + 1 for v, on in versions.items() if on]
        latest = len(order)
        self._latest[name] = (order[-1], time.monotonic())
        return KekVersions(latest, min(enabled) if enabled else latest + 1)

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        name = _check_name(kms_key_id or self.default_key_id)
        latest = (await self.kek_versions(name)).latest
        if not 1 <= min_version <= latest:
            raise KmsRefused(f"azure: min version {min_version} is outside 1..{latest} of key {name!r}")
        versions = await self._versions(name)
        for version in self._order[name][:min_version - 1]:
            if versions.get(version):
                await self._call("updateKey", self._key_client().update_key_properties(name, version, enabled=False))

    async def aclose(self) -> None:
        clients = [*self._crypto.values(), *([self._keys] if self._keys is not None else [])]
        self._crypto, self._keys = {}, None
        for client in clients:
            await client.close()
        await self._credential.close()  # azure.identity's async credentials hold an HTTP session

    # --- the clients ---------------------------------------------------------------------

    def _crypto_client(self, name: str, version: str) -> Any:
        client = self._crypto.get((name, version))
        if client is None:
            from azure.keyvault.keys.crypto.aio import CryptographyClient

            client = CryptographyClient(f"{self.vault_url}/keys/{name}/{version}", self._credential, **self._options)
            self._crypto[(name, version)] = client
        return client

    def _sdk_algorithm(self) -> Any:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        return KeyWrapAlgorithm(self.algorithm.value)

    def _key_client(self) -> Any:
        if self._keys is None:
            from azure.keyvault.keys.aio import KeyClient

            self._keys = KeyClient(self.vault_url, self._credential, **self._options)
        return self._keys

    async def _versions(self, name: str) -> dict[str, bool]:
        """The key's versions, oldest first (kept as the ordinal order), each with whether it is enabled."""

        async def listed() -> list[Any]:
            return [p async for p in self._key_client().list_properties_of_key_versions(name)]

        properties = await self._call("listKeyVersions", listed())
        never = datetime.min.replace(tzinfo=UTC)  # a version without a creation time sorts first
        properties.sort(key=lambda p: (p.created_on or never, p.version))
        self._order[name] = [str(p.version) for p in properties]
        return {str(p.version): bool(p.enabled) for p in properties}

    async def _ordinal(self, name: str, version: str, *, refresh: bool = False) -> int:
        if refresh or version not in self._order.get(name, []):
            await self._versions(name)
        try:
            return self._order[name].index(version) + 1
        except ValueError:
            raise KmsRefused(f"azure: key {name!r} lists no version {version!r}") from None

    async def _latest_version(self, name: str) -> str:
        cached = self._latest.get(name)
        if cached is not None and time.monotonic() - cached[1] < LATEST_TTL:
            return cached[0]
        key = await self._call("getKey", self._key_client().get_key(name))
        version = str(key.properties.version)
        self._latest[name] = (version, time.monotonic())
        return version

    async def _call(self, operation: str, call: Any) -> Any:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        self._calls += 1
        try:
            async with asyncio.timeout(self._timeout * 3):
                return await call
        except TimeoutError:
            raise KmsUnavailable(f"azure {operation}: timed out") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise KmsUnavailable(f"azure {operation}: {type(exc).__name__}") from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            error = exc.error  # Key Vault's {"error": {"code", "message"}}, when the answer had one
            code = (error.code if error is not None else None) or type(exc).__name__
            detail = str((error.message if error is not None else None) or "")[:300] or None
            if status == 429:
                raise KmsThrottled(f"azure {operation}: 429 {code}") from None
            if status >= 500 or status == 0:
                raise KmsUnavailable(f"azure {operation}: {status} {code}", detail) from None
            raise KmsRefused(f"azure {operation}: {status} {code}", detail) from None
        except KmsError:
            raise


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KmsRefused("azure: a key name is 1-127 of 0-9 a-z A-Z -")
    return name
