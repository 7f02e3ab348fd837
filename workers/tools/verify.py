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
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from itertools import islice
from typing import Any, TextIO, get_args

from cachetools import TTLCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import StringConstraints, TypeAdapter, ValidationError

from schemas.messages import TENANT_ID_PATTERN, EventId, KeyEvent, KeyEventType, KeyId, KeyType, SignedSpan
from schemas.topics import Topic
from workers.core.b64 import b64decode, b64url_decode
from workers.core.canonical import CanonicalizationError, plain_json_loads
from workers.core.signing import ALG, SIGNATURE_BYTES, Verdict, signing_input, verify_raw

PUBLIC_KEY_BYTES = 32


class KeyStatus(StrEnum):
    CURRENT = "current"  # active or rotated: both verify
    REVOKED = "revoked"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class KnownKey:
    """One signing key of one tenant. `verifier` is the key object of exactly `public_key` (None when it
    is None), made when the entry is made: it is never shared between entries, so a key object can only
    verify for the (tenant, key id) whose event carried its bytes."""

    tenant_id: str
    key_id: str
    public_key: bytes | None
    status: KeyStatus
    verifier: Ed25519PublicKey | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # built once per event, not once per span; frozen, so set through object
        if self.public_key is not None:
            object.__setattr__(self, "verifier", Ed25519PublicKey.from_public_bytes(self.public_key))


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
        # the item, not .get(): TTLCache.get checks expiry twice (`in`, then the item)
        try:
            return self._keys[tenant_id, key_id]
        except KeyError:  # absent, expired or evicted
            return None


def _public_key(text: str | None) -> bytes | None:
    # keys.events carries standard base64 (as keys.material); a malformed key is not learned
    if not text:
        return None
    try:
        raw = b64decode(text)
        if len(raw) != PUBLIC_KEY_BYTES:
            return None
        Ed25519PublicKey.from_public_bytes(raw)  # what KnownKey will build must build
    except ValueError:
        return None
    return raw


def _next_status(current: KeyStatus, event: KeyEventType) -> KeyStatus:
    if current is KeyStatus.DESTROYED or event is KeyEventType.DESTROYED:
        return KeyStatus.DESTROYED
    if current is KeyStatus.REVOKED or event is KeyEventType.REVOKED:
        return KeyStatus.REVOKED
    return KeyStatus.CURRENT


def verify_signed_span(book: PublicKeyBook, signed: dict[str, Any] | SignedSpan) -> Verdict:
    step = _prepare(book, signed, known_plain=False, parsed=False, escaped=True, times={})
    return _finish(step) if isinstance(step, tuple) else step


Check = tuple[Ed25519PublicKey, bytes, bytes, Verdict]
"""A signature still to check: (key object, signed bytes, signature, the verdict when it verifies)."""


def _prepare(book: PublicKeyBook, signed: Any, *, known_plain: bool, parsed: bool, escaped: bool,
             times: Times) -> Verdict | Check:
    """Everything but the Ed25519 check: the verdict when it is known without one, else the Check."""
    claim = _claim(signed, parsed=parsed, escaped=escaped, times=times)
    if claim is None:
        return Verdict.INVALID
    tenant_id, key_id, span, signature = claim
    known = book.lookup(tenant_id, key_id)
    if known is None:
        return Verdict.UNKNOWN_KEY
    if known.verifier is None:
        return Verdict.UNKNOWN_KEY if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY
    try:
        message = signing_input(tenant_id, key_id, span, known_plain=known_plain)
    except (CanonicalizationError, RecursionError):
        return Verdict.INVALID  # NaN, infinity, a huge integer, absurd nesting: no signer could have signed it
    return known.verifier, message, signature, Verdict.VALID if known.status is KeyStatus.CURRENT else Verdict.REVOKED_KEY


def _finish(check: Check) -> Verdict:
    """The Ed25519 check alone: touches no shared state, so any thread may run it."""
    verifier, message, signature, verdict = check
    return verdict if verify_raw(verifier, message, signature) else Verdict.INVALID


Claim = tuple[str, str, dict[str, Any], bytes]
"""What a well-formed record says: (tenant_id, key_id, span, the signature's 64 raw bytes)."""


Times = dict[str, bool]
"""signed_at texts already judged by Signature.signed_at's validator, for one run of verification (the
signer writes one per batch): a memo the caller makes and passes, never shared between runs."""
MAX_TIMES = 4096


