"""Consumer group `keyledger-signer`: spans.to-sign -> spans.signed, at line speed.

Per batch: parse, find each tenant's active signing key (cache; concurrent
misses make one KMS call), sign, then make it durable in one go: one `sign`
transfer per (key, batch) whose amount is the number of spans, one publish of
all signed spans and audit events, awaited together. Spans whose key cannot be
unwrapped right now (KMS unreachable) wait and are retried; their offsets are
not committed. Unknown tenants, revoked or destroyed keys and malformed spans
go to `kms.dlq` with a typed error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from faststream.kafka import KafkaBroker

from schemas.errors import ErrorCode
from schemas.messages import KeyType, Op
from schemas.topics import Topic
from workers.audit import AuditTrail
from workers.core import ids
from workers.core.canonical import CanonicalizationError, plain_json_loads
from workers.core.signing import ALG, sign, signing_input
from workers.errors import BadInput, KeyledgerError, TransientError
from workers.kafka.consume import run_group
from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord, letter_for
from workers.keys import KeyService
from workers.keystore.directory import KeyEntry
from workers.ledger.records import OpRecord
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.context import ProcessContext

GROUP = "keyledger-signer"
TOPICS = (Topic.SPANS_TO_SIGN.value,)
MAX_ID = 200


@dataclass(slots=True)
class Job:
    record: InboundRecord
    job_id: str
    tenant_id: str
    span: dict[str, Any]
    plain: bool = False  # known at parse time to need no RFC 8785 number or key-order care


@dataclass(slots=True)
class KeyBatch:
    entry: KeyEntry
    jobs: list[Job] = field(default_factory=list)


class SignerService:
    def __init__(self, keys: KeyService, audit: AuditTrail, publisher: Publisher, settings: Settings) -> None:
        self._keys = keys
        self._audit = audit
        self._publisher = publisher
        self._max_bytes = settings.max_message_bytes
        self.signed = 0

    async def handle(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        dead: list[Outgoing] = []
        by_key: dict[str, KeyBatch] = {}
        for record in records:
            try:
                job = parse_job(record, self._max_bytes)
                entry = self._keys.active(job.tenant_id, KeyType.SIGNING)
            except KeyledgerError as exc:
                dead.append(_letter(record, exc))
                continue
            by_key.setdefault(entry.key_id, KeyBatch(entry)).jobs.append(job)
        blocked = await self._unwrap_missing(by_key, dead)
        signed_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        outputs: list[Outgoing] = []
        ops: list[OpRecord] = []
        for key_id, batch in by_key.items():
            private_key = self._keys.cached_secret(key_id)
            assert isinstance(private_key, Ed25519PrivateKey)
            outputs.extend(self._sign_all(batch, private_key, signed_at, dead))
            if batch.jobs:
                ops.append(_sign_op(batch))
        audits = await self._audit.record(ops)
        await self._publisher.publish([*outputs, *audits, *dead])
        self.signed += len(outputs)
        return blocked

    async def _unwrap_missing(self, by_key: dict[str, KeyBatch], dead: list[Outgoing]) -> list[InboundRecord]:
        """Unwrap keys not in the cache; returns the records that must wait (KMS unreachable)."""
        failures = await self._keys.unwrap_missing(b.entry for b in by_key.values())
        blocked: list[InboundRecord] = []
        for key_id, failure in failures.items():
            batch = by_key.pop(key_id)
            if isinstance(failure, TransientError):
                blocked.extend(job.record for job in batch.jobs)
            else:
                dead.extend(_letter(job.record, failure) for job in batch.jobs)
        return blocked

    def _sign_all(self, batch: KeyBatch, private_key: Ed25519PrivateKey, signed_at: str,
                  dead: list[Outgoing]) -> list[Outgoing]:
        key_id = batch.entry.key_id
        outputs = []
        kept = []
        for job in batch.jobs:
            try:
                message = signing_input(job.tenant_id, key_id, job.span, known_plain=job.plain)
            except CanonicalizationError as exc:
                dead.append(_letter(job.record, BadInput(f"span has no RFC 8785 form: {exc}")))
                continue
            kept.append(job)
            signature = {"alg": ALG, "key_id": key_id, "value": sign(private_key, message), "signed_at": signed_at}
            outputs.append(Outgoing(Topic.SPANS_SIGNED.value, job.tenant_id.encode(), _signed_record(job, signature)))
        batch.jobs = kept
        return outputs


def _signed_record(job: Job, signature: dict[str, str]) -> bytes:
    """The request as it arrived plus its signature: splicing the raw object saves re-serialising the span."""
    raw = (job.record.value or b"").rstrip()
    suffix = b',"signature":' + json.dumps(signature, separators=(",", ":")).encode() + b"}"
    return raw[:-1] + suffix


def parse_job(record: InboundRecord, max_bytes: int) -> Job:
    """The hot path's parser: the same rules as schemas.SpanToSign, without model overhead."""
    value = record.value
    if value is None:
        raise BadInput("tombstone (null value) where a span was expected")
    if len(value) > max_bytes:
        raise BadInput(f"record of {len(value)} bytes exceeds {max_bytes}", ErrorCode.OVERSIZED)
    try:
        data, plain = plain_json_loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise BadInput("value is not UTF-8 JSON", ErrorCode.NOT_JSON) from None
    if not isinstance(data, dict):
        raise BadInput("value is not a JSON object")
    if "signature" in data:
        raise BadInput("invalid SpanToSign: signature: a span to sign carries no signature yet")
    job_id, tenant_id, span = data.get("job_id"), data.get("tenant_id"), data.get("span")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID:
        raise BadInput("invalid SpanToSign: job_id: missing or not a string of 1..200 characters")
    if not isinstance(tenant_id, str) or not _TENANT_ID(tenant_id):
        raise BadInput("invalid SpanToSign: tenant_id: missing or malformed")
    if not isinstance(span, dict):
        raise BadInput("invalid SpanToSign: span: missing or not a JSON object")
    return Job(record, job_id, tenant_id, span, plain)


_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$").fullmatch  # schemas.messages.TenantId


def _sign_op(batch: KeyBatch) -> OpRecord:
    """One transfer for the batch's spans under one key; its id is derived from the records it covers."""
    first, last = batch.jobs[0].record, batch.jobs[-1].record
    covered = (first.topic, first.partition, first.offset, last.partition, last.offset, len(batch.jobs))
    return OpRecord(
        transfer_id=ids.transfer_id(Op.SIGN, batch.entry.key_id, *covered),
        tenant_id=batch.entry.tenant_id,
        key_id=batch.entry.key_id,
        op=Op.SIGN,
        source=first.source,
        count=len(batch.jobs),
        reason="spans signed",
    )


def _letter(record: InboundRecord, exc: KeyledgerError) -> Outgoing:
    return letter_for(record, exc.info(), GROUP)


def register(broker: KafkaBroker, context: ProcessContext) -> SignerService:
    service = SignerService(context.keys, context.audit, context.publisher, context.settings)
    run_group(context, GROUP, TOPICS, service.handle, pipelined=True)
    return service
