"""The fast path of canonical_json must equal the reference RFC 8785 implementation byte for byte;
the I-JSON reader refuses what RFC 7493 refuses, with a typed code and without quoting the input."""

import json
import random

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import ErrorCode
from workers.core import canonical
from workers.core.canonical import CanonicalizationError, NotIJson, canonical_json, loads_ijson, plain_json_loads

ALPHABET = ["a", "B", "z", "0", "é", "ü", "\u2028", "\x00", "\x1f", "\x7f", '"', "\\", "/", "\n", "€", "😀",
            "\ue000", "\uffff", "\u00e9"]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6)))


def random_value(rng: random.Random, depth: int = 0):
    choice = rng.randint(0, 8 if depth < 4 else 4)
    if choice == 0:
        return random_text(rng)
    if choice == 1:
        return rng.randint(-(2**53) + 1, 2**53 - 1)
    if choice == 2:
        return rng.choice([True, False, None])
    if choice == 3:
        return rng.choice([0, -1, 1, 10**15, 2**53 - 1])
    if choice == 4:
        return random_text(rng)
    if choice in (5, 6):
        return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def test_the_fast_path_equals_the_reference_on_random_values():
    rng = random.Random(8785)
    for _ in range(3000):
        value = {random_text(rng): random_value(rng) for _ in range(rng.randint(0, 6))}
        assert canonical_json(value) == rfc8785.dumps(value)


_any_text = st.text(alphabet=st.characters(codec=None), max_size=6)  # lone surrogates included
_any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**60), 2**60),
              st.floats(allow_nan=True, allow_infinity=True), _any_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_any_text, inner, max_size=4)),
    max_leaves=20,
)


def _reference(value):
    try:
        return rfc8785.dumps(value)
    except Exception:
        return CanonicalizationError


def _ours(value, **options):
    try:
        return canonical_json(value, **options)
    except CanonicalizationError:
        return CanonicalizationError


@settings(max_examples=500, deadline=None)
@given(_any_json)
def test_canonical_json_is_the_reference_for_any_value(value):
    """The plain path (sorted compact JSON) beside rfc8785: same bytes, or both refuse."""
    assert _ours({"v": value}) == _reference({"v": value})


@settings(max_examples=500, deadline=None)
@given(_any_json)
def test_what_the_reader_calls_plain_has_the_reference_form_without_a_scan(value):
    try:
        raw = json.dumps({"v": value}).encode()
    except (ValueError, UnicodeEncodeError):
        return
    try:
        parsed, plain = plain_json_loads(raw)
    except NotIJson:
        return
    if plain:
        assert canonical_json(parsed, known_plain=True) == rfc8785.dumps(parsed)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [True, None, "x"]}, b'{"a":[true,null,"x"],"b":1}'),
        ({"n": 1e30, "m": 4.50, "p": 0.002, "z": -0.0}, b'{"m":4.5,"n":1e+30,"p":0.002,"z":0}'),
        # RFC 8785 section 3.2.3: keys sort by UTF-16 code units, so U+1F600 sorts before U+FB33
        ({"\u20ac": 1, "\r": 2, "\U0001f600": 3, "\ufb33": 4}, '{"\\r":2,"\u20ac":1,"\U0001f600":3,"\ufb33":4}'.encode()),
        ({"s": "\u0007\n\"\\/"}, b'{"s":"\\u0007\\n\\"\\\\/"}'),
    ],
)
def test_known_canonical_forms(value, expected):
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [{"x": float("nan")}, {"x": float("inf")}, {"x": 2**53 + 1}, {1: "a"}, {"x": {1, 2}}])
def test_values_without_a_canonical_form_are_refused(value):
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


def test_refusals_name_the_kind_never_the_value():
    with pytest.raises(CanonicalizationError) as err:
        canonical_json({"x": 98765432109876543210})
    assert "98765" not in str(err.value)


READERS = [loads_ijson, lambda raw: plain_json_loads(raw)[0]]


@pytest.mark.parametrize("read", READERS, ids=["loads_ijson", "plain_json_loads"])
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"a": 1, "a": 1}', ErrorCode.INVALID_MESSAGE),
        (b'{"\\u0061b": 1, "ab": 2}', ErrorCode.INVALID_MESSAGE),  # the same name once unescaped
        (b'{"\\ud83d\\ude00": 1, "\xf0\x9f\x98\x80": 2}', ErrorCode.INVALID_MESSAGE),  # a surrogate pair = U+1F600
        (b'{"a": [1, {"b": {"c": 1, "c": 2}}]}', ErrorCode.INVALID_MESSAGE),
        (b'{"n": ' + b"9" * 5000 + b"}", ErrorCode.INVALID_MESSAGE),
        (b'{"n": -1e999}', ErrorCode.INVALID_MESSAGE),
        (b'{"n": NaN}', ErrorCode.NOT_JSON),
        (b'{"n": -Infinity}', ErrorCode.NOT_JSON),
        (b'\xef\xbb\xbf{"a": 1}', ErrorCode.NOT_JSON),
        ('{"a": 1}'.encode("utf-16"), ErrorCode.NOT_JSON),
        ('{"a": 1}'.encode("utf-16-be"), ErrorCode.NOT_JSON),
        ('{"a": 1}'.encode("utf-32"), ErrorCode.NOT_JSON),
        (b'{"a": "\xff"}', ErrorCode.NOT_JSON),
        (b'{"a": 1', ErrorCode.NOT_JSON),
    ],
)
def test_what_is_not_i_json_is_refused_with_its_code(read, raw, code):
    with pytest.raises(NotIJson) as err:
        read(raw)
    assert err.value.code is code and "999" not in str(err.value)


