"""The consumer groups a process can run, each registered by a function (never at import time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faststream.kafka import KafkaBroker

from workers import keygen, pii, rotation, signer

Registrar = Callable[[KafkaBroker, Any], Any]

REGISTRARS: dict[str, Registrar] = {
    keygen.GROUP: keygen.register,
    signer.GROUP: signer.register,
    pii.GROUP: pii.register,
    rotation.GROUP: rotation.register,
}

ALL_GROUPS = tuple(REGISTRARS)
