"""Settings: sections inside, the same KEYLEDGER_* names outside; fail closed on what is missing or misspelt."""

import os

import pytest
from pydantic import ValidationError

from workers.app.preflight import settings_problems
from workers.kms import encryption_context
from workers.settings import (
    ENV_NAMES,
    KafkaSecurity,
    KmsProvider,
    LedgerKind,
    MissingSetting,
    Section,
    SecurityProtocol,
    Settings,
    _section_of,
)

# every variable the flat Settings read before it was split into sections: each still sets its setting
BEFORE_THE_SPLIT = """PROFILE KAFKA_BOOTSTRAP KAFKA_PARTITIONS KAFKA_REPLICATION KAFKA_IDEMPOTENCE KAFKA_BATCH_MAX
KAFKA_BATCH_TIMEOUT_MS KAFKA_PIPELINE_DEPTH KAFKA_PRODUCER_BATCH_BYTES KAFKA_LINGER_MS MAX_MESSAGE_BYTES DLQ_KEEP_PII
KMS_PROVIDER KMS_PROVIDERS KMS_KEY_ID KMS_ENDPOINT_URL KMS_TIMEOUT KMS_MAX_ATTEMPTS KMS_CONCURRENCY LOCAL_KEK AWS_REGION
VAULT_ADDR VAULT_TRANSIT_MOUNT VAULT_KEY VAULT_AUTH VAULT_TOKEN VAULT_ROLE_ID VAULT_SECRET_ID VAULT_K8S_ROLE
VAULT_K8S_JWT_PATH VAULT_AUTH_MOUNT VAULT_CA_CERT VAULT_NAMESPACE VAULT_TIMEOUT VAULT_BATCH_MAX VAULT_CONCURRENCY LEDGER
TB_ADDRESSES TB_CLUSTER_ID TB_BATCH_MAX CACHE_PRIVATE_TTL CACHE_PUBLIC_TTL CACHE_MAX_ENTRIES ROTATION_AGE ENCRYPT_LIMIT
DIGEST_INTERVAL RETRY_ATTEMPTS RETRY_BACKOFF RETRY_BACKOFF_MAX KEY_TABLE_WAIT STARTUP_TIMEOUT HTTP_PORT HTTP_HOST
LOG_FORMAT LOG_LEVEL DEV_PORT""".split()  # noqa: SIM905  (a block of names reads better than 56 quoted ones)
TRANSPORT = """KAFKA_SECURITY_PROTOCOL KAFKA_SSL_CA_FILE KAFKA_SSL_CERT_FILE KAFKA_SSL_KEY_FILE KAFKA_SASL_MECHANISM
KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD_FILE KAFKA_SASL_OAUTH_TOKEN_FILE KAFKA_ALLOW_PLAINTEXT
CALLER_MAX_SKEW OPERATOR_PUBLIC_KEY SHRED_WINDOW TENANT_KMS_KEYS REQUIRE_CALLER KEY_TABLE_SHARDED""".split()  # noqa: SIM905
# the HSM and cloud providers' variables, read by classes of their own before they joined the tree
PROVIDERS = """PKCS11_MODULE PKCS11_TOKEN_LABEL PKCS11_PIN_FILE PKCS11_KEY_LABEL PKCS11_SESSIONS PKCS11_CREATE_KEY
GCP_KEY_NAME GCP_ENDPOINT GCP_INSECURE GCP_TIMEOUT GCP_CONCURRENCY AZURE_VAULT_URL AZURE_KEY_NAME AZURE_ALGORITHM
AZURE_CA_CERT AZURE_TIMEOUT AZURE_MAX_ATTEMPTS AZURE_CONCURRENCY AZURE_TOKEN_FILE""".split()  # noqa: SIM905
SAFE_PRODUCTION = {
    "KEYLEDGER_PROFILE": "production",
    "KEYLEDGER_KMS_PROVIDER": "aws",
    "KEYLEDGER_KMS_KEY_ID": "alias/keyledger",
    "KEYLEDGER_LEDGER": "tigerbeetle",
    "KEYLEDGER_TB_ADDRESSES": "3000",
    "KEYLEDGER_KAFKA_BOOTSTRAP": "kafka:9092",
    "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "SSL",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith(("KEYLEDGER_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no region from this machine's ~/.aws/config
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def problems(**fields) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        Settings(**fields)
    return settings_problems(refused.value)


def test_dev_defaults_match_the_design():
    s = Settings()
    assert s.profile is None
    assert s.kms.provider is KmsProvider.LOCAL and s.ledger.kind is LedgerKind.MEMORY and s.kafka.bootstrap is None
    assert (s.cache.private_ttl, s.cache.public_ttl, s.cache.max_entries) == (3600, 86400, 1000)
    assert s.limits.rotation_age == 7_776_000 and s.kms.aws.region is None and s.ledger.tb_cluster_id == 0
    assert s.kafka.security.protocol is SecurityProtocol.PLAINTEXT


def test_every_variable_keeps_its_name():
    names = {name.removeprefix("KEYLEDGER_") for name in ENV_NAMES.values()}
    assert set(BEFORE_THE_SPLIT) | set(TRANSPORT) | set(PROVIDERS) == names


@pytest.mark.parametrize(("variable", "value", "path", "read"), [
    ("KEYLEDGER_KAFKA_LINGER_MS", "7", ("kafka", "linger_ms"), 7),
    ("KEYLEDGER_MAX_MESSAGE_BYTES", "2048", ("kafka", "max_message_bytes"), 2048),
    ("KEYLEDGER_DLQ_KEEP_PII", "true", ("kafka", "dlq_keep_pii"), True),
    ("KEYLEDGER_KMS_ENDPOINT_URL", "http://kms:4566", ("kms", "aws", "endpoint_url"), "http://kms:4566"),
    ("KEYLEDGER_AWS_REGION", "eu-west-1", ("kms", "aws", "region"), "eu-west-1"),
    ("KEYLEDGER_VAULT_K8S_JWT_PATH", "/jwt", ("kms", "vault", "k8s_jwt_path"), "/jwt"),
    ("KEYLEDGER_LEDGER", "tigerbeetle", ("ledger", "kind"), LedgerKind.TIGERBEETLE),
    ("KEYLEDGER_TB_BATCH_MAX", "253", ("ledger", "tb_batch_max"), 253),
    ("KEYLEDGER_CACHE_PUBLIC_TTL", "5", ("cache", "public_ttl"), 5),
    ("KEYLEDGER_RETRY_BACKOFF_MAX", "1.5", ("retry", "backoff_max"), 1.5),
    ("KEYLEDGER_KEY_TABLE_WAIT", "0", ("limits", "key_table_wait"), 0),
    ("KEYLEDGER_KEY_TABLE_SHARDED", "true", ("limits", "key_table_sharded"), True),
    ("KEYLEDGER_HTTP_HOST", "127.0.0.1", ("http", "host"), "127.0.0.1"),
    ("KEYLEDGER_LOG_LEVEL", "debug", ("log", "level"), "DEBUG"),
    ("KEYLEDGER_KAFKA_SECURITY_PROTOCOL", "ssl", ("kafka", "security", "protocol"), SecurityProtocol.SSL),
    ("KEYLEDGER_DEV_PORT", "9999", ("dev_port",), 9999),
])
def test_a_variable_sets_its_setting_in_its_section(monkeypatch, variable, value, path, read):
    monkeypatch.setenv(variable, value)
    found = Settings()
    for part in path:
        found = getattr(found, part)
    assert found == read
    assert ENV_NAMES[path] == variable


def test_arguments_take_the_flat_names_of_the_environment_and_win_over_it(monkeypatch):
    monkeypatch.setenv("KEYLEDGER_KAFKA_LINGER_MS", "7")
    monkeypatch.setenv("KEYLEDGER_KAFKA_PARTITIONS", "4")
    s = Settings(kafka_linger_ms=9, tb_addresses="3000")
    assert (s.kafka.linger_ms, s.kafka.partitions, s.ledger.tb_addresses) == (9, 4, "3000")


def test_updated_is_a_validated_copy():
    s = Settings(kafka_bootstrap="k:9092")
    t = s.updated(ledger=LedgerKind.TIGERBEETLE, tb_addresses="3000")
    assert (t.ledger.kind, t.ledger.tb_addresses, t.kafka.bootstrap) == (LedgerKind.TIGERBEETLE, "3000", "k:9092")
    assert s.ledger.kind is LedgerKind.MEMORY
    with pytest.raises(ValidationError):
        s.updated(tb_addresses="not an address")


def test_an_unknown_variable_stops_with_the_closest_name(monkeypatch):
    monkeypatch.setenv("KEYLEDGER_KAFKA_BOOTSTRAPS", "127.0.0.1:9092")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert settings_problems(refused.value) == [
        "KEYLEDGER_KAFKA_BOOTSTRAPS is not a keyledger setting (did you mean KEYLEDGER_KAFKA_BOOTSTRAP?): "
        "rename or unset it"]
    monkeypatch.delenv("KEYLEDGER_KAFKA_BOOTSTRAPS")
    monkeypatch.setenv("KEYLEDGER_ZZZ", "1")
    [line] = problems()
    assert line.startswith("KEYLEDGER_ZZZ is not a keyledger setting (docs/contract.md lists the settings)")
    monkeypatch.delenv("KEYLEDGER_ZZZ")
    monkeypatch.setenv("KEYLEDGER_KAFKA", "k:9092")  # a section's name is no setting either
    [line] = problems()
    assert line.startswith("KEYLEDGER_KAFKA is not a keyledger setting")


def test_a_misspelt_provider_variable_stops_too(monkeypatch):
    """The HSM and cloud providers' settings are sections of the same tree: a typo in one of them is
    refused like any other, never read as the default (an HSM PIN file that is silently not used)."""
    monkeypatch.setenv("KEYLEDGER_PKCS11_PINFILE", "/run/secrets/pin")
    [line] = problems()
    assert line.startswith("KEYLEDGER_PKCS11_PINFILE is not a keyledger setting "
                           "(did you mean KEYLEDGER_PKCS11_PIN_FILE?)")
    monkeypatch.delenv("KEYLEDGER_PKCS11_PINFILE")
    monkeypatch.setenv("KEYLEDGER_PKCS11_PIN_FILE", "/run/secrets/pin")
    monkeypatch.setenv("KEYLEDGER_GCP_TIMEOUT", "2.5")
    monkeypatch.setenv("KEYLEDGER_AZURE_ALGORITHM", "A256KW")
    settings = Settings()
    assert str(settings.kms.pkcs11.pin_file) == "/run/secrets/pin"
    assert (settings.kms.gcp.timeout, settings.kms.azure.algorithm.value) == (2.5, "A256KW")


def test_an_unknown_argument_is_refused_too():
    [line] = problems(kafka_linger=5)
    assert "did you mean KEYLEDGER_KAFKA_LINGER_MS?" in line


def test_a_wrong_value_in_a_section_names_its_variable_and_hides_secrets():
    assert problems(kafka_linger_ms="soon") == [
        "KEYLEDGER_KAFKA_LINGER_MS=soon: input should be a valid integer, unable to parse string as an integer"]
    [line] = problems(vault_token=["a", "list"])
    assert line.startswith("KEYLEDGER_VAULT_TOKEN: ")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KEYLEDGER_KMS_PROVIDER": "local"}, "KEYLEDGER_KMS_PROVIDER"),
        ({"KEYLEDGER_LEDGER": "memory"}, "KEYLEDGER_LEDGER"),
        ({"KEYLEDGER_KAFKA_BOOTSTRAP": ""}, "KEYLEDGER_KAFKA_BOOTSTRAP"),
        ({"KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "KEYLEDGER_KAFKA_SECURITY_PROTOCOL"),
        ({"KEYLEDGER_REQUIRE_CALLER": "none"}, "KEYLEDGER_REQUIRE_CALLER"),
    ],
)
def test_production_refuses_each_unsafe_setting_by_name(monkeypatch, env, named):
    for k, v in {**SAFE_PRODUCTION, **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as err:
        Settings()
    message = str(err.value)
    assert named in message
    others = set(SAFE_PRODUCTION) - set(env) - {"KEYLEDGER_PROFILE", "KEYLEDGER_KMS_KEY_ID", "KEYLEDGER_TB_ADDRESSES"}
    assert not any(f"{o}=" in message or f"{o} is" in message for o in others)


def test_production_with_real_parts_starts(monkeypatch):
    for k, v in SAFE_PRODUCTION.items():
        monkeypatch.setenv(k, v)
    assert Settings().profile.value == "production"


def test_require_caller_defaults_to_all_in_production_and_decrypt_elsewhere(monkeypatch):
    assert Settings().require_caller.value == "decrypt"
    assert Settings(profile="dev", require_caller="none").require_caller.value == "none"
    for k, v in SAFE_PRODUCTION.items():
        monkeypatch.setenv(k, v)
    assert Settings().require_caller.value == "all"
    monkeypatch.setenv("KEYLEDGER_REQUIRE_CALLER", "decrypt")
    assert Settings().require_caller.value == "decrypt"


def test_production_takes_plaintext_kafka_only_when_told(monkeypatch):
    for k, v in {**SAFE_PRODUCTION, "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                 "KEYLEDGER_KAFKA_SASL_MECHANISM": "PLAIN", "KEYLEDGER_KAFKA_SASL_USERNAME": "kl",
                 "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE": "/run/secrets/kafka"}.items():
        monkeypatch.setenv(k, v)
    [line] = problems()
    assert "KEYLEDGER_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT (set SSL or SASL_SSL, or KEYLEDGER_KAFKA_ALLOW_PLAINTEXT" in line
    monkeypatch.setenv("KEYLEDGER_KAFKA_ALLOW_PLAINTEXT", "true")
    assert Settings().kafka.security.allow_plaintext


def test_run_without_a_profile_names_every_development_part():
    assert Settings(profile="dev").run_problems() is None
    line = Settings().run_problems()
    assert line is not None and line.startswith("KEYLEDGER_PROFILE is unset, so `keyledger run` uses no development")
    for named in ("KEYLEDGER_KMS_PROVIDER=local", "KEYLEDGER_LEDGER=memory", "KEYLEDGER_KAFKA_BOOTSTRAP is unset",
                  "KEYLEDGER_PROFILE=dev"):
        assert named in line
    # an external broker alone is not enough: the KMS and the ledger must be named
    line = Settings(kafka_bootstrap="k:9092").run_problems() or ""
    assert "KEYLEDGER_KMS_PROVIDER=local" in line and "KEYLEDGER_LEDGER=memory" in line and "BOOTSTRAP" not in line
    real = Settings(kafka_bootstrap="k:9092", kms_provider="aws", ledger="tigerbeetle", tb_addresses="3000")
    assert real.run_problems() is None
    assert "KEYLEDGER_KMS_PROVIDERS names local" in (real.updated(kms_providers="aws,local").run_problems() or "")


@pytest.mark.parametrize(("fields", "says"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "KEYLEDGER_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KEYLEDGER_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "scram-sha-512", "kafka_sasl_username": "kl"},
     "KEYLEDGER_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KEYLEDGER_KAFKA_SASL_USERNAME and KEYLEDGER_KAFKA_SASL_PASSWORD_FILE"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
     "KEYLEDGER_KAFKA_SASL_MECHANISM=OAUTHBEARER needs KEYLEDGER_KAFKA_SASL_OAUTH_TOKEN_FILE"),
    ({"kafka_sasl_mechanism": "PLAIN"}, "KEYLEDGER_KAFKA_SASL_MECHANISM needs KEYLEDGER_KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({"kafka_ssl_ca_file": "/ca.pem"},
     "KEYLEDGER_KAFKA_SSL_CA_FILE/KEYLEDGER_KAFKA_SSL_CERT_FILE need KEYLEDGER_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_key_file": "/k.pem"},
     "KEYLEDGER_KAFKA_SSL_KEY_FILE is set without KEYLEDGER_KAFKA_SSL_CERT_FILE"),
])
def test_incomplete_transport_settings_are_one_line_naming_them(fields, says):
    [line] = problems(**fields)
    assert line.startswith(says)


