"""Fixtures of the KMS providers' servers: a fresh SoftHSM2 token per test session."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/local/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token_label: str
    pin_file: Path
    conf: Path

    @property
    def pin(self) -> str:
        return self.pin_file.read_text().strip()

    def env(self) -> dict[str, str]:
        """What a `keyledger` subprocess needs to reach this token."""
        return {"SOFTHSM2_CONF": str(self.conf), "KEYLEDGER_PKCS11_MODULE": self.module,
                "KEYLEDGER_PKCS11_TOKEN_LABEL": self.token_label, "KEYLEDGER_PKCS11_PIN_FILE": str(self.pin_file)}


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token (its own token directory) for this test session; skips, saying why, where
    Debian's softhsm2 is not installed. SOFTHSM2_CONF is set for this process: the module reads it once."""
    util = shutil.which("softhsm2-util")
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if util is None or module is None:
        pytest.skip("no SoftHSM2: `apt-get install -y softhsm2` (.ci/run installs it)")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    pin_file = base / "pin"
    pin_file.write_text(pin + "\n")
    label = f"keyledger-{secrets.token_hex(4)}"
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run([util, "--init-token", "--free", "--label", label, "--so-pin", secrets.token_hex(8),
                    "--pin", pin], env=env, check=True, capture_output=True)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield SoftHsm(module, label, pin_file, conf)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


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