def _claim(signed: Any, *, parsed: bool, escaped: bool, times: Times | None = None) -> Claim | None:
    """The record's claim when it has every field of the contract, else None.

    Invariant: the verdict is SignedSpan.model_validate's plus the checks of `_model_claim`, for any
    value. `_fast_claim` answers only when it is sure the model accepts the record with these very
    values; every other record, malformed ones included, goes to the model itself (tests/tools hold
    the two together)."""
    if type(signed) is dict:
        claim = _fast_claim(signed, parsed=parsed, escaped=escaped, times={} if times is None else times)
        if claim is not None:
            return claim
    return _model_claim(signed)


def _model_claim(signed: Any) -> Claim | None:
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
    signature = record.signature
    raw = _signature_bytes(signature.value) if signature.alg == ALG else None
    return None if raw is None else (record.tenant_id, signature.key_id, record.span, raw)


def _string_constraints(annotated: Any) -> StringConstraints:
    return next(m for m in get_args(annotated) if isinstance(m, StringConstraints))


# the model's own constraints, so that the two readings cannot drift apart; fullmatch of an anchored
# pattern is the Rust regex's match (neither lets `$` match before a final newline under fullmatch)
_TENANT_ID = re.compile(TENANT_ID_PATTERN).fullmatch
_KEY_ID = re.compile(str(_string_constraints(KeyId).pattern)).fullmatch
_MIN_ID, _MAX_ID = _string_constraints(EventId).min_length or 0, _string_constraints(EventId).max_length or 0
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)  # the validator of Signature.signed_at


def _fast_claim(signed: dict[str, Any], *, parsed: bool, escaped: bool, times: Times) -> Claim | None:
    """The claim of a record the model certainly accepts, else None (unsure: the model decides).

    `parsed`: the value comes from the JSON reader, so every member name is a str. `escaped`: its text
    may hold \\u escapes, so a string may hold a lone surrogate, which the model refuses in job_id (a
    constrained string) and in member names (extra members are stored by name)."""
    job_id, tenant_id, span, signature = (
        signed.get("job_id"), signed.get("tenant_id"), signed.get("span"), signed.get("signature"))
    # exact types only: the model's lax mode also takes bytes, subclasses and mappings; those go to it
    if type(job_id) is not str or type(tenant_id) is not str or type(span) is not dict or type(signature) is not dict:
        return None
    alg, key_id, value = signature.get("alg"), signature.get("key_id"), signature.get("value")
    if type(alg) is not str or alg != ALG or type(key_id) is not str or type(value) is not str:
        return None
    if not _MIN_ID <= len(job_id) <= _MAX_ID or not _TENANT_ID(tenant_id) or not _KEY_ID(key_id):
        return None
    if not _known_time(signature.get("signed_at"), times):
        return None
    if escaped and not (_unicode(job_id) and _unicode_names(signed) and _unicode_names(signature)):
        return None
    if not parsed and not all(type(name) is str for name in span):
        return None
    raw = _signature_bytes(value)
    return None if raw is None else (tenant_id, key_id, span, raw)


def _known_time(value: Any, times: Times) -> bool:
    """Whether Signature.signed_at's validator takes `value`, for text (numbers go to the model)."""
    if type(value) is not str:
        return False
    good = times.get(value)
    if good is None:
        try:
            _DATETIME.validate_python(value)
            good = True
        except ValidationError:
            good = False
        if len(times) >= MAX_TIMES:
            times.clear()
        times[value] = good
    return good


