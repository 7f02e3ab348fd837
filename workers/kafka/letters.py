"""Dead letters: the `kms.dlq` record of a record keyledger could not process.

A letter carries the record as it arrived (topic, partition, offset, key, headers as base64 with
null kept null, payload as base64) and a typed error, with two exceptions (schemas.DeadLetter):

- `pii.requests` records are redacted unless `keep_pii`: a DLQ is read by operators, and a request
  that could not be parsed still holds its plaintext fields. A `caller_denied` letter is redacted
  even with `keep_pii`: a refused caller's plaintext is kept nowhere, not for operators either;
- a letter never exceeds `max_bytes` (the largest record the broker and our producer take): base64
  makes a letter a third larger than its record, so a record near the broker's limit would give a
  letter the broker refuses, and a letter that cannot be published would hold its record forever.
  What does not fit is cut in this order: the payload to a prefix, then the headers, then the key;
  the payload's size and SHA-256 always identify the original value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import DeadLetter
from schemas.topics import Topic
from workers.core.b64 import b64encode
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.settings import Settings

# room left for what the broker adds around a record: the record batch header (61 bytes) and the
# record's own varints, timestamp and attributes, with margin
FRAMING_BYTES = 512
# a DLQ record is keyed like the original; a key longer than any tenant id is replaced by its digest
MAX_LETTER_KEY = 1024
SHORT_MESSAGE = 40
# members of a pii.requests record kept as they are when they are strings (the contract's ids)
PII_PLAIN_MEMBERS = frozenset({"job_id", "tenant_id", "record_id", "operation"})


def letter_max_bytes(settings: Settings) -> int:
    """The largest letter record: under the broker's limit and the producer's max request size."""
    return min(settings.kafka.max_message_bytes, settings.kafka.producer_max_request_bytes) - FRAMING_BYTES


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """Writes the letters of one consumer group."""

    group: str
    max_bytes: int
    keep_pii: bool = False

    @classmethod
    def of(cls, group: str, settings: Settings) -> DeadLetters:
        return cls(group, letter_max_bytes(settings), settings.kafka.dlq_keep_pii)

    def letter(self, record: InboundRecord, error: ErrorInfo, attempts: int = 1) -> Outgoing:
        """The `kms.dlq` record for `record`, keyed like the original, at most `max_bytes` long."""
        key = _letter_key(record.key)
        room = self.max_bytes - len(key)
        payload, redacted = self._payload(record, error)
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=b64encode(record.key) if record.key is not None else None,
            headers=[(name, b64encode(value) if value is not None else None) for name, value in record.headers],
            payload=b64encode(payload) if payload is not None else None,
            payload_redacted=redacted,
            error=error,
            group=self.group,
            attempts=attempts,
            failed_at=datetime.now(UTC),
            **(_digest(record.value) if redacted and record.value is not None else {}),
        )
        for candidate in _cuts(letter, payload, record.value, room):
            value = candidate.to_json()
            if len(value) <= room:
                return Outgoing(Topic.DLQ.value, key, value)
        raise AssertionError(f"a letter of nothing but its coordinates exceeds {self.max_bytes} bytes")

    def _payload(self, record: InboundRecord, error: ErrorInfo) -> tuple[bytes | None, bool]:
        """The bytes the letter carries (the value, or its redacted form) and whether they are redacted."""
        value = record.value
        if value is None or record.topic != Topic.PII_REQUESTS:
            return value, False
        if self.keep_pii and error.type is not ErrorCode.CALLER_DENIED:
            return value, False
        return redact_pii_request(value), True


def _cuts(letter: DeadLetter, payload: bytes | None, value: bytes | None, room: int) -> Iterator[DeadLetter]:
    """The letter whole, then ever smaller: a payload prefix that fills the room, without headers,
    without the key."""
    yield letter
    if payload is None:
        cut = letter
    else:
        cut = letter.model_copy(update={"payload": "", "payload_truncated": True, **_digest(value or b"")})
        yield _fill(cut, payload, room)
    if cut.headers:
        cut = cut.model_copy(update={"headers": [], "headers_dropped": True})
        yield _fill(cut, payload, room)
    if cut.key is not None:
        cut = cut.model_copy(update={"key": None, "key_dropped": True})
        yield _fill(cut, payload, room)
    if len(cut.error.message) > SHORT_MESSAGE:  # only for a max_bytes near its 512-byte floor
        error = cut.error.model_copy(update={"message": cut.error.message[: SHORT_MESSAGE - 1] + "…"})
        yield _fill(cut.model_copy(update={"error": error}), payload, room)


def _fill(letter: DeadLetter, payload: bytes | None, room: int) -> DeadLetter:
    """`letter` with as long a payload prefix as fits in `room` (base64: 4 characters per 3 bytes)."""
    if payload is None:
        return letter
    spare = room - len(letter.to_json())
    prefix = payload[: max(spare, 0) // 4 * 3]
    return letter.model_copy(update={"payload": b64encode(prefix)})


def _digest(value: bytes) -> dict[str, Any]:
    return {"payload_size": len(value), "payload_sha256": hashlib.sha256(value).hexdigest()}


def _letter_key(key: bytes | None) -> bytes:
    if key is None:
        return b""
    return key if len(key) <= MAX_LETTER_KEY else hashlib.sha256(key).hexdigest().encode()


# --- PII redaction -------------------------------------------------------------


def redact_pii_request(value: bytes) -> bytes | None:
    """A `pii.requests` value with every field value replaced by its length and SHA-256; None when
    it is not a JSON object (then only the size and digest of the whole value may be kept).

    Only the contract's ids (`job_id`, `tenant_id`, `record_id`, `operation`) stay as they are, and
    only when they are strings: any other member may be a misspelt `fields`."""
    try:
        data = json.loads(value.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, an integer beyond the digit limit
        return None
    if not isinstance(data, dict):
        return None
    redacted: dict[str, Any] = {}
    for name, member in data.items():
        if name in PII_PLAIN_MEMBERS and isinstance(member, str):
            redacted[name] = member
        elif name == "fields" and isinstance(member, dict):
            redacted[name] = {path: _fingerprint(field) for path, field in member.items()}
        else:
            redacted[name] = _fingerprint(member)
    return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _fingerprint(member: Any) -> dict[str, Any]:
    """Length in UTF-8 bytes and SHA-256 of a string (or of a non-string's compact JSON)."""
    text = member if isinstance(member, str) else json.dumps(member, ensure_ascii=False, separators=(",", ":"))
    raw = text.encode("utf-8", "surrogatepass")
    return {"length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
