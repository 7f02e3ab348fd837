"""Operator-signed rotation ticks: the authorization a tick needs to touch more than one tenant.

A `keys.rotation-ticks` record that would rotate keys of several tenants now (a `manual` or
`compromise` tick without `tenant_id` and without `key_id`) is honoured only when it carries
`operator_signature`: Ed25519 by the operator key (the one that signs `keys.callers` policies,
KEYLEDGER_OPERATOR_PUBLIC_KEY) over

    TICK_CONTEXT || RFC 8785(tick as JSON, members with no value omitted, without operator_signature)

The context differs from the policy context and starts with neither `{` nor a digit, so a tick
signature is never a valid policy, span or digest signature. A Kafka writer without the operator's
private key can therefore still ask for a scheduled rotation (only keys already due) or for one
tenant's or one key's rotation, never for everyone's.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.messages import RotationTick
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import CanonicalizationError, canonical_json
from workers.core.signing import SIGNATURE_BYTES, verify_raw

TICK_CONTEXT = b"keyledger operator tick v1\x00"
OPERATOR_SIGNATURE = "operator_signature"


def tick_signing_input(tick: RotationTick) -> bytes:
    record: dict[str, Any] = tick.model_dump(mode="json", exclude_none=True, exclude={OPERATOR_SIGNATURE})
    return TICK_CONTEXT + canonical_json(record)


def sign_tick(tick: RotationTick, operator_key: Ed25519PrivateKey) -> RotationTick:
    """`tick` with the operator's signature."""
    unsigned = tick.model_copy(update={OPERATOR_SIGNATURE: None})
    signature = b64url_encode(operator_key.sign(tick_signing_input(unsigned)))
    return unsigned.model_copy(update={OPERATOR_SIGNATURE: signature})


def operator_signed(tick: RotationTick, operator_key: Ed25519PublicKey | None) -> bool:
    """Whether `tick` carries a valid signature of the operator key (False when none is configured)."""
    if operator_key is None or tick.operator_signature is None:
        return False
    try:
        raw = b64url_decode(tick.operator_signature)
        signed = tick_signing_input(tick)
    except (ValueError, CanonicalizationError):
        return False
    return len(raw) == SIGNATURE_BYTES and verify_raw(operator_key, signed, raw)
