"""Base64 helpers: standard for stored blobs, url-safe without padding for signatures and envelopes.

The url-safe pair runs on pybase64 (SIMD, from wheels): it is on every PII field's and every
signature's path. Its answers are the standard library's (`base64.urlsafe_b64encode` without the
padding; the strict decoder accepts exactly what that encoder writes): tests/core/test_b64.py holds
the two to the same bytes.
"""

from __future__ import annotations

import base64

import pybase64


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


_URL = b"-_"
_SEXTET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_PADDING = ("", "", "==", "=")  # by length % 4 (1 is never valid)
# bits of the last character that carry no data: they must be zero in the one canonical spelling
_UNUSED_BITS = (0, 0, 0x0F, 0x03)


def b64url_encode(raw: bytes) -> str:
    # pybase64's arguments by position: its keyword parsing costs more than the encoding of a short field
    return pybase64.b64encode_as_string(raw, _URL).rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Strict: url-safe alphabet only, no padding, no non-canonical trailing bits, so every byte string
    has one spelling (the one `b64url_encode` writes). ValueError for anything else."""
    if not text:
        return b""
    rest = len(text) % 4
    last = _SEXTET.get(text[-1])
    # pybase64 reads the standard alphabet's '+' and '/' beside the url-safe one, and '=' as padding:
    # all three are refused here, so the one alphabet is url-safe; anything else non-base64 it refuses
    if rest == 1 or last is None or last & _UNUSED_BITS[rest] or "+" in text or "/" in text or "=" in text:
        raise ValueError("not canonical unpadded base64url")
    try:
        return pybase64.b64decode(text + _PADDING[rest], _URL, True)  # altchars, validate (by position, as above)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        raise ValueError("not canonical unpadded base64url") from None
