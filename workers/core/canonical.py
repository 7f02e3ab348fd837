"""RFC 8785 (JCS) canonical JSON: the bytes that are signed and used as AAD."""

from __future__ import annotations

import json
from typing import Any

import rfc8785


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, an integer beyond IEEE 754, a non-string key)."""


# RFC 8785 numbers are IEEE 754 doubles: integers beyond 2^53 have no exact form
_SAFE_INT = 2**53 - 1
# Python's int() refuses more digits than this (sys.int_info.default_max_str_digits); pydantic's JSON
# parser refuses a float whose integer part is longer, and so does `plain_json_loads`
_MAX_DIGITS = 4300


def canonical_json(value: Any, *, known_plain: bool = False) -> bytes:
    """RFC 8785 bytes of `value`. `known_plain` skips the scan when the caller already knows the
    value has no floats, only safe integers and only ASCII keys (see `plain_json_loads`)."""
    if known_plain or _plain(value):
        # For values without floats, with integers in the safe range and keys below U+D800 (where UTF-16
        # and code point order agree), Python's sorted compact JSON is byte-for-byte RFC 8785, in C.
        try:
            return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: the reference implementation decides
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, UnicodeEncodeError) as exc:
        raise CanonicalizationError(str(exc)) from None


def _plain(value: Any) -> bool:
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
            for key in item:
                if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                    return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return True


def _integer_digits(number: str) -> int:
    unsigned = number.lstrip("-")
    return len(unsigned) - len(unsigned.lstrip("0123456789"))


class _Scan:
    __slots__ = ("plain",)

    def __init__(self) -> None:
        self.plain = True


def plain_json_loads(raw: bytes) -> tuple[Any, bool]:
    """json.loads that also says whether the value is plain (see canonical_json) at parse time.

    Floats and out-of-range integers are noticed by the parser hooks; keys are ASCII when the raw
    text is ASCII without \\u escapes. Any doubt answers False and the full scan decides later.
    """
    scan = _Scan()

    def on_float(text: str) -> float:
        scan.plain = False
        if len(text) > _MAX_DIGITS and _integer_digits(text) > _MAX_DIGITS:
            raise ValueError("number out of range")
        return float(text)

    def on_int(text: str) -> int:
        number = int(text)
        if not -_SAFE_INT <= number <= _SAFE_INT:
            scan.plain = False
        return number

    def on_constant(text: str) -> float:
        scan.plain = False  # NaN and Infinity have no RFC 8785 form: the reference refuses them
        return float(text)

    value = json.loads(raw, parse_float=on_float, parse_int=on_int, parse_constant=on_constant)
    return value, scan.plain and raw.isascii() and b"\\u" not in raw
