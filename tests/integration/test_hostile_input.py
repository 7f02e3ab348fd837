"""Hostile input over a real broker (issue 9, items 1, 4, 6-10).

Every record of every input topic ends as an output or a dead letter; bad input is dead-lettered at
once with its typed code and a message that quotes nothing of it; letters fit the broker and carry
no PII plaintext; a committed offset never passes a record that is neither.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from schemas.messages import DeadLetter
from tests.support.harness import span_job, tick
from tests.support.kafka import read, records_for, tenant_created, unique_tenant, wait_committed
from tests.support.processes import in_process_workers
from tests.support.secrets import found_in, record_bytes
from workers.core import ids
from workers.kafka.letters import FRAMING_BYTES
from workers.kms.local import LocalKms

pytestmark = pytest.mark.integration

NULL_HEADER = [("h", None)]
BINARY_HEADER = [("g", b"\xff\xfe")]
ODD_HEADERS = NULL_HEADER + BINARY_HEADER
ODD_HEADERS_IN_A_LETTER = [["h", None], ["g", base64.b64encode(b"\xff\xfe").decode()]]


async def send(bootstrap: str, topic: str, records: list[tuple[str, bytes, list]],
               max_request_size: int = 1_048_576) -> list[RecordMetadata]:
    """Produce (key, value, headers) records as any client could, headers included."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=max_request_size)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key.encode(), headers=headers)
                   for key, value, headers in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def committed_past(bootstrap: str, group: str, sent: list[RecordMetadata]) -> None:
    last: dict[tuple[str, int], int] = {}
    for m in sent:
        last[(m.topic, m.partition)] = max(last.get((m.topic, m.partition), -1), m.offset)
    for (topic, partition), offset in last.items():
        await wait_committed(bootstrap, group, topic, partition, offset, timeout=90)


async def letter_of(bootstrap: str, sent: RecordMetadata, key: str, timeout: float = 90) -> dict:
    """The dead letter of the record `sent` (keyed like it)."""
    def mine(letters):
        return [x for x in letters if x["topic"] == sent.topic and x["offset"] == sent.offset
                and x["partition"] == sent.partition]

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = mine(await records_for(bootstrap, "kms.dlq", key))
        if found:
            assert len(found) == 1, found
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"no letter for {sent.topic}@{sent.offset}"
        await asyncio.sleep(0.3)



def pii(tenant: str, operation: str, fields: dict, job_id: str, **extra) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields, **extra}).encode()


def deleted(tenant: str) -> bytes:
    return json.dumps({"event_id": f"del-{tenant}", "tenant_id": tenant,
                       "occurred_at": datetime.now(UTC).isoformat()}).encode()


# --- item 1: header values are opaque bytes -----------------------------------------------------------


