"""Topic names of the external contract (shared/design.md)."""

from enum import StrEnum


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
