"""Fixtures of the KMS providers' protocol doubles: Cloud KMS over gRPC, Key Vault over HTTPS (the SoftHSM2
token is tests/conftest.py's `softhsm`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

GCP_KEY = "projects/keyledger-test/locations/global/keyRings/keyledger/cryptoKeys/keyledger-kek"


@contextlib.contextmanager
def served_on_a_thread(name: str, start: Callable[[], Awaitable[Any]]) -> Iterator[Any]:
    """A protocol double started by `start` on its own thread's event loop, so sync and async tests alike
    reach it; stopped, and its thread joined, on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    double = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def cloud_kms_server() -> Iterator:
    """A Cloud KMS protocol double (tests/kms/gcp_double.py); not Google's service."""
    from tests.kms.gcp_double import CloudKmsDouble

    with served_on_a_thread("cloud-kms-double", lambda: CloudKmsDouble().start()) as double:
        yield double


@pytest.fixture
def cloud_kms(cloud_kms_server):
    """The double, reset for this test: only the default key, no fault."""
    cloud_kms_server.keys.clear()
    cloud_kms_server.fault, cloud_kms_server.corrupt = None, False
    cloud_kms_server.create_key(GCP_KEY)
    return cloud_kms_server


AZURE_KEY = "keyledger-kek"


class StaticToken:
    """An async credential handing out one bearer token: what the Key Vault double accepts."""

    async def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("keyledger-test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        pass


@pytest.fixture(scope="session")
def key_vault_server(tmp_path_factory) -> Iterator:
    """A Key Vault protocol double (tests/kms/azure_double.py) over HTTPS with a certificate made here; not Azure."""
    from tests.kms.azure_double import KeyVaultDouble

    tls = tmp_path_factory.mktemp("vault-tls")
    with served_on_a_thread("key-vault-double", lambda: KeyVaultDouble(tls).start()) as double:
        yield double


@pytest.fixture
def key_vault(key_vault_server):
    """The double, reset for this test: only the default key (RSA), no fault."""
    key_vault_server.keys.clear()
    key_vault_server.fault = None
    key_vault_server.create_key(AZURE_KEY)
    return key_vault_server


def azure_kms(vault_url: str, ca_cert, **options):
    """The adapter as tests build it: the double's CA, its static token, the challenge's resource
    not checked against 127.0.0.1."""
    from workers.kms.azure import AzureKms

    return AzureKms(vault_url, StaticToken(), ca_cert=str(ca_cert), verify_challenge_resource=False, **options)
