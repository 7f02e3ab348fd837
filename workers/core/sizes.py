"""Upper bounds on the encoded size of what keyledger writes, from what it was asked.

Each bound is exact in the sense of never being exceeded (tests/groups/test_sizes.py checks
encoded outputs against it); it is not tight. JSON text is bounded as pydantic's
serializer writes it (`ensure_ascii` off): a UTF-8 byte takes at most 6 bytes (a control character
escaped `\\u00XX`), a multi-byte character no more bytes than it has.
"""

from __future__ import annotations

JSON_ESCAPE_BYTES = 6
"""The most bytes one UTF-8 byte of a string takes in JSON text."""


def b64url_chars(raw_bytes: int) -> int:
    """Characters of unpadded base64url of `raw_bytes` bytes: ceil(4n/3)."""
    return (4 * raw_bytes + 2) // 3


def b64url_bytes_max(chars: int) -> int:
    """The most bytes `chars` characters of unpadded base64url decode to: floor(3n/4)."""
    return 3 * chars // 4


def json_string_max(utf8_bytes: int) -> int:
    """The most bytes a JSON string of a value of `utf8_bytes` UTF-8 bytes takes, quotes included."""
    return JSON_ESCAPE_BYTES * utf8_bytes + 2


def json_string_len(text: str) -> int:
    """An upper bound of the JSON string of `text` (quotes included): its ASCII part printable and
    free of `"` and `\\` is written as it stands, every other byte bounded by JSON_ESCAPE_BYTES."""
    raw = text.encode()
    if raw.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(raw) + 2
    return json_string_max(len(raw))
