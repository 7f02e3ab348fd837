"""The caller gate: which requests need a caller, and what a refused one leaves behind.

One place for both flows (PII and signing): the group parses a record, asks `CallerGate.admit`,
and passes only admitted requests on to its service, with their `Admission`.

- A request that names a caller is always checked (a caller cannot be claimed without its proof),
  whatever KEYLEDGER_REQUIRE_CALLER says; one without a caller is admitted caller-less only when
  the setting does not require one for its operation.
- A refused request gets a `denied` operation (ledger transfer and `kms.audit` event, `reason` =
  the refusal, naming the caller id when the request names one) against its tenant's active key
  of the flow's type, and a `caller_denied` dead letter (the DLQ's redaction keeps field values
  out of it, even with KEYLEDGER_DLQ_KEEP_PII). Its ids derive from the record's place: a refused
  request has no request id. A tenant without an active key has no account to record against:
  the dead letter says why.
- An admitted request's operations, like every request's, take their transfer ids from the record's
  place (a redelivery is the same record); its transfers name the caller (user_data_128) and the
  request id's first 64 bits (user_data_64, ledger/records.py request_tag), so a copy produced again,
  a second operation at another place, is told apart from a redelivery and linked to its original.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from schemas.messages import CallerOperation, KeyType, Op
from workers.core import ids
from workers.core.callers import Admission, CallerTable, CallerVerifier
from workers.errors import CallerDenied, KeyledgerError
from workers.keys.service import KeyService
from workers.ledger.records import OpRecord
from workers.services.outcome import Outcome
from workers.settings import RequireCaller
from workers.source import Source

CALLER_LESS = Admission(None, None, None)
"""A request admitted without a caller (the setting does not require one for its operation)."""

_REQUIRED = {
    RequireCaller.ALL: frozenset(CallerOperation),
    RequireCaller.DECRYPT: frozenset({CallerOperation.DECRYPT, CallerOperation.REENCRYPT}),
    RequireCaller.NONE: frozenset(),
}


class CallerGate:
    def __init__(self, table: CallerTable, keys: KeyService, require: RequireCaller, *, max_skew: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.table = table
        self._verifier = CallerVerifier(table, max_skew=max_skew)
        self._keys = keys
        self._required = _REQUIRED[require]
        self._clock = clock
        self.denied = 0

    def needs(self, operation: str) -> bool:
        return operation in self._required

    def admit(self, source: Source, request: Mapping[str, Any], tenant_id: str, operation: str, key_type: KeyType,
              outcome: Outcome[Any], *, known_plain: bool = False) -> Admission | None:
        """The request's admission, or None once its refusal is in `outcome` (a denied op and a dead letter)."""
        if request.get("caller") is None and not self.needs(operation):
            return CALLER_LESS
        admission = self._verifier.check(request, tenant_id, operation, self._clock(), known_plain=known_plain)
        if admission.refusal is None:
            return admission
        self.denied += 1
        reason = admission.refusal.value
        outcome.refuse(source, CallerDenied(f"caller {admission.caller_id or '(none)'} denied: {reason}"))
        try:
            entry = self._keys.active(tenant_id, key_type)
        except KeyledgerError:
            return None  # no account to record against; the dead letter says why
        outcome.ops.append(OpRecord(
            transfer_id=ids.transfer_id(Op.DENIED, entry.key_id, "caller", source.topic, source.partition,
                                        source.offset),
            tenant_id=tenant_id, key_id=entry.key_id, op=Op.DENIED, source=source, failed=True, reason=reason,
            caller_id=admission.caller_id, id_parts=("caller",)))
        return None

