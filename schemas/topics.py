"""Topic names of the external contract (docs/contract.md) and the model of each topic's values."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel

from schemas.messages import (
    AuditDigest,
    AuditEvent,
    CallerPolicy,
    DeadLetter,
    DeadLetterReplay,
    KeyEvent,
    KeyMaterial,
    PiiRequest,
    PiiResult,
    RotationTick,
    SignedSpan,
    SpanToSign,
    TenantCreated,
    TenantDeleted,
)


class Topic(StrEnum):
    TENANTS_CREATED = "tenants.created"
    TENANTS_DELETED = "tenants.deleted"
    SPANS_TO_SIGN = "spans.to-sign"
    SPANS_SIGNED = "spans.signed"
    PII_REQUESTS = "pii.requests"
    PII_RESULTS = "pii.results"
    ROTATION_TICKS = "keys.rotation-ticks"
    KEYS_MATERIAL = "keys.material"
    KEYS_EVENTS = "keys.events"
    KMS_AUDIT = "kms.audit"
    KMS_AUDIT_DIGESTS = "kms.audit.digests"
    DLQ = "kms.dlq"
    KEYS_CALLERS = "keys.callers"
    DLQ_REPLAYS = "kms.dlq.replays"


TOPIC_MODELS: Final[dict[Topic, type[BaseModel]]] = {
    Topic.TENANTS_CREATED: TenantCreated,
    Topic.TENANTS_DELETED: TenantDeleted,
    Topic.SPANS_TO_SIGN: SpanToSign,
    Topic.SPANS_SIGNED: SignedSpan,
    Topic.PII_REQUESTS: PiiRequest,
    Topic.PII_RESULTS: PiiResult,
    Topic.ROTATION_TICKS: RotationTick,
    Topic.KEYS_MATERIAL: KeyMaterial,
    Topic.KEYS_EVENTS: KeyEvent,
    Topic.KMS_AUDIT: AuditEvent,
    Topic.KMS_AUDIT_DIGESTS: AuditDigest,
    Topic.DLQ: DeadLetter,
    Topic.KEYS_CALLERS: CallerPolicy,
    Topic.DLQ_REPLAYS: DeadLetterReplay,
}
"""The model of every topic's record values (`keys.material` also carries tombstones: a null value)."""
