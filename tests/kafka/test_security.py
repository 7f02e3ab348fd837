"""What keyledger builds from the transport settings: aiokafka and FastStream options, secrets read from
files and never shown, one-line errors. SASL is not run against a broker here (no SASL broker is
available to the tests); TLS is, in tests/integration/test_tls_flow.py."""

from __future__ import annotations

import logging
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from faststream.security import BaseSecurity, SASLOAuthBearer, SASLPlaintext, SASLScram256, SASLScram512

from tests.support.tls import Pki
from workers.errors import ConfigError
from workers.kafka.broker import build_broker
from workers.kafka.security import ClientSecurity, TokenFile, client_options, connect_errors_named
from workers.settings import KafkaSecurity, KafkaSettings

PASSWORD = "correct horse battery staple"
TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJrZXlsZWRnZXIifQ."


@pytest.fixture
def secrets(tmp_path):
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "token").write_text(TOKEN)
    return tmp_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki.make(tmp_path_factory.mktemp("pki"))


def sasl(secrets, mechanism: str, protocol: str = "SASL_SSL") -> KafkaSecurity:
    return KafkaSecurity(protocol=protocol, sasl_mechanism=mechanism, sasl_username="keyledger",
                         sasl_password_file=str(secrets / "password"), sasl_oauth_token_file=str(secrets / "token"))


def test_plaintext_adds_nothing_but_the_protocol():
    assert client_options(KafkaSecurity()) == {"security_protocol": "PLAINTEXT"}
    assert ClientSecurity.build(KafkaSecurity()).faststream() == {}


def test_mutual_tls_loads_the_ca_and_the_client_certificate(pki):
    security = KafkaSecurity(protocol="SSL", ssl_ca_file=str(pki.ca.cert), ssl_cert_file=str(pki.client.cert),
                             ssl_key_file=str(pki.client.key))
    options = client_options(security)
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "keyledger-test-ca"),),)]
    faststream = ClientSecurity.build(security).faststream()["security"]
    assert type(faststream) is BaseSecurity and faststream.use_ssl and faststream.ssl_context is not None


def test_tls_without_a_ca_file_uses_the_system_trust_store():
    context = client_options(KafkaSecurity(protocol="SSL"))["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize(("mechanism", "kind"), [("PLAIN", SASLPlaintext), ("SCRAM-SHA-256", SASLScram256),
                                                 ("SCRAM-SHA-512", SASLScram512)])
def test_sasl_with_a_password_read_from_its_file(secrets, mechanism, kind):
    options = client_options(sasl(secrets, mechanism))
    assert options["security_protocol"] == "SASL_SSL" and isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (mechanism, "keyledger")
    assert options["sasl_plain_password"] == PASSWORD  # the file's text, its newline stripped
    faststream = ClientSecurity.build(sasl(secrets, mechanism)).faststream()
    assert type(faststream["security"]) is kind and faststream["security"].use_ssl
    assert "sasl_oauth_token_provider" not in options


def test_sasl_plaintext_has_no_tls(secrets):
    options = client_options(sasl(secrets, "PLAIN", protocol="SASL_PLAINTEXT"))
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options