async def test_null_and_binary_header_values_lose_no_record_on_any_input_topic(shared_broker, shared_worker):
    bootstrap = shared_broker
    tenant = unique_tenant("hdr")
    doomed = [unique_tenant("hdr-del") for _ in range(3)]
    bad = unique_tenant("hdr-bad")
    # tenants.created: valid, null header, binary header, valid; and bad JSON with both headers
    created = await send(bootstrap, "tenants.created", [
        (tenant, tenant_created(tenant), []), (doomed[0], tenant_created(doomed[0]), NULL_HEADER),
        (doomed[1], tenant_created(doomed[1]), BINARY_HEADER), (doomed[2], tenant_created(doomed[2]), []),
        (bad, b"{not json", ODD_HEADERS)])
    for t in (tenant, *doomed):
        await records_for(bootstrap, "keys.events", t, want=2, timeout=90)
    letters = [await letter_of(bootstrap, created[-1], bad)]

    sent = {
        "tenants.deleted": await send(bootstrap, "tenants.deleted", [
            (doomed[0], deleted(doomed[0]), []), (doomed[1], deleted(doomed[1]), NULL_HEADER),
            (doomed[2], deleted(doomed[2]), BINARY_HEADER), (bad, b"{not json", ODD_HEADERS)]),
        "spans.to-sign": await send(bootstrap, "spans.to-sign", [
            (tenant, span_job(tenant, job_id=f"s{i}"), h) for i, h in enumerate([[], NULL_HEADER, BINARY_HEADER, []])
        ] + [(tenant, b"{not json", ODD_HEADERS)]),
        "pii.requests": await send(bootstrap, "pii.requests", [
            (tenant, pii(tenant, "encrypt", {"a": "x"}, f"p{i}"), h)
            for i, h in enumerate([[], NULL_HEADER, BINARY_HEADER, []])] + [(tenant, b"{not json", ODD_HEADERS)]),
        "keys.rotation-ticks": await send(bootstrap, "keys.rotation-ticks", [
            (tenant, tick(f"{tenant}-r{i}", tenant_id=tenant, key_type="signing", reason="manual"), h)
            for i, h in enumerate([[], NULL_HEADER, BINARY_HEADER])] + [(tenant, b"{not json", ODD_HEADERS)]),
    }
    for t in doomed:
        events = await records_for(bootstrap, "keys.events", t, want=4, timeout=90)
        assert sorted(e["type"] for e in events) == ["destroyed"] * 2 + ["generated"] * 2
    signed = await records_for(bootstrap, "spans.signed", tenant, want=4, timeout=90)
    assert sorted(s["job_id"] for s in signed) == ["s0", "s1", "s2", "s3"]
    results = await records_for(bootstrap, "pii.results", tenant, want=4, timeout=90)
    assert sorted(r["job_id"] for r in results) == ["p0", "p1", "p2", "p3"]
    events = await records_for(bootstrap, "keys.events", tenant, want=5, timeout=90)
    rotations = sorted((e["tick_id"], e["version"]) for e in events if e["type"] == "rotated")
    assert rotations == [(f"{tenant}-r{i}", i + 2) for i in range(3)]

    letters.append(await letter_of(bootstrap, sent["tenants.deleted"][-1], bad))
    for topic in ("spans.to-sign", "pii.requests", "keys.rotation-ticks"):
        letters.append(await letter_of(bootstrap, sent[topic][-1], tenant))
    for letter in letters:
        assert letter["headers"] == ODD_HEADERS_IN_A_LETTER and letter["error"]["type"] == "not_json"
    await committed_past(bootstrap, "keyledger-keygen", created + sent["tenants.deleted"])
    await committed_past(bootstrap, "keyledger-signer", sent["spans.to-sign"])
    await committed_past(bootstrap, "keyledger-pii", sent["pii.requests"])
    await committed_past(bootstrap, "keyledger-rotation", sent["keys.rotation-ticks"])


# --- items 6, 7, 8: not I-JSON is refused at once, typed, on every topic ------------------------------------


def spliced(body: bytes, members: str) -> bytes:
    """Raw JSON `members` spliced in as the object's first members (json.dumps cannot repeat a name)."""
    return b"{" + members.encode() + b", " + body[1:]


HOSTILE = {
    # "\u0074enant_id" is tenant_id: a first-name-wins reader sees another tenant than a last-name-wins one
    "duplicate-escaped": (lambda body: spliced(body, '"\\u0074enant_id": "someone-else"'), "invalid_message"),
    "duplicate-deep": (lambda body: spliced(body, '"x": {"y": [{"z": 1, "z": 1000000}]}'), "invalid_message"),
    "utf-16": (lambda body: body.decode().encode("utf-16"), "not_json"),
    "utf-8-bom": (lambda body: b"\xef\xbb\xbf" + body, "not_json"),
    "5000-digits": (lambda body: spliced(body, '"n": ' + "7" * 5000), "invalid_message"),
}


