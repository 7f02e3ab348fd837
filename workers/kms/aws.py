"""`aws` KMS provider: AWS KMS (or any API-compatible endpoint) over HTTP with aioboto3.

botocore's `standard` retry mode (not its `legacy` default) with bounded
attempts and explicit timeouts; a semaphore bounds calls in flight. Errors are
mapped to KmsUnavailable (retry later) or KmsRefused (this request never works).

AWS KMS has no batch API and no key versions it exposes: batches are the
port's concurrent single calls; `rewrap` is ReEncrypt (native).
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from workers.kms import (
    MAX_WRAPPED_BYTES,
    DataKey,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
    Rewrapped,
)

_DETAIL_CHARS = 500  # AWS error messages are a sentence; never let one grow a log line without bound

_TRANSIENT_CODES = {
    "ThrottlingException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "RequestTimeout",
}


TENANT_TAG = "keyledger:tenant"


def tenant_key_alias(tenant_id: str) -> str:
    """The alias of a tenant's own KMS key (per-tenant mode): derived from the tenant id, so it is found
    again after a restart or a replay; a hash because a tenant id may hold characters an alias may not."""
    return "alias/keyledger/tenant-" + hashlib.blake2b(tenant_id.encode(), digest_size=16).hexdigest()


class AwsKms(Kms):
    capabilities = KmsCapabilities("aws", native_rewrap=True, tenant_keys=True)

    def __init__(
        self,
        default_key_id: str | None,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        timeout: float = 5.0,
        max_attempts: int = 4,
        concurrency: int = 32,
        session: aioboto3.Session | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or timeout <= 0:
            raise ValueError("concurrency, max_attempts and timeout must be positive")
        self.default_key_id = default_key_id or ""
        self._session = session or aioboto3.Session()
        self._region = region
        self._endpoint_url = endpoint_url
        self._config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=timeout,
            read_timeout=timeout,
            max_pool_connections=max(concurrency, 10),
        )
        self.concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._calls = 0

    async def _kms(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._stack.enter_async_context(
                        self._session.client("kms", endpoint_url=self._endpoint_url, config=self._config)
                    )
        return self._client

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        key_id = kms_key_id or self.default_key_id
        if not key_id:
            raise KmsRefused("no KMS key id: set KEYLEDGER_KMS_KEY_ID or the tenant's kms_key_id")
        reply = await self._call(
            "GenerateDataKey", KeyId=key_id, KeySpec="AES_256", EncryptionContext=context
        )
        return DataKey(plaintext=reply["Plaintext"], wrapped=reply["CiphertextBlob"], kms_key_id=key_id)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        reply = await self._call(
            "Decrypt", CiphertextBlob=wrapped, KeyId=kms_key_id, EncryptionContext=context
        )
        plaintext = reply["Plaintext"]
        if len(plaintext) != 32:
            raise KmsError("KMS returned a data key of the wrong length")
        return bytes(plaintext)

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        """KMS Encrypt of a given key."""
        key_id = kms_key_id or self.default_key_id
        if not key_id:
            raise KmsRefused("no KMS key id: set KEYLEDGER_KMS_KEY_ID")
        if len(plaintext) != 32:
            raise KmsRefused("a data key to wrap is 32 bytes")
        reply = await self._call("Encrypt", KeyId=key_id, Plaintext=plaintext, EncryptionContext=context)
        return DataKey(plaintext=plaintext, wrapped=reply["CiphertextBlob"], kms_key_id=key_id)

    async def rewrap(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> Rewrapped:
        """ReEncrypt under the same key and the same context on both sides: the plaintext stays in KMS
        (AWS rotates key material behind the key id and exposes no version, so kek_version is None)."""
        reply = await self._call(
            "ReEncrypt",
            CiphertextBlob=wrapped,
            SourceKeyId=kms_key_id,
            SourceEncryptionContext=context,
            DestinationKeyId=kms_key_id,
            DestinationEncryptionContext=context,
        )
        blob = reply["CiphertextBlob"]
        if not 0 < len(blob) <= MAX_WRAPPED_BYTES:
            raise KmsError("KMS returned a wrapped key of an impossible length")
        return Rewrapped(blob, None)

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        await self._call("ScheduleKeyDeletion", KeyId=kms_key_id, PendingWindowInDays=pending_days)

    async def tenant_key(self, tenant_id: str) -> str:
        """Looked up by its alias first; created (CreateKey tagged `keyledger:tenant`, then CreateAlias) when
        missing. Two processes racing both create a key; the alias goes to one, and the loser schedules its
        own key for deletion and uses the winner's, so the tenant has one KMS key."""
        alias = tenant_key_alias(tenant_id)
        found = await self._key_of_alias(alias)
        if found is not None:
            return found
        created = await self._call("CreateKey", Description=f"keyledger keys of tenant {tenant_id}",
                                   KeyUsage="ENCRYPT_DECRYPT", Tags=[{"TagKey": TENANT_TAG, "TagValue": tenant_id}])
        key_id = str(created["KeyMetadata"]["KeyId"])
        try:
            await self._call("CreateAlias", AliasName=alias, TargetKeyId=key_id)
        except KmsRefused as exc:
            if "AlreadyExistsException" not in str(exc):
                raise
            await self.schedule_key_deletion(key_id, 7)  # lost the race: the alias names the winner's key
            winner = await self._key_of_alias(alias)
            if winner is None:
                raise
            return winner
        return key_id

    async def _key_of_alias(self, alias: str) -> str | None:
        try:
            reply = await self._call("DescribeKey", KeyId=alias)
        except KmsRefused as exc:
            if "NotFoundException" in str(exc):
                return None
            raise
        return str(reply["KeyMetadata"]["KeyId"])

    async def describe_key(self, kms_key_id: str) -> str:
        reply = await self._call("DescribeKey", KeyId=kms_key_id)
        return str(reply["KeyMetadata"]["Arn"])

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        kms = await self._kms()
        method = getattr(kms, _snake(operation))
        async with self._limit:
            self._calls += 1
            try:
                reply: dict[str, Any] = await method(**params)
                return reply
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                detail = str(exc.response.get("Error", {}).get("Message") or "")[:_DETAIL_CHARS] or None
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code == "ThrottlingException" or status == 429:
                    raise KmsThrottled(f"{operation}: {code}") from None
                if code in _TRANSIENT_CODES or status >= 500:
                    raise KmsUnavailable(f"{operation}: {code}", detail) from None
                raise KmsRefused(f"{operation}: {code}", detail) from None
            except ParamValidationError:
                raise KmsRefused(f"{operation}: invalid request parameters") from None
            except (TimeoutError, BotoCoreError, OSError) as exc:
                raise KmsUnavailable(f"{operation}: {type(exc).__name__}", str(exc)[:_DETAIL_CHARS] or None) from None


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
