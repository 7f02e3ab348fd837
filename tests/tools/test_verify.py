"""workers/verify.py: verdicts for signed spans against keys learned from `keys.events`."""

from __future__ import annotations

import io
import json
import os
import uuid
from datetime import UTC, datetime

import pytest

from schemas.messages import KeyEvent, SignedSpan
from workers.core.b64 import b64encode
from workers.core.signing import (
    Verdict,
    private_key_from_seed,
    public_key_bytes,
    sign,
    signing_input,
)
from workers.tools import verify as verify_module
from workers.tools.verify import (
    KeyStatus,
    KnownKey,
    PublicKeyBook,
    load_book,
    reads_a_file,
    verify_lines,
    verify_signed_span,
    write_verdicts,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
KEY_A1 = "a1" * 16
KEY_A2 = "a2" * 16
KEY_B1 = "b1" * 16
SPAN = {"trace_id": "5b8efff798038103d269b633813fc60c", "name": "charge", "attributes": {"code": 200, "ok": True}}


class Clock:
    """A hand-moved timer for TTLCache: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def private(key_id: str):
    # one fixed key pair per key id: the id's 16 bytes twice make the 32-byte seed
    return private_key_from_seed(bytes.fromhex(key_id) * 2)


def event(kind: str, tenant: str, key_id: str, *, public: bool = True, key_type: str = "signing", **extra) -> KeyEvent:
    fields = {
        "event_id": uuid.uuid4().hex, "type": kind, "tenant_id": tenant, "key_id": key_id, "key_type": key_type,
        "version": 1, "occurred_at": NOW,
    }
    if public:
        fields["public_key"] = b64encode(public_key_bytes(private(key_id)))
    return KeyEvent(**fields, **extra)


def signed_span(tenant: str = "acme", key_id: str = KEY_A1, span: dict | None = None, job_id: str = "job-1") -> dict:
    span = SPAN if span is None else span
    value = sign(private(key_id), signing_input(tenant, key_id, span))
    record = SignedSpan(job_id=job_id, tenant_id=tenant, span=span,
                        signature={"alg": "Ed25519", "key_id": key_id, "value": value, "signed_at": NOW})
    return json.loads(record.to_json())  # exactly what a consumer of spans.signed sees


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock: Clock) -> PublicKeyBook:
    book = PublicKeyBook(timer=clock)
    book.learn(event("generated", "acme", KEY_A1))
    book.learn(event("generated", "globex", KEY_B1))
    return book


# --- valid -------------------------------------------------------------------------------------


def test_valid(book) -> None:
    assert verify_signed_span(book, signed_span()) is Verdict.VALID


def test_valid_as_model(book) -> None:
    assert verify_signed_span(book, SignedSpan.model_validate(signed_span())) is Verdict.VALID


def test_rotated_key_still_verifies(book) -> None:
    old = signed_span()
    book.learn(event("rotated", "acme", KEY_A2, previous_key_id=KEY_A1))
    assert verify_signed_span(book, old) is Verdict.VALID
    assert verify_signed_span(book, signed_span(key_id=KEY_A2)) is Verdict.VALID


def test_extra_fields_are_welcome(book) -> None:
    record = signed_span()
    record["partition_hint"] = 3
    record["signature"]["kms"] = "local"
    assert verify_signed_span(book, record) is Verdict.VALID


# --- tampering ---------------------------------------------------------------------------------


def test_altered_span_is_invalid(book) -> None:
    record = signed_span()
    record["span"]["attributes"]["code"] = 500
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_added_span_key_is_invalid(book) -> None:
    record = signed_span()
    record["span"]["extra"] = 1
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_reordered_span_is_still_valid(book) -> None:
    record = signed_span()
    record["span"] = dict(reversed(record["span"].items()))
    assert verify_signed_span(book, record) is Verdict.VALID


def test_altered_key_id_is_invalid(book) -> None:
    book.learn(event("rotated", "acme", KEY_A2, previous_key_id=KEY_A1))
    record = signed_span()
    record["signature"]["key_id"] = KEY_A2  # a real key of the same tenant, but not the signer
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_altered_tenant_is_not_valid(book) -> None:
    record = signed_span()
    record["tenant_id"] = "globex"  # globex has no key KEY_A1: unknown for it
    assert verify_signed_span(book, record) is Verdict.UNKNOWN_KEY


def test_altered_tenant_is_invalid_even_when_the_key_matches(book) -> None:
    # contrived: globex claims acme's key id and public key; the tenant is still in the signed bytes
    book.learn(event("generated", "globex", KEY_A1))
    record = signed_span()
    record["tenant_id"] = "globex"
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_signature_of_another_key_is_invalid(book) -> None:
    record = signed_span()
    record["signature"]["value"] = signed_span(key_id=KEY_B1)["signature"]["value"]
    assert verify_signed_span(book, record) is Verdict.INVALID


# --- unknown keys ------------------------------------------------------------------------------


def test_unknown_key(book) -> None:
    assert verify_signed_span(book, signed_span(key_id="ff" * 16)) is Verdict.UNKNOWN_KEY


def test_key_of_another_tenant_is_unknown(book) -> None:
    # acme signs naming globex's key id: that key does not exist for acme
    assert book.lookup("acme", KEY_B1) is None
    assert verify_signed_span(book, signed_span(tenant="acme", key_id=KEY_B1)) is Verdict.UNKNOWN_KEY


def test_encryption_keys_are_not_learned(clock) -> None:
    book = PublicKeyBook(timer=clock)
    book.learn(event("generated", "acme", KEY_A1, public=False, key_type="encryption"))
    assert len(book) == 0


def test_event_without_usable_public_key_leaves_key_unknown(clock) -> None:
    book = PublicKeyBook(timer=clock)
    book.learn(event("generated", "acme", KEY_A1, public=False))
    book.learn(event("generated", "acme", KEY_A2, public=False).model_copy(update={"public_key": "not base64!"}))
    short = b64encode(public_key_bytes(private(KEY_B1))[:31])
    book.learn(event("generated", "globex", KEY_B1, public=False).model_copy(update={"public_key": short}))
    for tenant, key_id in (("acme", KEY_A1), ("acme", KEY_A2), ("globex", KEY_B1)):
        assert verify_signed_span(book, signed_span(tenant, key_id)) is Verdict.UNKNOWN_KEY


# --- revoked and destroyed ---------------------------------------------------------------------


def test_revoked_key(book) -> None:
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY


def test_bad_signature_under_revoked_key_is_invalid(book) -> None:
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    record = signed_span()
    record["span"]["name"] = "forged"
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_destroyed_key_answers_revoked(book) -> None:
    book.learn(event("destroyed", "acme", KEY_A1, public=False))
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY


def test_revocation_is_sticky(book) -> None:
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    book.learn(event("generated", "acme", KEY_A1))  # a replayed or late event
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY
    book.learn(event("destroyed", "acme", KEY_A1, public=False))
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    assert book.lookup("acme", KEY_A1).status == "destroyed"


def test_revoked_before_its_public_key_is_known(clock) -> None:
    book = PublicKeyBook(timer=clock)
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY


def test_revocation_of_another_tenant_does_not_touch_ours(book) -> None:
    book.learn(event("revoked", "globex", KEY_A1, public=False))
    assert verify_signed_span(book, signed_span()) is Verdict.VALID


# --- cached key objects -------------------------------------------------------------------------


def raw_public(key) -> bytes:
    return key.public_bytes_raw()


def test_the_key_object_is_made_from_its_own_entrys_bytes(book) -> None:
    for tenant, key_id in (("acme", KEY_A1), ("globex", KEY_B1)):
        known = book.lookup(tenant, key_id)
        assert raw_public(known.verifier) == known.public_key == public_key_bytes(private(key_id))
    assert book.lookup("acme", KEY_A1).verifier is not book.lookup("globex", KEY_B1).verifier


def test_a_key_object_of_tenant_a_never_verifies_for_tenant_b(book) -> None:
    # globex announces a key under acme's key id, with globex's own public key
    globex_own = event("generated", "globex", KEY_A1).model_copy(
        update={"public_key": b64encode(public_key_bytes(private(KEY_B1)))})
    book.learn(globex_own)
    acme_span = signed_span("acme", KEY_A1)
    assert verify_signed_span(book, acme_span) is Verdict.VALID  # acme's object for acme's span
    assert verify_signed_span(book, {**acme_span, "tenant_id": "globex"}) is Verdict.INVALID
    # a span globex really signed under that key id verifies with globex's object only
    value = sign(private(KEY_B1), signing_input("globex", KEY_A1, SPAN))
    globex_span = {**signed_span("globex", KEY_A1), "signature": {**acme_span["signature"], "value": value}}
    assert verify_signed_span(book, globex_span) is Verdict.VALID
    assert verify_signed_span(book, {**globex_span, "tenant_id": "acme"}) is Verdict.INVALID
    assert raw_public(book.lookup("globex", KEY_A1).verifier) == public_key_bytes(private(KEY_B1))
    assert raw_public(book.lookup("acme", KEY_A1).verifier) == public_key_bytes(private(KEY_A1))


def test_a_later_public_key_does_not_replace_the_first(book) -> None:
    # the first public key learned stays, bytes and object alike
    other = event("rotated", "acme", KEY_A1).model_copy(update={"public_key": b64encode(public_key_bytes(private(KEY_B1)))})
    book.learn(other)
    known = book.lookup("acme", KEY_A1)
    assert known.public_key == raw_public(known.verifier) == public_key_bytes(private(KEY_A1))
    assert verify_signed_span(book, signed_span()) is Verdict.VALID


def test_a_key_without_public_key_has_no_object(clock) -> None:
    book = PublicKeyBook(timer=clock)
    book.learn(event("generated", "acme", KEY_A1, public=False))
    assert book.lookup("acme", KEY_A1).verifier is None
    assert KnownKey("acme", KEY_A1, None, KeyStatus.CURRENT).verifier is None


@pytest.mark.parametrize("ending", ["revoked", "destroyed"])
def test_revoked_and_destroyed_stay_sticky_once_the_object_is_made(clock, ending) -> None:
    book = PublicKeyBook(timer=clock)
    book.learn(event(ending, "acme", KEY_A1, public=False))  # before its public key is known
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY
    book.learn(event("generated", "acme", KEY_A1))  # late: fills the key in, the state stays
    book.learn(event("rotated", "acme", KEY_A1))
    known = book.lookup("acme", KEY_A1)
    assert known.status == ending and known.verifier is not None
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY
    forged = signed_span()
    forged["span"] = {**forged["span"], "name": "forged"}
    assert verify_signed_span(book, forged) is Verdict.INVALID  # now checked: altered under a revoked key


def test_an_expired_key_is_unknown_whatever_its_object(book, clock) -> None:
    assert book.lookup("acme", KEY_A1).verifier is not None
    clock.now = 86400 + 1
    assert book.lookup("acme", KEY_A1) is None
    assert list(verify_lines([json.dumps(signed_span())], book)) == [(1, "job-1", Verdict.UNKNOWN_KEY)]


# --- malformed records -------------------------------------------------------------------------


def without(path: str) -> dict:
    record = signed_span()
    *parents, leaf = path.split(".")
    target = record
    for name in parents:
        target = target[name]
    del target[leaf]
    return record


@pytest.mark.parametrize("path", ["job_id", "tenant_id", "span", "signature", "signature.alg", "signature.key_id",
                                  "signature.value", "signature.signed_at"])
def test_missing_field_is_invalid(book, path: str) -> None:
    assert verify_signed_span(book, without(path)) is Verdict.INVALID


def with_signature(**changes) -> dict:
    record = signed_span()
    record["signature"].update(changes)
    return record


@pytest.mark.parametrize("record", [
    with_signature(alg="EdDSA"),
    with_signature(alg="ed25519"),
    with_signature(alg="HS256"),
    with_signature(alg=None),
    with_signature(value="not base64url!"),
    with_signature(value=signed_span()["signature"]["value"] + "=="),
    with_signature(value=signed_span()["signature"]["value"][:-3]),
    with_signature(value=signed_span()["signature"]["value"].replace("-", "+").replace("_", "/") + "+"),
    with_signature(value=""),
    with_signature(value=123),
    with_signature(key_id="A1" * 16),
    with_signature(key_id="a1"),
    with_signature(signed_at="yesterday"),
    {**signed_span(), "span": ["not", "an", "object"]},
    {**signed_span(), "span": {"duration": float("nan")}},
    {**signed_span(), "span": {"big": 2**53}},
    {**signed_span(), "tenant_id": 7},
    {**signed_span(), "tenant_id": "has space"},
    {**signed_span(), "signature": "Ed25519:abc"},
], ids=lambda r: repr(r)[:60])
def test_malformed_record_is_invalid(book, record) -> None:
    assert verify_signed_span(book, record) is Verdict.INVALID


@pytest.mark.parametrize("record", [None, [], "text", 42, b"{}"])
def test_non_object_is_invalid(book, record) -> None:
    assert verify_signed_span(book, record) is Verdict.INVALID


def test_malformed_beats_unknown_key(book) -> None:
    # a record that is not a signed span is invalid whatever its key
    assert verify_signed_span(book, {**signed_span(key_id="ff" * 16), "job_id": ""}) is Verdict.INVALID


# --- JSON lines --------------------------------------------------------------------------------


def test_verify_lines(book) -> None:
    book.learn(event("revoked", "globex", KEY_B1, public=False))
    tampered = signed_span(job_id="j-tampered")
    tampered["span"]["name"] = "x"
    lines = [
        json.dumps(signed_span(job_id="j-valid")) + "\n",
        "\n",
        "   \n",
        json.dumps(tampered),
        json.dumps(signed_span(key_id="ff" * 16, job_id="j-unknown")),
        json.dumps(signed_span("globex", KEY_B1, job_id="j-revoked")),
        "{not json",
        '["a list"]',
        '{"job_id": "j-partial"}',
        '{"job_id": 5}',
        json.dumps(signed_span(job_id="j-nan"))[:-1] + ', "n": NaN}',
        json.dumps(signed_span(job_id="j-deep", span={"v": 1.5, "é": "ü", "k": 10**15})),
    ]
    assert list(verify_lines(lines, book)) == [
        (1, "j-valid", Verdict.VALID),
        (4, "j-tampered", Verdict.INVALID),
        (5, "j-unknown", Verdict.UNKNOWN_KEY),
        (6, "j-revoked", Verdict.REVOKED_KEY),
        (7, "?", Verdict.INVALID),
        (8, "?", Verdict.INVALID),
        (9, "j-partial", Verdict.INVALID),
        (10, "?", Verdict.INVALID),
        (11, "j-nan", Verdict.INVALID),  # NaN is not JSON, anywhere in the line: the signer refuses such a record
        (12, "j-deep", Verdict.VALID),
    ]


@pytest.mark.parametrize("chunk", [1, 2, 3, 1024])
def test_write_verdicts_writes_what_a_print_per_span_wrote(book, chunk) -> None:
    tampered = signed_span(job_id="j-2")
    tampered["span"] = {**tampered["span"], "name": "x"}
    lines = [json.dumps(signed_span(job_id="j-1")), "\n", json.dumps(tampered), "{oops",
             json.dumps(signed_span(key_id="ff" * 16, job_id="j-4")), json.dumps(signed_span(job_id="j\tt"))]
    out = io.StringIO()
    assert write_verdicts(lines, book, out, chunk=chunk) == 3
    printed = "".join(f"{n}\t{job}\t{verdict.value}\n" for n, job, verdict in verify_lines(lines, book))
    assert out.getvalue() == printed == (
        "1\tj-1\tvalid\n3\tj-2\tinvalid\n4\t?\tinvalid\n5\tj-4\tunknown key\n6\tj\tt\tvalid\n")


def test_write_verdicts_of_nothing(book) -> None:
    out = io.StringIO()
    assert write_verdicts(["", " \n"], book, out) == 0
    assert out.getvalue() == ""


def mixed_lines(book) -> list[str]:
    book.learn(event("revoked", "globex", KEY_B1, public=False))
    tampered = signed_span(job_id="j-tampered")
    tampered["span"] = {**tampered["span"], "name": "x"}
    return [json.dumps(signed_span(job_id="j-valid")), "\n", json.dumps(tampered), "   \n",
            json.dumps(signed_span(key_id="ff" * 16, job_id="j-unknown")),
            json.dumps(signed_span("globex", KEY_B1, job_id="j-revoked")), "{not json", '["a list"]',
            '{"job_id": "j-partial"}', json.dumps(signed_span(job_id="j-valid-2", span={"v": 1.5, "é": "ü"}))]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 3, 256])
def test_threads_give_the_same_verdicts_in_the_same_order(book, monkeypatch, threads, batch) -> None:
    monkeypatch.setattr(verify_module, "THREAD_BATCH", batch)
    lines = mixed_lines(book) * 7
    serial = list(verify_lines(lines, book))
    assert list(verify_lines(lines, book, threads=threads)) == serial
    assert [v for _, _, v in serial].count(Verdict.VALID) == 14 and len(serial) == 56
    out, threaded = io.StringIO(), io.StringIO()
    assert write_verdicts(lines, book, out) == write_verdicts(lines, book, threaded, threads=threads) == 42
    assert out.getvalue() == threaded.getvalue()


def test_threads_of_nothing(book) -> None:
    assert list(verify_lines([], book, threads=2)) == list(verify_lines(["", " \n"], book, threads=2)) == []


@pytest.mark.parametrize(("cpus", "threads"), [(1, 0), (2, 2), (4, 4), (64, 8)])
def test_default_threads(monkeypatch, cpus, threads) -> None:
    monkeypatch.setattr(verify_module.os, "sched_getaffinity", lambda _: set(range(cpus)), raising=False)
    assert verify_module.default_threads() == threads


def test_reads_a_file(tmp_path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text("{}\n")
    with path.open(encoding="utf-8") as stream:
        assert reads_a_file(stream)
    assert not reads_a_file(io.StringIO("{}\n"))
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as pipe:
        os.close(write_end)
        assert not reads_a_file(pipe)


def test_verify_lines_of_nothing(book) -> None:
    assert list(verify_lines([], book)) == []
    assert list(verify_lines(["", "\n", " \t\n"], book)) == []


def test_nan_inside_a_line_span_is_invalid(book) -> None:
    line = json.dumps(signed_span(span={"d": 1}))
    assert list(verify_lines([line.replace('"d":1', '"d":NaN').replace('"d": 1', '"d": NaN')], book)) == [
        (1, "job-1", Verdict.INVALID)]


@pytest.mark.parametrize("spelling", ['"amount": 1000000', '"\\u0061mount": 1000000'])
def test_a_signed_span_with_a_duplicate_name_is_invalid(book, spelling) -> None:
    # a first-name-wins reader would see amount 1, the signature covers the last one
    line = json.dumps(signed_span(span={"amount": 1}))
    assert list(verify_lines([line], book)) == [(1, "job-1", Verdict.VALID)]
    forged = line.replace('"amount": 1', '"amount": 1, ' + spelling)
    assert list(verify_lines([forged], book)) == [(1, "job-1", Verdict.INVALID)]


def test_a_utf16_line_is_invalid(book) -> None:
    line = json.dumps(signed_span())
    assert list(verify_lines([line.encode("utf-16").decode("latin-1")], book)) == [(1, "?", Verdict.INVALID)]


def test_learn_raw_skips_what_is_not_an_event(clock) -> None:
    book = PublicKeyBook(timer=clock)
    assert not book.learn_raw(None)  # a tombstone
    assert not book.learn_raw(b"{oops")
    assert not book.learn_raw(b'{"type": "generated"}')
    assert book.learn_raw(event("generated", "acme", KEY_A1).to_json())
    assert verify_signed_span(book, signed_span()) is Verdict.VALID


# --- cache ------------------------------------------------------------------------------------


def test_keys_expire_after_24_hours(book, clock) -> None:
    clock.now = 86400 - 1
    assert verify_signed_span(book, signed_span()) is Verdict.VALID
    clock.now = 86400 + 1
    assert verify_signed_span(book, signed_span()) is Verdict.UNKNOWN_KEY


def test_a_new_event_restarts_the_ttl(clock) -> None:
    book = PublicKeyBook(ttl=10, timer=clock)
    book.learn(event("generated", "acme", KEY_A1))
    clock.now = 8
    book.learn(event("revoked", "acme", KEY_A1, public=False))
    clock.now = 15
    assert verify_signed_span(book, signed_span()) is Verdict.REVOKED_KEY
    clock.now = 19
    assert verify_signed_span(book, signed_span()) is Verdict.UNKNOWN_KEY


def test_maxsize_bounds_the_book(clock) -> None:
    book = PublicKeyBook(maxsize=2, timer=clock)
    for key_id in (KEY_A1, KEY_A2, "a3" * 16):
        book.learn(event("generated", "acme", key_id))
    assert len(book) == 2
    # an evicted key is unknown, never valid by default
    verdicts = {verify_signed_span(book, signed_span(key_id=k)) for k in (KEY_A1, KEY_A2, "a3" * 16)}
    assert verdicts == {Verdict.VALID, Verdict.UNKNOWN_KEY}


# --- from the topic (a real broker) ------------------------------------------------------------


@pytest.mark.integration
async def test_load_book_reads_keys_events(kafka_bootstrap: str) -> None:
    from workers.kafka.tap import produce
    from workers.kafka.topics import ensure_topics
    from workers.settings import Settings

    await ensure_topics(kafka_bootstrap, Settings(kafka_bootstrap=kafka_bootstrap, kafka_partitions=3),
                        ["keys.events"])
    tenant = f"verify-{uuid.uuid4().hex[:12]}"
    key_id, revoked_id = uuid.uuid4().hex, uuid.uuid4().hex
    events = [event("generated", tenant, key_id), event("generated", tenant, revoked_id),
              event("revoked", tenant, revoked_id, public=False)]
    records = [events[0].to_json(), b"garbage", None] + [e.to_json() for e in events[1:]]  # junk must not stop it
    await produce(kafka_bootstrap, "keys.events", [(tenant.encode(), value) for value in records])
    book = await load_book(kafka_bootstrap)
    assert verify_signed_span(book, signed_span(tenant, key_id)) is Verdict.VALID
    assert verify_signed_span(book, signed_span(tenant, revoked_id)) is Verdict.REVOKED_KEY
    assert verify_signed_span(book, signed_span(tenant, uuid.uuid4().hex)) is Verdict.UNKNOWN_KEY


def test_an_invalid_line_whose_job_id_is_a_lone_surrogate_is_reported_not_a_crash():
    import io

    from workers.tools.verify import PublicKeyBook, write_verdicts

    out = io.StringIO()
    lines = ['{"job_id": "j\\ud800", "tenant_id": "acme"}\n', '{"job_id": "next"}\n']
    assert write_verdicts(lines, PublicKeyBook(), out) == 2
    report = out.getvalue()
    report.encode("utf-8")  # every line can be written to a UTF-8 terminal or file
    assert report.splitlines() == ["1\tj\\ud800\tinvalid", "2\tnext\tinvalid"]
