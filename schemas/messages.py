"""Message models, one per topic of docs/contract.md.

Inbound models accept extra fields (producers may add more); outbound models
serialise with `to_json()` so every producer writes the same bytes for the
same content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.errors import ErrorInfo

TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SYSTEM_TENANT = "keyledger-system"
"""Reserved tenant id of keyledger's own keys (the audit digest key): onboarding refuses it, listings skip it."""
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


KmsProviderName = Literal["aws", "vault", "local", "pkcs11", "gcp", "azure"]


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
    """A span to sign carries no `signature` member yet: the signer appends one to the record as it
    arrived, and a second `signature` would make the signed record's meaning depend on which
    duplicate a reader keeps."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["signature"]}})

    job_id: EventId
    tenant_id: TenantId
    span: dict[str, Any]
    caller: CallerProof | None = None
    """Who asks (docs/contract.md "Callers"); required when KEYLEDGER_REQUIRE_CALLER=all."""

    @model_validator(mode="after")
    def _not_signed_yet(self) -> SpanToSign:
        if self.model_extra and "signature" in self.model_extra:
            raise ValueError("a span to sign carries no signature yet")
        return self


class PiiRequest(_Message):
    job_id: EventId
    tenant_id: TenantId
    record_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    operation: PiiOperation
    fields: Annotated[dict[FieldPath, str], Field(max_length=256)]
    caller: CallerProof | None = None
    """Who asks (docs/contract.md "Callers"): required for decrypt and reencrypt unless
    KEYLEDGER_REQUIRE_CALLER=none, and for encrypt too when it is `all`."""


WEAR_OUT = "wear_out"  # RotationTick.cause when a key's encryption budget is spent


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
    key_id: KeyId | None = None
    """Rotate only while this key is still the active one (a wear-out tick names the spent key)."""
    action: TickAction | None = None
    """Absent = `rotate`. `rewrap`, `migrate` and `retire` change wrappings, never keys; `reason` is then
    `scheduled` (a cron tick: only keys under an older KEK version) or `manual` (the CLI: every live key)."""
    to_provider: KmsProviderName | None = None
    """`migrate` only: the provider every live key moves to."""
    operator_signature: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """Ed25519 of the operator key (workers/core/operator_ticks.py): required on a `manual` or `compromise`
    tick that names neither tenant nor key and so would rotate keys of more than one tenant."""


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
    result_key: SealedResultKey | None = None
    """A decrypt for a caller: the result key its `fields` (each `klr1.`) are sealed under, sealed to the caller."""


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
    """The KMS key version that wrapped it, when the provider has versions (vault, pkcs11, gcp, azure)."""


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


OffsetRun = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
"""One offset, or an inclusive [first, last] run of offsets."""


class AuditRanges(_Message):
    """The records of one input partition a grouped audit event accounts for (docs/contract.md)."""

    topic: str
    partition: Annotated[int, Field(ge=0)]
    offsets: Annotated[list[OffsetRun], Field(min_length=1)]


class AuditEvent(_Message):
    """One audited operation (with `source`: event_id is its transfer id), or a group of them (without:
    one transfer per record its `sources` name, event_id the transfer of the first;
    keys/audit.py expands them). `id_parts` and `id_wrap` say how a grouped event's transfer ids derive
    from what it names."""

    event_id: KeyId  # a TigerBeetle transfer id, 32 lowercase hex
    tenant_id: TenantId
    key_id: KeyId
    op: Op
    count: Annotated[int, Field(ge=1)]
    outcome: Outcome
    reason: str = ""
    occurred_at: datetime
    source: AuditSource | None = None
    sources: list[AuditRanges] | None = None
    id_parts: list[str] | None = None
    id_wrap: str | None = None
    caller_id: CallerId | None = None
    """The caller of the operation (or the one a refused request named); absent for operations without one."""
    kms_provider: KmsProviderName | None = None
    """Lifecycle events (`generate`, `rewrap`, `destroy`): the KMS provider that wraps the key version
    after the operation (a `rewrap` of a migration names the new provider); absent on every other op."""
    kms_key_id: str | None = None
    """With `kms_provider`: the KMS key (id or ARN, as keys.material records it) that wraps the version."""
    kek_version: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    """With `kms_provider`, when the provider has key versions (vault, pkcs11, gcp, azure)."""
    kms_deletion_date: datetime | None = None
    """A `destroy` whose shred schedules the tenant's own KMS key for deletion: the date that key is
    deleted at the earliest (the destroy's ledger time plus the KMS pending window)."""


Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Offset = Annotated[int, Field(ge=0, le=2**53 - 1)]  # RFC 8785 numbers: exact up to 2^53


class AuditDigest(_Message):
    """One signed link of the per-partition hash chain on `kms.audit.digests` (key = the partition, as text).

    Covers the `kms.audit` records of `partition` from `first_offset` to `last_offset` (both
    included, `count` records); byte formats and the signed bytes are in workers/core/digest.py.
    `previous_digest_sha256` is 64 zeros on a partition's first digest.
    """

    partition: Annotated[int, Field(ge=0, lt=2**31)]
    first_offset: Offset
    last_offset: Offset
    count: Annotated[int, Field(ge=1)]
    records_sha256: Sha256Hex
    previous_digest_sha256: Sha256Hex
    created_at: datetime
    key_id: KeyId
    signature: str
    """Ed25519, base64url without padding, over RFC 8785 JSON of every other member."""


class DeadLetter(_Message):
    """A record that could not be processed, as it arrived, with the reason.

    Two exceptions to "as it arrived" (docs/contract.md), both flagged so a reader never mistakes
    a partial payload for the record:

    - a `pii.requests` record keeps its field values only when KEYLEDGER_DLQ_KEEP_PII=true; otherwise
      `payload` is a redacted JSON copy (each `fields` value, and any member the contract does not
      name, replaced by `{"length": <UTF-8 bytes>, "sha256": <hex>}`), or None when the value is not
      a JSON object at all; `payload_redacted` is then true;
    - a letter never exceeds the largest record the broker takes: a payload that does not fit keeps
      its first bytes (`payload_truncated`); headers, then the key, that alone do not fit are
      dropped (`headers_dropped`, `key_dropped`).

    Whenever `payload` is not the whole original value, `payload_size` and `payload_sha256` describe
    the original value (its length in bytes and SHA-256, hex), so the letter still identifies it.
    """

    topic: str
    partition: int
    offset: int
    key: str | None = None  # base64 of the raw key
    headers: list[tuple[str, str | None]] = []  # (name, base64 of the raw value, or None for a null value)
    payload: str | None = None  # base64 of the raw value (or its redacted/truncated form); None for a tombstone
    payload_size: Annotated[int, Field(ge=0)] | None = None
    payload_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    payload_truncated: bool = False
    payload_redacted: bool = False
    headers_dropped: bool = False
    key_dropped: bool = False
    error: ErrorInfo
    group: str
    attempts: int = 1
    failed_at: datetime


class DeadLetterReplay(_Message):
    """One replay of a `kms.dlq` letter to its original topic, on `kms.dlq.replays` (key = `letter`, kept forever).

    `letter` names the letter as `<kms.dlq partition>/<offset>`; `topic`, `partition`, `offset` are the
    original record's coordinates (as in the letter) and `replayed_partition`, `replayed_offset` where
    the replay landed on `topic`. Written after the replay is acknowledged: `keyledger dlq replay`
    skips a letter that has one, so a letter is answered once however often it is replayed.
    """

    letter: Annotated[str, StringConstraints(pattern=r"^[0-9]+/[0-9]+$")]
    topic: str
    partition: int
    offset: int
    replayed_partition: int
    replayed_offset: int
    error_code: str
    group: str
    tenant_id: str | None = None
    replayed_at: datetime


# --- callers (docs/contract.md "Callers") -------------------------------------

CALLER_ID_PATTERN = r"^[0-9a-f]{32}$"
CALLER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
CallerId = Annotated[str, StringConstraints(pattern=CALLER_ID_PATTERN)]
CallerName = Annotated[str, StringConstraints(pattern=CALLER_NAME_PATTERN)]
B64Url = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$")]
ALL_TENANTS = "*"


class CallerOperation(StrEnum):
    """What a caller may be allowed to ask for: the three PII operations and signing a span."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REENCRYPT = "reencrypt"
    SIGN = "sign"


class CallerRefusal(StrEnum):
    """Why a request's caller was refused (the `reason` of its `denied` audit event)."""

    UNKNOWN_CALLER = "unknown_caller"
    BAD_PROOF = "bad_proof"
    EXPIRED = "expired"
    NOT_ALLOWED = "not_allowed"
    REVOKED = "revoked"


class CallerKem(StrEnum):
    """The HPKE KEM a caller's result keys are sealed with (suite: this KEM, HKDF-SHA256, AES-256-GCM)."""

    X25519 = "x25519"
    """DHKEM(X25519, HKDF-SHA256), RFC 9180 KEM id 0x0020."""
    MLKEM768_X25519 = "mlkem768-x25519"
    """The post-quantum hybrid ML-KEM-768 + X25519, HPKE KEM id 0x647a."""


class CallerProof(_Message):
    """The `caller` member of a request: who asks, when, and the HMAC-SHA-256 proof over the request."""

    id: CallerId
    at: Annotated[str, StringConstraints(min_length=20, max_length=40)]
    """RFC 3339 UTC with a `Z` (e.g. `2026-01-01T00:00:00.000000Z`)."""
    proof: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
    """HMAC-SHA-256 (32 bytes), base64url without padding."""


class CallerPolicy(_Message):
    """One record of the compacted `keys.callers` topic (key = `caller_id`), signed by the operator key.

    `signature` is Ed25519 (base64url, no padding) over the policy context string followed by the
    RFC 8785 bytes of the record without `signature` (workers/core/callers.py). Never a plaintext secret.
    """

    caller_id: CallerId
    name: CallerName
    tenants: Annotated[list[TenantId], Field(min_length=1, max_length=10_000)] | Literal["*"]
    operations: Annotated[list[CallerOperation], Field(min_length=1, max_length=4)]
    kem: CallerKem
    public_key: B64Url
    """The caller's HPKE public key, raw (X25519: 32 bytes; hybrid: ML-KEM-768's 1184 then X25519's 32)."""
    wrapped_secret: str
    """The caller's 32-byte HMAC secret wrapped by the KMS (base64), encryption context {"caller_id": id}."""
    kms_key_id: str
    kms_provider: KmsProviderName | None = None
    """The provider that wrapped `wrapped_secret`; absent = `aws`."""
    created_at: datetime
    revoked: bool = False
    version: Annotated[int, Field(ge=1, le=2**53 - 1)]
    signature: B64Url


class SealedResultKey(_Message):
    """A result key sealed with HPKE to one caller (`result_key` of a sealed result)."""

    id: KeyId
    caller: CallerId
    kem: CallerKem
    enc: B64Url
    """The HPKE encapsulated key."""
    sealed_key: B64Url
    """The 32-byte result key, HPKE-sealed (ciphertext || tag)."""


for _model in (SpanToSign, PiiRequest, PiiResult, AuditEvent):  # they name caller models defined below them
    _model.model_rebuild()
del _model
