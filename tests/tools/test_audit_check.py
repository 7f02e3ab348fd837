"""Audit replay against the ledger: agreement, and each kind of disagreement is caught."""

from __future__ import annotations

import json

from schemas.messages import SYSTEM_TENANT, AuditSource, KeyType, Op
from workers.core import ids
from workers.keys.audit import AuditTrail
from workers.ledger import transfer_ok
from workers.ledger.memory import MemoryLedger
from workers.ledger.records import (
    OpRecord,
    RecordedDigest,
    digest_transfer,
    key_account,
    pin_caller_policy,
    request_tag,
    tenant_account,
)
from workers.tools.audit_check import compare, ledger_digests

SOURCE = AuditSource(topic="spans.to-sign", partition=0, offset=7)


async def recorded(ledger: MemoryLedger, tenant: str = "acme") -> list[bytes]:
    key_id = ids.key_id_for(tenant, KeyType.SIGNING, 1)
    await ledger.create_accounts([tenant_account(tenant), key_account(tenant, key_id, KeyType.SIGNING, 1, 99)])
    ops = [OpRecord(ids.transfer_id(op, key_id, n), tenant, key_id, op, SOURCE, count=n)
           for n, op in ((1, Op.GENERATE), (40, Op.SIGN), (2, Op.SIGN))]
    return [value for _, value in await AuditTrail(ledger).record(ops)]


async def test_a_faithful_replay_agrees_even_with_duplicates():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    report = await compare(ledger, values + values[:1])
    assert report.agrees and report.events == 3 and report.duplicates == 1


async def test_a_changed_count_is_a_mismatch():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    event = json.loads(values[1])
    event["count"] = 41
    report = await compare(ledger, [values[0], json.dumps(event).encode(), values[2]])
    assert not report.agrees and any("count" in m for m in report.mismatches)


async def test_a_missing_audit_record_is_a_mismatch():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    report = await compare(ledger, values[:2])
    assert not report.agrees and any("missing from kms.audit" in m for m in report.mismatches)


async def test_an_invented_audit_record_is_a_mismatch():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    invented = json.loads(values[1])
    invented["event_id"] = ids.to_hex(12345)
    report = await compare(ledger, [*values, json.dumps(invented).encode()])
    assert any("no such transfer" in m for m in report.mismatches)


async def test_a_tenant_absent_from_kms_audit_is_found_through_the_ledger():
    ledger = MemoryLedger()
    kept = await recorded(ledger, "acme")
    await recorded(ledger, "cut-off")  # every record of this tenant cut from the topic
    report = await compare(ledger, kept)
    ref = ids.to_hex(ids.tenant_ref("cut-off"))
    assert sum(ref in m and "missing from kms.audit" in m for m in report.mismatches) == 3
    assert report.ledger_tenants == 2


async def test_transfers_younger_than_the_cut_are_in_flight_not_mismatches():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    before_all = 0
    report = await compare(ledger, values[:2], cut_ns=before_all)
    assert report.agrees and len(report.in_flight) == 1
    later = await compare(ledger, values[:2], cut_ns=2**63 - 1)  # the same difference, past the cut: a mismatch
    assert not later.agrees and not later.in_flight


async def test_a_digest_transfer_needs_no_audit_event():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    key_id = ids.key_id_for(SYSTEM_TENANT, KeyType.SIGNING, 1)
    await ledger.create_accounts([tenant_account(SYSTEM_TENANT), key_account(SYSTEM_TENANT, key_id, KeyType.SIGNING, 1, 7)])
    assert all(transfer_ok(r.status) for r in await ledger.create_transfers([digest_transfer(key_id, 0, 5, "ab" * 32)]))
    assert (await compare(ledger, values)).agrees  # the system tenant's digest record is not an audited operation
    assert [(d.partition, d.last_offset, d.link) for d in await ledger_digests(ledger)] == \
        [(0, 5, RecordedDigest.link_of("ab" * 32))]



async def test_a_caller_pin_needs_no_audit_event():
    ledger = MemoryLedger()
    values = await recorded(ledger)
    await pin_caller_policy(ledger, CALLER, 1, b"a signed caller policy record")
    assert (await compare(ledger, values)).agrees  # the system tenant's pin is not an audited operation


