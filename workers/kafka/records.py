"""Inbound records as plain values, and parsing with typed errors (DLQ letters: kafka/letters.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.errors import ErrorCode
from workers.core.canonical import NotIJson, loads_ijson, plain_json_loads
from workers.errors import BadInput, KeyledgerError
from workers.source import Source

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

Refusal = tuple["InboundRecord", KeyledgerError]


Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One consumed record, as the broker holds it. Header values are opaque bytes or None (never
    decoded: a null or non-UTF-8 value is as valid as any other); names are str because the Kafka
    protocol makes them UTF-8 strings and aiokafka decodes them so."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

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
    def source(self) -> Source:
        """Where this record sits, as services name a request (no transport types)."""
        return Source(self.topic, self.partition, self.offset)

    @property
    def coordinates(self) -> tuple[str, int, int]:
        """(topic, partition, offset): names this record as the cause of an output (`Outgoing.cause`)."""
        return (self.topic, self.partition, self.offset)


def records_of(message: Any) -> list[InboundRecord]:
    """The ConsumerRecords behind a FastStream batch (or single) message."""
    raw = message.raw_message
    raw = raw if isinstance(raw, tuple | list) else (raw,)
    return [InboundRecord.of(r) for r in raw]


MAX_PROBLEMS = 10


def problems_of(exc: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic failure as field paths and error kinds only, bounded. Only the model's own field
    names are quoted: a dict key or an extra member is input (it may be PII, or 3,000 characters)."""
    problems = [f"{_location(err['loc'], model)}: {err['type']}" for err in exc.errors()[:MAX_PROBLEMS]]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def _location(loc: tuple[int | str, ...], model: type[BaseModel]) -> str:
    parts = []
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif depth == 0 and part in model.model_fields or part == "[key]":
            parts.append(part)
        else:
            parts.append("<key>")
    return ".".join(parts) or "<root>"


def parse(record: InboundRecord, model: type[M], max_bytes: int) -> M:
    """Decode and validate one record; every failure is a BadInput with a typed code.

    Validation messages name fields and error kinds only, never input values,
    which may be PII or key ids of other tenants.
    """
    return _validated(decode_value(_bounded(record, max_bytes)), model)


def parse_plain(record: InboundRecord, model: type[M], max_bytes: int) -> tuple[M, dict[str, Any], bool]:
    """`parse` (same answers, same refusals), also returning the object as read and whether it is plain
    (`plain_json_loads`): one reading of the record serves the model and what a caller's proof covers."""
    value = _bounded(record, max_bytes)
    try:
        data, plain = plain_json_loads(value)
    except NotIJson as exc:
        raise BadInput(str(exc), exc.code) from None
    except RecursionError:
        raise BadInput("value nests too deeply", ErrorCode.NOT_JSON) from None
    return _validated(data, model), data, plain


def _bounded(record: InboundRecord, max_bytes: int) -> bytes:
    if record.value is None:
        raise BadInput("tombstone (null value) where a message was expected", ErrorCode.INVALID_MESSAGE)
    if len(record.value) > max_bytes:
        raise BadInput(f"record of {len(record.value)} bytes exceeds {max_bytes}", ErrorCode.OVERSIZED)
    return record.value


def _validated(data: Any, model: type[M]) -> M:
    if not isinstance(data, dict):
        raise BadInput("value is not a JSON object", ErrorCode.INVALID_MESSAGE)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"invalid {model.__name__}: {problems_of(exc, model)}", ErrorCode.INVALID_MESSAGE) from None


def decode_value(value: bytes) -> Any:
    """The I-JSON value of a record (core/canonical.py rules), or BadInput with its typed code."""
    try:
        return loads_ijson(value)
    except NotIJson as exc:
        raise BadInput(str(exc), exc.code) from None
    except RecursionError:
        raise BadInput("value nests too deeply", ErrorCode.NOT_JSON) from None


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
