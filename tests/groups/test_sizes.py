"""Sizes end to end (issue 25, finding 5): a span or PII request whose output could not be written is refused
`too_large` before any ledger operation, and every output written stays within the computed bound."""

from __future__ import annotations

import json
import random

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from schemas.messages import Op, PiiRequest
from tests.support.audit import topics_of
from tests.support.callers import TEST_CALLER
from tests.support.harness import Placed, handler_harness
from workers.core import ids
from workers.groups.pii import result_bound
from workers.groups.signer import signed_bound
from workers.kafka.letters import FRAMING_BYTES, DeadLetters
from workers.ledger import QueryFilter, QueryFilterFlags
from workers.ledger.memory import MemoryLedger

GROUPS = ["keyledger-keygen", "keyledger-pii", "keyledger-rotation", "keyledger-signer"]
LIMIT = 8192
MAX_OUTPUT = LIMIT - FRAMING_BYTES
TENANT = "acme"
# characters whose JSON takes the most bytes per byte (controls, quotes, backslashes) and multi-byte ones
ALPHABET = ["a", "Z", "0", " ", '"', "\\", "\x00", "\x01", "\n", "\x1f", "\x7f", "é", "€", "\u2028", "😀", "/"]


def random_text(rng: random.Random, most: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def random_fields(rng: random.Random) -> dict[str, str]:
    return {random_text(rng, 12) + str(i): random_text(rng, 120) for i in range(rng.randint(1, 6))}


def encrypt(fields: dict, record_id: str = "r1", job_id: str = "j1") -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": TENANT, "record_id": record_id, "operation": "encrypt",
                       "fields": fields}).encode()


async def transfers(ledger: MemoryLedger) -> int:
    found = await ledger.query_transfers(QueryFilter(user_data_128=0, user_data_64=0, user_data_32=0, ledger=0,
                                                     code=0, timestamp_min=0, timestamp_max=0, limit=8000,
                                                     flags=QueryFilterFlags.NONE))
    return len(found)


@pytest.fixture
async def harness():
    ledger = MemoryLedger()
    async with handler_harness(GROUPS, ledger=ledger, tenants=(TENANT,), max_message_bytes=LIMIT) as parts:
        yield (*parts, ledger)


@pytest.fixture
async def roomy():
    """The default limit: room for requests of many fields (an error of a field may take ERROR_MAX bytes)."""
    async with handler_harness(GROUPS, tenants=(TENANT,)) as parts:
        yield (*parts, None)


def last_raw(captured, topic: str) -> bytes:
    return [v for _, v in captured.by_topic[topic] if v][-1]


def audited(captured, topic: str) -> list[dict]:
    """The `kms.audit` events of operations on requests of `topic`."""
    return [e for e in captured.values("kms.audit") if topic in topics_of(e)]


def last_letter_code(captured) -> str:
    return captured.values("kms.dlq")[-1]["error"]["type"]


async def test_every_pii_result_is_within_its_bound(roomy):
    """Property: for random requests (encrypt, decrypt sealed to a caller, reencrypt, bad ciphertexts)
    the encoded result is never longer than `result_bound` of the request."""
    context, _, captured, _ = roomy
    requests = Placed(context, "keyledger-pii", "pii.requests")
    rng = random.Random(25)
    checked = 0
    for n in range(30):
        fields = random_fields(rng)
        sent = [TEST_CALLER.pii(TENANT, "encrypt", fields, f"r{n}", f"e{n}")]
        await requests.publish(sent[0], TENANT)
        sealed = json.loads(last_raw(captured, "pii.results"))["fields"]
        damaged = {path: value[:-2] + "AA" for path, value in sealed.items()}
        garbage = {path: random_text(rng, 60) for path in sealed}
        sent += [TEST_CALLER.pii(TENANT, "decrypt", sealed, f"r{n}", f"d{n}"),
                 TEST_CALLER.pii(TENANT, "reencrypt", sealed, f"r{n}", f"x{n}"),
                 TEST_CALLER.pii(TENANT, "decrypt", damaged, f"r{n}", f"b{n}"),
                 TEST_CALLER.pii(TENANT, "decrypt", garbage, f"r{n}", f"g{n}")]
        for value in sent[1:]:
            await requests.publish(value, TENANT)
        results = {json.loads(v)["job_id"]: v for _, v in captured.by_topic["pii.results"] if v}
        for value in sent:
            request = PiiRequest.model_validate_json(value)
            if request.job_id in results:
                assert len(results[request.job_id]) <= result_bound(request)
                checked += 1
    assert checked == 5 * 30


async def test_every_signed_span_is_within_its_bound(roomy):
    context, _, captured, _ = roomy
    spans = Placed(context, "keyledger-signer", "spans.to-sign")
    rng = random.Random(5)
    for n in range(60):
        span = {random_text(rng, 8) + "k": random_text(rng, 200), "n": rng.random(), "list": [random_text(rng, 9)]}
        raw = TEST_CALLER.span(TENANT, span, f"s{n}") if n % 2 else json.dumps(
            {"job_id": f"s{n}", "tenant_id": TENANT, "span": span}).encode()
        await spans.publish(raw, TENANT)
        assert len(last_raw(captured, "spans.signed")) <= signed_bound(raw)
    assert len(captured.values("spans.signed")) == 60