async def test_oauthbearer_reads_the_token_file_at_every_login(secrets):
    options = client_options(sasl(secrets, "OAUTHBEARER"))
    assert options["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_password" not in options
    provider = options["sasl_oauth_token_provider"]
    assert isinstance(provider, TokenFile) and await provider.token() == TOKEN
    (secrets / "token").write_text("renewed")
    assert await provider.token() == "renewed"
    faststream = ClientSecurity.build(sasl(secrets, "OAUTHBEARER")).faststream()
    assert type(faststream["security"]) is SASLOAuthBearer and faststream["sasl_oauth_token_provider"] is not None


def test_faststreams_broker_gets_the_options(secrets):
    kafka = KafkaSettings(security=sasl(secrets, "SCRAM-SHA-512"))
    spec = build_broker(kafka, "kafka:9093").specification  # FastStream derives aiokafka's options from it
    assert type(spec.security) is SASLScram512 and spec.security.use_ssl and spec.protocol == "kafka-secure"
    assert build_broker(KafkaSettings(), "kafka:9092").specification.security is None


def test_secrets_never_show(secrets, caplog):
    security = sasl(secrets, "SCRAM-SHA-256")
    built = ClientSecurity.build(security)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("keyledger").info("security %s %r %s", built, built, security)
    shown = repr(built) + str(built) + repr(security) + caplog.text + repr(KafkaSettings(security=security))
    assert PASSWORD not in shown and TOKEN not in shown
    assert PASSWORD not in repr(ClientSecurity.build(security).password)


@pytest.mark.parametrize(("change", "says"), [
    ({"sasl_password_file": "/nonexistent/password"},
     "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE=/nonexistent/password: cannot read it (No such file or directory)"),
    ({"sasl_password_file": "EMPTY"}, "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE="),
])
def test_an_unreadable_or_empty_secret_file_is_one_line(secrets, change, says):
    (secrets / "empty").write_text("\n")
    if change.get("sasl_password_file") == "EMPTY":
        change = {"sasl_password_file": str(secrets / "empty")}
    security = sasl(secrets, "PLAIN").model_copy(update=change)
    with pytest.raises(ConfigError) as refused:
        ClientSecurity.build(security)
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value)


def test_tls_files_that_are_missing_or_not_pem_are_named(pki, tmp_path):
    with pytest.raises(ConfigError, match="^KEYLEDGER_KAFKA_SSL_CA_FILE=/nonexistent/ca.pem: no such file$"):
        client_options(KafkaSecurity(protocol="SSL", ssl_ca_file="/nonexistent/ca.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="^KEYLEDGER_KAFKA_SSL_CA_FILE=.*: not a PEM CA bundle"):
        client_options(KafkaSecurity(protocol="SSL", ssl_ca_file=str(garbage)))
    with pytest.raises(ConfigError, match="^KEYLEDGER_KAFKA_SSL_CERT_FILE/KEYLEDGER_KAFKA_SSL_KEY_FILE: not a PEM"):
        client_options(KafkaSecurity(protocol="SSL", ssl_cert_file=str(pki.client.cert), ssl_key_file=str(garbage)))


def test_the_environment_configures_a_client_handed_only_an_address(monkeypatch, pki):
    monkeypatch.setenv("KEYLEDGER_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KEYLEDGER_KAFKA_SSL_CA_FILE", str(pki.ca.cert))
    assert client_options()["security_protocol"] == "SSL"


async def test_a_refused_login_names_the_settings(secrets):
    for mechanism, secret in (("SCRAM-SHA-512", "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE"),
                              ("OAUTHBEARER", "KEYLEDGER_KAFKA_SASL_OAUTH_TOKEN_FILE")):
        with pytest.raises(ConfigError) as refused:
            async with connect_errors_named("kafka:9093", sasl(secrets, mechanism)):
                raise SaslAuthenticationFailed("Authentication failed")
        assert str(refused.value) == (f"Kafka at kafka:9093 refused the SASL {mechanism} login: check "
                                      f"KEYLEDGER_KAFKA_SASL_USERNAME and {secret}")


async def test_a_login_refused_while_bootstrapping_names_the_login_settings(secrets):
    # aiokafka logs the refusal and raises only this
    with pytest.raises(ConfigError, match="with SASL PLAIN .*check KEYLEDGER_KAFKA_SASL_USERNAME and "
                                          "KEYLEDGER_KAFKA_SASL_PASSWORD_FILE$"):
        async with connect_errors_named("kafka:9093", sasl(secrets, "PLAIN")):
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9093)]")


async def test_a_tls_connection_failure_names_the_tls_settings_and_plaintext_passes_through(pki):
    security = KafkaSecurity(protocol="SSL", ssl_ca_file=str(pki.ca.cert))
    with pytest.raises(ConfigError, match="over TLS .*KEYLEDGER_KAFKA_SSL_CA_FILE, KEYLEDGER_KAFKA_SSL_CERT_FILE"):
        async with connect_errors_named("kafka:9093", security):
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9093)]")
    with pytest.raises(KafkaConnectionError):
        async with connect_errors_named("kafka:9092", KafkaSecurity()):
            raise KafkaConnectionError("Unable to bootstrap")
