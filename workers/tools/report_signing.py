"""Signing an audit report with keyledger's own key, and checking a saved one offline.

The report key is the `keyledger-system` signing key the audit-digest group makes, wraps through the
KMS and anchors in the ledger (services/digest.py): the key whose keys.material record its ledger
account accepted (audit_check.ledger_anchors) and that keys.events does not call revoked or destroyed,
newest version first. The CLI unwraps it through the KMS, checks that its public key is the anchored
one, and signs (core/report_signature.py: a context no digest uses).

Durability order: the signing is recorded first (a `sign` transfer on the report key's account, then
its kms.audit event, awaited), and only then is the signed report handed back to be written. A report
whose signing is not in the ledger and on kms.audit is never released.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.messages import SYSTEM_TENANT, AuditSource, KeyEvent, KeyEventType, KeyMaterial, KeyType, Op
from schemas.topics import Topic
from workers.core import ids
from workers.core.b64 import b64decode, b64url_decode
from workers.core.canonical import canonical_json
from workers.core.report_signature import REPORT, SIGNATURE, sign_report, signature_problem
from workers.core.signing import private_key_from_seed, public_key_bytes
from workers.errors import KeyledgerError
from workers.kafka.tap import produce, read_topic
from workers.keys.audit import AuditTrail
from workers.kms import Kms, KmsRefused, encryption_context, kms_for
from workers.ledger import Ledger
from workers.ledger.records import OpRecord
from workers.tools.audit_check import ledger_anchors
from workers.tools.report_html import embedded_document, render_document

REPORT_SOURCE = "keyledger audit report"
"""The `source.topic` of a report signing's audit event: no Kafka record caused it, the CLI did."""


class ReportNotSigned(KeyledgerError):
    """No report key to sign with: none anchored, none live, or the KMS refused to unwrap it."""


@dataclass(frozen=True)
class ReportKey:
    key_id: str
    material: KeyMaterial
    public_key: bytes


def report_key(materials: Sequence[bytes | None], anchors: dict[str, bytes],
               key_events: Sequence[bytes | None]) -> ReportKey:
    """The newest anchored keyledger-system signing key that keys.events does not call revoked or destroyed."""
    ended = set()
    for value in key_events:
        event = _parsed(KeyEvent, value)
        if event is not None and event.tenant_id == SYSTEM_TENANT and event.type in (KeyEventType.REVOKED,
                                                                                     KeyEventType.DESTROYED):
            ended.add(event.key_id)
    found: dict[str, KeyMaterial] = {}
    for value in materials:
        material = _parsed(KeyMaterial, value)
        if material is not None and material.key_id in anchors and material.key_id not in ended \
                and _public(material) == anchors[material.key_id]:
            found[material.key_id] = material  # the latest record of a key (a rewrap writes it again)
    if not found:
        raise ReportNotSigned("no keyledger-system signing key is anchored in the ledger and live: the audit "
                              "digest group makes it on the first kms.audit record (run the workers first)")
    newest = max(found.values(), key=lambda m: m.version)
    return ReportKey(newest.key_id, newest, anchors[newest.key_id])


def _public(material: KeyMaterial) -> bytes | None:
    try:
        return b64decode(material.public_key) if material.public_key else None
    except ValueError:  # binascii.Error is a ValueError
        return None


