"""Verifying signed spans against public keys learned from `keys.events`.

Used by `keyledger verify` and usable by anyone holding the topic: nothing here needs
KMS, the ledger or a private key. A record that cannot be checked is a verdict, never
an exception, so one bad line never hides the verdicts of the others.

Verdicts (workers.core.signing.Verdict):

- `valid`: the signature is good and the key is active or rotated (rotated keys still verify).
- `invalid`: the record is malformed (missing fields, an alg other than Ed25519, a value
  that is not 64 bytes of unpadded base64url, a span with no RFC 8785 form) or the
  signature does not match the signed bytes.
- `unknown key`: this tenant has no signing key with that key_id (a key of another
  tenant is unknown, by design: tenants never vouch for each other).
- `revoked key`: the signature is good but its key was revoked or destroyed.

Destroyed keys answer `revoked key`: destruction (crypto-shredding) means the tenant no
longer vouches for anything under that key, yet the signature itself was made by it, so
`invalid` would misreport the bytes and `unknown key` would hide what happened. A revoked
or destroyed key whose public key was never learned also answers `revoked key`: whatever
the signature, the key cannot make a span valid. A bad signature under a revoked key is
`invalid`, since the span was altered or forged whatever the key's state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cachetools import TTLCache
from pydantic import ValidationError

from schemas.messages import KeyEvent, KeyEventType, KeyType, SignedSpan
from schemas.topics import Topic
from workers.core.b64 import b64decode, b64url_decode
from workers.core.canonical import CanonicalizationError, plain_json_loads
from workers.core.signing import ALG, SIGNATURE_BYTES, Verdict, signing_input, verify

PUBLIC_KEY_BYTES = 32


class KeyStatus(StrEnum):
    CURRENT = "current"  # active or rotated: both verify
    REVOKED = "revoked"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class KnownKey:
    tenant_id: str
    key_id: str
    public_key: bytes | None
    status: KeyStatus


class PublicKeyBook:
    """Signing public keys and their states, per (tenant_id, key_id), learned from `keys.events`.

    Entries live `ttl` seconds (default 24 h, the design's public-key cache) from their last
    event; an expired or evicted key is unknown until learned again, never silently valid.
    Revocation and destruction are sticky: a late or replayed `generated`/`rotated` event
    may fill in a missing public key but never makes the key current again.
    """

    def __init__(self, *, ttl: float = 86400, maxsize: int = 100_000, timer: Callable[[], float] = time.monotonic):
        # keyed by (tenant, key) so that an event naming another tenant can never shadow a key
        self._keys: TTLCache[tuple[str, str], KnownKey] = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)

    def __len__(self) -> int:
        return len(self._keys)

    def learn(self, event: KeyEvent) -> None:
        if event.key_type is not KeyType.SIGNING:
            return  # encryption keys have nothing to verify with
        slot = (event.tenant_id, event.key_id)
        known = self._keys.get(slot) or KnownKey(event.tenant_id, event.key_id, None, KeyStatus.CURRENT)
        public_key = known.public_key or _public_key(event.public_key)
        self._keys[slot] = replace(known, public_key=public_key, status=_next_status(known.status, event.type))

    def learn_raw(self, value: bytes | None) -> bool:
        """Learn one `keys.events` record value; False (and nothing learned) when it is not a KeyEvent."""
        if value is None:
            return False
        try:
            event = KeyEvent.model_validate_json(value)
        except ValidationError:
            return False  # a bad record on the topic must not stop verification of the rest
        self.learn(event)
        return True

    def lookup(self, tenant_id: str, key_id: str) -> KnownKey | None:
        return self._keys.get((tenant_id, key_id))


def _public_key(text: str | None) -> bytes | None:
    # keys.events carries standard base64 (as keys.material); a malformed key is not learned
    if not text:
        return None
    try:
        raw = b64decode(text)
    except ValueError:
        return None
    return raw if len(raw) == PUBLIC_KEY_BYTES else None


def _next_status(current: KeyStatus, event: KeyEventType) -> KeyStatus:
    if current is KeyStatus.DESTROYED or event is KeyEventType.DESTROYED:
        return KeyStatus.DESTROYED
    if current is KeyStatus.REVOKED or event is KeyEventType.REVOKED:
        return KeyStatus.REVOKED
    return KeyStatus.CURRENT


def verify_signed_span(book: PublicKeyBook, signed: dict[str, Any] | SignedSpan) -> Verdict:
    return _verify(book, signed, known_plain=False)


def _verify(book: PublicKeyBook, signed: Any, *, known_plain: bool) -> Verdict:
    record = _well_formed(signed)
    if record is None:
        return Verdict.INVALID
    signature = record.signature
    known = book.lookup(record.tenant_id, signature.key_id)
    if known is None:
        return Verdict.UNKNOWN_KEY
    if known.public_key is None:
        return Verdict.UNKNOWN_KEY if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY
    try:
        message = signing_input(record.tenant_id, signature.key_id, record.span, known_plain=known_plain)
    except (CanonicalizationError, RecursionError):
        return Verdict.INVALID  # NaN, infinity, a huge integer, absurd nesting: no signer could have signed it
    if not verify(known.public_key, message, signature.value):
        return Verdict.INVALID
    return Verdict.VALID if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY


def _well_formed(signed: Any) -> SignedSpan | None:
    """The record as a SignedSpan when it has every field of the contract, else None."""
    if isinstance(signed, SignedSpan):
        record = signed
    elif isinstance(signed, dict):
        try:
            record = SignedSpan.model_validate(signed)
        except ValidationError:
            return None
        # the model defaults alg to Ed25519 for producers; a record that omits it is malformed
        if "alg" not in record.signature.model_fields_set:
            return None
    else:
        return None
    if record.signature.alg != ALG or not _is_signature_value(record.signature.value):
        return None
    return record


def _is_signature_value(text: str) -> bool:
    try:
        return len(b64url_decode(text)) == SIGNATURE_BYTES
    except ValueError:
        return False


def verify_lines(lines: Iterable[str], book: PublicKeyBook) -> Iterator[tuple[int, str, Verdict]]:
    """(line number from 1, job_id or "?", verdict) per non-blank line of JSON-lines input."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        signed, plain = _parse(line)
        if signed is None:
            yield number, _job_id(_lenient(line)), Verdict.INVALID
            continue
        yield number, _job_id(signed), _verify(book, signed, known_plain=plain)


def _parse(line: str) -> tuple[Any, bool]:
    """The line under the signer's input rules (I-JSON: no duplicate names, no NaN, ...), or None:
    a record the signer would have refused cannot carry a valid signature of what it seems to say."""
    # plain_json_loads also tells whether the fast canonical form applies, saving a rescan per span
    try:
        return plain_json_loads(line.encode("utf-8"))
    except (ValueError, RecursionError):
        return None, False  # not I-JSON, or a lone surrogate: NotIJson and UnicodeError are ValueErrors


def _lenient(line: str) -> Any:
    """Only to name the job of an invalid line in the report."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _job_id(signed: Any) -> str:
    job_id = signed.get("job_id") if isinstance(signed, dict) else None
    return job_id if isinstance(job_id, str) and job_id else "?"


async def load_book(
    bootstrap: str, *, ttl: float = 86400, maxsize: int = 100_000, timeout: float = 30.0
) -> PublicKeyBook:
    """A book of every signing key in `keys.events`, read from the beginning to its current end."""
    from workers.kafka.tap import (
        read_topic,  # aiokafka only for those who read the topic
    )

    book = PublicKeyBook(ttl=ttl, maxsize=maxsize)
    for record in await read_topic(bootstrap, Topic.KEYS_EVENTS.value, timeout=timeout):
        book.learn_raw(record.value)
    return book