async def test_input_that_is_not_i_json_is_dead_lettered_at_once_on_every_input_topic(shared_broker, shared_worker):
    bootstrap = shared_broker
    tenant = unique_tenant("ijson")
    victim, newcomer = f"{tenant}-victim", f"{tenant}-new"
    await send(bootstrap, "tenants.created", [(t, tenant_created(t), []) for t in (tenant, victim)])
    for t in (tenant, victim):
        await records_for(bootstrap, "keys.events", t, want=2, timeout=90)
    # per topic: a valid record for `case`, and the valid record that follows the hostile ones
    valid = {
        "tenants.created": (lambda case: (f"{tenant}-{case}", tenant_created(f"{tenant}-{case}")),
                            (newcomer, tenant_created(newcomer))),
        "tenants.deleted": (lambda case: (f"{tenant}-{case}", deleted(f"{tenant}-{case}")),
                            (victim, deleted(victim))),
        "spans.to-sign": (lambda case: (tenant, span_job(tenant, {"amount": 1}, job_id=case)),
                          (tenant, span_job(tenant, {"amount": 1}, job_id="after"))),
        "pii.requests": (lambda case: (tenant, pii(tenant, "encrypt", {"a": "x"}, case)),
                         (tenant, pii(tenant, "encrypt", {"a": "x"}, "after"))),
        "keys.rotation-ticks": (lambda case: (tenant, tick(f"{tenant}-{case}", tenant_id=tenant, key_type="signing")),
                                (tenant, tick(f"{tenant}-after", tenant_id=tenant, key_type="signing"))),
    }
    expected: list[tuple[RecordMetadata, str, str]] = []
    sent_all: dict[str, list[RecordMetadata]] = {}
    for topic, (make, after) in valid.items():
        records = [(*make(case), []) for case in HOSTILE]
        records = [(key, spoil(body), []) for (key, body, _), (spoil, _) in zip(records, HOSTILE.values(), strict=True)]
        codes = [code for _, code in HOSTILE.values()]
        if topic == "pii.requests":  # a 3,000-character field path: the error must not quote it
            records.append((tenant, pii(tenant, "encrypt", {"p" * 3000: "x"}, "long-path"), []))
            codes.append("invalid_message")
        if topic == "spans.to-sign":  # an integer Python reads but RFC 8785 cannot represent
            records.append((tenant, span_job(tenant, {"n": int("7" * 4000)}, job_id="long-number"), []))
            codes.append("invalid_message")
        sent = sent_all[topic] = await send(bootstrap, topic, [*records, (*after, [])])
        expected += [(meta, key, code) for meta, (key, _, _), code in zip(sent, records, codes, strict=False)]

    for meta, key, code in expected:
        letter = await letter_of(bootstrap, meta, key)
        assert (letter["error"]["type"], letter["attempts"]) == (code, 1), (meta.topic, letter)
        message = letter["error"]["message"]
        assert len(message) <= 500 and "777" not in message and "ppp" not in message and "someone" not in message
    # the valid records behind the hostile ones went through
    await records_for(bootstrap, "keys.events", newcomer, want=2, timeout=90)
    destroyed = await records_for(bootstrap, "keys.events", victim, want=4, timeout=90)
    assert sorted(e["type"] for e in destroyed) == ["destroyed"] * 2 + ["generated"] * 2
    signed = await records_for(bootstrap, "spans.signed", tenant, want=1, timeout=90)
    assert [s["job_id"] for s in signed] == ["after"]
    results = await records_for(bootstrap, "pii.results", tenant, want=1, timeout=90)
    assert [r["job_id"] for r in results] == ["after"]
    events = await records_for(bootstrap, "keys.events", tenant, want=3, timeout=90)
    assert [e["tick_id"] for e in events if e["type"] == "rotated"] == [f"{tenant}-after"]
    for group, topics in (("keyledger-keygen", ["tenants.created", "tenants.deleted"]),
                          ("keyledger-signer", ["spans.to-sign"]), ("keyledger-pii", ["pii.requests"]),
                          ("keyledger-rotation", ["keys.rotation-ticks"])):
        await committed_past(bootstrap, group, [m for t in topics for m in sent_all[t]])


# --- item 4: a letter the broker takes, never a lost one -------------------------------------------------


