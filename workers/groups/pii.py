"""Consumer group `keyledger-pii`: pii.requests -> pii.results (services/pii.py)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.messages import PiiRequest
from schemas.topics import Topic
from workers.groups.base import Deps
from workers.kafka.records import InboundRecord, parse, parse_all
from workers.keys.budget import EncryptionBudget
from workers.services.pii import PiiService


class PiiGroup:
    name: str = "keyledger-pii"
    topics: tuple[str, ...] = (Topic.PII_REQUESTS.value,)
    pipelined: bool = True

    def __init__(self, deps: Deps) -> None:
        self.service = PiiService(deps.keys, EncryptionBudget(deps.ledger, deps.settings.limits.encrypt_limit))
        self._emit = deps.emitter(self.name)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse(record, PiiRequest, self._max_bytes))
        outcome = await self.service.serve(parsed)
        return await self._emit(outcome.refuse_all(refused))
