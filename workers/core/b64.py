"""Base64 helpers: standard for stored blobs, url-safe without padding for signatures and envelopes."""

from __future__ import annotations

import base64
import binascii
import re


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


_URL_FROM_STD = bytes.maketrans(b"+/", b"-_")
_STD_FROM_URL = bytes.maketrans(b"-_", b"+/")
_URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET = {c: i for i, c in enumerate(_URL_ALPHABET)}
_URL_TEXT = re.compile(r"[A-Za-z0-9_-]*").fullmatch
_PADDING = (b"", b"", b"==", b"=")  # by length % 4 (1 is never valid)
# bits of the last character that carry no data: they must be zero in the one canonical spelling
_UNUSED_BITS = (0, 0, 0x0F, 0x03)


def b64url_encode(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URL_FROM_STD).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict: url-safe alphabet only, no padding, no non-canonical trailing bits."""
    if len(text) % 4 == 1 or not _URL_TEXT(text):
        raise ValueError("not unpadded base64url")
    return b64url_decode_checked(text)


def b64url_decode_checked(text: str) -> bytes:
    """`b64url_decode` for text already known to be of the url-safe alphabet (e.g. matched by a regex)."""
    rest = len(text) % 4
    if rest == 1:
        raise ValueError("not unpadded base64url")
    if rest and _SEXTET[text[-1]] & _UNUSED_BITS[rest]:
        raise ValueError("not canonical base64url")
    # bytes.translate runs in C; str.translate looks every character up in a dict
    return binascii.a2b_base64(text.encode("ascii").translate(_STD_FROM_URL) + _PADDING[rest])
