"""Consumer group `keyledger-signer`: spans.to-sign -> spans.signed (services/signing.py).

A record is parsed as I-JSON (core/canonical.py, which also tells whether the span needs RFC 8785
care) and validated by `SpanToSign`; a signed span is written as the record arrived with its
`signature` member appended (`signed_value`, tied to `SignedSpan` by
tests/groups/test_signer_wire.py). A span whose signed record could be larger than a record may be
(`signed_bound`) is refused `too_large` before it is signed. Each parsed span passes the caller gate (services/callers.py)
before the service signs it: a refused caller's span is answered only by its `denied` audit event
and a dead letter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode
from schemas.messages import CallerOperation, KeyType, SpanToSign
from schemas.topics import Topic
from workers.core.b64 import b64url_encode
from workers.core.canonical import NotIJson, plain_json_loads
from workers.core.signing import ALG
from workers.core.sizes import b64url_chars
from workers.errors import BadInput
from workers.groups.base import Deps
from workers.kafka.letters import letter_max_bytes
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord, parse_all, problems_of
from workers.services.callers import CALLER_LESS
from workers.services.outcome import Outcome
from workers.services.signing import Job, SignedJob, SignerService

SIGN = CallerOperation.SIGN.value


class SignerGroup:
    name: str = "keyledger-signer"
    topics: tuple[str, ...] = (Topic.SPANS_TO_SIGN.value,)
    pipelined: bool = True

    def __init__(self, deps: Deps) -> None:
        self.service = SignerService(deps.keys)
        self.gate = deps.caller_gate()
        self._emit = deps.emitter(self.name, signed_record)
        self._max_bytes = deps.settings.kafka.max_message_bytes
        self._max_output = letter_max_bytes(deps.settings)

    async def handle(self, records: Sequence[InboundRecord]) -> Sequence[InboundRecord]:
        parsed, refused = parse_all(records, lambda record: parse_job(record, self._max_bytes, self._max_output))
        outcome = Outcome[SignedJob]().refuse_all((r.source, e) for r, e in refused)
        admitted = []
        for _, job in parsed:
            if job.body is None or (job.body.get("caller") is None and not self.gate.needs(SIGN)):
                job.caller = CALLER_LESS
            else:
                job.caller = self.gate.admit(job.source, job.body, job.tenant_id, SIGN, KeyType.SIGNING, outcome,
                                             known_plain=job.plain)
            if job.caller is not None:
                admitted.append(job)
        return await self._emit(records, await self.service.sign(admitted, outcome))


def parse_job(record: InboundRecord, max_bytes: int, max_output: int | None = None) -> Job:
    """A `spans.to-sign` record as a Job, or BadInput with its typed code: accepts exactly what
    `SpanToSign.model_validate_json` accepts of I-JSON text (tests/services/test_contract_fast_paths.py).
    With `max_output`, a span whose `spans.signed` record (value and key) could exceed it is `too_large`."""
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
    try:
        request = SpanToSign.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"invalid SpanToSign: {problems_of(exc, SpanToSign)}") from None
    if max_output is not None and (size := signed_bound(value) + len(request.tenant_id)) > max_output:
        raise BadInput(f"signed, the record could take {size} bytes, over the {max_output} a written record may have",
                       ErrorCode.TOO_LARGE)
    return Job(record.source, request.job_id, request.tenant_id, request.span, value, plain, data)


def signed_value(job: Job, key_id: str, signature: bytes, signed_at: str) -> bytes:
    """`spans.signed`: the request as it arrived plus its signature member. Every part of the member is of
    a JSON-safe alphabet (the alg, a hex key id, base64url, an RFC 3339 time), so it is written as it
    stands; splicing the raw object keeps the span's own bytes and saves serialising it again."""
    member = (f',"signature":{{"alg":"{ALG}","key_id":"{key_id}","value":"{b64url_encode(signature)}",'
              f'"signed_at":"{signed_at}"}}}}')
    return job.raw.rstrip()[:-1] + member.encode()


SIGNATURE_BYTES = 64  # Ed25519
SIGNED_AT_CHARS = len("2026-01-01T00:00:00.000000Z")  # datetime.isoformat of a UTC time, microseconds at most
SIGNATURE_MEMBER_MAX = len(f',"signature":{{"alg":"{ALG}","key_id":"{"0" * 32}","value":"'
                           f'{"A" * b64url_chars(SIGNATURE_BYTES)}","signed_at":"{"0" * SIGNED_AT_CHARS}"}}}}')


def signed_bound(raw: bytes) -> int:
    """The most bytes `signed_value` of a span that arrived as `raw` takes: the request less its closing
    brace plus the signature member at its longest (a fixed alg, a 32-hex key id, base64url of a 64-byte
    signature, a UTC time with microseconds): len(raw) - 1 + SIGNATURE_MEMBER_MAX."""
    return len(raw) - 1 + SIGNATURE_MEMBER_MAX


def signed_record(signed: SignedJob) -> Outgoing:
    job, source = signed.job, signed.job.source
    return Outgoing(Topic.SPANS_SIGNED.value, job.tenant_id.encode(),
                    signed_value(job, signed.key_id, signed.signature, signed.signed_at),
                    cause=(source.topic, source.partition, source.offset))


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
