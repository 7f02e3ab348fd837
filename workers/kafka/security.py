"""Transport security of every Kafka client: TLS, mutual TLS and SASL, from `settings.kafka.security`.

Every client keyledger builds (FastStream's broker, the publisher's producer, the key table's
consumer, the tools' readers and writers, the admin client) takes its options from here, so one
setting secures them all. Files are read when a client is built: a restarted process uses a renewed
certificate, key or password, and the OAUTHBEARER token file is read at every login. A password or
token is held as a SecretStr and never appears in a log, a repr or an error message.

The start of a process translates what the clients say into one line naming the setting at fault:
aiokafka reports a broker that refuses a client without a certificate only as "Connection ...
closed", and a TLS failure as a generic connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from workers.errors import ConfigError
from workers.settings import KAFKA_DEFAULT_PORT, KafkaSecurity, SaslMechanism, parse_addresses

HANDSHAKE_TIMEOUT = 5.0


def _read_secret(path: str, setting: str) -> SecretStr:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}={path}: cannot read it ({exc.strerror})") from None
    if not text:
        raise ConfigError(f"{setting}={path}: the file is empty")
    return SecretStr(text)


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no type hints
    """OAUTHBEARER token from a file, read at every login (a sidecar or a CSI driver renews the file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        return _read_secret(self.path, KafkaSecurity.env_name("sasl_oauth_token_file")).get_secret_value()

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r})"


@dataclass(frozen=True)
class ClientSecurity:
    """The security options of one client, files already read (the token excepted: read at each login)."""

    settings: KafkaSecurity
    ssl_context: ssl.SSLContext | None = None
    password: SecretStr | None = None
    token: TokenFile | None = None

    @classmethod
    def build(cls, settings: KafkaSecurity) -> ClientSecurity:
        """Read the CA, certificate, key and password files now; ConfigError naming the setting of a bad one."""
        context = _ssl_context(settings) if settings.uses_tls else None
        password = token = None
        if settings.uses_sasl and settings.sasl_mechanism is SaslMechanism.OAUTHBEARER:
            token = TokenFile(str(settings.sasl_oauth_token_file))
            _read_secret(token.path, settings.env_name("sasl_oauth_token_file"))  # readable now, not at first login
        elif settings.uses_sasl:
            password = _read_secret(str(settings.sasl_password_file), settings.env_name("sasl_password_file"))
        return cls(settings, context, password, token)

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.settings.protocol.value}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.settings.uses_sasl and self.settings.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.settings.sasl_mechanism.value
            if self.token is not None:
                options["sasl_oauth_token_provider"] = self.token
            else:
                options["sasl_plain_username"] = self.settings.sasl_username
                options["sasl_plain_password"] = self.password.get_secret_value() if self.password else None
        return options

    def faststream(self) -> dict[str, Any]:
        """Keyword arguments of FastStream's KafkaBroker: its `security` object, and the token provider its
        OAUTHBEARER class does not carry."""
        from faststream.security import (
            BaseSecurity,
            SASLOAuthBearer,
            SASLPlaintext,
            SASLScram256,
            SASLScram512,
        )

        use_ssl = self.ssl_context is not None
        mechanism = self.settings.sasl_mechanism if self.settings.uses_sasl else None
        if mechanism is None:
            return {"security": BaseSecurity(ssl_context=self.ssl_context, use_ssl=True)} if use_ssl else {}
        if mechanism is SaslMechanism.OAUTHBEARER:
            return {"security": SASLOAuthBearer(ssl_context=self.ssl_context, use_ssl=use_ssl),
                    "sasl_oauth_token_provider": self.token}
        kind = {SaslMechanism.PLAIN: SASLPlaintext, SaslMechanism.SCRAM_SHA_256: SASLScram256,
                SaslMechanism.SCRAM_SHA_512: SASLScram512}[mechanism]
        password = self.password.get_secret_value() if self.password else ""
        return {"security": kind(str(self.settings.sasl_username), password, ssl_context=self.ssl_context,
                                 use_ssl=use_ssl)}

    def __repr__(self) -> str:  # the dataclass repr would be fine (SecretStr), but say less still
        return f"ClientSecurity({self.settings.protocol.value}, mechanism={self.settings.sasl_mechanism})"


def _ssl_context(settings: KafkaSecurity) -> ssl.SSLContext:
    name = settings.env_name
    for field in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = getattr(settings, field)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name(field)}={path}: no such file")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.ssl_ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"{name('ssl_ca_file')}={settings.ssl_ca_file}: not a PEM CA bundle ({exc.reason})") from None
    if settings.ssl_cert_file:
        try:
            context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"{name('ssl_cert_file')}/{name('ssl_key_file')}: not a PEM certificate and its "
                              f"private key ({exc.reason})") from None
    return context


