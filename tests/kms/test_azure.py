"""The `azure` adapter beyond the contract: Managed HSM's A256KW, TLS verified against the double's own
certificate, settings. Against a local Key Vault protocol double (tests/kms/azure_double.py), never Azure."""

from __future__ import annotations

import pytest

from tests.kms.conftest import StaticToken, azure_kms
from workers.errors import ConfigError
from workers.kms import KmsRefused, KmsUnavailable, encryption_context
from workers.kms.azure import AzureKms
from workers.settings import AzureWrapAlgorithm, Settings

ACME = encryption_context("acme", "ab" * 16, "encryption")


async def test_a_managed_hsm_key_wraps_with_a256kw(key_vault):
    key_vault.create_key("hsm-kek", "oct-HSM")
    kms = azure_kms(key_vault.url, key_vault.cert, default_key_id="hsm-kek", algorithm=AzureWrapAlgorithm.A256KW)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert data_key.kek_version == 1
        assert await kms.decrypt(data_key.wrapped, "hsm-kek", ACME) == data_key.plaintext
        with pytest.raises(KmsRefused):
            await kms.decrypt(data_key.wrapped, "hsm-kek", {**ACME, "tenant_id": "globex"})
        assert await kms.rotate_kek() == 2
        rewrapped = await kms.rewrap(data_key.wrapped, "hsm-kek", ACME)
        assert rewrapped.kek_version == 2
        assert await kms.decrypt(rewrapped.wrapped, "hsm-kek", ACME) == data_key.plaintext
    finally:
        await kms.aclose()


async def test_the_vaults_certificate_is_verified(key_vault, tmp_path):
    from tests.kms.azure_double import self_signed

    stranger, _ = self_signed(tmp_path)  # another CA: the double's certificate must not verify
    kms = azure_kms(key_vault.url, stranger, timeout=2, max_attempts=1)
    try:
        with pytest.raises(KmsUnavailable, match="ServiceRequestError"):
            await kms.generate_data_key(None, ACME)
    finally:
        await kms.aclose()


async def test_key_names_and_the_shared_key(key_vault):
    kms = azure_kms(key_vault.url, key_vault.cert)
    try:
        with pytest.raises(KmsRefused, match="key name"):
            await kms.generate_data_key("not/a-name", ACME)
        with pytest.raises(KmsRefused, match="404"):
            await kms.generate_data_key("absent", ACME)
        with pytest.raises(KmsRefused, match="shared key"):
            await kms.schedule_key_deletion("keyledger-kek", 7)
        assert await kms.describe_key("keyledger-kek") == f"{key_vault.url}/keys/keyledger-kek"
    finally:
        await kms.aclose()


def test_the_settings_read_their_own_prefix(monkeypatch):
    with pytest.raises(ConfigError, match="needs KEYLEDGER_AZURE_VAULT_URL"):
        AzureKms.from_settings(Settings().kms.azure)
    monkeypatch.setenv("KEYLEDGER_AZURE_VAULT_URL", "https://keyledger.managedhsm.azure.net/")
    monkeypatch.setenv("KEYLEDGER_AZURE_ALGORITHM", "A256KW")
    settings = Settings().kms.azure
    assert settings.algorithm is AzureWrapAlgorithm.A256KW and settings.key_name == "keyledger-kek"
    with pytest.raises(ConfigError, match="https://"):
        AzureKms("http://keyledger.vault.azure.net", StaticToken())


async def test_a_token_file_authenticates_and_is_read_at_every_call(key_vault, tmp_path):
    from workers.kms.azure import TokenFileCredential

    token = tmp_path / "token"
    token.write_text("keyledger-test-token\n")  # the token the double accepts
    kms = AzureKms(key_vault.url, TokenFileCredential(str(token)), ca_cert=str(key_vault.cert),
                   verify_challenge_resource=False)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    finally:
        await kms.aclose()
    token.write_text("")
    with pytest.raises(ConfigError, match="KEYLEDGER_AZURE_TOKEN_FILE=.* is empty"):
        await TokenFileCredential(str(token)).get_token("https://vault.azure.net/.default")


def test_without_a_token_file_or_azure_identity_the_setting_is_named(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("azure.identity") is not None:
        pytest.skip("azure-identity is installed here: DefaultAzureCredential is used")
    monkeypatch.setenv("KEYLEDGER_AZURE_VAULT_URL", "https://keyledger.vault.azure.net/")
    with pytest.raises(ConfigError, match="KEYLEDGER_AZURE_TOKEN_FILE"):
        AzureKms.from_settings(Settings().kms.azure)
