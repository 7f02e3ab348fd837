"""Trusted callers: who asks (an HMAC proof on every request) and what they may ask (a signed policy).

Request proof (a request's `caller` member):

    "caller": {"id": <caller_id>, "at": <RFC 3339 UTC, Z>, "proof": <base64url, no padding>}

    caller_id  32 lowercase hex: BLAKE2b-128 of the caller's name (`caller_id_for`), stable across
               policy versions, so it can name the caller in a ledger transfer's user data
    proof      HMAC-SHA-256 under the caller's 32-byte secret of

                   PROOF_CONTEXT || operation || 0x00 || RFC 8785(request without caller.proof)

               where `operation` is `encrypt`, `decrypt`, `reencrypt` or `sign` (a span); the whole
               request is covered (tenant, fields, record and job ids, the caller's id and `at`,
               any extra member), so a proof moved to another tenant, operation, body or time fails.

A request is admitted when its caller is known and not revoked, the proof matches (compared in
constant time), `at` is within the skew of now (either side, the boundary included), and the
policy allows the tenant and the operation; otherwise it is refused with one `CallerRefusal`.
The request id (`request_id`) derives from (caller id, proof): a copy of a valid request produced
again is the same request, and every transfer made for it carries the request id's first 64 bits
(ledger/records.py request_tag), so the ledger links each copy to the others.

Policy records (topic `keys.callers`, key = caller id) are `CallerPolicy` JSON objects whose
`signature` is Ed25519 by the operator key over

    POLICY_CONTEXT || RFC 8785(record without signature)

The context starts with neither `{` nor a digit, so these bytes are never the bytes of a span
signature or an audit digest (both sign bare RFC 8785 objects). A record the operator key did not
sign grants nothing. `CallerTable` keeps, per caller, the record of the highest version; two
different records of one version (a tie) make the caller grant nothing until a higher version.
A record of a lower version than the ledger pins for its caller (`CallerTable.pin`, read before the
topic) is rolled back: an operator-signed record re-published later, which compaction would leave
as the only one. It changes nothing. A caller with no pin is judged by the topic alone.

Nothing here logs, raises or returns a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from schemas.messages import (
    ALL_TENANTS,
    CALLER_ID_PATTERN,
    CALLER_NAME_PATTERN,
    CallerOperation,
    CallerPolicy,
    CallerRefusal,
)
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import CanonicalizationError, NotIJson, canonical_json, loads_ijson
from workers.core.signing import SIGNATURE_BYTES, verify_raw

PROOF_CONTEXT = b"keyledger caller proof v1\x00"
POLICY_CONTEXT = b"keyledger caller policy v1\x00"
SECRET_BYTES = 32
PROOF_BYTES = 32
CALLER = "caller"
PROOF = "proof"
SIGNATURE = "signature"
DEFAULT_MAX_SKEW = 300.0

_is_caller_id = re.compile(CALLER_ID_PATTERN).match
_is_caller_name = re.compile(CALLER_NAME_PATTERN).match
# RFC 3339 in UTC with `Z`; at most microseconds (what datetime holds)
_is_utc_time = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z").fullmatch


def caller_id_for(name: str) -> str:
    """The stable 32-hex id of the caller named `name`."""
    if not _is_caller_name(name):
        raise ValueError("a caller name is 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
    return hashlib.blake2b(name.encode(), digest_size=16, person=b"kl-caller-id").hexdigest()


def secret_context(caller_id: str) -> dict[str, str]:
    """The KMS encryption context of a caller's wrapped secret: a blob moved to another caller never unwraps."""
    return {"caller_id": caller_id}


