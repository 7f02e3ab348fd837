"""`kms.audit` bytes against the output bytes they account for (the audit log should not double the traffic)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def record_bytes(records: Iterable[Any]) -> int:
    """Key and value bytes of records as read back from a topic."""
    return sum(len(r.key or b"") + len(r.value or b"") for r in records)


def audit_bytes_per_output_byte(audit: Iterable[Any], outputs: Iterable[Any], ops: set[str]) -> float:
    """Bytes of the `kms.audit` records of `ops` per byte of the output records they account for."""
    mine = [r for r in audit if r.value and json.loads(r.value).get("op") in ops]
    produced = record_bytes(outputs)
    return record_bytes(mine) / produced if produced else 0.0
