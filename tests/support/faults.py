"""Real adapters with switchable outages: the failure a test needs, on top of the real behaviour."""

from __future__ import annotations

from workers.kms import DataKey, Kms, KmsCapabilities, KmsUnavailable
from workers.kms.local import LocalKms


class SwitchableKms(Kms):
    """The local KMS behind a switch: when `down`, every call fails as an unreachable KMS would.
    It writes the single calls only: batches and rewrap are the port's defaults over them."""

    capabilities = KmsCapabilities("local")

    def __init__(self, kms: LocalKms | None = None) -> None:
        self._kms = kms or LocalKms()
        self.default_key_id = self._kms.default_key_id
        self.down = False
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    def _check(self) -> None:
        self._calls += 1
        if self.down:
            raise KmsUnavailable("EndpointConnectionError: injected outage")

    async def generate_data_key(self, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        self._check()
        return await self._kms.generate_data_key(kms_key_id, context)

    async def wrap(self, plaintext: bytes, kms_key_id: str | None, context: dict[str, str]) -> DataKey:
        self._check()
        return await self._kms.wrap(plaintext, kms_key_id, context)

    async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
        self._check()
        return await self._kms.decrypt(wrapped, kms_key_id, context)

    async def describe_key(self, kms_key_id: str) -> str:
        self._check()
        return await self._kms.describe_key(kms_key_id)

    async def schedule_key_deletion(self, kms_key_id: str, pending_days: int) -> None:
        self._check()
        await self._kms.schedule_key_deletion(kms_key_id, pending_days)

    async def aclose(self) -> None:
        await self._kms.aclose()
