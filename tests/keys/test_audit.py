"""The audit trail's fast event writer is the AuditEvent model's own JSON, byte for byte."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.messages import AuditEvent, AuditSource, KeyType, Op
from workers.core import ids
from workers.keys.audit import AuditTrail, audit_event, audit_json, named_count, named_places, named_transfers, runs
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import OpRecord, key_account, request_tag, tenant_account

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


# --- grouped events: one per batch, key, operation, outcome and caller --------------------------------------

KEYS = [ids.key_id_for("acme", KeyType.SIGNING, v) for v in (1, 2)]


async def ledger_with_keys() -> MemoryLedger:
    ledger = MemoryLedger()
    await ledger.create_accounts([tenant_account("acme"), *(key_account("acme", k, KeyType.SIGNING, 1, 7) for k in KEYS)])
    return ledger


def grouped_op(key_id: str, op: Op, partition: int, offset: int, *, failed: bool = False, count: int = 1,
               request_id: str | None = None, wrap: str | None = None, caller_id: str | None = None) -> OpRecord:
    """An operation as the services make one: its transfer id derived from its record's place, an admitted
    caller's request tagged with its request id."""
    parts = (("fail",) if failed else ("ok",)) if op is not Op.SIGN else ()
    place = ("pii.requests", partition, offset)
    return OpRecord(ids.grouped_transfer_id(op, key_id, parts, place, wrap), "acme", key_id, op,
                    AuditSource(topic="pii.requests", partition=partition, offset=offset), count=count,
                    failed=failed, reason="pii fields", caller_id=caller_id, id_parts=parts,
                    id_wrap=wrap, tag=request_tag(request_id) if request_id else None)


@st.composite
def batches(draw: st.DrawFn) -> list[OpRecord]:
    places = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60)), min_size=1, max_size=40, unique=True))
    ops = []
    for partition, offset in places:
        caller = draw(st.sampled_from([None, "c1" * 16, "c2" * 16]))
        # a few request ids, so copies of one request (produced again at other offsets) share a batch
        request = draw(st.sampled_from([ids.to_hex(n) for n in range(1, 4)])) if caller else None
        ops.append(grouped_op(
            draw(st.sampled_from(KEYS)), draw(st.sampled_from([Op.SIGN, Op.ENCRYPT, Op.DECRYPT])), partition, offset,
            failed=draw(st.booleans()), count=draw(st.integers(1, 3)), request_id=request,
            wrap=draw(st.sampled_from([None, "too_large"])), caller_id=caller))
    return ops


@settings(max_examples=150, deadline=None)
@given(batches())
async def test_the_events_of_a_batch_expand_to_exactly_its_transfers(ops: list[OpRecord]) -> None:
    ledger = await ledger_with_keys()
    published = [AuditEvent.model_validate_json(value) for _, value in await AuditTrail(ledger).record(ops)]
    named = [i for event in published for i in named_transfers(event)]
    assert sorted(named) == sorted(op.transfer_id for op in ops)  # every transfer once, nothing else
    groups = {(op.key_id, op.op, op.failed, op.caller_id, op.id_wrap) for op in ops}
    assert len(published) == len(groups)
    for event in published:
        mine = [op for op in ops if op.transfer_id in set(named_transfers(event))]
        assert event.count == sum(op.count for op in mine) and named_count(event) == len(mine)
        assert event.event_id in {ids.to_hex(op.transfer_id) for op in mine}


def test_runs_are_single_offsets_and_inclusive_runs() -> None:
    assert runs([9, 3, 4, 5, 7, 4]) == [(3, 5), 7, 9]
    assert runs([]) == [] and runs([0]) == [0]


async def test_a_grouped_event_names_its_runs_and_its_first_records_transfer() -> None:
    ledger = await ledger_with_keys()
    ops = [grouped_op(KEYS[0], Op.ENCRYPT, 1, offset, count=3) for offset in (12, 10, 11, 15)]
    [(first, value)] = await AuditTrail(ledger).record(ops)
    event = json.loads(value)
    assert event["sources"] == [{"topic": "pii.requests", "partition": 1, "offsets": [[10, 12], 15]}]
    assert event["count"] == 12 and event["id_parts"] == ["ok"] and "source" not in event
    assert first.source.offset == 10 and event["event_id"] == ids.to_hex(first.transfer_id)
    named = named_places(AuditEvent.model_validate_json(value))
    assert named == {op.transfer_id: ("pii.requests", 1, op.source.offset)
                       for op in sorted(ops, key=lambda o: o.source.offset)}


async def test_the_same_records_regrouped_in_a_replay_keep_the_first_records_event_id() -> None:
    ledger = await ledger_with_keys()
    ops = [grouped_op(KEYS[0], Op.SIGN, 0, offset) for offset in range(10)]
    [(_, whole)] = await AuditTrail(ledger).record(ops)
    [(_, half)] = await AuditTrail(ledger).record(ops[:5])  # a replay after kill -9, batched otherwise
    assert json.loads(whole)["event_id"] == json.loads(half)["event_id"]
    assert json.loads(half)["sources"][0]["offsets"] == [[0, 4]]


async def test_a_copy_of_a_callers_request_in_the_same_batch_is_a_second_transfer_with_its_request_tag() -> None:
    ledger = await ledger_with_keys()
    request = "ab" * 16
    ops = [grouped_op(KEYS[0], Op.DECRYPT, 0, offset, request_id=request, caller_id="c1" * 16, count=2)
           for offset in (4, 9)]
    [(_, value)] = await AuditTrail(ledger).record(ops)
    event = json.loads(value)
    assert "requests" not in event and event["caller_id"] == "c1" * 16 and event["count"] == 4
    assert event["sources"] == [{"topic": "pii.requests", "partition": 0, "offsets": [4, 9]}]
    assert named_transfers(AuditEvent.model_validate(event)) == [op.transfer_id for op in ops]
    transfers = await ledger.lookup_transfers([op.transfer_id for op in ops])
    assert len(transfers) == 2 and {t.user_data_64 for t in transfers} == {request_tag(request)}
    assert {t.user_data_128 for t in transfers} == {int("c1" * 16, 16)}


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
