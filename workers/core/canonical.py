"""RFC 8785 (JCS) canonical JSON: the bytes that are signed and used as AAD; and the strict I-JSON
(RFC 7493) reader every input topic goes through.

Input rules (docs/contract.md): UTF-8 only (no byte order mark, no UTF-16/32 guessing), no duplicate
member names at any depth (compared after unescaping, so `"\\u0061b"` and `"ab"` are the same name),
numbers that have a value (no NaN/Infinity, no float overflowing to infinity, no integer beyond
Python's digit limit). A refusal is `NotIJson`, whose message never quotes the input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
import rfc8785

from schemas.errors import ErrorCode


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, an integer beyond IEEE 754, a non-string key)."""


# RFC 8785 numbers are IEEE 754 doubles: integers beyond 2^53 have no exact form
_SAFE_INT = 2**53 - 1


class NotIJson(ValueError):
    """Input that is not I-JSON. `code` is `not_json` (not JSON text at all, or not UTF-8) or
    `invalid_message` (JSON, but with duplicate names or a number that has no value)."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # the parser hands over names already unescaped: "\u0061b" arrives as "ab"
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise NotIJson("duplicate member name in a JSON object", ErrorCode.INVALID_MESSAGE)
    return obj


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        raise NotIJson(f"integer of {len(text)} digits", ErrorCode.INVALID_MESSAGE) from None


def _float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise NotIJson("number out of the IEEE 754 range", ErrorCode.INVALID_MESSAGE)
    return number


def _constant(text: str) -> float:
    raise NotIJson("NaN and Infinity are not JSON", ErrorCode.NOT_JSON)


def _text(raw: bytes) -> str:
    """The UTF-8 text of `raw`: json.loads(bytes) would also take UTF-16/32, and a BOM is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotIJson("value is not UTF-8", ErrorCode.NOT_JSON) from None
    if text.startswith("\ufeff"):
        raise NotIJson("value starts with a byte order mark", ErrorCode.NOT_JSON)
    return text


# the exact reader, built once (json.loads(text, **hooks) would build a decoder per call)
_IJSON = json.JSONDecoder(object_pairs_hook=_unique, parse_int=_int, parse_float=_float, parse_constant=_constant)


def _decode(text: str) -> Any:
    """The exact reader: Python's json with the hooks above, duplicate names refused as they are read."""
    try:
        return _IJSON.decode(text)
    except json.JSONDecodeError:
        raise NotIJson("value is not JSON", ErrorCode.NOT_JSON) from None


# Integers orjson would read as floats (it is exact up to 64 bits) send the text to the exact reader.
# A number follows the start, ':', ',' or '['; digits inside a string (a hex id, an OTLP time) follow a
# quote or a letter, and when they do not the exact reader is merely slower. The plain scan for 19
# digits in a row (a translate and a substring search) runs before the anchored patterns, which cost more.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # every digit a 0, the rest a space
_NINETEEN = b"0" * 19
_WIDE_INTEGER = re.compile(rb"[:,\[]\s*-?[0-9]{19}").search
_WIDE_ALONE = re.compile(rb"\s*-?[0-9]{19}").match
_MISS = object()


def _wide_integer(raw: bytes) -> bool:
    return _NINETEEN in raw.translate(_DIGITS_AS_ZEROS) and (
        _WIDE_INTEGER(raw) is not None or _WIDE_ALONE(raw) is not None)


def _fast_loads(raw: bytes) -> Any:
    """orjson's reading of `raw` for text without a backslash; `_MISS` when orjson refuses the text (the
    exact reader then decides, and says why in its own typed words). The caller rules out integers past
    64 bits (`_wide_integer`). Duplicate names are found by counting quotes: with no escape in the text
    no string holds a quote or needs one, so the text's quotes are two per string token and orjson's
    writing of the value (it escapes exactly what json does) two per string it kept; a dropped
    duplicate takes at least its name's. Tied to the exact reader by tests/core/test_canonical.py."""
    if b"\\" in raw:
        return _MISS
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _MISS
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested past orjson's writer (255 levels): the exact reader decides
        return _MISS
    if raw.count(b'"') != encoded.count(b'"'):
        raise NotIJson("duplicate member name in a JSON object", ErrorCode.INVALID_MESSAGE)
    return value


def loads_ijson(raw: bytes) -> Any:
    """Parse `raw` under the input rules above; NotIJson (typed), RecursionError for absurd nesting."""
    value = _MISS if _wide_integer(raw) else _fast_loads(raw)
    return _decode(_text(raw)) if value is _MISS else value


def canonical_json(value: Any, *, known_plain: bool = False) -> bytes:
    """RFC 8785 bytes of `value`. `known_plain` skips the scan when the caller already knows the
    value has no floats, only safe integers and only ASCII keys (see `plain_json_loads`)."""
    if known_plain or _plain(value):
        # For values without floats, with integers in the safe range and keys below U+D800 (where UTF-16
        # and code point order agree), sorted compact JSON is byte-for-byte RFC 8785: orjson's (it
        # escapes exactly what json.dumps(ensure_ascii=False) does), or Python's. Tied to rfc8785 by
        # the property tests of tests/core/test_canonical.py.
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass  # a lone surrogate, a key that is not a string: json, then the reference implementation
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: the reference implementation decides
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        raise CanonicalizationError("an integer beyond the IEEE 754 safe range") from None
    except rfc8785.FloatDomainError:
        raise CanonicalizationError("NaN or infinity") from None
    except (rfc8785.CanonicalizationError, TypeError, ValueError, UnicodeEncodeError):
        # the library's messages may quote the value; ours never do
        raise CanonicalizationError("a string or value that is not valid Unicode JSON") from None


def _plain(value: Any, names_ascii: bool = False) -> bool:
    """No floats, integers in the safe range only, names below U+D800. `names_ascii`: the value was
    parsed from ASCII text, so its names are ASCII strings already and only the values need a look."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_SAFE_INT <= item <= _SAFE_INT:
                continue
            return False
        if kind is dict:
            if not names_ascii:
                for key in item:
                    if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                        return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return True


def plain_json_loads(raw: bytes) -> tuple[Any, bool]:
    """`loads_ijson` (same refusals, NotIJson) that also says whether the value is plain (see
    canonical_json). Names are told by the text: ASCII text without \\u escapes has ASCII names only,
    so only the values need a look. False when in doubt: canonical_json then scans for itself."""
    value = _fast_loads(raw)
    if value is not _MISS:
        ascii_text = raw.isascii()  # and without a backslash, or orjson's reading would be _MISS
        plain = _plain(value, names_ascii=ascii_text)
        # a wide integer is a float to orjson, so only a value that is not plain may hold one
        if plain or not _wide_integer(raw):
            return value, plain and ascii_text
    value = _decode(_text(raw))
    return value, raw.isascii() and b"\\u" not in raw and _plain(value, names_ascii=True)
