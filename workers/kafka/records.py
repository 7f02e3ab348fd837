"""Inbound records as plain values, parsing with typed errors, and DLQ letters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import AuditSource, DeadLetter
from schemas.topics import Topic
from workers.core.b64 import b64encode
from workers.errors import BadInput, KeyledgerError
from workers.kafka.publisher import Outgoing

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

Refusal = tuple["InboundRecord", KeyledgerError]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def of(cls, record: Any) -> InboundRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
        )

    @property
    def source(self) -> AuditSource:
        return AuditSource(topic=self.topic, partition=self.partition, offset=self.offset)

    @property
    def coordinates(self) -> tuple[str, int, int]:
        """(topic, partition, offset): names this record as the cause of an output (`Outgoing.cause`)."""
        return (self.topic, self.partition, self.offset)


def records_of(message: Any) -> list[InboundRecord]:
    """The ConsumerRecords behind a FastStream batch (or single) message."""
    raw = message.raw_message
    raw = raw if isinstance(raw, tuple | list) else (raw,)
    return [InboundRecord.of(r) for r in raw]


def parse(record: InboundRecord, model: type[M], max_bytes: int) -> M:
    """Decode and validate one record; every failure is a BadInput with a typed code.

    Validation messages name fields and error kinds only, never input values,
    which may be PII or key ids of other tenants.
    """
    if record.value is None:
        raise BadInput("tombstone (null value) where a message was expected", ErrorCode.INVALID_MESSAGE)
    if len(record.value) > max_bytes:
        raise BadInput(f"record of {len(record.value)} bytes exceeds {max_bytes}", ErrorCode.OVERSIZED)
    try:
        data = json.loads(record.value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadInput("value is not UTF-8 JSON", ErrorCode.NOT_JSON) from None
    if not isinstance(data, dict):
        raise BadInput("value is not a JSON object", ErrorCode.INVALID_MESSAGE)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['type']}" for err in exc.errors()[:10]
        )
        raise BadInput(f"invalid {model.__name__}: {problems}", ErrorCode.INVALID_MESSAGE) from None


def parse_all(records: Iterable[InboundRecord], parse_one: Callable[[InboundRecord], T]
              ) -> tuple[list[tuple[InboundRecord, T]], list[Refusal]]:
    """Each record parsed, or refused with its typed error (for the dead-letter queue)."""
    parsed: list[tuple[InboundRecord, T]] = []
    refused: list[Refusal] = []
    for record in records:
        try:
            parsed.append((record, parse_one(record)))
        except KeyledgerError as exc:
            refused.append((record, exc))
    return parsed, refused


def dead_letter(record: InboundRecord, error: ErrorInfo, group: str, attempts: int = 1) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=b64encode(record.key) if record.key is not None else None,
        headers=[(name, b64encode(value or b"")) for name, value in record.headers],
        payload=b64encode(record.value) if record.value is not None else None,
        error=error,
        group=group,
        attempts=attempts,
        failed_at=datetime.now(UTC),
    )


def letter_for(record: InboundRecord, error: ErrorInfo, group: str, attempts: int = 1) -> Outgoing:
    """The `kms.dlq` record for `record`, keyed like the original."""
    key = record.key.decode(errors="replace") if record.key else ""
    return Outgoing.of(Topic.DLQ, key, dead_letter(record, error, group, attempts))