def format_at(moment: datetime) -> str:
    """`moment` as a proof's `at`: RFC 3339, UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_at(text: str) -> datetime | None:
    """A proof's `at`, or None when it is not RFC 3339 UTC with `Z`."""
    if type(text) is not str or not _is_utc_time(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # e.g. month 13
        return None


# --- request proofs --------------------------------------------------------------------------------


# what precedes the request's bytes, per operation (looked up per request: building it costs more)
_PROOF_PREFIX = {operation.value: PROOF_CONTEXT + operation.value.encode() + b"\x00" for operation in CallerOperation}


def proof_input(request: Mapping[str, Any], operation: str, *, known_plain: bool = False) -> bytes:
    """The bytes a caller's proof covers: the context, the operation, then RFC 8785 of the request with
    `caller.proof` removed (every other member of `caller` stays). `known_plain` as in `canonical_json`
    (a service that parsed the request with `plain_json_loads` knows). CanonicalizationError when the
    request has no RFC 8785 form; ValueError for an unknown operation; KeyError/TypeError when the
    request has no `caller` object."""
    prefix = _PROOF_PREFIX.get(operation)
    if prefix is None:
        raise ValueError("not a caller operation")
    caller = request[CALLER]
    if not isinstance(caller, Mapping):
        raise TypeError("caller is not an object")
    unproved = {**request, CALLER: {name: value for name, value in caller.items() if name != PROOF}}
    return prefix + canonical_json(unproved, known_plain=known_plain)


def make_proof(secret: bytes, message: bytes) -> str:
    return b64url_encode(hmac.digest(secret, message, "sha256"))


def prove(request: Mapping[str, Any], operation: str, caller_id: str, secret: bytes, at: datetime) -> dict[str, Any]:
    """`request` with its `caller` member set: id, `at`, and the proof over everything else."""
    proved: dict[str, Any] = {**request, CALLER: {"id": caller_id, "at": format_at(at)}}
    proved[CALLER][PROOF] = make_proof(secret, proof_input(proved, operation))
    return proved


def request_id(caller_id: str, proof: str) -> str:
    """32 lowercase hex naming one proved request: the same for every copy of it (a redelivery, or a
    copy produced again), different for any other proof."""
    return hashlib.blake2b(f"{caller_id}\x00{proof}".encode(), digest_size=16, person=b"kl-caller-req").hexdigest()


# --- policy records --------------------------------------------------------------------------------


class PolicyRecordRefused(ValueError):
    """A `keys.callers` record that grants nothing. `caller_id` is the id it names, when it names one;
    the message says why and never quotes a secret."""

    def __init__(self, message: str, caller_id: str | None) -> None:
        super().__init__(message)
        self.caller_id = caller_id


def policy_signing_input(record: Mapping[str, Any]) -> bytes:
    return POLICY_CONTEXT + canonical_json({name: value for name, value in record.items() if name != SIGNATURE})


def sign_policy(record: Mapping[str, Any], operator_key: Ed25519PrivateKey) -> dict[str, Any]:
    """`record` (every member but `signature`) with the operator's signature added."""
    unsigned = {name: value for name, value in record.items() if name != SIGNATURE}
    return {**unsigned, SIGNATURE: b64url_encode(operator_key.sign(policy_signing_input(unsigned)))}


def operator_public_key(text: str) -> Ed25519PublicKey:
    """KEYLEDGER_OPERATOR_PUBLIC_KEY: base64url (no padding) of the raw 32-byte Ed25519 public key."""
    raw = b64url_decode(text.strip())
    if len(raw) != 32:
        raise ValueError("the operator public key is 32 bytes (base64url, no padding)")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_policy_record(raw: bytes, operator_key: Ed25519PublicKey) -> CallerPolicy:
    """The policy of a `keys.callers` record value, when the operator key signed it; else
    PolicyRecordRefused naming the caller id the record claims (if any)."""
    try:
        record = loads_ijson(raw)
    except (NotIJson, RecursionError):
        raise PolicyRecordRefused("not an I-JSON object", None) from None
    if not isinstance(record, dict):
        raise PolicyRecordRefused("not a JSON object", None)
    claimed = record.get("caller_id")
    caller_id = claimed if isinstance(claimed, str) and _is_caller_id(claimed) else None
    signature = record.get(SIGNATURE)
    try:
        raw_signature = b64url_decode(signature) if isinstance(signature, str) else b""
        signed = policy_signing_input(record)
    except (ValueError, CanonicalizationError):
        raise PolicyRecordRefused("not signed by the operator key", caller_id) from None
    if len(raw_signature) != SIGNATURE_BYTES or not verify_raw(operator_key, signed, raw_signature):
        raise PolicyRecordRefused("not signed by the operator key", caller_id)
    try:
        return CallerPolicy.model_validate(record)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in error["loc"]) for error in exc.errors()})
        raise PolicyRecordRefused(f"signed, but not a caller policy ({', '.join(fields)})", caller_id) from None


# --- the policy table ------------------------------------------------------------------------------


class Change(StrEnum):
    """What a verified policy record does to the table."""

    NEWER = "newer"  # the caller's latest record: install it
    SAME = "same"  # the record the table holds already (a redelivery): nothing
    STALE = "stale"  # a lower version than the table holds: ignored
    TIE = "tie"  # another record of the version the table holds: the caller grants nothing
    ROLLED_BACK = "rolled_back"  # a lower version than the ledger pins for the caller: refused


@dataclass(slots=True)
class Caller:
    """A caller as every process holds it. `secret` is None when revoked, tied, or not unwrapped."""

    policy: CallerPolicy
    secret: bytes | None = field(default=None, repr=False)
    tied: bool = False

    def allows(self, tenant_id: str, operation: str) -> bool:
        tenants = self.policy.tenants
        return operation in self.policy.operations and (tenants == ALL_TENANTS or tenant_id in tenants)


