"""Typed failures of key operations; each maps to one ErrorCode on the wire."""

from __future__ import annotations

from schemas.errors import ErrorCode, ErrorInfo


class KeyledgerError(Exception):
    """An expected failure of one request. The message is safe to log and publish."""

    code: ErrorCode = ErrorCode.PROCESSING_FAILED

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def info(self) -> ErrorInfo:
        return ErrorInfo(type=self.code, message=str(self))


class BadInput(KeyledgerError):
    code = ErrorCode.INVALID_MESSAGE


class KeyRefused(KeyledgerError):
    """The request names a key it may not use (unknown, foreign, revoked, destroyed, worn out)."""

    code = ErrorCode.KEY_NOT_FOUND


class TransientError(Exception):
    """Infrastructure is briefly unavailable: the batch is retried with backoff, offsets stay uncommitted."""
