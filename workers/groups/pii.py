"""Consumer group `keyledger-pii`: pii.requests -> pii.results (services/pii.py).

Each parsed request passes the caller gate (services/callers.py) before the service sees it: a refused
caller's request is answered only by its `denied` audit event and a dead letter, never a result. A
decrypt for a caller is written with its fields sealed to that caller (core/results.py: one
HPKE-sealed result key per caller and period, carried as the result's `result_key`; each field
`klr1.`), so no plaintext of a caller's decrypt is ever on the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import KeyType, PiiOperation, PiiRequest, PiiResult, SealedResultKey
from schemas.topics import Topic
from workers.core.b64 import b64url_decode
from workers.core.callers import Admission, CallerTable
from workers.core.canonical import NotIJson, loads_ijson
from workers.core.results import ResultKeyring, ResultSealError, seal_field
from workers.groups.base import Deps
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.budget import EncryptionBudget
from workers.services.callers import CALLER_LESS
from workers.services.outcome import Outcome
from workers.services.pii import PiiAnswer, PiiService
from workers.source import Source


class PiiGroup:
    name: str = "keyledger-pii"
    topics: tuple[str, ...] = (Topic.PII_REQUESTS.value,)
    pipelined: bool = True

    def __init__(self, deps: Deps) -> None:
        self.service = PiiService(deps.keys, EncryptionBudget(deps.ledger, deps.settings.limits.encrypt_limit))
        self.gate = deps.caller_gate()
        self.sealer = ResultSealer(deps.callers)
        self._emit = deps.emitter(self.name, self.sealer.result_record)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, PiiRequest, self._max_bytes))
        outcome = Outcome[PiiAnswer]().refuse_all((r.source, e) for r, e in refused)
        admitted: list[tuple[Source, PiiRequest]] = []
        callers: dict[Source, Admission] = {}
        for record, request in parsed:
            admission = self._admit(record, request, outcome)
            if admission is not None:
                admitted.append((record.source, request))
                if admission.caller_id is not None:
                    callers[record.source] = admission
        return await self._emit(records, await self.service.serve(admitted, callers, outcome))

    def _admit(self, record: InboundRecord, request: PiiRequest, outcome: Outcome[PiiAnswer]) -> Admission | None:
        operation = request.operation.value
        if request.caller is None and not self.gate.needs(operation):
            return CALLER_LESS
        try:  # the proof covers the request as sent: its members as parsed from the record, not the model's
            body = loads_ijson(record.value or b"")
        except (NotIJson, RecursionError):
            body = {}
        return self.gate.admit(record.source, body if isinstance(body, dict) else {}, request.tenant_id, operation,
                               KeyType.ENCRYPTION, outcome)


class ResultSealer:
    """Encodes PII results; a caller's decrypt has its fields sealed to that caller (a result key per caller
    and period, kept by this process only)."""

    def __init__(self, callers: CallerTable) -> None:
        self._callers = callers
        self.keyring = ResultKeyring()
        callers.watch(self.keyring.forget)  # a revoked or re-keyed caller's result key goes with its old record

    def result_record(self, answer: PiiAnswer) -> Outgoing:
        source = answer.source
        return Outgoing(Topic.PII_RESULTS.value, answer.request.tenant_id.encode(), self.result_value(answer),
                        cause=(source.topic, source.partition, source.offset))

    def result_value(self, answer: PiiAnswer) -> bytes:
        if answer.caller_id is None or answer.request.operation is not PiiOperation.DECRYPT or not answer.fields:
            return result_value(answer)
        request = answer.request
        caller = self._callers.get(answer.caller_id)
        try:
            if caller is None:
                raise ResultSealError("the caller is no longer known")
            key = self.keyring.key_for(answer.caller_id, caller.policy.kem, b64url_decode(caller.policy.public_key),
                                       datetime.now(UTC))
        except (ResultSealError, ValueError):
            # never plaintext instead: the fields are withheld and the result says why
            error = ErrorInfo(type=ErrorCode.CALLER_DENIED,
                              message=f"caller {answer.caller_id}: the result cannot be sealed to its public key")
            return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                             operation=request.operation, errors=answer.errors, error=error).to_json()
        fields = {path: seal_field(key, request.tenant_id, request.job_id, request.record_id, path, value)
                  for path, value in answer.fields.items()}
        return _encode(answer, fields, key.sealed)


def result_record(answer: PiiAnswer) -> Outgoing:
    """A result written as the service answered it (no caller to seal to)."""
    source = answer.source
    return Outgoing(Topic.PII_RESULTS.value, answer.request.tenant_id.encode(), result_value(answer),
                    cause=(source.topic, source.partition, source.offset))


def result_value(answer: PiiAnswer) -> bytes:
    return _encode(answer, answer.fields, None)


def _encode(answer: PiiAnswer, fields: dict[str, str], result_key: SealedResultKey | None) -> bytes:
    request = answer.request
    return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                     operation=request.operation, fields=fields, key_id=answer.key_id, errors=answer.errors,
                     error=answer.error, result_key=result_key).to_json()
