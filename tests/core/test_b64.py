"""The one strict base64url reader (signatures, digests, PII envelopes): it reads exactly what
`b64url_encode` writes, so every byte string has one spelling."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.core.b64 import b64url_decode, b64url_encode


@given(st.binary(max_size=200))
def test_what_is_written_reads_back(raw):
    assert b64url_decode(b64url_encode(raw)) == raw


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n!é", max_size=40))
def test_only_the_canonical_spelling_reads(text):
    try:
        raw = b64url_decode(text)
    except ValueError:
        # refused: not the spelling of any bytes that the encoder writes
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            return
        assert b64url_encode(raw) != text
        return
    assert b64url_encode(raw) == text


@pytest.mark.parametrize("text", ["A", "AB=", "AB==", "AB+/", "AB/_", "AQ\n", "AR", "ABC", "AB C", "ÀB"])
def test_non_canonical_or_foreign_text_is_refused(text):
    with pytest.raises(ValueError):
        b64url_decode(text)


def test_the_empty_string_is_no_bytes():
    assert b64url_decode("") == b""


# The standard library's base64url is the model the SIMD pair (pybase64) is held to, byte for byte.


def _model_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _model_decode(text: str) -> bytes | None:
    """The strict reading by the standard library: the bytes of `text` when it is exactly what the model
    encoder writes for them, else None."""
    if not text.isascii() or any(c in text for c in "+/=") or not text.isprintable() or " " in text:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:
        return None
    return raw if _model_encode(raw) == text else None


@given(st.binary(max_size=2000))
def test_the_encoder_writes_what_the_standard_library_writes(raw):
    assert b64url_encode(raw) == _model_encode(raw)


@given(st.one_of(st.binary(max_size=300).map(_model_encode),
                 st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n\t\x00!é\ud800",
                         max_size=60),
                 st.text(max_size=20)))
def test_the_decoder_reads_what_the_standard_library_reads_strictly(text):
    expected = _model_decode(text)
    if expected is None:
        with pytest.raises(ValueError):
            b64url_decode(text)
    else:
        assert b64url_decode(text) == expected