CALLER = "0123456789abcdef0123456789abcdef"
OTHER_CALLER = "fedcba9876543210fedcba9876543210"


REQUEST = "5" * 32


async def callers_recorded(ledger: MemoryLedger, copies: tuple[int, ...] = ()) -> list[bytes]:
    """A caller's signed span at offset 7 (and its copies produced again at `copies`), and a refused one: as
    the signer and the caller gate record them (ids from each record's place, the request id's tag)."""
    tenant, key_id = "acme", ids.key_id_for("acme", KeyType.SIGNING, 1)
    await ledger.create_accounts([tenant_account(tenant), key_account(tenant, key_id, KeyType.SIGNING, 1, 99)])
    signed = [AuditSource(topic="spans.to-sign", partition=0, offset=offset) for offset in (7, *copies)]
    ops = [*(OpRecord(ids.transfer_id(Op.SIGN, key_id, s.topic, s.partition, s.offset), tenant, key_id, Op.SIGN, s,
                      reason="span signed", caller_id=CALLER, tag=request_tag(REQUEST), id_parts=())
             for s in signed),
           OpRecord(ids.transfer_id(Op.DENIED, key_id, "caller", "spans.to-sign", 0, 3), tenant, key_id, Op.DENIED,
                    AuditSource(topic="spans.to-sign", partition=0, offset=3), failed=True, reason="bad_proof",
                    caller_id=CALLER, id_parts=("caller",))]
    return [value for _, value in await AuditTrail(ledger).record(ops)]


async def test_the_caller_of_an_event_must_be_the_caller_of_its_transfer():
    ledger = MemoryLedger()
    values = await callers_recorded(ledger)
    assert json.loads(values[0])["caller_id"] == CALLER and (await compare(ledger, values)).agrees
    for index in (0, 1):
        claimed = json.loads(values[index])
        claimed["caller_id"] = OTHER_CALLER
        report = await compare(ledger, [json.dumps(claimed).encode(), values[1 - index]])
        assert any("differs in caller" in m for m in report.mismatches)
        dropped = json.loads(values[index])
        del dropped["caller_id"]
        report = await compare(ledger, [json.dumps(dropped).encode(), values[1 - index]])
        assert not report.agrees


async def test_a_callerless_sign_event_for_a_transfer_naming_a_caller_is_a_mismatch():
    ledger = MemoryLedger()
    values = await callers_recorded(ledger)
    event = json.loads(values[0])
    del event["caller_id"]
    report = await compare(ledger, [json.dumps(event).encode(), values[1]])
    assert any("differs in caller" in m for m in report.mismatches)


async def test_a_copy_of_a_callers_request_produced_again_is_a_second_operation_its_event_names():
    ledger = MemoryLedger()
    values = await callers_recorded(ledger, copies=(12,))
    event = json.loads(values[0])
    assert event["sources"] == [{"topic": "spans.to-sign", "partition": 0, "offsets": [7, 12]}]
    assert event["count"] == 2 and "requests" not in event
    report = await compare(ledger, values)
    assert report.agrees and report.transfers == 3
    # both transfers carry the request's tag: the ledger shows the copy as the same request performed again
    sign = ids.key_id_for("acme", KeyType.SIGNING, 1)
    copies = await ledger.lookup_transfers([ids.transfer_id(Op.SIGN, sign, "spans.to-sign", 0, n) for n in (7, 12)])
    assert [t.user_data_64 for t in copies] == [request_tag(REQUEST)] * 2
    # an event that names the original alone leaves the copy's transfer unaccounted for
    report = await compare(ledger, [json.dumps({**event, "count": 1, "sources": [
        {"topic": "spans.to-sign", "partition": 0, "offsets": [7]}]}).encode(), values[1]])
    assert any("missing from kms.audit" in m for m in report.mismatches)


# --- grouped events (signing, PII): one event names the transfers of many records ---------------------------