def client_options(settings: KafkaSecurity | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments for a client; without `settings`, from the KEYLEDGER_KAFKA_* variables
    (a tool that is handed only the bootstrap address)."""
    return ClientSecurity.build(settings or KafkaSecurity.from_environment()).aiokafka()


# --- at start: one line naming the setting ------------------------------------------------------


async def check_tls(bootstrap: str, settings: KafkaSecurity) -> None:
    """A TLS handshake and a Kafka ApiVersions request with the configured CA and certificate, to the first
    bootstrap address that accepts a connection; ConfigError naming the setting when TLS fails."""
    context = ClientSecurity.build(settings).ssl_context
    for host, port in parse_addresses(bootstrap, default_port=KAFKA_DEFAULT_PORT):
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(_untrusted(bootstrap, settings, exc.verify_message)) from None
        except ssl.SSLError as exc:
            raise ConfigError(_refused(bootstrap, settings, f"refused the handshake ({exc.reason or exc})")) from None
        except (OSError, TimeoutError):
            continue  # not reachable: the plain reachability check names KEYLEDGER_KAFKA_BOOTSTRAP
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await _api_versions(reader, writer)
        except ssl.SSLError as exc:
            raise ConfigError(_refused(bootstrap, settings, f"ended the session ({exc.reason or exc})")) from None
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            raise ConfigError(_refused(bootstrap, settings, "closed the connection after the handshake")) from None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        return


async def _api_versions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    client_id = b"keyledger-tls-check"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    writer.write(struct.pack(">i", len(body)) + body)
    await writer.drain()
    await reader.readexactly(8)


def _untrusted(bootstrap: str, settings: KafkaSecurity, why: str) -> str:
    ca = settings.ssl_ca_file or "the system trust store"
    return (f"TLS to Kafka at {bootstrap}: the broker's certificate is not trusted ({why}) by {ca}: set "
            f"{settings.env_name('ssl_ca_file')} to the CA that signs the brokers' certificates")


def _refused(bootstrap: str, settings: KafkaSecurity, why: str) -> str:
    cert, key = settings.env_name("ssl_cert_file"), settings.env_name("ssl_key_file")
    if not settings.ssl_cert_file:
        return (f"TLS to Kafka at {bootstrap}: the broker {why}: it asks for a client certificate (mutual TLS): "
                f"set {cert} and {key}")
    return (f"TLS to Kafka at {bootstrap}: the broker {why}: it refuses the client certificate in {cert}: use "
            "one signed by a CA the broker trusts")


def _login_settings(settings: KafkaSecurity) -> str:
    secret = "sasl_oauth_token_file" if settings.sasl_mechanism is SaslMechanism.OAUTHBEARER else "sasl_password_file"
    return f"{settings.env_name('sasl_username')} and {settings.env_name(secret)}"


@contextlib.asynccontextmanager
async def connect_errors_named(bootstrap: str, settings: KafkaSecurity) -> AsyncIterator[None]:
    """Around the first connections of a process, once the broker is known to answer (workers.app.preflight):
    a refused login or a failed TLS handshake becomes one line naming the setting (ConfigError). aiokafka
    reports a login refused while it bootstraps only as "Unable to bootstrap", so with SASL that is one too."""
    try:
        yield
    except SaslAuthenticationFailed:
        raise ConfigError(f"Kafka at {bootstrap} refused the SASL {settings.sasl_mechanism} login: check "
                          f"{_login_settings(settings)}") from None
    except UnsupportedSaslMechanismError:
        raise ConfigError(f"Kafka at {bootstrap} does not offer SASL {settings.sasl_mechanism}: set "
                          f"{settings.env_name('sasl_mechanism')} to one it offers") from None
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(_untrusted(bootstrap, settings, exc.verify_message)) from None
    except KafkaConnectionError as exc:
        if settings.uses_sasl:
            raise ConfigError(f"cannot connect to Kafka at {bootstrap} with SASL {settings.sasl_mechanism} ({exc}); "
                              f"the broker answers, so the login is the likely cause: check "
                              f"{_login_settings(settings)}") from None
        if not settings.uses_tls:
            raise
        raise ConfigError(f"cannot connect to Kafka at {bootstrap} over TLS ({exc}): check "
                          f"{settings.env_name('ssl_ca_file')}, {settings.env_name('ssl_cert_file')} and "
                          f"{settings.env_name('ssl_key_file')}") from None