def encrypt_of_bound(size: int) -> bytes:
    """An encrypt whose result bound plus its key is exactly `size` bytes."""
    for n in range(8000):
        for pad in range(8):
            value = encrypt({"f": "x" * n}, record_id="r" * (1 + pad))
            if result_bound(PiiRequest.model_validate_json(value)) + len(TENANT) == size:
                return value
    raise AssertionError(f"no encrypt of bound {size}")


def span_of_bound(size: int) -> bytes:
    base = json.dumps({"job_id": "j", "tenant_id": TENANT, "span": {"name": ""}}).encode()
    grow = size - (signed_bound(base) + len(TENANT))
    value = json.dumps({"job_id": "j", "tenant_id": TENANT, "span": {"name": "x" * grow}}).encode()
    assert signed_bound(value) + len(TENANT) == size
    return value


@pytest.mark.parametrize("kind", ["pii", "span"])
async def test_a_request_one_byte_over_the_bound_is_too_large_with_no_ledger_transfer(harness, kind):
    _, broker, captured, ledger = harness
    topic, output, make = (("pii.requests", "pii.results", encrypt_of_bound) if kind == "pii" else
                           ("spans.to-sign", "spans.signed", span_of_bound))
    before = await transfers(ledger)
    await broker.publish(make(MAX_OUTPUT + 1), topic, key=TENANT.encode())
    assert last_letter_code(captured) == "too_large"
    assert output not in captured.by_topic and await transfers(ledger) == before
    assert not audited(captured, topic)
    await broker.publish(make(MAX_OUTPUT), topic, key=TENANT.encode())  # at the bound: answered, and it fits
    assert len(last_raw(captured, output)) + len(TENANT) <= MAX_OUTPUT
    assert await transfers(ledger) > before


async def test_the_finding_a_request_of_8152_bytes_is_too_large(harness):
    """Finding 5: within the inbound limit, larger than any record once processed."""
    _, broker, captured, ledger = harness
    pii = encrypt({"f": "x" * 8000})
    pii = encrypt({"f": "x" * (8000 + 8152 - len(pii))})
    span = span_of_bound(8152 + 214)  # its signed record would be as large as the finding's
    assert len(pii) == 8152 and len(span) < LIMIT
    before = await transfers(ledger)
    for value, topic in ((pii, "pii.requests"), (span, "spans.to-sign")):
        await broker.publish(value, topic, key=TENANT.encode())
        assert last_letter_code(captured) == "too_large"
        assert not audited(captured, topic)
    assert await transfers(ledger) == before


async def test_a_result_larger_than_a_record_is_dead_lettered_with_its_operations_failed(roomy):
    """When a result turns out larger than a record may be (the group's bound let it through, e.g. a smaller
    limit for written records), its request is dead-lettered `too_large` and its operations are recorded,
    in the ledger and on `kms.audit` alike, as failed: the two logs agree that nothing was delivered."""
    context, broker, captured, _ = roomy
    emitter = context.groups["keyledger-pii"]._emit
    emitter._letters = DeadLetters("keyledger-pii", 900)  # written records of at most 900 bytes
    await broker.publish(TEST_CALLER.pii(TENANT, "encrypt", {"f": "x" * 1000}, "r1", "big"), "pii.requests",
                         key=TENANT.encode())
    assert last_letter_code(captured) == "too_large"
    assert "pii.results" not in captured.by_topic
    [event] = audited(captured, "pii.requests")
    assert event["outcome"] == "failure" and event["op"] == "encrypt"
    [transfer] = await context.ledger.lookup_transfers([int(event["event_id"], 16)])
    assert ids.unpack_op(transfer.user_data_32) == (Op.ENCRYPT, True)
    await broker.publish(TEST_CALLER.pii(TENANT, "encrypt", {"f": "x"}, "r2", "small"), "pii.requests",
                         key=TENANT.encode())
    assert captured.values("pii.results")[-1]["job_id"] == "small"


class RefusingBroker:
    """A broker whose limit for `pii.results` is `limit` bytes, below the settings': it refuses a larger
    result as Kafka does (MessageSizeTooLargeError) and takes every other record."""

    def __init__(self, publisher, limit: int) -> None:
        self._publisher, self._limit = publisher, limit

    async def publish(self, records) -> None:
        records = list(records)
        if any(r.topic == "pii.results" and len(r.value) > self._limit for r in records):
            raise MessageSizeTooLargeError()
        await self._publisher.publish(records)


async def test_a_result_the_broker_refuses_as_too_large_is_dead_lettered_with_its_audit_events(roomy):
    """The broker's limit below the settings': the operation is in the ledger by then, so its audit event is
    published (as the ledger holds it) with the request's `too_large` letter; the logs agree at once and the
    record does not go round its retries."""
    context, broker, captured, _ = roomy
    emitter = context.groups["keyledger-pii"]._emit
    emitter._publisher = RefusingBroker(emitter._publisher, 900)
    await broker.publish(TEST_CALLER.pii(TENANT, "encrypt", {"f": "x" * 1000}, "r1", "big"), "pii.requests",
                         key=TENANT.encode())
    assert last_letter_code(captured) == "too_large" and len(captured.values("kms.dlq")) == 1
    assert "pii.results" not in captured.by_topic
    [event] = audited(captured, "pii.requests")
    [transfer] = await context.ledger.lookup_transfers([int(event["event_id"], 16)])
    assert ids.unpack_op(transfer.user_data_32) == (Op.ENCRYPT, event["outcome"] == "failure")