class CallerTable:
    """The latest policy of every caller (small: every process holds it whole)."""

    def __init__(self) -> None:
        self._callers: dict[str, Caller] = {}
        self._watchers: list[Callable[[str], None]] = []
        self._pinned: dict[str, int] = {}

    def pin(self, pinned: Mapping[str, int]) -> None:
        """The highest policy version the ledger pins per caller (ledger/records.py caller pins), read
        before any record is applied: a record below its caller's pin is ROLLED_BACK from then on."""
        for caller_id, version in pinned.items():
            self._pinned[caller_id] = max(version, self._pinned.get(caller_id, 0))

    def pinned(self, caller_id: str) -> int:
        """The caller's highest pinned version; 0 when the ledger pins none."""
        return self._pinned.get(caller_id, 0)

    def watch(self, changed: Callable[[str], None]) -> None:
        """Call `changed(caller_id)` after each record that changes what a caller is (`install`, `tie`):
        whatever was derived from its previous record (a result key) is stale from then on."""
        self._watchers.append(changed)

    def __len__(self) -> int:
        return len(self._callers)

    def __iter__(self) -> Iterator[Caller]:
        return iter(list(self._callers.values()))

    def get(self, caller_id: str) -> Caller | None:
        return self._callers.get(caller_id)

    def change(self, policy: CallerPolicy) -> Change:
        if policy.version < self._pinned.get(policy.caller_id, 0):
            return Change.ROLLED_BACK
        held = self._callers.get(policy.caller_id)
        if held is None or policy.version > held.policy.version:
            return Change.NEWER
        if policy.version < held.policy.version:
            return Change.STALE
        return Change.SAME if policy.signature == held.policy.signature and not held.tied else Change.TIE

    def install(self, policy: CallerPolicy, secret: bytes | None) -> None:
        """The caller's record from now on (`change` said NEWER); a revoked record keeps no secret."""
        if secret is not None and len(secret) != SECRET_BYTES:
            raise ValueError("a caller secret is 32 bytes")
        self._callers[policy.caller_id] = Caller(policy, None if policy.revoked else secret)
        self._changed(policy.caller_id)

    def tie(self, policy: CallerPolicy) -> None:
        """Two records of one version: the caller grants nothing until a higher version arrives."""
        held = self._callers[policy.caller_id]
        held.secret = None
        held.tied = True
        self._changed(policy.caller_id)

    def _changed(self, caller_id: str) -> None:
        for changed in self._watchers:
            changed(caller_id)


class Admission(NamedTuple):
    """The verdict on one request's caller: `refusal` None means admitted. `caller_id` is the id the
    request names when it names one (an audit event names it either way); `request_id` is set once
    the proof is authentic."""

    caller_id: str | None
    refusal: CallerRefusal | None
    request_id: str | None = None


class CallerVerifier:
    """Checks requests against a `CallerTable`; a service calls `check` per request of a batch."""

    def __init__(self, table: CallerTable, *, max_skew: float = DEFAULT_MAX_SKEW) -> None:
        self._table = table
        self._max_skew = max_skew

    def check(self, request: Mapping[str, Any], tenant_id: str, operation: str, now: datetime, *,
              known_plain: bool = False) -> Admission:
        """The verdict on one request. `known_plain`: the request is plain JSON (see `canonical_json`), which
        spares the scan before its canonical form."""
        caller = request.get(CALLER)
        if not isinstance(caller, Mapping):
            return Admission(None, CallerRefusal.UNKNOWN_CALLER)
        caller_id = caller.get("id")
        if not isinstance(caller_id, str) or not _is_caller_id(caller_id):
            return Admission(None, CallerRefusal.UNKNOWN_CALLER)
        held = self._table.get(caller_id)
        if held is None:
            return Admission(caller_id, CallerRefusal.UNKNOWN_CALLER)
        if held.policy.revoked:
            return Admission(caller_id, CallerRefusal.REVOKED)
        proof = caller.get(PROOF)
        if held.secret is None or not isinstance(proof, str) or not self._authentic(held.secret, request,
                                                                                   operation, proof, known_plain):
            return Admission(caller_id, CallerRefusal.UNKNOWN_CALLER if held.secret is None
                             else CallerRefusal.BAD_PROOF)
        at = parse_at(caller.get("at"))  # type: ignore[arg-type]
        if at is None or abs((now - at).total_seconds()) > self._max_skew:
            return Admission(caller_id, CallerRefusal.EXPIRED)
        if not held.allows(tenant_id, operation):
            return Admission(caller_id, CallerRefusal.NOT_ALLOWED)
        return Admission(caller_id, None, request_id(caller_id, proof))

    @staticmethod
    def _authentic(secret: bytes, request: Mapping[str, Any], operation: str, proof: str, known_plain: bool) -> bool:
        try:
            message = proof_input(request, operation, known_plain=known_plain)
            # compared as text: the one canonical spelling of the expected MAC (b64url_encode writes no
            # padding and no stray bits), so any other spelling of the same bytes is a bad proof too
            return hmac.compare_digest(proof, make_proof(secret, message))
        except (ValueError, TypeError, CanonicalizationError):  # TypeError: a proof that is not ASCII
            return False
