"""A signed audit report, pure: what is signed, the signature, the check.

A signed report is the JSON document

    {"report": <the report's JSON form>,
     "signature": {"algorithm": "Ed25519", "context": CONTEXT, "tenant_id": "keyledger-system",
                   "key_id": <32 hex>, "public_key": <raw Ed25519, base64url>, "value": <base64url>}}

`value` is Ed25519 over the bytes  CONTEXT (ASCII) || 0x00 || RFC 8785 JSON of {"report": ..., "signer":
{every member of "signature" but "value"}}: the signer's identity is signed with the report, so swapping
the key or the key id breaks the signature as surely as an edit of the report does. A digest signs RFC 8785
JSON alone (its signed bytes begin with `{`), these bytes begin with the context, so a signature of one kind
never verifies as the other even under the same keyledger-system key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import canonical_json
from workers.core.signing import public_key_bytes, sign, verify

CONTEXT = "keyledger audit report v1"
ALGORITHM = "Ed25519"
REPORT, SIGNATURE, VALUE = "report", "signature", "value"


def signed_bytes(report: Mapping[str, Any], signer: Mapping[str, Any]) -> bytes:
    return CONTEXT.encode("ascii") + b"\x00" + canonical_json({REPORT: dict(report), "signer": dict(signer)})


def sign_report(private_key: Ed25519PrivateKey, report: Mapping[str, Any], *, tenant_id: str,
                key_id: str) -> dict[str, Any]:
    """The signed document of `report` (Ed25519 is deterministic: the same report signs the same)."""
    signer = {"algorithm": ALGORITHM, "context": CONTEXT, "tenant_id": tenant_id, "key_id": key_id,
              "public_key": b64url_encode(public_key_bytes(private_key))}
    value = sign(private_key, signed_bytes(report, signer))
    return {REPORT: dict(report), SIGNATURE: {**signer, VALUE: value}}


def signature_problem(document: Mapping[str, Any], public_key: bytes) -> str | None:
    """None when `document` is a report signed by `public_key` (raw Ed25519); else what is wrong."""
    report, signature = document.get(REPORT), document.get(SIGNATURE)
    if not isinstance(report, dict) or not isinstance(signature, dict):
        return "not a signed keyledger report: no report or no signature"
    signer = {name: value for name, value in signature.items() if name != VALUE}
    if signer.get("algorithm") != ALGORITHM or signer.get("context") != CONTEXT:
        return f"not a {ALGORITHM} signature with the context {CONTEXT!r}"
    try:
        named = b64url_decode(str(signer.get("public_key")))
    except ValueError:
        named = b""
    if named != public_key:
        return "signed by another key than the one given"
    value = signature.get(VALUE)
    if not isinstance(value, str):
        return "the signature has no value"
    if not verify(public_key, signed_bytes(report, signer), value):
        return "the signature does not verify: the report or its signer was changed after signing"
    return None
