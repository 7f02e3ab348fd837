"""`gcp` KMS provider: Google Cloud KMS symmetric keys, through the official async client.

The KEK is a Cloud KMS CryptoKey of purpose ENCRYPT_DECRYPT, named by its resource name
(`projects/P/locations/L/keyRings/R/cryptoKeys/K`). Data keys are 32 bytes from `os.urandom`
(the port's default `generate_data_key`; Cloud KMS has no data-key call), sent to Encrypt with
`additional_authenticated_data` = the canonical JSON of the encryption context, so a blob never
decrypts under another tenant's, key's or key type's context (Cloud KMS binds the AAD in its AEAD).
The wrapped blob is Cloud KMS's ciphertext as returned (it names its key version inside).

Integrity (Google's CRC32C fields, both ways): every request carries `plaintext_crc32c` /
`ciphertext_crc32c` and `additional_authenticated_data_crc32c`; every answer is checked: Encrypt must
report `verified_plaintext_crc32c` and `verified_additional_authenticated_data_crc32c` and its
`ciphertext_crc32c` must match the ciphertext; Decrypt's `plaintext_crc32c` must match the plaintext.
A mismatch is corruption in transit: KmsUnavailable (retry), never a key used.

KEK versions are CryptoKeyVersions: a wrap reports the version that made it (`DataKey.kek_version`,
from the Encrypt answer's `name`); `rotate_kek` creates a version and makes it primary;
`retire_kek_versions` disables the enabled versions below the minimum (reversible; Cloud KMS refuses
them from then on); `kek_versions` is (primary, lowest enabled). No native rewrap: the port's default
decrypts and encrypts again here.

Deletion: Cloud KMS never deletes a CryptoKey; `schedule_key_deletion` of a tenant's own key schedules
the destruction of every version not yet destroyed (the key's own `destroy_scheduled_duration` is the
pending window; restore a version during it to undo). The default key is never scheduled.

Errors (gRPC status): UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, ABORTED -> KmsUnavailable;
RESOURCE_EXHAUSTED -> KmsThrottled; anything else (INVALID_ARGUMENT: wrong AAD or tampered ciphertext;
FAILED_PRECONDITION: a disabled or destroyed version; NOT_FOUND; PERMISSION_DENIED) -> KmsRefused.
The client's own retries are off: a transient error reaches keyledger's retry as KmsUnavailable.

Tested through the official client against a local gRPC server built from the package's own request
and response types (tests/kms/gcp_double.py), never against Google.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from workers.core.canonical import canonical_json
from workers.errors import ConfigError
from workers.kms import (
    DATA_KEY_BYTES,
    DataKey,
    KekVersions,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
)
from workers.kms.envelope import require_data_key
from workers.settings import GcpSettings

log = logging.getLogger("workers.kms.gcp")

_KEY = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
_VERSION = re.compile(r"(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/([0-9]+)")
_UNAVAILABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED"})


class GcpKms(Kms):
    """Encrypt/Decrypt with AAD and CRC32C under versioned CryptoKeys; the port's defaults batch and rewrap."""

    capabilities = KmsCapabilities("gcp", kek_versions=True)

    def __init__(self, key_name: str, *, endpoint: str | None = None, insecure: bool = False,
                 timeout: float = 5.0, concurrency: int = 32) -> None:
        self.default_key_id = _check_key(key_name)
        self.concurrency = concurrency
        self._endpoint = endpoint
        self._insecure = insecure
        self._timeout = timeout
        self._client: Any = None
        self._calls = 0

    @classmethod
    def from_settings(cls, settings: GcpSettings) -> GcpKms:
        if not settings.key_name:
            raise ConfigError("KEYLEDGER_KMS_PROVIDER=gcp needs KEYLEDGER_GCP_KEY_NAME")
        if settings.insecure and not settings.endpoint:
            raise ConfigError("KEYLEDGER_GCP_INSECURE=true needs KEYLEDGER_GCP_ENDPOINT (a local test server)")
        return cls(settings.key_name, endpoint=settings.endpoint, insecure=settings.insecure,
                   timeout=settings.timeout, concurrency=settings.concurrency)

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        import google_crc32c

        name = _check_key(kms_key_id or self.default_key_id)
        require_data_key(plaintext, "gcp Encrypt")
        aad = canonical_json(context)
        reply = await self._call("Encrypt", "encrypt", {
            "name": name, "plaintext": plaintext, "additional_authenticated_data": aad,
            "plaintext_crc32c": google_crc32c.value(plaintext),
            "additional_authenticated_data_crc32c": google_crc32c.value(aad)})
        if not (reply.verified_plaintext_crc32c and reply.verified_additional_authenticated_data_crc32c):
            raise KmsUnavailable("gcp Encrypt: the request's checksums were not verified (corrupted in transit)")
        if google_crc32c.value(reply.ciphertext) != reply.ciphertext_crc32c:
            raise KmsUnavailable("gcp Encrypt: the ciphertext's checksum does not match (corrupted in transit)")
        match = _VERSION.fullmatch(reply.name)
        if match is None or match.group(1) != name:
            raise KmsRefused("gcp Encrypt: the answer names another key")
        return DataKey(plaintext=plaintext, wrapped=bytes(reply.ciphertext), kms_key_id=name,
                       kek_version=int(match.group(2)))

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        import google_crc32c

        name = _check_key(kms_key_id)
        if not wrapped:
            raise KmsRefused("gcp Decrypt: an empty ciphertext")
        aad = canonical_json(context)
        reply = await self._call("Decrypt", "decrypt", {
            "name": name, "ciphertext": wrapped, "additional_authenticated_data": aad,
            "ciphertext_crc32c": google_crc32c.value(wrapped),
            "additional_authenticated_data_crc32c": google_crc32c.value(aad)})
        plaintext = bytes(reply.plaintext)
        if google_crc32c.value(plaintext) != reply.plaintext_crc32c:
            raise KmsUnavailable("gcp Decrypt: the plaintext's checksum does not match (corrupted in transit)")
        if len(plaintext) != DATA_KEY_BYTES:
            raise KmsRefused("gcp Decrypt: not a data key")
        return plaintext

    async def describe_key(self, kms_key_id: str) -> str:
        reply = await self._call("GetCryptoKey", "get_crypto_key", {"name": _check_key(kms_key_id)})
        return str(reply.name)

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        name = _check_key(kms_key_id)
        if name == self.default_key_id:
            raise KmsRefused(f"gcp provider does not delete {name!r}: it is the shared key that wraps every tenant "
                             "without its own key (shredding a tenant tombstones its wrapped keys instead)")
        versions = await self._versions(name)
        for number, state in versions.items():
            if state in ("ENABLED", "DISABLED"):
                await self._call("DestroyCryptoKeyVersion", "destroy_crypto_key_version",
                                 {"name": f"{name}/cryptoKeyVersions/{number}"})
        log.info("gcp key %s: destruction of its versions scheduled (keyledger asked for %d days; the key's "
                 "destroy_scheduled_duration applies)", name, pending_days)

    async def rotate_kek(self, kms_key_id: str | None = None) -> int:
        name = _check_key(kms_key_id or self.default_key_id)
        created = await self._call("CreateCryptoKeyVersion", "create_crypto_key_version",
                                   {"parent": name, "crypto_key_version": {}})
        match = _VERSION.fullmatch(created.name)
        if match is None:
            raise KmsRefused("gcp CreateCryptoKeyVersion: the answer names no version")
        version = int(match.group(2))
        await self._call("UpdateCryptoKeyPrimaryVersion", "update_crypto_key_primary_version",
                         {"name": name, "crypto_key_version_id": str(version)})
        return version

    async def kek_versions(self, kms_key_id: str | None = None) -> KekVersions:
        name = _check_key(kms_key_id or self.default_key_id)
        key = await self._call("GetCryptoKey", "get_crypto_key", {"name": name})
        match = _VERSION.fullmatch(key.primary.name) if key.primary else None
        if match is None:
            raise KmsRefused(f"gcp key {name} has no primary version")
        latest = int(match.group(2))
        enabled = [n for n, state in (await self._versions(name)).items() if state == "ENABLED"]
        return KekVersions(latest, min(enabled) if enabled else latest + 1)

    async def retire_kek_versions(self, min_version: int, kms_key_id: str | None = None) -> None:
        name = _check_key(kms_key_id or self.default_key_id)
        latest = (await self.kek_versions(name)).latest
        if not 1 <= min_version <= latest:
            raise KmsRefused(f"gcp: min version {min_version} is outside 1..{latest} of {name}")
        for number, state in (await self._versions(name)).items():
            if number < min_version and state == "ENABLED":
                await self._call("UpdateCryptoKeyVersion", "update_crypto_key_version", {
                    "crypto_key_version": {"name": f"{name}/cryptoKeyVersions/{number}", "state": "DISABLED"},
                    "update_mask": {"paths": ["state"]}})

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()

    # --- the client ----------------------------------------------------------------------

    async def _versions(self, name: str) -> dict[int, str]:
        """Every version of the key: number -> state name (ENABLED, DISABLED, DESTROY_SCHEDULED, ...)."""
        versions: dict[int, str] = {}
        pager = await self._call("ListCryptoKeyVersions", "list_crypto_key_versions", {"parent": name})
        try:
            async for version in pager:
                match = _VERSION.fullmatch(version.name)
                if match:
                    versions[int(match.group(2))] = version.state.name
        except Exception as exc:  # a later page fails as the first call would
            mapped = _mapped("ListCryptoKeyVersions", exc)
            if mapped is None:
                raise
            raise mapped from None
        return versions

    def _kms(self) -> Any:
        if self._client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import kms_v1
            from google.cloud.kms_v1.services.key_management_service.transports import (
                KeyManagementServiceGrpcAsyncIOTransport,
            )

            if self._insecure:
                import grpc
                from google.auth.credentials import AnonymousCredentials

                transport = KeyManagementServiceGrpcAsyncIOTransport(
                    channel=grpc.aio.insecure_channel(self._endpoint),
                    credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
                self._client = kms_v1.KeyManagementServiceAsyncClient(transport=transport)
            else:
                options = ClientOptions(api_endpoint=self._endpoint) if self._endpoint else None
                self._client = kms_v1.KeyManagementServiceAsyncClient(client_options=options)
        return self._client

    async def _call(self, operation: str, method: str, request: dict[str, Any]) -> Any:
        client = self._kms()
        self._calls += 1
        try:
            return await getattr(client, method)(request=request, retry=None, timeout=self._timeout)
        except TimeoutError:
            raise KmsUnavailable(f"gcp {operation}: timed out") from None
        except Exception as exc:
            mapped = _mapped(operation, exc)
            if mapped is None:
                raise
            raise mapped from None


def _mapped(operation: str, exc: Exception) -> KmsError | None:
    """A google.api_core or gRPC error as the port's kind, by its gRPC status code (None: neither)."""
    from google.api_core.exceptions import GoogleAPICallError
    from grpc.aio import AioRpcError

    if isinstance(exc, GoogleAPICallError):
        code, detail = exc.grpc_status_code, str(exc.message or "")[:300] or None
    elif isinstance(exc, AioRpcError):
        code, detail = exc.code(), None
    else:
        return None
    status = code.name if code is not None else type(exc).__name__
    if status == "RESOURCE_EXHAUSTED":
        return KmsThrottled(f"gcp {operation}: {status}")
    if status in _UNAVAILABLE or code is None:
        return KmsUnavailable(f"gcp {operation}: {status}", detail)
    return KmsRefused(f"gcp {operation}: {status}", detail)


def _check_key(name: str) -> str:
    if not _KEY.fullmatch(name):
        raise KmsRefused("gcp: a key is projects/P/locations/L/keyRings/R/cryptoKeys/K")
    return name