def test_a_section_reads_its_own_variables(monkeypatch):
    monkeypatch.setenv("KEYLEDGER_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KEYLEDGER_KAFKA_SSL_CA_FILE", "/etc/kafka/ca.pem")
    assert KafkaSecurity.from_environment() == Settings().kafka.security


# --- AWS: the AWS CLI's configuration chain, KEYLEDGER_* first, no silent default ----------------


def test_the_aws_region_comes_from_the_aws_chain_and_keyledger_wins(monkeypatch, tmp_path):
    aws = Settings().kms.aws
    with pytest.raises(MissingSetting) as missing:
        aws.resolved_region()
    assert str(missing.value).startswith("KEYLEDGER_KMS_PROVIDER uses aws but no AWS region is set: set "
                                         "KEYLEDGER_AWS_REGION (or AWS_REGION, AWS_DEFAULT_REGION")
    config = tmp_path / "config"
    config.write_text("[profile audit]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "audit")
    assert aws.resolved_region() == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert aws.resolved_region() == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws.resolved_region() == "eu-west-3"
    monkeypatch.setenv("KEYLEDGER_AWS_REGION", "us-west-2")
    assert Settings().kms.aws.resolved_region() == "us-west-2"


def test_an_unknown_aws_profile_is_one_line(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nowhere")
    with pytest.raises(MissingSetting, match="^AWS_PROFILE: .*nowhere.*: fix AWS_PROFILE or set KEYLEDGER_AWS_REGION$"):
        Settings().kms.aws.resolved_region()


def test_the_aws_provider_opens_only_with_a_region():
    from workers.kms.factory import open_kms

    with pytest.raises(MissingSetting, match="no AWS region"):
        open_kms(Settings(kms_provider="aws", kms_key_id="alias/k").kms)


async def test_aws_endpoint_url_kms_is_honoured_as_the_aws_cli_does(monkeypatch, moto_endpoint, moto_kms_key):
    from workers.kms.factory import open_kms

    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    kms = open_kms(Settings(kms_provider="aws", kms_key_id=moto_kms_key).kms)
    try:
        context = encryption_context("acme", "ab" * 16, "encryption")
        data_key = await kms.generate_data_key(None, context)
        assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, context) == data_key.plaintext
    finally:
        await kms.aclose()


def test_every_setting_is_described():
    def fields(section: type[Section]):
        for name, info in section.model_fields.items():
            yield section, name, info
            nested = _section_of(info)
            if nested is not None:
                yield from fields(nested)

    assert [f"{s.__name__}.{n}" for s, n, info in fields(Settings) if not info.description] == []
    assert "10,000" in (Settings.setting_field("digest_interval").description or "")


def test_a_copy_still_tells_a_default_from_a_chosen_value():
    copy = Settings(kafka_linger_ms=7).updated(profile="dev")
    assert copy.kafka.linger_ms == 7 and copy.profile == "dev"
    assert "kind" not in copy.ledger.model_fields_set  # dev starts TigerBeetle only when the ledger was not chosen
    assert "kind" in Settings(ledger="memory").updated(profile="dev").ledger.model_fields_set


def test_per_tenant_kms_keys_are_refused_in_one_line_for_a_provider_without_them():
    assert Settings(kafka_bootstrap="k:9092", kms_provider="aws", tenant_kms_keys="per-tenant").kms.tenant_kms_keys \
        .value == "per-tenant"
    with pytest.raises(ValueError, match="KEYLEDGER_TENANT_KMS_KEYS=per-tenant needs KEYLEDGER_KMS_PROVIDER=aws"):
        Settings(kafka_bootstrap="k:9092", kms_provider="vault", tenant_kms_keys="per-tenant")
