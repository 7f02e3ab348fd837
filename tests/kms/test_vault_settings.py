"""KEYLEDGER_VAULT_* settings, the production checks for the `vault` provider, and the factory."""

import pytest
from pydantic import ValidationError

from workers.kms import encryption_context
from workers.kms.factory import open_kms
from workers.kms.vault import AppRoleAuth, KubernetesAuth, TokenAuth, VaultKms
from workers.settings import KmsProvider, Settings, VaultAuthMethod

PRODUCTION = {
    "KEYLEDGER_PROFILE": "production",
    "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "SSL",
    "KEYLEDGER_KMS_PROVIDER": "vault",
    "KEYLEDGER_VAULT_ADDR": "https://vault.internal:8200",
    "KEYLEDGER_VAULT_TOKEN": "s.production-token",
    "KEYLEDGER_LEDGER": "tigerbeetle",
    "KEYLEDGER_TB_ADDRESSES": "3000",
    "KEYLEDGER_KAFKA_BOOTSTRAP": "kafka:9092",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("VAULT_TOKEN", *[f"KEYLEDGER_VAULT_{n}" for n in (
            "ADDR", "TRANSIT_MOUNT", "KEY", "AUTH", "TOKEN", "ROLE_ID", "SECRET_ID", "K8S_ROLE", "K8S_JWT_PATH",
            "AUTH_MOUNT", "CA_CERT", "NAMESPACE", "TIMEOUT", "BATCH_MAX", "CONCURRENCY")], "KEYLEDGER_PROFILE", "KEYLEDGER_KMS_PROVIDER"):
        monkeypatch.delenv(name, raising=False)


def test_vault_defaults_match_the_design():
    s = Settings()
    assert (s.kms.vault.addr, s.kms.vault.transit_mount, s.kms.vault.key, s.kms.vault.auth) == (
        None, "transit", "keyledger", VaultAuthMethod.TOKEN)
    assert s.kms.vault.k8s_jwt_path == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert KmsProvider("vault") is KmsProvider.VAULT


def test_every_vault_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        if name.startswith("vault_"):
            assert field.description, name


def test_vault_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("KEYLEDGER_KMS_PROVIDER", "vault")
    monkeypatch.setenv("KEYLEDGER_VAULT_ADDR", "http://127.0.0.1:8200")
    monkeypatch.setenv("KEYLEDGER_VAULT_AUTH", "approle")
    monkeypatch.setenv("KEYLEDGER_VAULT_SECRET_ID", "the-secret-id")
    s = Settings()
    assert s.kms.provider is KmsProvider.VAULT and s.kms.vault.auth is VaultAuthMethod.APPROLE
    assert s.kms.vault.secret_id.get_secret_value() == "the-secret-id"
    assert "the-secret-id" not in repr(s) and "the-secret-id" not in str(s.model_dump())


def test_production_accepts_a_complete_vault_configuration(monkeypatch):
    for k, v in PRODUCTION.items():
        monkeypatch.setenv(k, v)
    assert Settings().production_problems() == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEYLEDGER_VAULT_ADDR": ""}, "KEYLEDGER_VAULT_ADDR is unset"),
        ({"KEYLEDGER_VAULT_ADDR": "http://vault.internal:8200"}, "KEYLEDGER_VAULT_ADDR is plain http"),
        ({"KEYLEDGER_VAULT_AUTH": "approle"}, "KEYLEDGER_VAULT_ROLE_ID and KEYLEDGER_VAULT_SECRET_ID"),
        ({"KEYLEDGER_VAULT_AUTH": "kubernetes"}, "KEYLEDGER_VAULT_K8S_ROLE"),
    ],
)
def test_production_refuses_an_incomplete_vault_configuration(monkeypatch, env, named):
    for k, v in {**PRODUCTION, **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=named):
        Settings()


def test_plain_http_to_a_local_agent_is_accepted(monkeypatch):
    for k, v in {**PRODUCTION, "KEYLEDGER_VAULT_ADDR": "http://127.0.0.1:8100"}.items():
        monkeypatch.setenv(k, v)
    assert Settings().production_problems() == []


def test_the_factory_builds_the_vault_adapter_with_each_auth(monkeypatch, tmp_path):
    base = {"kms_provider": "vault", "vault_addr": "https://vault.internal:8200", "vault_key": "kl",
            "vault_transit_mount": "kms/transit", "vault_namespace": "team", "vault_timeout": 2.5,
            "vault_batch_max": 100, "vault_concurrency": 3}
    monkeypatch.setenv("VAULT_TOKEN", "from-vault-token")
    kms = open_kms(Settings(**base).kms)
    assert isinstance(kms, VaultKms) and kms.default_key_id == "kl" and kms.provider == "vault"
    client = kms.session.client
    assert kms.session.auth == TokenAuth("from-vault-token") and kms.mount == "kms/transit"
    assert (client.namespace, client.timeout, kms.batch_max, client.concurrency) == ("team", 2.5, 100, 3)
    assert _auth(open_kms(Settings(**base, vault_token="explicit").kms)) == TokenAuth("explicit")
    approle = open_kms(Settings(**base, vault_auth="approle", vault_role_id="r", vault_secret_id="s").kms)
    assert _auth(approle) == AppRoleAuth("r", "s", mount="approle")
    k8s = open_kms(Settings(**base, vault_auth="kubernetes", vault_k8s_role="kl", vault_auth_mount="k8s-prod").kms)
    assert _auth(k8s) == KubernetesAuth("kl", "/var/run/secrets/kubernetes.io/serviceaccount/token", mount="k8s-prod")


def _auth(kms):
    assert isinstance(kms, VaultKms)
    return kms.session.auth


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vault_addr": None}, "KEYLEDGER_VAULT_ADDR"),
        ({}, "KEYLEDGER_VAULT_TOKEN"),
        ({"vault_auth": "approle", "vault_role_id": "r"}, "KEYLEDGER_VAULT_SECRET_ID"),
        ({"vault_auth": "kubernetes"}, "KEYLEDGER_VAULT_K8S_ROLE"),
    ],
)
def test_the_factory_names_what_is_missing(overrides, message):
    settings = Settings(**{"kms_provider": "vault", "vault_addr": "https://vault.internal:8200", **overrides})
    with pytest.raises(ValueError, match=message):
        open_kms(settings.kms)


def test_auth_reprs_hide_their_secrets():
    for auth, secret in ((TokenAuth("s.tok3n"), "s.tok3n"), (AppRoleAuth("role", "s3cret-id"), "s3cret-id")):
        assert secret not in repr(auth) and secret not in str(auth)


async def test_a_context_with_another_key_order_is_the_same_context():
    from workers.kms.vault import transit_context

    context = encryption_context("acme", "ab" * 16, "signing")
    assert transit_context(context) == transit_context(dict(reversed(list(context.items()))))
