"""RFC 8785 (JCS) canonical JSON: the bytes that are signed and used as AAD."""

from __future__ import annotations

from typing import Any

import rfc8785


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 form (NaN, infinity, an integer beyond IEEE 754, a non-string key)."""


def canonical_json(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise CanonicalizationError(str(exc)) from None
