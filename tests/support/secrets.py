"""Finding a secret in bytes whatever its usual encoding: raw, hex, repr, base64 and base64url.

Base64 inside a larger blob depends on where the secret starts modulo 3, so each alignment is
searched for: the encoding of the secret's bytes from the first group boundary on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable


def encodings(secret: bytes) -> dict[str, bytes]:
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    if not secret.isascii():
        # repr picks its quotes from the whole bytes object it prints, so a `'` in the secret may or may not
        # be escaped in a larger repr: look for both spellings
        body = repr(secret)[2:-1]
        plain = body.replace("\\'", "'")
        forms["repr"] = plain.encode()
        forms["repr-quoted"] = plain.replace("'", "\\'").encode()
    for shift in range(3):
        part = secret[shift:]
        part = part[: len(part) // 3 * 3]
        if len(part) >= 6:  # shorter would match by chance
            forms[f"base64@{shift}"] = base64.b64encode(part)
            forms[f"base64url@{shift}"] = base64.urlsafe_b64encode(part)
    return forms


def found_in(secret: bytes, blobs: Iterable[bytes]) -> list[str]:
    """The names of the encodings of `secret` found in any blob."""
    forms = encodings(secret)
    return sorted({name for blob in blobs for name, form in forms.items() if form in blob})


def record_bytes(records: Iterable) -> list[bytes]:
    """Every byte a consumer of these ConsumerRecords sees: key, value, header names and values."""
    blobs = []
    for r in records:
        headers = b"".join(name.encode() + (value or b"") for name, value in (r.headers or ()))
        blobs.append((r.key or b"") + b"\x00" + (r.value or b"") + b"\x00" + headers)
    return blobs