@pytest.mark.parametrize("read", READERS, ids=["loads_ijson", "plain_json_loads"])
def test_i_json_reads_as_json_does(read):
    raw = json.dumps({"a": [1, 2.5, {"b": None, "ab": "\u00e9\U0001f600"}], "A": True, "n": 2**64}).encode()
    assert read(raw) == json.loads(raw)
    assert read(b'{"a": {"x": 1}, "b": {"x": 1}}') == {"a": {"x": 1}, "b": {"x": 1}}  # same names, other objects


def test_plain_is_still_told_at_parse_time():
    assert plain_json_loads(b'{"a": 1, "b": [true, "x"]}') == ({"a": 1, "b": [True, "x"]}, True)
    assert plain_json_loads(b'{"a": 1.5}')[1] is False
    assert plain_json_loads(b'{"a": 9007199254740993}')[1] is False
    assert plain_json_loads(b'{"\\u00e9": 1}')[1] is False


# --- duplicate names: the quote-counting check (text without a backslash) against the pairs hook ---

_names = st.sampled_from(["a", "b", "ab", "é", "😀", " ", "a b", ""])
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.sampled_from(["", "x", "a", "é", "1"]),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))


def _json_text(tree):
    """JSON text of a tree whose objects are lists of (name, value) pairs, names possibly repeated."""
    kind, body = tree
    if kind == "leaf":
        return json.dumps(body, ensure_ascii=False)
    if kind == "list":
        return "[" + ",".join(_json_text(item) for item in body) + "]"
    return "{" + ",".join(json.dumps(name, ensure_ascii=False) + ":" + _json_text(value) for name, value in body) + "}"


_trees = st.recursive(
    _leaves.map(lambda v: ("leaf", v)),
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(lambda items: ("list", items)),
                            st.lists(st.tuples(_names, inner), max_size=4).map(lambda pairs: ("object", pairs))),
    max_leaves=20,
)


def _has_duplicate(tree) -> bool:
    kind, body = tree
    if kind == "leaf":
        return False
    if kind == "list":
        return any(_has_duplicate(item) for item in body)
    names = [name for name, _ in body]
    return len(set(names)) != len(names) or any(_has_duplicate(value) for _, value in body)


@settings(max_examples=500, deadline=None)
@given(_trees)
@pytest.mark.parametrize("read", READERS, ids=["loads_ijson", "plain_json_loads"])
def test_a_duplicate_name_is_refused_exactly_when_there_is_one(read, tree):
    raw = _json_text(tree).encode()
    assert b"\\" not in raw  # the counting path: no escapes in the text
    if _has_duplicate(tree):
        with pytest.raises(NotIJson) as err:
            read(raw)
        assert err.value.code is ErrorCode.INVALID_MESSAGE
    else:
        assert read(raw) == json.loads(raw)


@pytest.mark.parametrize("read", READERS, ids=["loads_ijson", "plain_json_loads"])
@pytest.mark.parametrize("raw", [
    b'{"a":123456789012345678901234567890}',  # past 64 bits: orjson would read a float
    b'{"a":-9999999999999999999,"b":18446744073709551615}',
    b'{"a":[' + b"[" * 299 + b"1" + b"]" * 299 + b"]}",  # past orjson's writer depth: the exact reader
    b'{"t":"1795000000000000000","n":1795000000000000000}',
])
def test_what_the_fast_reader_leaves_to_the_exact_one_reads_exactly(read, raw):
    assert read(raw) == json.loads(raw)
    assert type(read(raw)) is type(json.loads(raw))


@pytest.mark.parametrize("read", READERS, ids=["loads_ijson", "plain_json_loads"])
@pytest.mark.parametrize("number", [b"123456789012345678901234567890", b"-9999999999999999999", b"18446744073709551616"])
@pytest.mark.parametrize("where", [b"%s", b'{"a":%s}', b'{"a": [1, %s]}', b'{"a":\n\t%s}', b"[%s]"])
def test_a_wide_integer_anywhere_is_read_exactly(read, number, where):
    raw = where.replace(b"%s", number)
    assert read(raw) == json.loads(raw)


_plain_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
                      max_size=5)
_ascii_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), _plain_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_plain_text, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(_ascii_json)
def test_plainness_of_ascii_text_looks_at_the_values_alone_and_says_the_same(value):
    raw = json.dumps(value).encode()  # ASCII, and without a backslash: the fast reader's text
    parsed = json.loads(raw)
    assert canonical._plain(parsed, names_ascii=True) == canonical._plain(parsed)
    assert plain_json_loads(raw) == (parsed, canonical._plain(parsed))
