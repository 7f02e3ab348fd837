"""Message models, one per topic of shared/design.md.

Inbound models accept extra fields (producers may add more); outbound models
serialise with `to_json()` so every producer writes the same bytes for the
same content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.errors import ErrorInfo

TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN)]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
FieldPath = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class KeyType(StrEnum):
    SIGNING = "signing"
    ENCRYPTION = "encryption"


class Op(StrEnum):
    GENERATE = "generate"
    SIGN = "sign"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REENCRYPT = "reencrypt"
    ROTATE = "rotate"
    REWRAP = "rewrap"
    REVOKE = "revoke"
    DESTROY = "destroy"
    DENIED = "denied"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class KeyEventType(StrEnum):
    GENERATED = "generated"
    ROTATED = "rotated"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


class RotationReason(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    COMPROMISE = "compromise"


class TickAction(StrEnum):
    """What a `keys.rotation-ticks` record asks for (absent = `rotate`)."""

    ROTATE = "rotate"
    REWRAP = "rewrap"
    """Re-wrap live keys under their KMS key's latest version (the key itself is unchanged)."""
    MIGRATE = "migrate"
    """Move live keys to the KMS provider `to_provider` (unwrap under the old, wrap under the new)."""
    RETIRE = "retire"
    """Raise each Vault transit key's min_decryption_version as far as no live key needs older versions."""


KmsProviderName = Literal["aws", "vault", "local"]


class PiiOperation(StrEnum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REENCRYPT = "reencrypt"


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# --- inbound -----------------------------------------------------------------


class TenantCreated(_Message):
    event_id: EventId
    tenant_id: TenantId
    occurred_at: AwareDatetime
    kms_key_id: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    key_types: Annotated[list[KeyType], Field(min_length=1, max_length=2)] = [
        KeyType.SIGNING,
        KeyType.ENCRYPTION,
    ]


class TenantDeleted(_Message):
    event_id: EventId
    tenant_id: TenantId
    occurred_at: AwareDatetime


class SpanToSign(_Message):
    job_id: EventId
    tenant_id: TenantId
    span: dict[str, Any]


class PiiRequest(_Message):
    job_id: EventId
    tenant_id: TenantId
    record_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    operation: PiiOperation
    fields: Annotated[dict[FieldPath, str], Field(max_length=256)]


class RotationTick(_Message):
    tick_id: EventId
    issued_at: AwareDatetime
    tenant_id: TenantId | None = None
    key_type: KeyType | None = None
    reason: RotationReason = RotationReason.SCHEDULED
    # set by keyledger itself on the per-tenant ticks a fan-out publishes
    due_before: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    """Only keys created before this instant (ledger time, ns since the epoch) rotate."""
    parent_tick_id: EventId | None = None
    """The tick (without tenant) that fanned this one out."""
    cause: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """Why keyledger itself asked for the rotation, e.g. `wear_out`."""
    action: TickAction | None = None
    """Absent = `rotate`. `rewrap`, `migrate` and `retire` change wrappings, never keys; `reason` is then
    `scheduled` (a cron tick: only keys under an older KEK version) or `manual` (the CLI: every live key)."""
    to_provider: KmsProviderName | None = None
    """`migrate` only: the provider every live key moves to."""


# --- outbound ----------------------------------------------------------------


class Signature(_Message):
    alg: str = "Ed25519"
    key_id: KeyId
    value: str
    signed_at: datetime


class SignedSpan(_Message):
    job_id: EventId
    tenant_id: TenantId
    span: dict[str, Any]
    signature: Signature


class PiiResult(_Message):
    job_id: EventId
    tenant_id: TenantId
    record_id: str
    operation: PiiOperation
    fields: dict[str, str] = {}
    key_id: KeyId | None = None
    errors: dict[str, ErrorInfo] | None = None
    error: ErrorInfo | None = None


class KeyMaterial(_Message):
    """One record per key version on the compacted `keys.material` topic. Never plaintext."""

    key_id: KeyId
    tenant_id: TenantId
    key_type: KeyType
    version: Annotated[int, Field(ge=1, lt=2**24)]
    kms_key_id: str
    wrapped_key: str
    public_key: str | None = None
    created_at: datetime
    kms_provider: KmsProviderName | None = None
    """The provider that wrapped `wrapped_key`; absent = `aws`."""
    kek_version: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    """The KMS key version that wrapped it, when the provider has versions (vault)."""


class KeyEvent(_Message):
    event_id: EventId
    type: KeyEventType
    tenant_id: TenantId
    key_id: KeyId
    key_type: KeyType
    version: int
    occurred_at: datetime
    public_key: str | None = None
    previous_key_id: KeyId | None = None
    tick_id: EventId | None = None
    """On `rotated`/`revoked`: the rotation tick that made this version."""
    reason: RotationReason | None = None
    """On `rotated`: why the key rotated."""


class AuditSource(_Message):
    topic: str
    partition: int
    offset: int


class AuditEvent(_Message):
    event_id: KeyId  # the TigerBeetle transfer id, 32 lowercase hex
    tenant_id: TenantId
    key_id: KeyId
    op: Op
    count: Annotated[int, Field(ge=1)]
    outcome: Outcome
    reason: str = ""
    occurred_at: datetime
    source: AuditSource


class DeadLetter(_Message):
    """A record that could not be processed, as it arrived, with the reason."""

    topic: str
    partition: int
    offset: int
    key: str | None = None  # base64 of the raw key
    headers: list[tuple[str, str]] = []  # (name, base64 of the raw value)
    payload: str | None = None  # base64 of the raw value; None for a tombstone
    error: ErrorInfo
    group: str
    attempts: int = 1
    failed_at: datetime
