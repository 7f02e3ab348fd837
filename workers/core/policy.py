"""Key policy, pure: when a key is due for rotation and in which rounds ticks apply.

Wear-out is counted in the ledger itself (keys/budget.py), so every worker shares one counter.

Times are TigerBeetle cluster time in nanoseconds since the epoch; nothing here
reads a clock or talks to the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from schemas.messages import RotationReason

NS = 1_000_000_000
T = TypeVar("T")


def rotation_cutoff(now_ns: int, reason: RotationReason, age_s: int) -> int:
    """Keys created before this instant are due: older than the rotation age when scheduled, all otherwise."""
    return now_ns - age_s * NS if reason is RotationReason.SCHEDULED else now_ns


def is_due(created_ns: int, cutoff_ns: int) -> bool:
    return created_ns < cutoff_ns


def rounds(per_tenant: Mapping[str, Sequence[T]]) -> list[list[T]]:
    """Round k takes every tenant's k-th tick, so one tenant's ticks apply in order and tenants in parallel."""
    depth = max((len(ticks) for ticks in per_tenant.values()), default=0)
    return [[ticks[k] for ticks in per_tenant.values() if k < len(ticks)] for k in range(depth)]

