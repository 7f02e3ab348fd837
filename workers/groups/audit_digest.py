"""Consumer group `keyledger-audit-digest`: kms.audit -> kms.audit.digests (services/digest.py).

The group holds records after `handle` returns: a record is done only once a published
digest covers it, so the runner commits each partition up to `held()` and flushes on a
timer (digests are due by time as well as by count). Per-partition chain state means it
handles one batch at a time (not pipelined); one replica is enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from schemas.topics import Topic
from workers.core.digest import encode
from workers.groups.base import Deps
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.kafka.tap import read_topic
from workers.keys.versions import VersionMaker
from workers.services.digest import DigestService, SignedDigest

TIMER = 1.0  # seconds between checks for runs that have waited the digest interval


class AuditDigestGroup:
    name: str = "keyledger-audit-digest"
    topics: tuple[str, ...] = (Topic.KMS_AUDIT.value,)
    pipelined: bool = False

    def __init__(self, deps: Deps) -> None:
        bootstrap = deps.bootstrap

        async def read_digests() -> list[bytes | None]:
            return [r.value for r in await read_topic(bootstrap, Topic.KMS_AUDIT_DIGESTS.value, timeout=60)]

        versions = VersionMaker(deps.keys, deps.ledger, deps.materials)
        self.service = DigestService(deps.keys, versions, read_digests, deps.settings.limits.digest_interval,
                                      ledger=deps.ledger)
        self.flush_every = min(TIMER, deps.settings.limits.digest_interval)
        self._emit = deps.emitter(self.name, digest_record)

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        await self.service.take([(r.source, r.value) for r in records])
        await self._seal(self.service.due())
        return []  # nothing waits in the runner: what is not yet digested is held (see `held`)

    async def flush(self) -> None:
        await self._seal(self.service.due())

    def held(self) -> Mapping[tuple[str, int], int]:
        return {(Topic.KMS_AUDIT.value, p): offset for p, offset in self.service.held().items()}

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        self.service.forget(p for topic, p in partitions if topic == Topic.KMS_AUDIT)

    async def _seal(self, partitions: list[int]) -> None:
        if partitions:
            await self._emit((), await self.service.ensure_key(partitions))
            await self._emit((), await self.service.seal(partitions))


def digest_record(signed: SignedDigest) -> Outgoing:
    return Outgoing(Topic.KMS_AUDIT_DIGESTS.value, str(signed.partition).encode(), encode(signed.digest))
