"""All configuration: `Settings`, read from `KEYLEDGER_*` environment variables, in sections.

Every setting has exactly one environment variable, `KEYLEDGER_` + its flat name (the names of
docs/contract.md). Inside the process the settings are grouped: `settings.kafka`,
`settings.kafka.security`, `settings.kms` (with `.aws`, `.vault`, `.pkcs11`, `.gcp` and `.azure`), `settings.ledger`,
`settings.cache`, `settings.limits`, `settings.retry`, `settings.http`, `settings.log`; a component
takes the section it needs. A section field's variable is its section's prefix + the field name,
unless the section's `ENV_NAMES` says otherwise. `Settings(...)` takes the same flat names as the
environment (lowercase, without `KEYLEDGER_`); a `KEYLEDGER_*` variable that names no setting stops
the process (a misspelt name must not leave a default silently in place).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from workers.errors import ConfigError

ENV_PREFIX = "KEYLEDGER_"


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


class TenantKmsKeys(StrEnum):
    SHARED = "shared"  # every tenant's keys wrapped under the provider's default key
    PER_TENANT = "per-tenant"  # a KMS key of its own per tenant, scheduled for deletion when it is shredded


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


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class RequireCaller(StrEnum):
    """Which requests must carry a caller's proof (docs/contract.md "Callers")."""

    ALL = "all"  # every PII operation and every span to sign
    DECRYPT = "decrypt"  # decrypt and reencrypt: the operations that open ciphertext
    NONE = "none"  # none: for producers that have not adopted callers yet (refused in production)


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"


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


class Section(BaseModel):
    """A group of settings. A field's environment variable is KEYLEDGER_ + ENV_PREFIX + its name in
    capitals, or KEYLEDGER_ + ENV_NAMES[field]; a field whose type is a Section is a nested group."""

    # errors never quote input: a KEK must not reach a log through a traceback
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    ENV_PREFIX: ClassVar[str] = ""
    ENV_NAMES: ClassVar[dict[str, str]] = {}
    SECRETS: ClassVar[frozenset[str]] = frozenset()  # fields whose values never appear in a message

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + cls.ENV_NAMES.get(field, cls.ENV_PREFIX + field.upper())

    @classmethod
    def from_environment(cls) -> Self:
        """This section alone from its variables (for a client built where only an address is passed)."""
        found = {}
        for name, info in cls.model_fields.items():
            if _section_of(info) is None and cls.env_name(name) in os.environ:
                found[name] = os.environ[cls.env_name(name)]
        return cls.model_validate(found)


def _section_of(info: FieldInfo) -> type[Section] | None:
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None


