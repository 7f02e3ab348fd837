"""Base64 helpers: standard for stored blobs, url-safe without padding for signatures and envelopes."""

from __future__ import annotations

import base64
import binascii


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


_URL_FROM_STD = bytes.maketrans(b"+/", b"-_")
# url-safe characters to the standard alphabet; the standard alphabet's own '+', '/' and '=' (and every
# other byte) to '!', which the strict decoder refuses: the alphabet is checked by the decoder itself
_STD_FROM_URL_STRICT = bytes(
    ord("+") if c == ord("-") else ord("/") if c == ord("_") else
    c if chr(c).isascii() and chr(c).isalnum() else ord("!") for c in range(256))
_SEXTET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_PADDING = (b"", b"", b"==", b"=")  # by length % 4 (1 is never valid)
# bits of the last character that carry no data: they must be zero in the one canonical spelling
_UNUSED_BITS = (0, 0, 0x0F, 0x03)


def b64url_encode(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URL_FROM_STD).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict: url-safe alphabet only, no padding, no non-canonical trailing bits, so every byte string
    has one spelling (the one `b64url_encode` writes). ValueError for anything else."""
    if not text:
        return b""
    rest = len(text) % 4
    last = _SEXTET.get(text[-1])
    if rest == 1 or last is None or last & _UNUSED_BITS[rest] or not text.isascii():
        raise ValueError("not canonical unpadded base64url")
    try:
        return binascii.a2b_base64(text.encode("ascii").translate(_STD_FROM_URL_STRICT) + _PADDING[rest],
                                   strict_mode=True)
    except binascii.Error:
        raise ValueError("not canonical unpadded base64url") from None
