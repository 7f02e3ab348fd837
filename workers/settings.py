"""All configuration: one pydantic-settings class, prefix `KEYLEDGER_`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(StrEnum):
    DEV = "dev"
    PRODUCTION = "production"


class KmsProvider(StrEnum):
    AWS = "aws"
    LOCAL = "local"


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYLEDGER_", extra="ignore")

    profile: Profile = Field(Profile.DEV, description="`dev` or `production`; production refuses development-only parts.")
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset starts an embedded broker (dev only).")
    kafka_partitions: int = Field(6, ge=1, le=1000, description="Partitions of topics the worker creates when they are missing.")
    kafka_replication: int = Field(1, ge=1, le=10, description="Replication factor of topics the worker creates.")
    kafka_idempotence: bool = Field(True, description="Idempotent producer (acks=all); turn off only for brokers without InitProducerId.")
    kafka_batch_max: int = Field(1000, ge=1, le=100_000, description="Most records one handler call processes.")
    kafka_batch_timeout_ms: int = Field(50, ge=1, le=10_000, description="How long a batch waits for records before it is handled.")
    kafka_pipeline_depth: int = Field(3, ge=1, le=8, description="Batches the signer and PII groups handle at once (the next while the last is acknowledged).")
    kafka_producer_batch_bytes: int = Field(1_048_576, ge=16_384, le=16_777_216, description="Producer batch size per partition; large, so a handler batch leaves in one request.")
    kafka_linger_ms: int = Field(5, ge=0, le=1000, description="Producer linger: how long records wait to share a request.")
    max_message_bytes: int = Field(1_048_576, ge=1024, description="Inbound records larger than this go to the DLQ as oversized.")
    kms_provider: KmsProvider = Field(KmsProvider.LOCAL, description="`aws` (AWS KMS API) or `local` (a development KEK).")
    kms_key_id: str | None = Field(None, description="Default KMS key (ARN or alias) that wraps tenant keys.")
    kms_endpoint_url: str | None = Field(None, description="KMS endpoint override (LocalStack, moto); unset uses AWS.")
    kms_timeout: float = Field(5.0, gt=0, le=120, description="Seconds before one KMS call times out.")
    kms_max_attempts: int = Field(4, ge=1, le=20, description="botocore `standard` retry attempts per KMS call.")
    kms_concurrency: int = Field(32, ge=1, le=1024, description="Most KMS calls in flight from one process.")
    local_kek: str | None = Field(None, description="Base64 32-byte KEK of the `local` KMS provider; unset derives a fixed dev KEK.")
    aws_region: str = Field("us-east-1", description="AWS region of the KMS.")
    ledger: LedgerKind = Field(LedgerKind.MEMORY, description="`tigerbeetle` or `memory` (embedded, dev only).")
    tb_addresses: str | None = Field(None, description="TigerBeetle replica addresses, comma separated.")
    tb_cluster_id: int = Field(0, ge=0, description="TigerBeetle cluster id.")
    tb_batch_max: int = Field(250, ge=1, le=8189, description="Most events in one TigerBeetle request (32 KiB on a --development server).")
    cache_private_ttl: float = Field(3600, gt=0, description="Seconds an unwrapped private/secret key stays cached.")
    cache_public_ttl: float = Field(86400, gt=0, description="Seconds a public key stays cached.")
    cache_max_entries: int = Field(1000, ge=1, description="Most entries in each key cache.")
    rotation_age: int = Field(7_776_000, ge=1, description="Key age in seconds (TigerBeetle time) that triggers rotation.")
    encrypt_limit: int = Field(2**32 - 2**24, ge=1, le=2**32, description="Encryptions under one AES-GCM key before it stops encrypting.")
    retry_attempts: int = Field(5, ge=1, le=100, description="Attempts at a failing record before it goes to the DLQ.")
    retry_backoff: float = Field(0.2, gt=0, le=60, description="First backoff in seconds after a transient failure (doubles, capped).")
    retry_backoff_max: float = Field(10.0, gt=0, le=600, description="Longest backoff in seconds between retries.")
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

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.profile is Profile.PRODUCTION:
            problems = self.production_problems()
            if problems:
                raise UnsafeSettingsError("production profile refuses: " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        problems = []
        if self.kms_provider is KmsProvider.LOCAL:
            problems.append("KEYLEDGER_KMS_PROVIDER=local (set `aws`)")
        if self.ledger is LedgerKind.MEMORY:
            problems.append("KEYLEDGER_LEDGER=memory (set `tigerbeetle`)")
        if not self.kafka_bootstrap:
            problems.append("KEYLEDGER_KAFKA_BOOTSTRAP is unset (embedded broker)")
        if self.ledger is LedgerKind.TIGERBEETLE and not self.tb_addresses:
            problems.append("KEYLEDGER_TB_ADDRESSES is unset")
        if self.kms_provider is KmsProvider.AWS and not self.kms_key_id:
            problems.append("KEYLEDGER_KMS_KEY_ID is unset")
        return problems