class KafkaSecurity(Section):
    """How every Kafka client of the process authenticates the broker and itself (workers.kafka.security)."""

    ENV_PREFIX = "KAFKA_"
    ENV_NAMES: ClassVar[dict[str, str]] = {"protocol": "KAFKA_SECURITY_PROTOCOL"}

    protocol: SecurityProtocol = Field(SecurityProtocol.PLAINTEXT, description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (the production profile refuses the plaintext two unless KEYLEDGER_KAFKA_ALLOW_PLAINTEXT=true).")
    ssl_ca_file: str | None = Field(None, description="PEM CA bundle that signs the brokers' certificates; unset uses the system trust store.")
    ssl_cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS), read at every client start.")
    ssl_key_file: str | None = Field(None, description="PEM private key of the client certificate (unset: the key is in KEYLEDGER_KAFKA_SSL_CERT_FILE).")
    sasl_mechanism: SaslMechanism | None = Field(None, description="`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER` (with a SASL_* protocol).")
    sasl_username: str | None = Field(None, description="SASL user name (PLAIN, SCRAM).")
    sasl_password_file: str | None = Field(None, description="File holding the SASL password (PLAIN, SCRAM), read at every client start.")
    sasl_oauth_token_file: str | None = Field(None, description="File holding the OAUTHBEARER token, read at every login (a renewed token is used at the next one).")
    allow_plaintext: bool = Field(False, description="Let the production profile talk to Kafka without TLS.")

    @field_validator("protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def uses_tls(self) -> bool:
        return self.protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        name = self.env_name
        if self.ssl_key_file and not self.ssl_cert_file:
            raise ValueError(f"{name('ssl_key_file')} is set without {name('ssl_cert_file')}")
        if (self.ssl_ca_file or self.ssl_cert_file) and not self.uses_tls:
            raise ValueError(f"{name('ssl_ca_file')}/{name('ssl_cert_file')} need {name('protocol')}=SSL or "
                             f"SASL_SSL (it is {self.protocol.value})")
        if not self.uses_sasl:
            if self.sasl_mechanism is not None:
                raise ValueError(f"{name('sasl_mechanism')} needs {name('protocol')}=SASL_SSL or SASL_PLAINTEXT "
                                 f"(it is {self.protocol.value})")
            return self
        if self.sasl_mechanism is None:
            raise ValueError(f"{name('protocol')}={self.protocol.value} needs {name('sasl_mechanism')} "
                             f"({', '.join(m.value for m in SaslMechanism)})")
        if self.sasl_mechanism is SaslMechanism.OAUTHBEARER:
            if not self.sasl_oauth_token_file:
                raise ValueError(f"{name('sasl_mechanism')}=OAUTHBEARER needs {name('sasl_oauth_token_file')}")
        elif not (self.sasl_username and self.sasl_password_file):
            raise ValueError(f"{name('sasl_mechanism')}={self.sasl_mechanism.value} needs {name('sasl_username')} "
                             f"and {name('sasl_password_file')}")
        return self


class KafkaSettings(Section):
    ENV_PREFIX = "KAFKA_"
    ENV_NAMES: ClassVar[dict[str, str]] = {"max_message_bytes": "MAX_MESSAGE_BYTES", "dlq_keep_pii": "DLQ_KEEP_PII"}

    bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset starts an embedded broker (dev only).")
    partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics the worker creates when they are missing.")
    replication: int = Field(1, ge=1, le=10, description="Replication factor of topics the worker creates.")
    idempotence: bool = Field(True, description="Idempotent producer (acks=all); turn off only for brokers without InitProducerId.")
    batch_max: int = Field(8000, ge=1, le=100_000, description="Most records one handler call processes (large: fewer commits, publishes and ledger requests a record; bench/signing.py compares sizes).")
    batch_timeout_ms: int = Field(50, ge=1, le=10_000, description="How long a batch waits for records before it is handled.")
    pipeline_depth: int = Field(3, ge=1, le=8, description="Batches the signer and PII groups handle at once (the next while the last is acknowledged).")
    producer_batch_bytes: int = Field(1_048_576, ge=16_384, le=16_777_216, description="Producer batch size per partition; large, so a handler batch leaves in one request.")
    linger_ms: int = Field(5, ge=0, le=1000, description="Producer linger: how long records wait to share a request.")
    max_message_bytes: int = Field(1_048_576, ge=1024, description="Inbound records larger than this go to the DLQ as oversized; also the largest record keyledger writes (a dead letter is cut to fit). Set it to the broker's message.max.bytes or less.")
    dlq_keep_pii: bool = Field(False, description="Keep the field values of `pii.requests` records in their dead letters; off: each value is replaced by its length and SHA-256.")
    security: KafkaSecurity = Field(default_factory=KafkaSecurity, description="Transport security of every Kafka client.")

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            try:
                parse_addresses(value, default_port=KAFKA_DEFAULT_PORT)
            except ValueError as exc:
                raise ValueError(f"{exc}; expected brokers like kafka-1:9092,kafka-2:9092") from None
        return value

    @property
    def producer_max_request_bytes(self) -> int:
        """The producers' max request size: room for a full handler batch and for any record we write."""
        return max(self.max_message_bytes * 2, self.producer_batch_bytes * 2)


class MissingSetting(ConfigError):
    """A setting a part of the process needs at start is nowhere to be found."""


class AwsSettings(Section):
    ENV_PREFIX = "AWS_"
    ENV_NAMES: ClassVar[dict[str, str]] = {"endpoint_url": "KMS_ENDPOINT_URL"}

    region: str | None = Field(None, description="AWS region of the KMS; unset: AWS_REGION, AWS_DEFAULT_REGION or the AWS profile's region, as the AWS CLI finds it.")
    endpoint_url: str | None = Field(None, description="KMS endpoint override (LocalStack, moto); unset: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL or the profile's, else AWS.")

    def resolved_region(self) -> str:
        """KEYLEDGER_AWS_REGION, else the AWS CLI's order: AWS_REGION, AWS_DEFAULT_REGION, the region of the
        profile (AWS_PROFILE) in the AWS config file. No region anywhere is a configuration error: a default
        region would send keys to a KMS nobody chose."""
        if self.region:
            return self.region
        if os.environ.get("AWS_REGION"):
            return os.environ["AWS_REGION"]
        import botocore.exceptions
        import botocore.session

        try:
            region = botocore.session.Session().get_config_variable("region")
        except botocore.exceptions.ProfileNotFound as exc:
            raise MissingSetting(f"AWS_PROFILE: {exc}: fix AWS_PROFILE or set {self.env_name('region')}") from None
        if not region:
            raise MissingSetting(f"KEYLEDGER_KMS_PROVIDER uses aws but no AWS region is set: set "
                                 f"{self.env_name('region')} (or AWS_REGION, AWS_DEFAULT_REGION, or a region in "
                                 "the AWS profile's config)")
        return str(region)


class VaultSettings(Section):
    ENV_PREFIX = "VAULT_"
    SECRETS = frozenset({"token", "secret_id"})

    addr: str | None = Field(None, description="Vault/OpenBao address (https://host:8200) of the `vault` KMS provider.")
    transit_mount: str = Field("transit", description="Mount path of the Transit secrets engine.")
    key: str = Field("keyledger", description="Transit key (aes256-gcm96, derived) that wraps tenant keys without BYOK; created at first use when the token may.")
    auth: VaultAuthMethod = Field(VaultAuthMethod.TOKEN, description="`token`, `approle` or `kubernetes`.")
    token: SecretStr | None = Field(None, description="Token of auth `token`; unset reads VAULT_TOKEN.")
    role_id: str | None = Field(None, description="AppRole role id (auth `approle`).")
    secret_id: SecretStr | None = Field(None, description="AppRole secret id (auth `approle`).")
    k8s_role: str | None = Field(None, description="Vault role of the Kubernetes auth method (auth `kubernetes`).")
    k8s_jwt_path: str = Field("/var/run/secrets/kubernetes.io/serviceaccount/token", description="Service-account JWT file, read at every login (auth `kubernetes`).")
    auth_mount: str | None = Field(None, description="Mount path of the auth method; unset uses `approle` or `kubernetes`.")
    ca_cert: str | None = Field(None, description="PEM CA bundle that signs the Vault server certificate; unset uses the system trust store.")
    namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace (X-Vault-Namespace); unset for none.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds one Vault call may take, retries of transient failures included.")
    batch_max: int = Field(200, ge=1, le=10_000, description="Most items in one Transit batch_input request (OpenBao refuses more than 249 by default).")
    concurrency: int = Field(8, ge=1, le=256, description="Most Vault requests in flight from one process (a batch request counts once).")

    def problems(self) -> list[str]:
        """What keeps this Vault configuration from being used in production."""
        if not self.addr:
            return [f"{self.env_name('addr')} is unset"]
        problems = []
        address = urlsplit(self.addr)
        if address.scheme == "http" and address.hostname not in ("127.0.0.1", "::1", "localhost"):
            problems.append(f"{self.env_name('addr')} is plain http to another host (use https)")
        if self.auth is VaultAuthMethod.APPROLE and not (self.role_id and self.secret_id):
            problems.append("KEYLEDGER_VAULT_AUTH=approle needs KEYLEDGER_VAULT_ROLE_ID and KEYLEDGER_VAULT_SECRET_ID")
        if self.auth is VaultAuthMethod.KUBERNETES and not self.k8s_role:
            problems.append("KEYLEDGER_VAULT_AUTH=kubernetes needs KEYLEDGER_VAULT_K8S_ROLE")
        return problems


class Pkcs11Settings(Section):
    """The `pkcs11` provider (workers/kms/pkcs11.py): where the module is, which token, the PIN's file,
    the default KEK and the session pool."""

    ENV_PREFIX = "PKCS11_"

    module: str = Field("/usr/lib/softhsm/libsofthsm2.so", description="Path of the PKCS#11 module (.so) to load.")
    token_label: str = Field("keyledger", description="Label of the token holding the KEKs.")
    pin_file: Path | None = Field(None, description="File holding the token's user PIN (one line); required.")
    key_label: str = Field("keyledger-kek", description="The default KEK: its versions are labelled `<this>.vN`.")
    sessions: int = Field(4, ge=1, le=64, description="PKCS#11 sessions (and threads) in the pool.")
    create_key: bool = Field(True, description="Generate the default KEK's first version at start when absent.")


class GcpSettings(Section):
    """The `gcp` provider (workers/kms/gcp.py): the default CryptoKey, and where the API is (unset:
    Google's, with Application Default Credentials)."""

    ENV_PREFIX = "GCP_"

    key_name: str | None = Field(None, description="Resource name of the default CryptoKey (projects/P/locations/L/keyRings/R/cryptoKeys/K); required.")
    endpoint: str | None = Field(None, description="API endpoint override (host:port); unset: Google's.")
    insecure: bool = Field(False, description="Plaintext gRPC, no credentials: a local test server only.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds before one Cloud KMS call times out.")
    concurrency: int = Field(32, ge=1, le=1024, description="Cloud KMS calls in flight for a batch.")


class AzureWrapAlgorithm(StrEnum):
    RSA_OAEP_256 = "RSA-OAEP-256"  # Key Vault: RSA keys
    A256KW = "A256KW"  # Managed HSM: oct-HSM keys


class AzureSettings(Section):
    """The `azure` provider (workers/kms/azure.py): the vault, the default key, the wrap algorithm."""

    ENV_PREFIX = "AZURE_"

    vault_url: str | None = Field(None, description="https://<name>.vault.azure.net or https://<name>.managedhsm.azure.net; required.")
    key_name: str = Field("keyledger-kek", description="The default key's name in the vault.")
    algorithm: AzureWrapAlgorithm = Field(AzureWrapAlgorithm.RSA_OAEP_256, description="`RSA-OAEP-256` (Key Vault, RSA key) or `A256KW` (Managed HSM, oct-HSM key).")
    ca_cert: str | None = Field(None, description="CA bundle to verify the vault's TLS certificate (a private endpoint); unset: the system's.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds before one Key Vault call times out.")
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts of one call while Key Vault answers transiently.")
    concurrency: int = Field(32, ge=1, le=1024, description="Key Vault calls in flight for a batch.")
    token_file: str | None = Field(None, description="File holding a Key Vault bearer token, read at every call (a sidecar or workload-identity agent renews it); unset: azure-identity's DefaultAzureCredential, when installed.")


class KmsSettings(Section):
    ENV_PREFIX = "KMS_"
    ENV_NAMES: ClassVar[dict[str, str]] = {"local_kek": "LOCAL_KEK", "tenant_kms_keys": "TENANT_KMS_KEYS"}
    SECRETS = frozenset({"local_kek"})

    provider: KmsProvider = Field(KmsProvider.LOCAL, description="`aws` (AWS KMS API), `vault` (Vault/OpenBao Transit), `pkcs11` (an HSM over PKCS#11), `gcp` (Google Cloud KMS), `azure` (Azure Key Vault / Managed HSM) or `local` (a development KEK; only `keyledger dev`/`demo` or the dev profile).")
    providers: str = Field("", description="Every KMS provider this process unwraps with, comma separated (e.g. `aws,vault` while migrating); KEYLEDGER_KMS_PROVIDER, where new keys go, is always one of them.")
    key_id: str | None = Field(None, description="Default KMS key (ARN or alias) that wraps tenant keys.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds before one KMS call times out.")
    max_attempts: int = Field(4, ge=1, le=20, description="botocore `standard` retry attempts per KMS call.")
    concurrency: int = Field(32, ge=1, le=1024, description="Most KMS calls in flight from one process (bench/lifecycle.py sweeps it; a remote KMS, bound by latency, wants the upper end).")
    tenant_kms_keys: TenantKmsKeys = Field(TenantKmsKeys.SHARED, description="`shared`: tenants' keys are wrapped under the default KMS key, and a shred is complete when compaction removed them (KEYLEDGER_SHRED_WINDOW); `per-tenant` (aws only): onboarding creates a KMS key for the tenant (tagged with its id, alias from it), wraps its keys under it, and its shredding schedules that KMS key for deletion.")
    local_kek: str | None = Field(None, description="Base64 32-byte KEK of the `local` KMS provider; unset derives a fixed dev KEK.")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="The `aws` provider.")
    vault: VaultSettings = Field(default_factory=VaultSettings, description="The `vault` provider.")
    pkcs11: Pkcs11Settings = Field(default_factory=Pkcs11Settings, description="The `pkcs11` provider.")
    gcp: GcpSettings = Field(default_factory=GcpSettings, description="The `gcp` provider.")
    azure: AzureSettings = Field(default_factory=AzureSettings, description="The `azure` provider.")

    @model_validator(mode="after")
    def _per_tenant_keys_need_aws(self) -> KmsSettings:
        if self.tenant_kms_keys is TenantKmsKeys.PER_TENANT and self.provider is not KmsProvider.AWS:
            raise ValueError(f"{self.env_name('tenant_kms_keys')}=per-tenant needs {self.env_name('provider')}=aws "
                             f"(creating and deleting a KMS key per tenant); {self.provider.value} has no such mode")
        return self

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

    @model_validator(mode="after")
    def _providers_are_known(self) -> KmsSettings:
        try:
            self.configured_providers  # noqa: B018 - validates the names
        except ValueError:
            raise ValueError(f"{self.env_name('providers')}={self.providers!r}: each name is one of "
                             f"{', '.join(p.value for p in KmsProvider)}") from None
        return self

    @property
    def configured_providers(self) -> list[KmsProvider]:
        """KEYLEDGER_KMS_PROVIDER first, then the others KEYLEDGER_KMS_PROVIDERS names (no repeats)."""
        named = [KmsProvider(name.strip().lower()) for name in self.providers.split(",") if name.strip()]
        return list(dict.fromkeys([self.provider, *named]))