def _parsed(kind: Any, value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return kind.model_validate_json(value)
    except ValidationError:
        return None


async def sign_with_system_key(report: dict[str, Any], *, kms: Kms, ledger: Ledger, materials: Sequence[bytes | None],
                               key_events: Sequence[bytes | None], publish: Any) -> dict[str, Any]:
    """The signed document of `report`, once its signing is recorded (ledger, then kms.audit via `publish`,
    an awaitable taking [(key, value)])."""
    key = report_key(materials, await ledger_anchors(ledger, materials), key_events)
    material = key.material
    context = encryption_context(SYSTEM_TENANT, key.key_id, KeyType.SIGNING)
    try:
        seed = await kms_for(kms, material.kms_provider).decrypt(b64decode(material.wrapped_key),
                                                                 material.kms_key_id, context)
    except KmsRefused as exc:
        raise ReportNotSigned(f"the KMS refused to unwrap the report key {key.key_id}: {exc}") from None
    private_key = private_key_from_seed(seed)
    if public_key_bytes(private_key) != key.public_key:
        raise ReportNotSigned(f"the report key {key.key_id} unwrapped to another key than the ledger anchors")
    document = sign_report(private_key, report, tenant_id=SYSTEM_TENANT, key_id=key.key_id)
    await _audit(document, key.key_id, ledger, publish, str(report.get("tenant", "")))
    return document


async def sign_over_kafka(bootstrap: str, report: dict[str, Any], *, kms: Kms, ledger: Ledger,
                          timeout: float = 120) -> dict[str, Any]:
    """`sign_with_system_key` with keys.material and keys.events read from the broker, and the signing's
    audit event produced to kms.audit (acks=all) before the signed document is returned."""
    materials = [r.value for r in await read_topic(bootstrap, Topic.KEYS_MATERIAL.value, timeout=timeout)]
    events = [r.value for r in await read_topic(bootstrap, Topic.KEYS_EVENTS.value, timeout=timeout)]

    async def publish(records: list[tuple[bytes, bytes]]) -> None:
        await produce(bootstrap, Topic.KMS_AUDIT.value, records)

    return await sign_with_system_key(report, kms=kms, ledger=ledger, materials=materials, key_events=events,
                                      publish=publish)


async def _audit(document: dict[str, Any], key_id: str, ledger: Ledger, publish: Any, tenant: str) -> None:
    fingerprint = hashlib.sha256(canonical_json(document)).hexdigest()
    op = OpRecord(ids.transfer_id(Op.SIGN, key_id, "report", fingerprint), SYSTEM_TENANT, key_id, Op.SIGN,
                  AuditSource(topic=REPORT_SOURCE, partition=0, offset=0),
                  reason=f"audit report of tenant {tenant} signed (sha256 {fingerprint[:16]})")
    events = await AuditTrail(ledger).record([op])
    await publish([(SYSTEM_TENANT.encode(), value) for _, value in events])


# --- checking a saved report ------------------------------------------------------------


def public_key_of(text: str) -> bytes:
    raw = b64url_decode(text)
    if len(raw) != 32:
        raise ValueError("not a raw Ed25519 public key")
    return raw


def known_report_keys(key_events: Sequence[bytes | None]) -> dict[str, bytes]:
    """keyledger-system signing keys' public keys by key id, as keys.events announced them."""
    found = {}
    for value in key_events:
        event = _parsed(KeyEvent, value)
        if event is not None and event.tenant_id == SYSTEM_TENANT and event.key_type is KeyType.SIGNING \
                and event.public_key:
            found[event.key_id] = b64decode(event.public_key)
    return found


def check_saved(text: str, public_key: bytes | None, known: dict[str, bytes] | None = None) -> list[str]:
    """What is wrong with a saved report (JSON or HTML); empty when it is exactly what was signed.
    The key: `public_key`, else the one `known` (keys.events) holds for the key id the report names."""
    html = not text.lstrip().startswith("{")
    try:
        document = embedded_document(text) if html else _json_object(text)
    except ValueError:
        return ["the embedded signed report is not JSON"]
    if document is None:
        return ["no signed report in this file"]
    signature = document.get(SIGNATURE)
    if public_key is None:
        key_id = signature.get("key_id") if isinstance(signature, dict) else None
        public_key = (known or {}).get(str(key_id))
        if public_key is None:
            return [f"no public key given and keys.events announces no keyledger-system key {key_id}"]
    problem = signature_problem(document, public_key)
    if problem is not None:
        return [problem]
    if html:
        try:
            again = render_document(document)
        except (AttributeError, KeyError, TypeError, ValueError):
            return ["the signed report does not have the report's form"]
        if again != text:
            return ["the HTML differs from the signed report it carries (edited after signing)"]
    elif not isinstance(document.get(REPORT), dict):
        return ["no report"]
    return []


def _json_object(text: str) -> dict[str, Any] | None:
    found = json.loads(text)
    return found if isinstance(found, dict) else None
