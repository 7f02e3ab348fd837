"""All configuration: one pydantic-settings class, prefix `KEYLEDGER_`."""

from __future__ import annotations

import base64
import binascii
import re
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


class KmsProvider(StrEnum):
    AWS = "aws"
    VAULT = "vault"
    LOCAL = "local"
    PKCS11 = "pkcs11"
    GCP = "gcp"
    AZURE = "azure"


class VaultAuthMethod(StrEnum):
    TOKEN = "token"
    APPROLE = "approle"
    KUBERNETES = "kubernetes"


class LedgerKind(StrEnum):
    TIGERBEETLE = "tigerbeetle"
    MEMORY = "memory"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class UnsafeSettingsError(ValueError):
    """The production profile was asked to run with a development-only part."""


# host:port, or a host alone (the default port applies); IPv6 in brackets; names are resolved where they are used
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
_HOST_PORT = re.compile(rf"^(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?$")
_PORT_ONLY = re.compile(r"^[0-9]{1,5}$")
TB_DEFAULT_HOST, TB_DEFAULT_PORT, KAFKA_DEFAULT_PORT = "127.0.0.1", 3001, 9092


def parse_addresses(text: str, *, default_port: int, default_host: str | None = None) -> list[tuple[str, int]]:
    """`host:port,host:port` as (host, port) pairs; raises ValueError naming the first malformed item.

    With `default_host`, a bare number is a port on that host (TigerBeetle's `3000` form)."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if default_host is not None and _PORT_ONLY.match(item):
            host, port = default_host, int(item)
        else:
            found = _HOST_PORT.match(item)
            if not found:
                raise ValueError(f"{item!r} is not host:port")
            host, port = found["host"].strip("[]"), int(found["port"] or default_port)
        if not 0 < port < 65536:
            raise ValueError(f"{item!r} has no valid port (1-65535)")
        pairs.append((host, port))
    return pairs


class Settings(BaseSettings):
    # errors never quote input: a KEK must not reach a log through a traceback
    model_config = SettingsConfigDict(env_prefix="KEYLEDGER_", extra="ignore", hide_input_in_errors=True)

    profile: Profile = Field(Profile.DEV, description="`dev` or `production`; production refuses development-only parts.")
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset starts an embedded broker (dev only).")
    kafka_partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics the worker creates when they are missing.")
    kafka_replication: int = Field(1, ge=1, le=10, description="Replication factor of topics the worker creates.")
    kafka_idempotence: bool = Field(True, description="Idempotent producer (acks=all); turn off only for brokers without InitProducerId.")
    kafka_batch_max: int = Field(8000, ge=1, le=100_000, description="Most records one handler call processes (large: fewer commits, publishes and ledger requests a record; bench/signing.py measured 0.53 of raw signing at 8,000 against 0.43 at 1,000).")
    kafka_batch_timeout_ms: int = Field(50, ge=1, le=10_000, description="How long a batch waits for records before it is handled.")
    kafka_pipeline_depth: int = Field(3, ge=1, le=8, description="Batches the signer and PII groups handle at once (the next while the last is acknowledged).")
    kafka_producer_batch_bytes: int = Field(1_048_576, ge=16_384, le=16_777_216, description="Producer batch size per partition; large, so a handler batch leaves in one request.")
    kafka_linger_ms: int = Field(5, ge=0, le=1000, description="Producer linger: how long records wait to share a request.")
    max_message_bytes: int = Field(1_048_576, ge=1024, description="Inbound records larger than this go to the DLQ as oversized; also the largest record keyledger writes (a dead letter is cut to fit). Set it to the broker's message.max.bytes or less.")
    dlq_keep_pii: bool = Field(False, description="Keep the field values of `pii.requests` records in their dead letters; off: each value is replaced by its length and SHA-256.")
    kms_provider: KmsProvider = Field(KmsProvider.LOCAL, description="`aws` (AWS KMS API), `vault` (Vault/OpenBao Transit), `pkcs11` (an HSM over PKCS#11), `gcp` (Google Cloud KMS), `azure` (Azure Key Vault / Managed HSM) or `local` (a development KEK).")
    kms_providers: str = Field("", description="Every KMS provider this process unwraps with, comma separated (e.g. `aws,vault` while migrating); KEYLEDGER_KMS_PROVIDER, where new keys go, is always one of them.")
    kms_key_id: str | None = Field(None, description="Default KMS key (ARN or alias) that wraps tenant keys.")
    kms_endpoint_url: str | None = Field(None, description="KMS endpoint override (LocalStack, moto); unset uses AWS.")
    kms_timeout: float = Field(5.0, gt=0, le=120, description="Seconds before one KMS call times out.")
    kms_max_attempts: int = Field(4, ge=1, le=20, description="botocore `standard` retry attempts per KMS call.")
    kms_concurrency: int = Field(32, ge=1, le=1024, description="Most KMS calls in flight from one process (bench/lifecycle.py sweeps 4-64: moto's ceiling is flat over them and 32 reaches it; a remote KMS, bound by latency, wants the upper end).")
    local_kek: str | None = Field(None, description="Base64 32-byte KEK of the `local` KMS provider; unset derives a fixed dev KEK.")
    aws_region: str = Field("us-east-1", description="AWS region of the KMS.")
    vault_addr: str | None = Field(None, description="Vault/OpenBao address (https://host:8200) of the `vault` KMS provider.")
    vault_transit_mount: str = Field("transit", description="Mount path of the Transit secrets engine.")
    vault_key: str = Field("keyledger", description="Transit key (aes256-gcm96, derived) that wraps tenant keys without BYOK; created at first use when the token may.")
    vault_auth: VaultAuthMethod = Field(VaultAuthMethod.TOKEN, description="`token`, `approle` or `kubernetes`.")
    vault_token: SecretStr | None = Field(None, description="Token of auth `token`; unset reads VAULT_TOKEN.")
    vault_role_id: str | None = Field(None, description="AppRole role id (auth `approle`).")
    vault_secret_id: SecretStr | None = Field(None, description="AppRole secret id (auth `approle`).")
    vault_k8s_role: str | None = Field(None, description="Vault role of the Kubernetes auth method (auth `kubernetes`).")
    vault_k8s_jwt_path: str = Field("/var/run/secrets/kubernetes.io/serviceaccount/token", description="Service-account JWT file, read at every login (auth `kubernetes`).")
    vault_auth_mount: str | None = Field(None, description="Mount path of the auth method; unset uses `approle` or `kubernetes`.")
    vault_ca_cert: str | None = Field(None, description="PEM CA bundle that signs the Vault server certificate; unset uses the system trust store.")
    vault_namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace (X-Vault-Namespace); unset for none.")
    vault_timeout: float = Field(5.0, gt=0, le=120, description="Seconds one Vault call may take, retries of transient failures included.")
    vault_batch_max: int = Field(200, ge=1, le=10_000, description="Most items in one Transit batch_input request (OpenBao refuses more than 249 by default).")
    vault_concurrency: int = Field(8, ge=1, le=256, description="Most Vault requests in flight from one process (a batch request counts once).")
    ledger: LedgerKind = Field(LedgerKind.MEMORY, description="`tigerbeetle` or `memory` (embedded, dev only).")
    tb_addresses: str | None = Field(None, description="TigerBeetle replica addresses, comma separated.")
    tb_cluster_id: int = Field(0, ge=0, description="TigerBeetle cluster id.")
    tb_batch_max: int = Field(8189, ge=1, le=8189, description="Most events in one TigerBeetle request; a server with a lower limit (a --development one: 253) makes it smaller on its first refusal.")
    cache_private_ttl: float = Field(3600, gt=0, description="Seconds an unwrapped private/secret key stays cached.")
    cache_public_ttl: float = Field(86400, gt=0, description="Seconds a public key stays cached.")
    cache_max_entries: int = Field(1000, ge=1, description="Most entries in each key cache.")
    rotation_age: int = Field(7_776_000, ge=1, description="Key age in seconds (TigerBeetle time) that triggers rotation.")
    encrypt_limit: int = Field(2**32 - 2**24, ge=1, le=2**32, description="Encryptions under one AES-GCM key before it stops encrypting.")
    digest_interval: float = Field(300, gt=0, le=86_400, description="Seconds a kms.audit record waits at most before a signed digest covers it (a digest also closes at 10,000 records).")
    retry_attempts: int = Field(5, ge=1, le=100, description="Attempts at a failing record before it goes to the DLQ.")
    retry_backoff: float = Field(0.2, gt=0, le=60, description="First backoff in seconds after a transient failure (doubles, capped).")
    retry_backoff_max: float = Field(10.0, gt=0, le=600, description="Longest backoff in seconds between retries.")
    key_table_wait: float = Field(30.0, ge=0, le=3600, description="Seconds a record naming a tenant this process's key table has not seen yet waits (uncommitted, retried with backoff) for its keys, before it is refused as unknown_tenant; covers a tenant created just before its first spans.")
    startup_timeout: float = Field(60.0, gt=0, description="Seconds to read keys.material/keys.events to their end at start.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of `/healthz`, `/readyz` and `/metrics`; 0 turns the endpoint off.")
    http_host: str = Field("0.0.0.0", description="Address the HTTP endpoint listens on.")
    log_format: LogFormat | None = Field(None, description="`json` (one object per line) or `text`; unset: json in the production profile, text otherwise.")
    log_level: LogLevel = Field(LogLevel.INFO, description="Least severe log level written (DEBUG also shows per-message broker logs).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return LogFormat.JSON if self.profile is Profile.PRODUCTION else LogFormat.TEXT

    dev_port: int | None = Field(None, ge=1, le=65535, description="Port of the broker `keyledger dev` embeds; unset: 9092 when free, else any free port.")

    @field_validator("local_kek")
    @classmethod
    def _local_kek_is_32_bytes_of_base64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            kek = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64; set 32 random bytes in base64 (`openssl rand -base64 32`) "
                             "or unset it for the fixed development KEK") from None
        if len(kek) != 32:
            raise ValueError(f"decodes to {len(kek)} bytes, not 32; set 32 random bytes in base64 "
                             "(`openssl rand -base64 32`)")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            try:
                parse_addresses(value, default_port=KAFKA_DEFAULT_PORT)
            except ValueError as exc:
                raise ValueError(f"{exc}; expected brokers like kafka-1:9092,kafka-2:9092") from None
        return value

    @field_validator("tb_addresses")
    @classmethod
    def _tb_addresses_are_host_ports(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_addresses(value, default_port=TB_DEFAULT_PORT, default_host=TB_DEFAULT_HOST)
            except ValueError as exc:
                raise ValueError(f"{exc}; expected replicas like 10.0.0.1:3000,10.0.0.2:3000 (or a port: 3000)") from None
        return value

    @property
    def producer_max_request_bytes(self) -> int:
        """The producers' max request size: room for a full handler batch and for any record we write."""
        return max(self.max_message_bytes * 2, self.kafka_producer_batch_bytes * 2)

    @property
    def configured_kms_providers(self) -> list[KmsProvider]:
        """KEYLEDGER_KMS_PROVIDER first, then the others KEYLEDGER_KMS_PROVIDERS names (no repeats)."""
        named = [KmsProvider(name.strip().lower()) for name in self.kms_providers.split(",") if name.strip()]
        return list(dict.fromkeys([self.kms_provider, *named]))

    @model_validator(mode="after")
    def _check_kms_providers(self) -> Settings:
        try:
            self.configured_kms_providers  # noqa: B018 - validates the names
        except ValueError:
            raise ValueError(f"KEYLEDGER_KMS_PROVIDERS={self.kms_providers!r}: each name is one of "
                             f"{', '.join(p.value for p in KmsProvider)}") from None
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.profile is Profile.PRODUCTION:
            problems = self.production_problems()
            if problems:
                raise UnsafeSettingsError("KEYLEDGER_PROFILE=production refuses " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        problems = []
        providers = self.configured_kms_providers
        if self.kms_provider is KmsProvider.LOCAL:
            problems.append("KEYLEDGER_KMS_PROVIDER=local (set `aws`)")
        elif KmsProvider.LOCAL in providers:
            problems.append("KEYLEDGER_KMS_PROVIDERS names local")
        if self.ledger is LedgerKind.MEMORY:
            problems.append("KEYLEDGER_LEDGER=memory (set `tigerbeetle`)")
        if not self.kafka_bootstrap:
            problems.append("KEYLEDGER_KAFKA_BOOTSTRAP is unset (embedded broker)")
        if self.ledger is LedgerKind.TIGERBEETLE and not self.tb_addresses:
            problems.append("KEYLEDGER_TB_ADDRESSES is unset")
        if KmsProvider.AWS in providers and not self.kms_key_id:
            problems.append("KEYLEDGER_KMS_KEY_ID is unset")
        if KmsProvider.VAULT in providers:
            problems.extend(self._vault_problems())
        return problems

    def _vault_problems(self) -> list[str]:
        if not self.vault_addr:
            return ["KEYLEDGER_VAULT_ADDR is unset"]
        problems = []
        address = urlsplit(self.vault_addr)
        if address.scheme == "http" and address.hostname not in ("127.0.0.1", "::1", "localhost"):
            problems.append("KEYLEDGER_VAULT_ADDR is plain http to another host (use https)")
        if self.vault_auth is VaultAuthMethod.APPROLE and not (self.vault_role_id and self.vault_secret_id):
            problems.append("KEYLEDGER_VAULT_AUTH=approle needs KEYLEDGER_VAULT_ROLE_ID and KEYLEDGER_VAULT_SECRET_ID")
        if self.vault_auth is VaultAuthMethod.KUBERNETES and not self.vault_k8s_role:
            problems.append("KEYLEDGER_VAULT_AUTH=kubernetes needs KEYLEDGER_VAULT_K8S_ROLE")
        return problems
