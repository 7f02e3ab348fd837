"""The two families of failure every layer shares.

- `KeyledgerError`: an expected failure of one request (bad input, a key it may
  not use). It maps to one ErrorCode on the wire; its message is safe to log and
  publish and never echoes input bytes.
- `Unavailable`: infrastructure is briefly out of reach (KMS, ledger, a key the
  table has not caught up with). Each port's own error derives from it; the
  batch runner treats the whole family as transient: the records wait,
  uncommitted, and are retried with backoff.
"""

from __future__ import annotations

from schemas.errors import ErrorCode, ErrorInfo

MAX_MESSAGE = 500  # characters; ErrorInfo allows more, but a message never needs to quote its input


def bounded(message: str) -> str:
    """`message` cut to MAX_MESSAGE characters: every message that reaches the wire goes through here."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def error_info(code: ErrorCode, message: str) -> ErrorInfo:
    """An ErrorInfo whose message is bounded, so building a result or a letter never fails on it."""
    return ErrorInfo(type=code, message=bounded(message))


class KeyledgerError(Exception):
    """An expected failure of one request. The message is safe to log and publish."""

    code: ErrorCode = ErrorCode.PROCESSING_FAILED

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(bounded(message))
        if code is not None:
            self.code = code

    def info(self) -> ErrorInfo:
        return error_info(self.code, str(self))


class BadInput(KeyledgerError):
    code = ErrorCode.INVALID_MESSAGE


class KeyRefused(KeyledgerError):
    """The request names a key it may not use (unknown, foreign, revoked, destroyed, worn out)."""

    code = ErrorCode.KEY_NOT_FOUND


class TickRefused(KeyledgerError):
    """A rotation tick that is ambiguous (its key unknown, or another tenant's) or not authorized
    (it would rotate keys of several tenants now without the operator's signature)."""

    code = ErrorCode.AMBIGUOUS_TICK


class CallerDenied(KeyledgerError):
    """The request's caller is missing, unknown, revoked, unproved, out of time or not allowed; the message
    names the caller id (when the request names one) and the reason, never a field value."""

    code = ErrorCode.CALLER_DENIED


class Unavailable(Exception):
    """Transient: the records wait uncommitted and are retried with backoff; never counts as an attempt."""

    setting = ""
    """The settings an operator checks while this stays out of reach (named by the retry log line)."""


def what_to_check(exc: BaseException) -> str:
    """Why records wait: `exc`'s message and, when its kind names them, the settings to check."""
    setting = getattr(exc, "setting", "")
    return f"{exc}; check {setting}" if setting else str(exc)


class OperatorError(Exception):
    """A failure of a CLI verb that the operator can fix: printed as one line, no traceback.

    The message names the setting or input at fault and the fix; it never quotes a secret.
    """

    exit_code = 1


class ConfigError(OperatorError):
    """A setting or argument is wrong or names something unreachable (exit 2)."""

    exit_code = 2


class CheckFailed(OperatorError):
    """The verb ran and what it checked does not hold (exit 1)."""

    exit_code = 1