async def test_a_record_just_under_the_inbound_limit_reaches_the_dlq_in_a_bounded_letter(topics_ready):
    bootstrap = topics_ready
    tenant = unique_tenant("big")
    limit = 1_048_576  # KEYLEDGER_MAX_MESSAGE_BYTES, as Kafka's default message.max.bytes
    value = b"x" * (limit - 4096)  # accepted inbound; its base64 alone is 1.33 times the limit
    async with in_process_workers(bootstrap, ["keyledger-signer"], overrides={"max_message_bytes": limit}):
        [sent] = await send(bootstrap, "spans.to-sign", [(tenant, value, [("trace", b"t-1")])],
                            max_request_size=4 * limit)
        records = await read(bootstrap, "kms.dlq", until=lambda rs: any(r.key == tenant.encode() for r in rs),
                                   timeout=90)
        [raw] = [r for r in records if r.key == tenant.encode()]
        assert len(raw.key) + len(raw.value) + FRAMING_BYTES <= limit
        letter = DeadLetter.model_validate_json(raw.value)
        prefix = base64.b64decode(letter.payload)
        assert (letter.offset, letter.error.type.value, letter.attempts) == (sent.offset, "not_json", 1)
        assert letter.payload_truncated and value.startswith(prefix) and len(prefix) > limit // 2
        assert letter.payload_size == len(value) and letter.payload_sha256 == hashlib.sha256(value).hexdigest()
        assert letter.headers == [("trace", base64.b64encode(b"t-1").decode())]
        await committed_past(bootstrap, "keyledger-signer", [sent])


async def test_a_letter_the_producer_would_refuse_is_cut_to_fit_and_lands(topics_ready):
    # a small broker limit, with headers that alone exceed it: the uncut letter (about 200 KB) is over the
    # producer's max request size (128 KiB here), so publishing it fails for real
    bootstrap = topics_ready
    tenant = unique_tenant("wide")
    overrides = {"max_message_bytes": 65_536, "kafka_producer_batch_bytes": 16_384}
    value = b"y" * 60_000
    headers = [(f"h{i}", b"z" * 9_000) for i in range(10)]
    async with in_process_workers(bootstrap, ["keyledger-signer"], overrides=overrides):
        [sent] = await send(bootstrap, "spans.to-sign", [(tenant, value, headers)], max_request_size=1_048_576)
        letter = await letter_of(bootstrap, sent, tenant)
        assert letter["headers_dropped"] and letter["headers"] == [] and letter["payload_truncated"]
        assert letter["payload_sha256"] == hashlib.sha256(value).hexdigest()
        assert value.startswith(base64.b64decode(letter["payload"]))
        [raw] = [r for r in await read(bootstrap, "kms.dlq") if r.key == tenant.encode()]
        assert len(raw.key) + len(raw.value) + FRAMING_BYTES <= 65_536
        await committed_past(bootstrap, "keyledger-signer", [sent])


# --- item 8: KMS refusing GenerateDataKey refuses that request alone -----------------------------------


async def test_kms_refusing_to_generate_a_key_dead_letters_that_request_alone(topics_ready):
    bootstrap = topics_ready
    kms = LocalKms()  # refuses GenerateDataKey under a key pending deletion, as AWS KMS does
    refused, plain, byok = unique_tenant("kms-no"), unique_tenant("kms-ok"), unique_tenant("kms-byok")
    await kms.schedule_key_deletion(f"key-of-{refused}", 7)
    async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-rotation"], kms=kms):
        created = await send(bootstrap, "tenants.created", [
            (refused, tenant_created(refused, kms_key_id=f"key-of-{refused}"), []),
            (plain, tenant_created(plain), []),
            (byok, tenant_created(byok, kms_key_id=f"key-of-{byok}"), [])])
        letter = await letter_of(bootstrap, created[0], refused)
        assert (letter["error"]["type"], letter["attempts"]) == ("kms_refused", 1)
        for t in (plain, byok):
            await records_for(bootstrap, "keys.events", t, want=2, timeout=90)
        assert await records_for(bootstrap, "keys.events", refused) == []

        # rotation: the BYOK key goes pending deletion; its tick is refused, the other tenant's rotates
        await kms.schedule_key_deletion(f"key-of-{byok}", 7)
        ticks = await send(bootstrap, "keys.rotation-ticks", [
            (byok, tick(f"{byok}-t", tenant_id=byok, reason="manual"), []),
            (plain, tick(f"{plain}-t", tenant_id=plain, reason="manual"), [])])
        letter = await letter_of(bootstrap, ticks[0], byok)
        assert (letter["error"]["type"], letter["attempts"]) == ("kms_refused", 1)
        events = await records_for(bootstrap, "keys.events", plain, want=4, timeout=90)
        assert sorted(e["version"] for e in events if e["type"] == "rotated") == [2, 2]
        assert [e for e in await records_for(bootstrap, "keys.events", byok) if e["type"] == "rotated"] == []
        await committed_past(bootstrap, "keyledger-keygen", created)
        await committed_past(bootstrap, "keyledger-rotation", ticks)


