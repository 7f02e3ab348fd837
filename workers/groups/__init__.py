"""Consumer groups: thin handlers that turn records into service calls and an `Outcome` into records.

Each group is a class built from explicit dependencies (`base.Deps`); the process
context builds the ones it runs (never at import time) and subscribes them.
"""

from __future__ import annotations

from collections.abc import Callable

from workers.groups.audit_digest import AuditDigestGroup
from workers.groups.base import Deps
from workers.groups.keygen import KeygenGroup
from workers.groups.pii import PiiGroup
from workers.groups.rotation import RotationGroup
from workers.groups.signer import SignerGroup
from workers.kafka.consume import ConsumerGroup

GROUPS: dict[str, Callable[[Deps], ConsumerGroup]] = {
    KeygenGroup.name: KeygenGroup,
    SignerGroup.name: SignerGroup,
    PiiGroup.name: PiiGroup,
    RotationGroup.name: RotationGroup,
    AuditDigestGroup.name: AuditDigestGroup,
}

ALL_GROUPS = tuple(GROUPS)