class LedgerSettings(Section):
    ENV_NAMES: ClassVar[dict[str, str]] = {"kind": "LEDGER"}

    kind: LedgerKind = Field(LedgerKind.MEMORY, description="`tigerbeetle` or `memory` (embedded; only `keyledger dev`/`demo` or the dev profile).")
    tb_addresses: str | None = Field(None, description="TigerBeetle replica addresses, comma separated.")
    tb_cluster_id: int = Field(0, ge=0, description="TigerBeetle cluster id.")
    tb_batch_max: int = Field(8189, ge=1, le=8189, description="Most events in one TigerBeetle request; a server with a lower limit (a --development one: 253) makes it smaller on its first refusal.")

    @field_validator("tb_addresses")
    @classmethod
    def _tb_addresses_are_host_ports(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_addresses(value, default_port=TB_DEFAULT_PORT, default_host=TB_DEFAULT_HOST)
            except ValueError as exc:
                raise ValueError(f"{exc}; expected replicas like 10.0.0.1:3000,10.0.0.2:3000 (or a port: 3000)") from None
        return value


class CacheSettings(Section):
    ENV_PREFIX = "CACHE_"

    private_ttl: float = Field(3600, gt=0, description="Seconds an unwrapped private/secret key stays cached.")
    public_ttl: float = Field(86400, gt=0, description="Seconds a public key stays cached.")
    max_entries: int = Field(1000, ge=1, description="Most entries in each key cache.")


class LimitSettings(Section):
    """How keys age and wear out, how often evidence is sealed, how long a process waits at start."""

    rotation_age: int = Field(7_776_000, ge=1, description="Key age in seconds (TigerBeetle time) that triggers rotation.")
    shred_window: int = Field(86_400, ge=60, le=31_536_000, description="Seconds after a tenant's deletion by which its wrapped keys are gone from keys.material: the topic is created with max.compaction.lag.ms and segment.ms derived from it, so compaction must have removed them by then (see `keyledger status`).")
    encrypt_limit: int = Field(2**32 - 2**24, ge=1, le=2**32, description="Encryptions under one AES-GCM key before it stops encrypting.")
    digest_interval: float = Field(300, gt=0, le=86_400, description="Seconds a kms.audit record waits at most before a signed digest covers it (a digest also closes at 10,000 records).")
    key_table_wait: float = Field(30.0, ge=0, le=3600, description="Seconds a record naming a tenant this process's key table has not seen yet waits (uncommitted, retried with backoff) for its keys, before it is refused as unknown_tenant; covers a tenant created just before its first spans.")
    startup_timeout: float = Field(60.0, gt=0, description="Seconds to read keys.material/keys.events to their end at start.")
    key_table_sharded: bool = Field(False, description="Hold only the keys of the tenants whose partitions this process is assigned (keys.material/keys.events partitions of the same numbers), loaded before their records are served and dropped on revocation; a record of another tenant has that tenant's key partition loaded first. Off: every process reads the whole key table. Producers of the input topics must partition by murmur2 of the tenant id (README capacity guide).")


class RetrySettings(Section):
    ENV_PREFIX = "RETRY_"

    attempts: int = Field(5, ge=1, le=100, description="Attempts at a failing record before it goes to the DLQ.")
    backoff: float = Field(0.2, gt=0, le=60, description="First backoff in seconds after a transient failure (doubles, capped).")
    backoff_max: float = Field(10.0, gt=0, le=600, description="Longest backoff in seconds between retries.")


class HttpSettings(Section):
    ENV_PREFIX = "HTTP_"

    port: int = Field(8080, ge=0, le=65535, description="Port of `/healthz`, `/readyz` and `/metrics`; 0 turns the endpoint off.")
    host: str = Field("0.0.0.0", description="Address the HTTP endpoint listens on.")


class LogSettings(Section):
    ENV_PREFIX = "LOG_"

    format: LogFormat | None = Field(None, description="`json` (one object per line) or `text`; unset: json in the production profile, text otherwise.")
    level: LogLevel = Field(LogLevel.INFO, description="Least severe log level written (DEBUG also shows per-message broker logs).")

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class CallerSettings(Section):
    """Who may ask: the operator key that signs `keys.callers` policies and how old a caller's proof may be."""

    ENV_NAMES: ClassVar[dict[str, str]] = {"max_skew": "CALLER_MAX_SKEW", "operator_public_key": "OPERATOR_PUBLIC_KEY",
                                           "require": "REQUIRE_CALLER"}

    max_skew: float = Field(300, gt=0, le=86_400, description="Seconds a caller's proof `at` may differ from this process's clock (either side) before the request is refused as expired.")
    operator_public_key: str | None = Field(None, description="The operator's Ed25519 public key (base64url, no padding, raw 32 bytes; `keyledger operator keygen` writes it): only keys.callers records it signed grant anything.")
    require: RequireCaller | None = Field(None, description="Which requests must carry a caller's proof: `all` (every PII operation and span), `decrypt` (decrypt and reencrypt) or `none` (refused in production); unset: `all` in the production profile, `decrypt` otherwise.")


class Settings(BaseSettings, Section):
    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True)

    profile: Profile | None = Field(None, description="`dev` or `production`; unset, `keyledger run` refuses every development-only part (`keyledger dev` and `demo` are dev).")
    dev_port: int | None = Field(None, ge=1, le=65535, description="Port of the broker `keyledger dev` embeds; unset: 9092 when free, else any free port.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka: brokers, topics, batches, records.")
    kms: KmsSettings = Field(default_factory=KmsSettings, description="Which KMS wraps keys, and how it is called.")
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="The ledger every key operation is recorded in.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Key caches.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Key age and wear-out, digests, waits.")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retries of failing records.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="The health and metrics endpoint.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logs.")
    callers: CallerSettings = Field(default_factory=CallerSettings, description="Callers: the operator key and proof skew.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # arguments first, then KEYLEDGER_* variables, each under its flat name (grouped by _by_section)
        return init_settings, _Environment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _by_section(cls, data: Any) -> Any:
        """Flat names (`kafka_linger_ms`, as the environment has them) go to their section; any other name
        stops here with the closest setting name."""
        if not isinstance(data, dict):
            return data
        grouped: dict[str, Any] = {}
        unknown = []
        for name, value in data.items():
            path = FLAT_NAMES.get(name.lower())
            if name in cls.model_fields and isinstance(value, dict | BaseModel):
                path = (name,)  # a whole section (`ledger` is also the flat name of the ledger's kind)
            if path is None:
                unknown.append(name)
                continue
            target = grouped
            for part in path[:-1]:
                section = target.get(part)
                target[part] = section = (section.model_dump() if isinstance(section, BaseModel) else
                                          dict(section or {}))
                target = section
            target[path[-1]] = value
        if unknown:
            raise ValueError("; ".join(_unknown(name) for name in unknown))
        return grouped

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log.format is not None:
            return self.log.format
        return LogFormat.JSON if self.profile is Profile.PRODUCTION else LogFormat.TEXT

    @property
    def require_caller(self) -> RequireCaller:
        """KEYLEDGER_REQUIRE_CALLER as it applies: unset is `all` in the production profile, `decrypt` otherwise."""
        if self.callers.require is not None:
            return self.callers.require
        return RequireCaller.ALL if self.profile is Profile.PRODUCTION else RequireCaller.DECRYPT

    @classmethod
    def setting_field(cls, name: str) -> FieldInfo:
        """The field of the setting with flat name `name` (`digest_interval`): its description, default, bounds."""
        *sections, leaf = FLAT_NAMES[name]
        section: type[Section] = cls
        for part in sections:
            section = _section_of(section.model_fields[part]) or section
        return section.model_fields[leaf]

    def updated(self, **values: Any) -> Settings:
        """A validated copy with some settings changed, named as in the environment (`tb_addresses=...`)."""
        flat = dict(flat_values(self, only_set=True))
        return type(self).model_validate({**flat, **values})

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.profile is Profile.PRODUCTION:
            problems = self.production_problems()
            if problems:
                raise UnsafeSettingsError("KEYLEDGER_PROFILE=production refuses " + "; ".join(problems))
        return self

    def dev_parts(self) -> list[str]:
        """The development-only parts these settings use, each named by its setting."""
        parts = []
        providers = self.kms.configured_providers
        if self.kms.provider is KmsProvider.LOCAL:
            parts.append("KEYLEDGER_KMS_PROVIDER=local (set `aws`)")
        elif KmsProvider.LOCAL in providers:
            parts.append("KEYLEDGER_KMS_PROVIDERS names local")
        if self.ledger.kind is LedgerKind.MEMORY:
            parts.append("KEYLEDGER_LEDGER=memory (set `tigerbeetle`)")
        if not self.kafka.bootstrap:
            parts.append("KEYLEDGER_KAFKA_BOOTSTRAP is unset (embedded broker)")
        return parts

    def production_problems(self) -> list[str]:
        problems = self.dev_parts()
        providers = self.kms.configured_providers
        if self.ledger.kind is LedgerKind.TIGERBEETLE and not self.ledger.tb_addresses:
            problems.append("KEYLEDGER_TB_ADDRESSES is unset")
        if KmsProvider.AWS in providers and not self.kms.key_id:
            problems.append("KEYLEDGER_KMS_KEY_ID is unset")
        if KmsProvider.VAULT in providers:
            problems.extend(self.kms.vault.problems())
        if self.callers.require is RequireCaller.NONE:
            problems.append("KEYLEDGER_REQUIRE_CALLER=none (anyone who can write to pii.requests could decrypt)")
        security = self.kafka.security
        if not security.uses_tls and not security.allow_plaintext:
            problems.append(f"KEYLEDGER_KAFKA_SECURITY_PROTOCOL={security.protocol.value} (set SSL or SASL_SSL, "
                            "or KEYLEDGER_KAFKA_ALLOW_PLAINTEXT=true for a network you trust)")
        return problems

    def run_problems(self) -> str | None:
        """Why `keyledger run` must not start with these settings: without a profile, every part must be named
        and real; the development-only ones need KEYLEDGER_PROFILE=dev (or `keyledger dev`)."""
        if self.profile is not None:
            return None
        parts = self.dev_parts()
        if not parts:
            return None
        return ("KEYLEDGER_PROFILE is unset, so `keyledger run` uses no development-only part: "
                + "; ".join(parts) + "; or set KEYLEDGER_PROFILE=dev for a development worker")


def _walk(section: type[Section], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    """(path of attributes, environment variable, secret) of every setting under `section`."""
    for name, info in section.model_fields.items():
        nested = _section_of(info)
        if nested is not None:
            yield from _walk(nested, (*path, name))
        else:
            yield (*path, name), section.env_name(name), name in section.SECRETS


LEAVES: list[tuple[tuple[str, ...], str, bool]] = list(_walk(Settings))
ENV_NAMES: dict[tuple[str, ...], str] = {path: env for path, env, _ in LEAVES}
SECRET_SETTINGS = frozenset(env for _, env, secret in LEAVES if secret)
FLAT_NAMES: dict[str, tuple[str, ...]] = {env[len(ENV_PREFIX):].lower(): path for path, env, _ in LEAVES}


def env_name(loc: tuple[str | int, ...]) -> str | None:
    """The environment variable of the setting at `loc` (a pydantic error location), None for a section."""
    return ENV_NAMES.get(tuple(str(part) for part in loc))


def flat_values(settings: Settings, *, only_set: bool = False) -> Iterator[tuple[str, Any]]:
    """(flat name, value) of every setting, or of those given explicitly (`only_set`: what `updated`
    rebuilds a copy from, so that a copy still tells a default from a value someone chose)."""
    for path, env, _ in LEAVES:
        value: Any = settings
        given = True
        for part in path:
            given = given and part in value.model_fields_set
            value = getattr(value, part)
        if given or not only_set:
            yield env[len(ENV_PREFIX):].lower(), value


def _unknown(name: str) -> str:
    env = ENV_PREFIX + name.upper()
    # compared without the prefix every name shares, which would make any name look close
    close = difflib.get_close_matches(name.upper(), [e[len(ENV_PREFIX):] for e in ENV_NAMES.values()], n=1)
    hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "docs/contract.md lists the settings"
    return f"{env} is not a keyledger setting ({hint}): rename or unset it"


class _Environment(PydanticBaseSettingsSource):
    """Every KEYLEDGER_* variable under its flat name; names that are no setting are refused by Settings."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole environment at once

    def __call__(self) -> dict[str, Any]:
        return {name[len(ENV_PREFIX):].lower(): value for name, value in os.environ.items()
                if name.upper().startswith(ENV_PREFIX)}