# --- item 9: fan-out ids always fit ------------------------------------------------------------------


async def test_a_200_character_tick_fans_out_to_a_128_character_tenant(topics_ready):
    bootstrap = topics_ready
    tenant = f"long-{uuid.uuid4().hex}".ljust(128, "x")
    parent = f"tick-{uuid.uuid4().hex}".ljust(200, "p")
    child = ids.child_tick_id(parent, tenant)
    assert len(f"{parent}/{tenant}") > 200 and len(child) <= 200
    async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-rotation"]):
        await send(bootstrap, "tenants.created", [(tenant, tenant_created(tenant), [])])
        await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
        [sent] = await send(bootstrap, "keys.rotation-ticks",
                            [("scheduler", tick(parent, reason="manual", key_type="signing"), [])])
        events = await records_for(bootstrap, "keys.events", tenant, want=3, timeout=180)
        [rotated] = [e for e in events if e["type"] == "rotated"]
        assert rotated["tick_id"] == child and rotated["key_type"] == "signing" and rotated["version"] == 2
        [fanned] = [t for t in await records_for(bootstrap, "keys.rotation-ticks", tenant) if t["tick_id"] == child]
        assert fanned["parent_tick_id"] == parent
        await committed_past(bootstrap, "keyledger-rotation", [sent])


# --- item 10: no plaintext PII on the DLQ unless asked for -----------------------------------------------


def malformed_encrypts(tenant: str, secret: str) -> list[tuple[str, bytes, list]]:
    return [
        # no record_id: valid JSON, refused by the contract
        (tenant, json.dumps({"job_id": "j1", "tenant_id": tenant, "operation": "encrypt",
                             "fields": {"ssn": secret}}).encode(), []),
        # cut short: not even JSON
        (tenant, b'{"job_id": "j2", "tenant_id": "' + tenant.encode() + b'", "fields": {"ssn": "' + secret.encode(), []),
    ]


async def test_a_malformed_encrypt_request_leaves_no_plaintext_on_the_dlq(topics_ready):
    bootstrap = topics_ready
    tenant = unique_tenant("pii-dlq")
    secret = f"078-05-1120 {uuid.uuid4().hex} Jane Q. Public"
    async with in_process_workers(bootstrap, ["keyledger-pii"]):
        sent = await send(bootstrap, "pii.requests", malformed_encrypts(tenant, secret))
        parsed, unparsed = [await letter_of(bootstrap, m, tenant) for m in sent]
        await committed_past(bootstrap, "keyledger-pii", sent)
    assert parsed["payload_redacted"] and unparsed["payload_redacted"] and unparsed.get("payload") is None
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert json.loads(base64.b64decode(parsed["payload"]))["fields"]["ssn"] == {"length": len(secret), "sha256": digest}
    dlq = record_bytes(await read(bootstrap, "kms.dlq"))
    assert found_in(secret.encode(), dlq) == []
    assert found_in(secret.encode(), [base64.b64encode(b"x" + secret.encode())])  # the scan itself works


async def test_with_dlq_keep_pii_the_letter_keeps_the_request(topics_ready):
    bootstrap = topics_ready
    tenant = unique_tenant("pii-keep")
    secret = f"078-05-1120 {uuid.uuid4().hex} John Doe"
    async with in_process_workers(bootstrap, ["keyledger-pii"], overrides={"dlq_keep_pii": True}):
        sent = await send(bootstrap, "pii.requests", malformed_encrypts(tenant, secret))
        letters = [await letter_of(bootstrap, m, tenant) for m in sent]
    for letter, (_, value, _) in zip(letters, malformed_encrypts(tenant, secret), strict=True):
        assert not letter["payload_redacted"] and base64.b64decode(letter["payload"]) == value
    assert found_in(secret.encode(), record_bytes(await read(bootstrap, "kms.dlq")))
