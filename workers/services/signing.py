"""Span signing: spans.to-sign -> spans.signed, at line speed.

Per batch: find each tenant's active signing key (cache; concurrent
misses make one KMS call), sign, then make it durable in one go: one `sign`
transfer per (key, batch) whose amount is the number of spans, one publish of
all signed spans and audit events, awaited together (groups/emit). Spans whose key cannot be
unwrapped right now (KMS unreachable) wait and are retried; their offsets are
not committed. Unknown tenants, revoked or destroyed keys and malformed spans
go to `kms.dlq` with a typed error.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.errors import ErrorCode
from schemas.messages import SYSTEM_TENANT, TENANT_ID_PATTERN, KeyType, Op
from schemas.topics import Topic
from workers.core import ids
from workers.core.b64 import b64url_encode
from workers.core.canonical import CanonicalizationError, NotIJson, plain_json_loads
from workers.core.signing import ALG, signing_input
from workers.errors import BadInput, KeyledgerError
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry
from workers.ledger.records import OpRecord
from workers.services.outcome import Outcome

MAX_ID = 200  # schemas.messages.EventId


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
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys
        self.signed = 0

    async def sign(self, jobs: Sequence[Job]) -> Outcome:
        outcome = Outcome()
        by_key: dict[str, KeyBatch] = {}
        for job in jobs:
            try:
                entry = self._keys.active(job.tenant_id, KeyType.SIGNING)
            except KeyledgerError as exc:
                if self._keys.waits_for_tenant(exc, job.record):
                    outcome.blocked.append(job.record)  # its tenant's keys may be on their way
                else:
                    outcome.refuse(job.record, exc)
                continue
            batch = by_key.get(entry.key_id)
            if batch is None:
                batch = by_key[entry.key_id] = KeyBatch(entry)
            batch.jobs.append(job)
        await self._unwrap_missing(by_key, outcome)
        signed_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        keys, messages, kept = self._signing_inputs(by_key, outcome)
        signatures = await self._signatures(keys, messages)
        outcome.outputs.extend(_signed_outputs(kept, signatures, signed_at))
        outcome.ops.extend(_sign_op(entry, job.record) for entry, job in kept)
        self.signed += len(outcome.outputs)
        return outcome

    async def _unwrap_missing(self, by_key: dict[str, KeyBatch], outcome: Outcome) -> None:
        """Unwrap keys not in the cache; spans whose key cannot be had right now wait, refused ones are refused."""
        failures = await self._keys.unwrap_missing(b.entry for b in by_key.values())
        for key_id, failure in failures.items():
            batch = by_key.pop(key_id)
            if isinstance(failure, KeyledgerError):
                outcome.dead.extend((job.record, failure) for job in batch.jobs)
            else:
                outcome.blocked.extend(job.record for job in batch.jobs)

    def _signing_inputs(self, by_key: dict[str, KeyBatch], outcome: Outcome
                        ) -> tuple[list[Ed25519PrivateKey], list[bytes], list[tuple[KeyEntry, Job]]]:
        """The private key and RFC 8785 bytes of every span that has them; a span without an RFC 8785
        form is refused here."""
        keys, messages, kept = [], [], []
        for key_id, batch in by_key.items():
            private_key = self._keys.cached_secret(key_id)
            assert isinstance(private_key, Ed25519PrivateKey)
            for job in batch.jobs:
                try:
                    messages.append(signing_input(job.tenant_id, key_id, job.span, known_plain=job.plain))
                except CanonicalizationError as exc:
                    outcome.refuse(job.record, BadInput(f"span has no RFC 8785 form: {exc}"))
                    continue
                keys.append(private_key)
                kept.append((batch.entry, job))
        return keys, messages, kept

    async def _signatures(self, keys: list[Ed25519PrivateKey], messages: list[bytes]) -> list[bytes]:
        """Ed25519 releases the interpreter lock while it signs (~37 us a span), so a batch is signed on
        a thread while the event loop parses, audits and publishes the next batches: the worker uses a
        second core for the one cost that dominates. Small batches are not worth the thread hop."""
        if len(messages) < THREAD_MIN_BATCH:
            return _sign_each(keys, messages)
        return await asyncio.to_thread(_sign_each, keys, messages)


THREAD_MIN_BATCH = 64


def _sign_each(keys: list[Ed25519PrivateKey], messages: list[bytes]) -> list[bytes]:
    return [key.sign(message) for key, message in zip(keys, messages, strict=True)]


def _signed_outputs(kept: list[tuple[KeyEntry, Job]], signatures: list[bytes], signed_at: str) -> list[Outgoing]:
    topic = Topic.SPANS_SIGNED.value
    tail = f'","signed_at":"{signed_at}"}}}}'.encode()
    heads: dict[str, bytes] = {}
    outputs = []
    for (entry, job), signature in zip(kept, signatures, strict=True):
        # the signature member around its value: every part is of a JSON-safe alphabet (the alg, a hex key
        # id, base64url, an RFC 3339 time), so it is written as it stands (json.dumps cost ~5 us a span)
        head = heads.get(entry.key_id)
        if head is None:
            head = heads[entry.key_id] = f',"signature":{{"alg":"{ALG}","key_id":"{entry.key_id}","value":"'.encode()
        member = head + b64url_encode(signature).encode() + tail
        outputs.append(Outgoing(topic, job.tenant_id.encode(), _spliced(job, member), cause=job.record.coordinates))
    return outputs


def _spliced(job: Job, signature_member: bytes) -> bytes:
    """The request as it arrived plus its signature: splicing the raw object saves re-serialising the span."""
    return (job.record.value or b"").rstrip()[:-1] + signature_member


def parse_job(record: InboundRecord, max_bytes: int) -> Job:
    """The hot path's parser: accepts exactly what SpanToSign.model_validate_json accepts, without model
    overhead (tests/services/test_contract_fast_paths.py holds them together)."""
    value = record.value
    if value is None:
        raise BadInput("tombstone (null value) where a span was expected")
    if len(value) > max_bytes:
        raise BadInput(f"record of {len(value)} bytes exceeds {max_bytes}", ErrorCode.OVERSIZED)
    try:
        data, plain = plain_json_loads(value)
    except NotIJson as exc:  # not UTF-8, a BOM, not JSON, a duplicate name, a number without a value
        raise BadInput(str(exc), exc.code) from None
    except RecursionError:
        raise BadInput("value nests too deeply", ErrorCode.NOT_JSON) from None
    _refuse_what_the_model_cannot_parse(value, data, plain)
    if not isinstance(data, dict):
        raise BadInput("value is not a JSON object")
    if "signature" in data:
        raise BadInput("invalid SpanToSign: signature: a span to sign carries no signature yet")
    job_id, tenant_id, span = data.get("job_id"), data.get("tenant_id"), data.get("span")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID:
        raise BadInput("invalid SpanToSign: job_id: missing or not a string of 1..200 characters")
    if not isinstance(tenant_id, str) or not _TENANT_ID(tenant_id):
        raise BadInput("invalid SpanToSign: tenant_id: missing or malformed")
    if tenant_id == SYSTEM_TENANT:  # the audit digest key signs digests, never a caller's span
        raise BadInput(f"invalid SpanToSign: tenant_id: {SYSTEM_TENANT} is reserved for keyledger's own keys")
    if not isinstance(span, dict):
        raise BadInput("invalid SpanToSign: span: missing or not a JSON object")
    return Job(record, job_id, tenant_id, span, plain)


_TENANT_ID = re.compile(TENANT_ID_PATTERN).fullmatch
MAX_DEPTH = 200  # pydantic's JSON parser (jiter) refuses more nested non-empty containers
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]").search


def _refuse_what_the_model_cannot_parse(raw: bytes, data: Any, plain: bool) -> None:
    """What json.loads accepts and SpanToSign.model_validate_json refuses as invalid JSON: lone surrogate
    escapes (not Unicode text, and not I-JSON) and nesting deeper than MAX_DEPTH. Each exact check runs
    only when a scan of the raw bytes (in C) cannot rule the case out; depth first (json.dumps recurses)."""
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise BadInput(f"value nests deeper than {MAX_DEPTH} levels", ErrorCode.NOT_JSON)
    # a plain value's text has no unicode escape at all (plain_json_loads)
    if not plain and b"\\" in raw and _SURROGATE_ESCAPE(raw) and not _encodes(data):
        raise BadInput("value has a lone surrogate escape (not Unicode text)", ErrorCode.NOT_JSON)


def _encodes(data: Any) -> bool:
    """Whether every string in `data` is Unicode text (json.loads leaves unpaired surrogate escapes in)."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether more than `limit` non-empty containers nest (jiter counts a level when it enters one)."""
    level: list[Any] = [data] if type(data) in (dict, list) and data else []
    for _ in range(limit):
        level = [v for c in level for v in (c.values() if type(c) is dict else c) if type(v) in (dict, list) and v]
        if not level:
            return False
    return True


def _sign_op(entry: KeyEntry, record: InboundRecord) -> OpRecord:
    """One transfer per signed span, its id derived from the span's record alone (topic, partition,
    offset): a redelivery, however the records are batched, lands on the same transfer (`exists`)."""
    return OpRecord(
        transfer_id=ids.transfer_id(Op.SIGN, entry.key_id, record.topic, record.partition, record.offset),
        tenant_id=entry.tenant_id,
        key_id=entry.key_id,
        op=Op.SIGN,
        source=record,
        reason="span signed",
    )
