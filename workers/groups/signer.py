"""Consumer group `keyledger-signer`: spans.to-sign -> spans.signed (services/signing.py)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.topics import Topic
from workers.groups.base import Deps
from workers.kafka.records import InboundRecord, parse_all
from workers.services.signing import SignerService, parse_job


class SignerGroup:
    name: str = "keyledger-signer"
    topics: tuple[str, ...] = (Topic.SPANS_TO_SIGN.value,)
    pipelined: bool = True

    def __init__(self, deps: Deps) -> None:
        self.service = SignerService(deps.keys)
        self._emit = deps.emitter(self.name)
        self._max_bytes = deps.settings.kafka.max_message_bytes

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse_job(record, self._max_bytes))
        outcome = await self.service.sign([job for _, job in parsed])
        return await self._emit(outcome.refuse_all(refused))