def _unicode(text: str) -> bool:
    """Whether `text` is Unicode text (UTF-8 encodable: no lone surrogate), as pydantic requires."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode_names(members: dict[Any, Any]) -> bool:
    return all(type(name) is str and _unicode(name) for name in members)


def _signature_bytes(text: str) -> bytes | None:
    """The 64 bytes of an unpadded base64url signature value, else None."""
    try:
        raw = b64url_decode(text)
    except ValueError:
        return None
    return raw if len(raw) == SIGNATURE_BYTES else None


def verify_lines(lines: Iterable[str], book: PublicKeyBook, *, threads: int = 0
                 ) -> Iterator[tuple[int, str, Verdict]]:
    """(line number from 1, job_id or "?", verdict) per non-blank line of JSON-lines input, in input order.

    With `threads` > 0 the Ed25519 checks run on that many threads (cryptography releases the interpreter
    lock while it verifies) while this thread parses the next lines; the verdicts are the same."""
    if threads > 0:
        yield from _verify_lines_on_threads(lines, book, threads)
        return
    times: Times = {}
    for number, line in _numbered(lines):
        job_id, step = _step(line, book, times)
        yield number, job_id, _finish(step) if isinstance(step, tuple) else step


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line and not line.isspace():  # what strip() would empty, without making the copy
            yield number, line


def _step(line: str, book: PublicKeyBook, times: Times) -> tuple[str, Verdict | Check]:
    signed, plain = _parse(line)
    if signed is None:
        return _job_id(_lenient(line)), Verdict.INVALID
    # lone surrogates only come from escapes: text read as UTF-8 has none, else _parse refused it
    return _job_id(signed), _prepare(book, signed, known_plain=plain, parsed=True, escaped="\\u" in line, times=times)


THREAD_BATCH = 256  # lines per hand-over to a checking thread: enough checks that the hand-over is noise


def _verify_lines_on_threads(lines: Iterable[str], book: PublicKeyBook, threads: int
                             ) -> Iterator[tuple[int, str, Verdict]]:
    """Batches of lines prepared here (parse, claim, book, RFC 8785: the book and its caches stay on
    this thread) and checked on the pool, at most `threads` + 1 batches ahead of the output, which
    follows the input order whatever order the batches finish in."""
    ahead: deque[tuple[list[tuple[int, str, Verdict | Check]], Future[list[Verdict]]]] = deque()
    times: Times = {}  # read and written on this thread only
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keyledger-verify") as pool:
        for batch in _batches(_numbered(lines), THREAD_BATCH):
            steps = [(number, *_step(line, book, times)) for number, line in batch]
            checks = [step for _, _, step in steps if isinstance(step, tuple)]
            ahead.append((steps, pool.submit(_finish_all, checks)))
            if len(ahead) > threads:
                yield from _settled(*ahead.popleft())
        while ahead:
            yield from _settled(*ahead.popleft())


def _batches(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    while batch := list(islice(items, size)):
        yield batch


def _finish_all(checks: list[Check]) -> list[Verdict]:
    return [_finish(check) for check in checks]


def _settled(steps: list[tuple[int, str, Verdict | Check]], checked: Future[list[Verdict]]
             ) -> Iterator[tuple[int, str, Verdict]]:
    verdicts = iter(checked.result())
    for number, job_id, step in steps:
        yield number, job_id, next(verdicts) if isinstance(step, tuple) else step


MAX_THREADS = 8  # past this, this one thread preparing the spans feeds no more checkers


def default_threads() -> int:
    """Checking threads for `keyledger verify`: one per CPU this process may run on (at most
    MAX_THREADS), none with one CPU: a single checking thread only adds hand-overs, since the checker
    waits for the interpreter lock after every check while this thread prepares the next batch."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, MAX_THREADS) if cpus > 1 else 0


def reads_a_file(stream: TextIO) -> bool:
    """Whether `stream` reads a regular file, whose lines may be read ahead at no cost; a pipe or a
    terminal may be waiting for lines not written yet, and the verdicts of those it gave are due now."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both), or closed
        return False


def write_verdicts(lines: Iterable[str], book: PublicKeyBook, out: TextIO, *, chunk: int = 1024,
                   threads: int = 0) -> int:
    """`verify_lines` written to `out` as `line<TAB>job_id<TAB>verdict` lines, in input order, one write
    per `chunk` lines (not a print per span); returns how many verdicts were not valid."""
    failures = 0
    pending: list[str] = []
    for number, job_id, verdict in verify_lines(lines, book, threads=threads):
        pending.append(f"{number}\t{job_id}\t{verdict.value}\n")
        failures += verdict is not Verdict.VALID
        if len(pending) >= chunk:
            out.write("".join(pending))
            pending.clear()
    out.write("".join(pending))
    return failures


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
    if not isinstance(job_id, str) or not job_id:
        return "?"
    # a lone surrogate (read leniently from an invalid line) cannot be written out: the report names it
    # by its escaped spelling rather than failing on it
    return job_id if job_id.isascii() else job_id.encode("utf-8", "backslashreplace").decode("utf-8")


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
