"""The fast path of canonical_json must equal the reference RFC 8785 implementation byte for byte."""

import random

import pytest
import rfc8785

from workers.core.canonical import CanonicalizationError, canonical_json

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
