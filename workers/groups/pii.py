"""Consumer group `keyledger-pii`: pii.requests -> pii.results (services/pii.py).

A result is written by `result_value`: a dict in `PiiResult`'s field order dumped by orjson, byte for
byte `PiiResult(...).to_json()` without building the model per record
(tests/services/test_contract_fast_paths.py holds the two together).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import orjson

from schemas.errors import ErrorInfo
from schemas.messages import PiiRequest
from schemas.topics import Topic
from workers.groups.base import Deps
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.budget import EncryptionBudget
from workers.services.pii import PiiAnswer, PiiService


class PiiGroup:
    name: str = "keyledger-pii"
    topics: tuple[str, ...] = (Topic.PII_REQUESTS.value,)
    pipelined: bool = True

    def __init__(self, deps: Deps) -> None:
        self.service = PiiService(deps.keys, EncryptionBudget(deps.ledger, deps.settings.encrypt_limit))
        self._emit = deps.emitter(self.name, result_record)
        self._max_bytes = deps.settings.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, PiiRequest, self._max_bytes))
        outcome = await self.service.serve([(record.source, request) for record, request in parsed])
        return await self._emit(records, outcome.refuse_all((r.source, e) for r, e in refused))


def result_record(answer: PiiAnswer) -> Outgoing:
    source = answer.source
    return Outgoing(Topic.PII_RESULTS.value, answer.request.tenant_id.encode(), result_value(answer),
                    cause=(source.topic, source.partition, source.offset))


def result_value(answer: PiiAnswer) -> bytes:
    """The `pii.results` value of `answer`: members in PiiResult's field order, None left out."""
    request = answer.request
    result: dict[str, object] = {"job_id": request.job_id, "tenant_id": request.tenant_id,
                                 "record_id": request.record_id, "operation": request.operation.value,
                                 "fields": answer.fields}
    if answer.key_id is not None:
        result["key_id"] = answer.key_id
    if answer.errors is not None:
        result["errors"] = {path: _error(info) for path, info in answer.errors.items()}
    if answer.error is not None:
        result["error"] = _error(answer.error)
    try:
        return orjson.dumps(result)  # the same bytes as json's below, in C
    except TypeError:  # a lone surrogate (not UTF-8): json writes it and the publish refuses, as before
        return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()


def _error(info: ErrorInfo) -> dict[str, str]:
    return {"type": info.type.value, "message": info.message}
