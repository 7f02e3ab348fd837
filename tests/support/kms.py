"""A KMS that answers every method of the port itself, and the port's method list with arguments for
each: for tests that check a wrapper forwards every call (tests/kms/test_port.py, tests/app/test_ports.py)."""

from __future__ import annotations

import inspect
from typing import Any

from workers.kms import (
    DataKey,
    DataKeyRequest,
    KekVersions,
    Kms,
    KmsCapabilities,
    Rewrapped,
    UnwrapRequest,
    WrapRequest,
    encryption_context,
)

ACME = encryption_context("acme", "ab" * 16, "encryption")
BLOB = b"KLK1" + bytes(60)  # a local-KMS blob's form: the router sends it to the local provider
KEY = b"\x01" * 32

# every method of the port, with arguments to call it: a method added to the port fails tests/kms/test_port.py
# until it is listed here, and so until both wrappers are checked to forward it
CALLS: dict[str, tuple[Any, ...]] = {
    "generate_data_key": (None, ACME),
    "wrap": (KEY, None, ACME),
    "decrypt": (BLOB, "k", ACME),
    "describe_key": ("k",),
    "schedule_key_deletion": ("tenant-own", 7),
    "tenant_key": ("acme",),
    "aclose": (),
    "generate_data_keys": ([DataKeyRequest(None, ACME)],),
    "decrypt_many": ([UnwrapRequest(BLOB, "k", ACME)],),
    "wrap_many": ([WrapRequest(KEY, None, ACME)],),
    "rewrap_many": ([UnwrapRequest(BLOB, "k", ACME)],),
    "rewrap": (BLOB, "k", ACME),
    "rotate_kek": ("k",),
    "kek_versions": ("k",),
    "retire_kek_versions": (2, "k"),
    "route": ("local",),
    "is_shared_key": ("local", "k"),
}
PROPERTIES = {"capabilities", "calls", "provider", "providers"}


def port_methods() -> set[str]:
    return {name for name, value in vars(Kms).items() if not name.startswith("_") and inspect.isfunction(value)}


def port_properties() -> set[str]:
    return {name for name, value in vars(Kms).items() if not name.startswith("_") and isinstance(value, property)}


class Recording(Kms):
    """Answers every port method itself (every capability declared) and remembers each call by name."""

    capabilities = KmsCapabilities("local", batching=True, native_rewrap=True, kek_versions=True)

    def __init__(self) -> None:
        self.default_key_id = "k"
        self.called: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.called)

    def _data_key(self) -> DataKey:
        return DataKey(plaintext=KEY, wrapped=BLOB, kms_key_id="k")

    async def generate_data_key(self, kms_key_id, context):
        self.called.append("generate_data_key")
        return self._data_key()

    async def wrap(self, plaintext, kms_key_id, context):
        self.called.append("wrap")
        return self._data_key()

    async def decrypt(self, wrapped, kms_key_id, context):
        self.called.append("decrypt")
        return KEY

    async def describe_key(self, kms_key_id):
        self.called.append("describe_key")
        return f"local:{kms_key_id}"

    async def schedule_key_deletion(self, kms_key_id, pending_days):
        self.called.append("schedule_key_deletion")

    async def tenant_key(self, tenant_id):
        self.called.append("tenant_key")
        return f"tenant-{tenant_id}"

    async def aclose(self):
        self.called.append("aclose")

    async def generate_data_keys(self, requests):
        self.called.append("generate_data_keys")
        return [self._data_key() for _ in requests]

    async def decrypt_many(self, requests):
        self.called.append("decrypt_many")
        return [KEY for _ in requests]

    async def wrap_many(self, requests):
        self.called.append("wrap_many")
        return [self._data_key() for _ in requests]

    async def rewrap_many(self, requests):
        self.called.append("rewrap_many")
        return [Rewrapped(BLOB, 2) for _ in requests]

    async def rewrap(self, wrapped, kms_key_id, context):
        self.called.append("rewrap")
        return Rewrapped(BLOB, 2)

    async def rotate_kek(self, kms_key_id=None):
        self.called.append("rotate_kek")
        return 2

    async def kek_versions(self, kms_key_id=None):
        self.called.append("kek_versions")
        return KekVersions(2, 1)

    async def retire_kek_versions(self, min_version, kms_key_id=None):
        self.called.append("retire_kek_versions")

    def route(self, provider):
        self.called.append("route")
        return self

    @property
    def providers(self):
        self.called.append("providers")
        return {"local": self}

    def is_shared_key(self, provider, kms_key_id):
        self.called.append("is_shared_key")
        return kms_key_id == self.default_key_id



async def call_port_method(kms: Kms, name: str) -> Any:
    """Calls `name` on `kms` with the arguments of CALLS (awaited when it is a KMS call)."""
    result = getattr(kms, name)(*CALLS[name])
    return await result if inspect.isawaitable(result) else result
