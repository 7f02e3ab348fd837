"""The `pkcs11` adapter beyond the contract, against a fresh SoftHSM2 token: start-up failures in one
line, the KEK's attributes on the token, settings, the pool under concurrency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from workers.errors import ConfigError
from workers.kms import KmsRefused, KmsThrottled, KmsUnavailable, encryption_context
from workers.kms.pkcs11 import Pkcs11Kms, map_error
from workers.settings import Pkcs11Settings, Settings

ACME = encryption_context("acme", "ab" * 16, "encryption")
START = ("import asyncio, sys\nfrom workers.app.failures import explain\nfrom workers.kms.factory import open_provider\n"
         "from workers.settings import KmsProvider, Settings\n"
         "try:\n    kms = open_provider(Settings(kms_provider='pkcs11').kms, KmsProvider.PKCS11)\n"
         "except Exception as exc:\n    message, code = explain(exc)\n    print(message, file=sys.stderr)\n    sys.exit(code)\n"
         "async def main():\n    key = await kms.generate_data_key(None, {'tenant_id': 't', 'key_id': 'k', 'key_type': 'signing'})\n"
         "    print('started', key.kek_version)\n    await kms.aclose()\nasyncio.run(main())\n")


@pytest.fixture
async def kms(softhsm):
    adapter = Pkcs11Kms(softhsm.module, softhsm.token_label, softhsm.pin, sessions=3)
    yield adapter
    await adapter.aclose()


def _start(softhsm, tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh process building the adapter from KEYLEDGER_PKCS11_* (the login state is per process)."""
    environ = {**os.environ, **softhsm.env(), "PYTHONPATH": os.getcwd(), **env}
    return subprocess.run([sys.executable, "-c", START], env=environ, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_the_factory_starts_from_the_settings_and_the_pin_file(softhsm, tmp_path):
    started = _start(softhsm, tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started ")


def test_a_wrong_pin_is_one_line_at_start(softhsm, tmp_path):
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    started = _start(softhsm, tmp_path, KEYLEDGER_PKCS11_PIN_FILE=str(wrong))
    assert started.returncode == 2  # a configuration error, as the CLI reports it
    assert started.stderr.strip() == f"PKCS#11: token {softhsm.token_label!r} refused the PIN (PinIncorrect)"
    assert "not-the-pin" not in started.stderr and softhsm.pin not in started.stderr


def test_a_missing_token_module_or_pin_file_is_one_line_at_start(softhsm, tmp_path):
    with pytest.raises(ConfigError, match=r"^PKCS#11: no token labelled 'no-such-token' in module ") as raised:
        Pkcs11Kms(softhsm.module, "no-such-token", softhsm.pin)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"^PKCS#11 module '/nonexistent/libpkcs11.so' did not load"):
        Pkcs11Kms("/nonexistent/libpkcs11.so", softhsm.token_label, softhsm.pin)
    with pytest.raises(ConfigError, match="needs KEYLEDGER_PKCS11_PIN_FILE"):
        Pkcs11Kms.from_settings(Pkcs11Settings(module=softhsm.module, token_label=softhsm.token_label))
    with pytest.raises(ConfigError, match="is unreadable"):
        Pkcs11Kms.from_settings(Pkcs11Settings(pin_file=tmp_path / "absent"))


def test_the_settings_read_their_own_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYLEDGER_PKCS11_MODULE", "/opt/hsm/lib.so")
    monkeypatch.setenv("KEYLEDGER_PKCS11_SESSIONS", "9")
    monkeypatch.setenv("KEYLEDGER_PKCS11_PIN_FILE", str(tmp_path / "pin"))
    settings = Settings().kms.pkcs11
    assert (settings.module, settings.sessions, settings.pin_file) == ("/opt/hsm/lib.so", 9, tmp_path / "pin")
    assert (settings.token_label, settings.key_label, settings.create_key) == ("keyledger", "keyledger-kek", True)


async def test_the_kek_is_generated_once_sensitive_and_never_extractable(softhsm, kms):
    import pkcs11

    again = Pkcs11Kms(softhsm.module, softhsm.token_label, softhsm.pin, sessions=1)  # finds it by label
    try:
        assert (await again.kek_versions()).latest == (await kms.kek_versions()).latest
        data_key = await kms.generate_data_key(None, ACME)
        assert await again.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    finally:
        await again.aclose()
    A = pkcs11.Attribute
    token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token_label)
    with token.open() as session:
        keys = list(session.get_objects({A.ID: kms.default_key_id.encode()}))
        assert keys and all(k[A.LABEL].startswith(f"{kms.default_key_id}.v") for k in keys)
        for key in keys:
            assert key[A.SENSITIVE] and not key[A.EXTRACTABLE] and key[A.TOKEN] and key[A.PRIVATE]
            assert not key[A.ENCRYPT] and not key[A.DECRYPT]
        with pytest.raises(pkcs11.PKCS11Error):
            keys[0][A.VALUE]  # reading it is the attempt the token refuses


async def test_no_kek_and_no_create_is_one_line_at_start(softhsm):
    with pytest.raises(ConfigError, match=r"holds no KEK 'absent-kek'$"):
        Pkcs11Kms(softhsm.module, softhsm.token_label, softhsm.pin, default_key_id="absent-kek", create_key=False)


async def test_a_blob_is_bound_to_its_kek(kms):
    await kms.create_key("tenant-own")
    data_key = await kms.generate_data_key("tenant-own", ACME)
    assert await kms.decrypt(data_key.wrapped, "tenant-own", ACME) == data_key.plaintext
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, kms.default_key_id, ACME)
    with pytest.raises(KmsRefused):
        await kms.create_key("tenant-own")
    with pytest.raises(KmsRefused):
        await kms.generate_data_key("no-such-kek", ACME)
    with pytest.raises(KmsRefused):
        await kms.describe_key("no-such-kek")
    assert await kms.describe_key("tenant-own") == f"pkcs11:{kms._token_label}/tenant-own"


async def test_the_shared_kek_is_never_scheduled_for_deletion(kms):
    with pytest.raises(KmsRefused, match="shared KEK"):
        await kms.schedule_key_deletion(kms.default_key_id, 7)


async def test_concurrent_calls_share_the_session_pool(kms):
    keys = await asyncio.gather(*(kms.generate_data_key(None, ACME) for _ in range(40)))
    plaintexts = await asyncio.gather(*(kms.decrypt(k.wrapped, k.kms_key_id, ACME) for k in keys))
    assert plaintexts == [k.plaintext for k in keys] and len(set(plaintexts)) == 40


def test_library_errors_map_to_the_port_kinds():
    import pkcs11.exceptions as p11

    assert type(map_error("wrap", p11.DeviceRemoved())) is KmsUnavailable
    assert type(map_error("wrap", p11.TokenNotPresent())) is KmsUnavailable
    assert type(map_error("wrap", p11.SessionCount())) is KmsThrottled
    for refused in (p11.GeneralError(), p11.WrappedKeyInvalid(), p11.PKCS11Error("0x68")):
        assert type(map_error("unwrap", refused)) is KmsRefused
