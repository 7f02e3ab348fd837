"""The audit trail's fast event writer is the AuditEvent model's own JSON, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.messages import AuditEvent, AuditSource, Op
from workers.core import ids
from workers.keys.audit import audit_event, audit_json
from workers.ledger.records import OpRecord

tenant_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}\Z")
texts = st.one_of(st.sampled_from(["", "span signed", "pii encrypt", 'a "quoted" \\ reason', "tab\there",
                                   "naïve", "\u2028", "\x7f"]), st.text(max_size=30))
# whole seconds (pydantic then writes no fraction), every microsecond in between, and any nanosecond
# (TigerBeetle's timestamps: the microseconds are rounded from them)
timestamps = st.one_of(st.integers(1, 4_000_000_000).map(lambda s: s * 1_000_000_000),
                       st.integers(1, 4_000_000_000_000_000).map(lambda us: us * 1000),
                       st.integers(1, 2**64 - 1),
                       # just below, at and above every half microsecond: where rounding could go either way
                       st.tuples(st.integers(1_700_000_000_000_000, 1_900_000_000_000_000), st.integers(-2, 2))
                       .map(lambda t: t[0] * 1000 + 500 + t[1]))


@st.composite
def op_records(draw: st.DrawFn) -> OpRecord:
    tenant = draw(tenant_ids)
    key_id = ids.to_hex(draw(st.integers(1, 2**128 - 2)))
    source = AuditSource(topic=draw(st.one_of(st.just("spans.to-sign"), texts)),
                         partition=draw(st.integers(0, 2**31 - 1)), offset=draw(st.integers(-1, 2**53 - 1)))
    return OpRecord(transfer_id=draw(st.integers(1, 2**128 - 2)), tenant_id=tenant, key_id=key_id,
                    op=draw(st.sampled_from(list(Op))), source=source, count=draw(st.integers(1, 2**40)),
                    failed=draw(st.booleans()), reason=draw(texts),
                    caller_id=draw(st.one_of(st.none(), st.integers(0, 2**128 - 1).map(ids.to_hex))))


@settings(max_examples=400, deadline=None)
@given(op_records(), timestamps)
def test_the_fast_writer_is_the_models_json_byte_for_byte(op: OpRecord, timestamp_ns: int) -> None:
    assert audit_json(op, timestamp_ns) == audit_event(op, timestamp_ns).model_dump_json(exclude_none=True).encode()


def test_a_reason_that_needs_escaping_still_reads_back_as_itself() -> None:
    source = AuditSource(topic="pii.requests", partition=2, offset=7)
    op = OpRecord(transfer_id=5, tenant_id="t-1", key_id="ab" * 16, op=Op.ENCRYPT, source=source,
                  reason='field "email"\n\\ refused')
    event = AuditEvent.model_validate_json(audit_json(op, 1_795_000_000_123_456_000))
    assert event.reason == 'field "email"\n\\ refused'
    assert json.loads(audit_json(op, 1_795_000_000_123_456_000))["occurred_at"] == "2026-11-18T11:06:40.123456Z"


def test_an_event_without_a_ledger_timestamp_is_stamped_now_and_valid() -> None:
    source = AuditSource(topic="spans.to-sign", partition=0, offset=1)
    op = OpRecord(transfer_id=9, tenant_id="t-1", key_id="cd" * 16, op=Op.SIGN, source=source, reason="span signed")
    event = AuditEvent.model_validate_json(audit_json(op, 0))
    assert event.event_id == ids.to_hex(9) and event.occurred_at.tzinfo is not None


def test_a_lifecycle_event_records_where_the_version_is_wrapped_and_when_its_kms_key_goes() -> None:
    from datetime import timedelta

    from workers.ledger.records import WrapFacts

    source = AuditSource(topic="tenants.deleted", partition=0, offset=3)
    wrap = WrapFacts("aws", "arn:aws:kms:eu-west-1:1:key/k", None, deletion_pending_days=7)
    op = OpRecord(transfer_id=11, tenant_id="t-1", key_id="ef" * 16, op=Op.DESTROY, source=source,
                  reason="tenant deleted", closing=True, wrap=wrap)
    event = AuditEvent.model_validate_json(audit_json(op, 1_795_000_000_000_000_000))
    assert (event.kms_provider, event.kms_key_id, event.kek_version) == ("aws", "arn:aws:kms:eu-west-1:1:key/k", None)
    assert event.kms_deletion_date == event.occurred_at + timedelta(days=7)
    rewrap = OpRecord(transfer_id=12, tenant_id="t-1", key_id="ef" * 16, op=Op.REWRAP, source=source,
                      wrap=WrapFacts("vault", "keyledger", 3))
    assert json.loads(audit_json(rewrap, 1))["kek_version"] == 3
    assert "kms_deletion_date" not in json.loads(audit_json(rewrap, 1))