async def grouped(ledger: MemoryLedger, offsets: list[int], tenant: str = "acme") -> tuple[list[bytes], str]:
    """The events of one batch of spans of one key at `offsets` of partition 0 (as the signer makes them)."""
    key_id = ids.key_id_for(tenant, KeyType.SIGNING, 1)
    await ledger.create_accounts([tenant_account(tenant), key_account(tenant, key_id, KeyType.SIGNING, 1, 99)])
    ops = [OpRecord(ids.transfer_id(Op.SIGN, key_id, "spans.to-sign", 0, offset), tenant, key_id, Op.SIGN,
                    AuditSource(topic="spans.to-sign", partition=0, offset=offset), reason="span signed", id_parts=())
           for offset in offsets]
    return [value for _, value in await AuditTrail(ledger).record(ops)], key_id


def with_offsets(value: bytes, offsets: list) -> bytes:
    event = json.loads(value)
    event["sources"][0]["offsets"] = offsets
    return json.dumps(event).encode()


async def test_a_grouped_event_agrees_with_the_transfers_it_names():
    ledger = MemoryLedger()
    [value], _ = await grouped(ledger, [0, 1, 2, 3, 5, 8])
    assert json.loads(value)["sources"][0]["offsets"] == [[0, 3], 5, 8]
    report = await compare(ledger, [value, value])
    assert report.agrees and report.events == 1 and report.duplicates == 1 and report.transfers == 6


async def test_a_missing_grouped_event_leaves_its_transfers_missing():
    ledger = MemoryLedger()
    [value], _ = await grouped(ledger, [0, 1, 2])
    more, _ = await grouped(ledger, [3, 4])
    report = await compare(ledger, [value])
    assert sum("missing from kms.audit" in m for m in report.mismatches) == 2


async def test_a_widened_range_names_a_transfer_the_ledger_does_not_hold():
    ledger = MemoryLedger()
    [value], _ = await grouped(ledger, [0, 1, 2, 5])
    report = await compare(ledger, [with_offsets(value, [[0, 3], 5])])  # 3 was never signed
    assert not report.agrees and any("not in the ledger" in m or "count" in m for m in report.mismatches)
    report = await compare(ledger, [with_offsets(value, [[0, 2], 5, 6])])
    assert not report.agrees


async def test_a_widened_range_over_records_of_another_event_breaks_the_count():
    ledger = MemoryLedger()
    [first], _ = await grouped(ledger, [0, 1])
    [second], _ = await grouped(ledger, [2, 3])
    report = await compare(ledger, [with_offsets(first, [[0, 2]]), second])  # claims 2 as well, count still 2
    assert not report.agrees and any("more than its count" in m for m in report.mismatches)


async def test_a_narrowed_range_leaves_a_transfer_unnamed_and_the_count_off():
    ledger = MemoryLedger()
    [value], _ = await grouped(ledger, [0, 1, 2, 5])
    report = await compare(ledger, [with_offsets(value, [[0, 1], 5])])
    assert any("missing from kms.audit" in m for m in report.mismatches)
    assert any("differs in count" in m for m in report.mismatches)


async def test_a_range_no_count_could_cover_is_refused_without_expanding_it():
    ledger = MemoryLedger()
    [value], _ = await grouped(ledger, [0])
    report = await compare(ledger, [with_offsets(value, [[0, 2**53 - 1]])])
    assert any("more than its count" in m for m in report.mismatches)


async def test_a_replay_that_groups_the_same_records_otherwise_still_agrees():
    """After kill -9 a batch is redelivered in other batches: events overlap and may share an id with
    other contents; the transfers are the same (ids derive from the records), so the union agrees."""
    ledger = MemoryLedger()
    whole, key_id = await grouped(ledger, list(range(10)))
    halves = (await grouped(ledger, list(range(6))))[0] + (await grouped(ledger, list(range(6, 12))))[0]
    assert json.loads(whole[0])["event_id"] == json.loads(halves[0])["event_id"]
    report = await compare(ledger, [*whole, *halves])
    assert report.agrees and report.events == 3
    transfers = await ledger.lookup_transfers([ids.transfer_id(Op.SIGN, key_id, "spans.to-sign", 0, n) for n in range(12)])
    assert len(transfers) == 12  # one transfer per record, however often audited
