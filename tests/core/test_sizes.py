"""The JSON and base64url bounds of workers/core/sizes.py against what pydantic and the encoder write."""

from __future__ import annotations

import pydantic_core
from hypothesis import given
from hypothesis import strategies as st

from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.sizes import b64url_bytes_max, b64url_chars, json_string_len, json_string_max


@given(st.text())
def test_a_json_string_is_never_longer_than_its_bound(text):
    written = len(pydantic_core.to_json(text))
    assert written <= json_string_len(text) <= json_string_max(len(text.encode()))


@given(st.binary(max_size=300))
def test_base64url_lengths_are_exact(raw):
    text = b64url_encode(raw)
    assert len(text) == b64url_chars(len(raw))
    assert len(b64url_decode(text)) <= b64url_bytes_max(len(text))
