"""Consumer group `keyledger-pii`: pii.requests -> pii.results (services/pii.py)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.messages import PiiRequest, PiiResult
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
        self.service = PiiService(deps.keys, EncryptionBudget(deps.ledger, deps.settings.limits.encrypt_limit))
        self._emit = deps.emitter(self.name, result_record)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, PiiRequest, self._max_bytes))
        outcome = await self.service.serve([(record.source, request) for record, request in parsed])
        return await self._emit(records, outcome.refuse_all((r.source, e) for r, e in refused))


def result_record(answer: PiiAnswer) -> Outgoing:
    source = answer.source
    return Outgoing(Topic.PII_RESULTS.value, answer.request.tenant_id.encode(), result_value(answer),
                    cause=(source.topic, source.partition, source.offset))


def result_value(answer: PiiAnswer) -> bytes:
    request = answer.request
    return PiiResult(job_id=request.job_id, tenant_id=request.tenant_id, record_id=request.record_id,
                     operation=request.operation, fields=answer.fields, key_id=answer.key_id, errors=answer.errors,
                     error=answer.error).to_json()
