"""Fixtures of the KMS providers' protocol doubles: Cloud KMS over gRPC, Key Vault over HTTPS (the SoftHSM2
token is tests/conftest.py's `softhsm`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

GCP_KEY = "projects/keyledger-test/locations/global/keyRings/keyledger/cryptoKeys/keyledger-kek"


@pytest.fixture(scope="session")
def cloud_kms_server() -> Iterator:
    """A Cloud KMS protocol double (tests/kms/gcp_double.py) serving on its own thread's event loop, so
    sync and async tests alike reach it; not Google's service."""
    import asyncio
    import threading

    from tests.kms.gcp_double import CloudKmsDouble

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cloud-kms-double", daemon=True)
    thread.start()
    double = asyncio.run_coroutine_threadsafe(CloudKmsDouble().start(), loop).result(timeout=30)
    try:
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


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
    """A Key Vault protocol double (tests/kms/azure_double.py) over HTTPS with a certificate made here,
    serving on its own thread's event loop; not Azure."""
    import asyncio
    import threading

    from tests.kms.azure_double import KeyVaultDouble

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="key-vault-double", daemon=True)
    thread.start()
    double = asyncio.run_coroutine_threadsafe(KeyVaultDouble(tmp_path_factory.mktemp("vault-tls")).start(),
                                              loop).result(timeout=30)
    try:
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


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
