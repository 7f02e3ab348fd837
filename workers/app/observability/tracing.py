"""OpenTelemetry tracing (imported only when tracing is on: its cost is nil when off).

Per handled batch: one `{group} process` span, a new root (a batch mixes records of
many traces), linked to the trace context of every input record that carries one.
Per input record with a valid W3C `traceparent` header: a `{topic} process` span,
child of that context and linked to the batch span, so the request's own trace
shows keyledger. Outputs get a `traceparent` header: an output naming its cause
(`Outgoing.cause`: signed span, PII result, audit event) carries its input
record's span, anything else the batch span, so a request can be followed end
to end. KMS and ledger calls are client spans under the batch span.

Input headers are read tolerantly: a missing, null, non-ASCII, oversized or
garbled `traceparent` only means the record has no parent; it never costs the
record. Standard `OTEL_*` variables configure the exporter, sampler and resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from workers.kafka.publisher import Outgoing, Publisher
from workers.kafka.records import InboundRecord

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_HEADER = 512  # characters; a traceparent is 55, a tracestate at most 512 (W3C)
MAX_LINKS = 128  # the SDK's default span link limit


@dataclass(slots=True)
class _BatchTrace:
    span: Span
    by_record: dict[tuple[str, int, int], Span] = field(default_factory=dict)

    def span_for(self, cause: tuple[str, int, int] | None) -> Span:
        return (self.by_record.get(cause) if cause is not None else None) or self.span


_current: ContextVar[_BatchTrace | None] = ContextVar("keyledger_batch_trace", default=None)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) > MAX_HEADER:
            return None
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and len(value) <= MAX_HEADER:
        return value
    return None


class Tracing:
    def __init__(self, provider: TracerProvider, *, owned: bool = True) -> None:
        """`owned`: this object shuts the provider down on `aclose` (not so for a provider a test holds)."""
        self._provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("keyledger")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_env(cls) -> Tracing:
        """An OTLP/HTTP exporter configured by the standard OTEL_EXPORTER_OTLP_* variables."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "keyledger"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    async def aclose(self) -> None:
        # the batch processor's flush blocks on its export thread: never on the event loop
        await asyncio.to_thread(self._provider.shutdown if self._owned else self._provider.force_flush)

    # --- input ---------------------------------------------------------------

    def parent_of(self, headers: Iterable[Any] | None) -> SpanContext | None:
        """The valid W3C trace context in `headers`, or None (absent, null, garbled: never an error)."""
        carrier: dict[str, str] = {}
        try:
            for name, value in headers or ():
                key = name.lower() if isinstance(name, str) else None
                if key in (TRACEPARENT, TRACESTATE) and key not in carrier:
                    text = _text(value)
                    if text is not None:
                        carrier[key] = text
            if TRACEPARENT not in carrier:
                return None
            context = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
        except Exception:  # whatever a producer sent, the record is processed: just without a parent
            return None
        return context if context.is_valid else None

    @contextlib.contextmanager
    def batch(self, group: str, records: Sequence[InboundRecord]) -> Iterator[None]:
        parents: dict[tuple[str, int, int], SpanContext] = {}
        for record in records:
            parent = self.parent_of(record.headers)
            if parent is not None:
                parents[record.coordinates] = parent
        distinct = list({(p.trace_id, p.span_id): p for p in parents.values()}.values())[:MAX_LINKS]
        attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.consumer.group.name": group,
                                      "messaging.operation.type": "process", "messaging.batch.message_count": len(records)}
        with self._tracer.start_as_current_span(f"{group} process", context=Context(), kind=SpanKind.CONSUMER,
                                                links=[Link(p) for p in distinct], attributes=attributes) as span:
            state = _BatchTrace(span)
            to_batch = [Link(span.get_span_context())]
            for (topic, partition, offset), parent in parents.items():
                state.by_record[(topic, partition, offset)] = self._tracer.start_span(
                    f"{topic} process", context=trace.set_span_in_context(NonRecordingSpan(parent)),
                    kind=SpanKind.CONSUMER, links=to_batch, attributes={
                        "messaging.system": "kafka", "messaging.consumer.group.name": group,
                        "messaging.destination.name": topic, "messaging.destination.partition.id": str(partition),
                        "messaging.kafka.offset": offset})
            token = _current.set(state)
            try:
                yield
            finally:
                _current.reset(token)
                for record_span in state.by_record.values():
                    record_span.end()

    # --- calls and output -------------------------------------------------------

    def client_span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[object]:
        return self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def stamp(self, records: Iterable[Outgoing]) -> list[Outgoing]:
        """`records` with the `traceparent` (and `tracestate`) of the span each one continues."""
        state = _current.get()
        carriers: dict[int, tuple[tuple[str, bytes], ...]] = {}
        stamped = []
        for record in records:
            span = state.span_for(record.cause) if state is not None else trace.get_current_span()
            trace_headers = carriers.get(id(span))
            if trace_headers is None:
                carrier: dict[str, str] = {}
                self._propagator.inject(carrier, context=trace.set_span_in_context(span))
                trace_headers = carriers[id(span)] = tuple((k, v.encode()) for k, v in carrier.items())
            if trace_headers:
                kept = tuple(h for h in record.headers if h[0] not in (TRACEPARENT, TRACESTATE))
                record = record._replace(headers=kept + trace_headers)
            stamped.append(record)
        return stamped


class TracingPublisher:
    """A Publisher that writes each output's trace context as headers, then publishes through `inner`."""

    def __init__(self, inner: Publisher, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing
        self.published = inner.published

    async def start(self) -> None:
        await self._inner.start()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def publish(self, records: Iterable[Outgoing]) -> None:
        try:
            await self._inner.publish(self._tracing.stamp(records))
        finally:
            self.published = self._inner.published
