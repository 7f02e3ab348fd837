"""Consumer group `keyledger-pii`: pii.requests -> pii.results (services/pii.py).

Each parsed request passes the caller gate (services/callers.py) before the service sees it: a refused
caller's request is answered only by its `denied` audit event and a dead letter, never a result. A
decrypt for a caller is written with its fields sealed to that caller (core/results.py: one
HPKE-sealed result key per caller and period, carried as the result's `result_key`; each field
`klr1.`), so no plaintext of a caller's decrypt is ever on the topic. A request whose result could
be larger than a record may be (`result_bound`) is refused `too_large` before any ledger operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.errors import ErrorCode
from schemas.messages import CallerKem, KeyType, PiiOperation, PiiRequest, PiiResult, SealedResultKey
from schemas.topics import Topic
from workers.core.b64 import b64url_decode
from workers.core.callers import Admission, CallerTable
from workers.core.envelope import NONCE_BYTES, TAG_BYTES
from workers.core.results import PREFIX as SEALED_PREFIX
from workers.core.results import RESULT_KEY_BYTES, ResultKeyring, ResultSealError, seal_field
from workers.core.sizes import JSON_ESCAPE_BYTES, b64url_bytes_max, b64url_chars, json_string_len, json_string_max
from workers.errors import MAX_MESSAGE, BadInput, error_info
from workers.groups.base import Deps
from workers.kafka.letters import letter_max_bytes
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord, parse_all, parse_plain
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
        self._max_output = letter_max_bytes(deps.settings)

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, self._parse)
        outcome = Outcome[PiiAnswer]().refuse_all((r.source, e) for r, e in refused)
        admitted: list[tuple[Source, PiiRequest]] = []
        callers: dict[Source, Admission] = {}
        for record, (request, body, plain) in parsed:
            admission = self._admit(record, request, body, plain, outcome)
            if admission is not None:
                admitted.append((record.source, request))
                if admission.caller_id is not None:
                    callers[record.source] = admission
        return await self._emit(records, await self.service.serve(admitted, callers, outcome))

    def _parse(self, record: InboundRecord) -> tuple[PiiRequest, dict[str, Any], bool]:
        """The request, the object it was read from and whether that is plain (core/canonical.py)."""
        request, body, plain = parse_plain(record, PiiRequest, self._max_bytes)
        refuse_too_large(request, self._max_output)
        return request, body, plain

    def _admit(self, record: InboundRecord, request: PiiRequest, body: dict[str, Any], plain: bool,
               outcome: Outcome[PiiAnswer]) -> Admission | None:
        operation = request.operation.value
        if request.caller is None and not self.gate.needs(operation):
            return CALLER_LESS
        # the proof covers the request as sent: its members as read from the record, not the model's
        return self.gate.admit(record.source, body, request.tenant_id, operation, KeyType.ENCRYPTION, outcome,
                               known_plain=plain)


class ResultSealer:
    """Encodes PII results; a caller's decrypt has its fields sealed to that caller (a result key per caller
    and period, kept by this process only)."""

    def __init__(self, callers: CallerTable) -> None:
        self._callers = callers
        self.keyring = ResultKeyring()
        self._written_key: tuple[SealedResultKey, orjson.Fragment] | None = None
        """The last sealed result key and its JSON: every decrypt for a caller in a period carries the same one."""
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
            error = error_info(ErrorCode.CALLER_DENIED,
                               f"caller {answer.caller_id}: the result cannot be sealed to its public key")
            return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                             operation=request.operation, errors=answer.errors, error=error).to_json()
        fields = {path: seal_field(key, request.tenant_id, request.job_id, request.record_id, path, value)
                  for path, value in answer.fields.items()}
        if self._written_key is None or self._written_key[0] is not key.sealed:
            self._written_key = (key.sealed, orjson.Fragment(key.sealed.to_json()))
        return _encode(answer, fields, key.sealed, self._written_key[1])


def result_record(answer: PiiAnswer) -> Outgoing:
    """A result written as the service answered it (no caller to seal to)."""
    source = answer.source
    return Outgoing(Topic.PII_RESULTS.value, answer.request.tenant_id.encode(), result_value(answer),
                    cause=(source.topic, source.partition, source.offset))


def result_value(answer: PiiAnswer) -> bytes:
    return _encode(answer, answer.fields, None)


def _encode(answer: PiiAnswer, fields: dict[str, str], result_key: SealedResultKey | None,
            result_key_json: orjson.Fragment | None = None) -> bytes:
    """`PiiResult.to_json()` of the answer. A result without errors (every field answered) is written
    directly: its members come from a validated request, the key table and this process's own sealing, so
    the model would take them as they are, and orjson writes them as pydantic does (member order, escapes,
    UTF-8). Tied to the model by tests/groups/test_pii_wire.py. `result_key_json`: `result_key` written."""
    request = answer.request
    if answer.errors is None and answer.error is None:
        value: dict[str, Any] = {"job_id": request.job_id, "tenant_id": request.tenant_id,
                                 "record_id": request.record_id, "operation": request.operation.value,
                                 "fields": fields}
        if answer.key_id is not None:
            value["key_id"] = answer.key_id
        if result_key is not None:
            value["result_key"] = orjson.Fragment(result_key.to_json()) if result_key_json is None else result_key_json
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # a string that is not Unicode text (a lone surrogate): the model decides, as before
    return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                     operation=request.operation, fields=fields, key_id=answer.key_id, errors=answer.errors,
                     error=answer.error, result_key=result_key).to_json()


# --- sizes: what a result can take at most (README "Limits") ---------------------------------------

HPKE_ENC_MAX_BYTES = 1120  # the encapsulated key of the largest KEM, ML-KEM-768 + X25519 (X25519: 32)
ERROR_MAX = len('{"type":"","message":""}') + max(len(code.value) for code in ErrorCode) + JSON_ESCAPE_BYTES * MAX_MESSAGE
"""An ErrorInfo as written: its message is at most MAX_MESSAGE characters (workers/errors.py), each at most
JSON_ESCAPE_BYTES bytes."""
RESULT_KEY_MAX = len(f'{{"id":"{"0" * 32}","caller":"{"0" * 32}","kem":"{"x" * max(len(k.value) for k in CallerKem)}",'
                     f'"enc":"{"A" * b64url_chars(HPKE_ENC_MAX_BYTES)}",'
                     f'"sealed_key":"{"A" * b64url_chars(RESULT_KEY_BYTES + TAG_BYTES)}"}}')
SEALED_OVERHEAD = NONCE_BYTES + TAG_BYTES
KL1_PREFIX_CHARS = len("kl1.") + 32 + 1
KLR1_PREFIX_CHARS = len(SEALED_PREFIX) + 32 + 1


def result_bound(request: PiiRequest) -> int:
    """The most bytes the `pii.results` value of `request` takes, whatever its keys, callers and errors:

    the members around the fields (ids as JSON strings, the longest operation, a key id, an empty `fields`
    and `errors`, and the larger of a request `error` (ERROR_MAX) and a `result_key` (RESULT_KEY_MAX)),
    plus for each field its path as a JSON string, a colon and a comma, and the larger of an ErrorInfo and
    its value once processed, for a value of n UTF-8 bytes (or, for a ciphertext, of at most
    n = floor(3 * (chars - 37) / 4) - 28 plaintext bytes):
    - encrypt, reencrypt: `kl1.<key_id>.` + base64url(12 + n + 16), quoted;
    - decrypt: the plaintext as a JSON string (6n + 2), or sealed to a caller `klr1.<id>.` +
      base64url(12 + n + 16), quoted.
    The worst expansion of a field is therefore about 4/3 for encrypt and reencrypt, 6 for a decrypt
    (a plaintext of control characters), and every field may instead carry an error of ERROR_MAX bytes.
    """
    around = (len('{"job_id":,"tenant_id":,"record_id":,"operation":"reencrypt","fields":{},"key_id":"","errors":{}}')
              + json_string_len(request.job_id) + json_string_len(request.tenant_id)
              + json_string_len(request.record_id) + 32 + max(len(',"error":') + ERROR_MAX,
                                                                len(',"result_key":') + RESULT_KEY_MAX))
    operation = request.operation
    total = around
    for path, value in request.fields.items():
        if operation is PiiOperation.ENCRYPT:
            written = 2 + KL1_PREFIX_CHARS + b64url_chars(len(value.encode()) + SEALED_OVERHEAD)
        else:
            plain = max(0, b64url_bytes_max(max(0, len(value) - KL1_PREFIX_CHARS)) - SEALED_OVERHEAD)
            if operation is PiiOperation.REENCRYPT:
                written = 2 + KL1_PREFIX_CHARS + b64url_chars(plain + SEALED_OVERHEAD)
            else:
                written = max(json_string_max(plain), 2 + KLR1_PREFIX_CHARS + b64url_chars(plain + SEALED_OVERHEAD))
        total += json_string_len(path) + 2 + max(written, ERROR_MAX)
    return total


def refuse_too_large(request: PiiRequest, max_output: int) -> None:
    """BadInput `too_large` when the result of `request` (value and key) could exceed `max_output` bytes:
    refused before any ledger operation, so nothing is charged or audited for a result never written."""
    size = result_bound(request) + len(request.tenant_id)
    if size > max_output:
        raise BadInput(f"its result could take {size} bytes, over the {max_output} a written record may have",
                       ErrorCode.TOO_LARGE)
