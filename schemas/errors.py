"""Typed errors carried by DLQ records and error results."""

from enum import StrEnum

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    # bad input: never retried, goes to kms.dlq at once
    NOT_JSON = "not_json"
    INVALID_MESSAGE = "invalid_message"
    OVERSIZED = "oversized"
    TOO_LARGE = "too_large"  # within the inbound limit, but its output could not be written (refused before any ledger operation)
    MISSING_KEY = "missing_key"
    # refused by key state or isolation
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_DESTROYED = "tenant_destroyed"
    KEY_NOT_FOUND = "key_not_found"
    KEY_REVOKED = "key_revoked"
    KEY_DESTROYED = "key_destroyed"
    FOREIGN_KEY = "foreign_key"
    KEY_WORN_OUT = "key_worn_out"
    MATERIAL_MISMATCH = "material_mismatch"
    # rotation ticks that are not unambiguous or not authorized
    AMBIGUOUS_TICK = "ambiguous_tick"
    UNAUTHORIZED_TICK = "unauthorized_tick"
    CALLER_DENIED = "caller_denied"  # no caller, or one not known, proved, in time or allowed
    # ciphertext problems
    MALFORMED_CIPHERTEXT = "malformed_ciphertext"
    DECRYPT_FAILED = "decrypt_failed"
    # infrastructure, retried with backoff before giving up
    KMS_UNAVAILABLE = "kms_unavailable"
    KMS_REFUSED = "kms_refused"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    PROCESSING_FAILED = "processing_failed"


class ErrorInfo(BaseModel):
    """An error as published: a stable code and a message safe to log (no secrets)."""

    type: ErrorCode
    message: str = Field(max_length=2000)
