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
