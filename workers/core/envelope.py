"""PII field ciphertexts: AES-256-GCM bound to (tenant, record, field, key) by its AAD.

Wire format (version 1), one ASCII string per field:

    kl1.<key_id>.<body>

    kl1       literal version prefix; any other prefix is refused
    key_id    the encryption key's id, exactly 32 lowercase hex characters
    body      base64url (RFC 4648 section 5) without padding, canonical, of
              nonce (12 bytes) || ciphertext (len(plaintext) bytes) || tag (16 bytes)

    plaintext  the field's value as UTF-8, at most MAX_FIELD_BYTES bytes
    nonce      12 random bytes, fresh for every encryption
    AAD        RFC 8785 (JCS) canonical JSON of
               {"field": <path>, "key_id": <key_id>, "record_id": <record_id>, "tenant_id": <tenant_id>}

Because the key id and every coordinate of the field are authenticated, a
ciphertext moved to another field, record, tenant or key fails to decrypt.

Errors are `EnvelopeError` with a typed `code`; their messages name sizes and
kinds only, never bytes of the input (a ciphertext or plaintext is PII).
"""

from __future__ import annotations

import os
import re
from json.encoder import encode_basestring as _json_string
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import ErrorCode
from workers.core.b64 import b64url_decode, b64url_encode
from workers.errors import KeyledgerError

PREFIX = "kl1."
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_FIELD_BYTES = 64 * 1024
MIN_BODY_BYTES = NONCE_BYTES + TAG_BYTES
MAX_BODY_BYTES = NONCE_BYTES + MAX_FIELD_BYTES + TAG_BYTES
# unpadded base64 of n bytes is ceil(4n/3) characters; checked before any decoding work
MAX_ENVELOPE_CHARS = len(PREFIX) + 32 + 1 + (4 * MAX_BODY_BYTES + 2) // 3

_is_key_id = re.compile(r"[0-9a-f]{32}").fullmatch
_is_head = re.compile(r"kl1\.[0-9a-f]{32}\.").match  # PREFIX, a key id, the dot before the body
_BODY_AT = len(PREFIX) + 32 + 1


class EnvelopeError(KeyledgerError, ValueError):
    """A field that cannot be sealed or opened. Also a KeyledgerError, so a pii handler that
    reports per-field failures reports these too instead of failing the whole record."""

    code: ErrorCode = ErrorCode.MALFORMED_CIPHERTEXT


class Envelope(NamedTuple):
    """A parsed ciphertext (a tuple: one is built per field read)."""

    key_id: str
    nonce: bytes
    sealed: bytes  # ciphertext || tag


def field_aad(tenant_id: str, record_id: str, field: str, key_id: str) -> bytes:
    """RFC 8785 of the four coordinates, spelled out: JCS sorts the ASCII member names (field <
    key_id < record_id < tenant_id) and writes each string as JSON with only `"`, `\\` and control
    characters escaped, which is exactly the C `encode_basestring` (json.dumps(ensure_ascii=False)).
    The one writer of the AAD: `RecordSealer` and `RecordOpener` join the same two halves, the head
    (the field) and the tail (the key, record and tenant), the tail made once per record."""
    return _aad(field, _aad_tail(key_id, record_id, tenant_id))


def _aad_tail(key_id: str, record_id: str, tenant_id: str) -> str:
    """`,"key_id":...,"record_id":...,"tenant_id":...}`: the AAD's text after the field, still text:
    `_aad` encodes it with the field's head in one step (and refuses a lone surrogate in either)."""
    return f',"key_id":{_json_string(key_id)},"record_id":{_json_string(record_id)},"tenant_id":{_json_string(tenant_id)}}}'


def _aad(field: str, tail: str) -> bytes:
    """The AAD's bytes: `{"field":<JSON of the path>` and the tail, as UTF-8."""
    try:
        return f'{{"field":{_json_string(field)}{tail}'.encode()
    except UnicodeEncodeError:
        # only a lone surrogate in a path or id gets here; such a field can never be sealed
        raise _not_unicode() from None


def seal_field(aead: AESGCM, key_id: str, tenant_id: str, record_id: str, field: str, plaintext: str,
               nonce: bytes | None = None) -> str:
    """`nonce` is for known-answer tests only: a repeated nonce under one key breaks GCM."""
    _check_key_id(key_id)
    raw = _field_value(plaintext)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    return _written(key_id, nonce, _encrypt(aead, nonce, raw, field_aad(tenant_id, record_id, field, key_id)))


def _check_key_id(key_id: str) -> None:
    if not _is_key_id(key_id):
        raise ValueError("key_id must be 32 lowercase hex characters")  # our own key table's bug, not input


def _field_value(plaintext: str) -> bytes:
    """The value's UTF-8 bytes, refused when they could not be read back (so that everything sealed,
    parse_envelope accepts)."""
    try:
        raw = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError("field value is not valid Unicode", ErrorCode.INVALID_MESSAGE) from None
    if len(raw) > MAX_FIELD_BYTES:
        raise EnvelopeError(f"field value of {len(raw)} bytes exceeds {MAX_FIELD_BYTES}", ErrorCode.OVERSIZED)
    return raw


def _written(key_id: str, nonce: bytes, sealed: bytes) -> str:
    """The wire format: `kl1.<key_id>.<base64url(nonce || ciphertext || tag)>`."""
    return f"{PREFIX}{key_id}.{b64url_encode(nonce + sealed)}"


class NoncePool:
    """GCM nonces cut from one `os.urandom` block at a time: each nonce is 12 bytes fresh from the OS
    generator, and none is handed out twice (the cursor only moves forward and a spent block is never
    read again). A pool serves many records, so the fixed cost of an `os.urandom` call is paid per block.
    Not shared between threads or across a fork: the PII service makes one per `serve` call."""

    __slots__ = ("_block", "_at", "_block_bytes")

    def __init__(self, nonces_per_block: int = 100) -> None:
        if not 1 <= nonces_per_block <= 65_536:
            raise ValueError("a nonce block holds 1..65536 nonces")
        self._block_bytes = NONCE_BYTES * nonces_per_block
        self._block = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        """`count` nonces, concatenated: `count * 12` bytes no other call gets."""
        size = NONCE_BYTES * count
        at = self._at
        if at + size > len(self._block):
            self._block, at = os.urandom(max(size, self._block_bytes)), 0
        self._at = at + size
        return self._block[at:at + size]


class RecordSealer:
    """`seal_field` for the fields of one record under one key, with what they share made once: the key
    id checked, the AAD's tail after the field name (JCS orders `field` first, so the tail is the same
    for every field of the record), and the nonces, taken at once from `nonces` (a batch's pool) or else
    from one `os.urandom` call (12 fresh random bytes each, as from one call per field; none is ever
    handed out twice). Same output format, same refusals as `seal_field`."""

    __slots__ = ("_aead", "_prefix", "_tail", "_nonces", "_next")

    def __init__(self, aead: AESGCM, key_id: str, tenant_id: str, record_id: str, fields: int,
                 nonces: NoncePool | None = None) -> None:
        _check_key_id(key_id)
        if fields < 0:
            raise ValueError("a record has no negative number of fields")
        self._aead = aead
        self._prefix = f"{PREFIX}{key_id}."  # what `_written` puts before the body, the same for every field
        # a lone surrogate in the record or tenant id is refused by `_aad` at each field, as by field_aad
        self._tail = _aad_tail(key_id, record_id, tenant_id)
        self._nonces = os.urandom(NONCE_BYTES * fields) if nonces is None else nonces.take(fields)
        self._next = 0

    def seal(self, field: str, plaintext: str) -> str:
        raw = _field_value(plaintext)
        aad = _aad(field, self._tail)
        at = self._next
        if at + NONCE_BYTES > len(self._nonces):  # more fields than announced: fresh bytes, never a reuse
            self._nonces, at = os.urandom(NONCE_BYTES), 0
        nonce = self._nonces[at:at + NONCE_BYTES]
        self._next = at + NONCE_BYTES
        # the nonce is 12 bytes by construction: `_encrypt`'s check is spent here
        return self._prefix + b64url_encode(nonce + self._aead.encrypt(nonce, raw, aad))


def parse_envelope(text: str) -> Envelope:
    """Strict parse: one spelling per ciphertext, so nothing but the exact format reaches AES."""
    # the layout up to the body checked by one anchored regex, the body by the one strict base64url decoder
    if type(text) is not str or len(text) > MAX_ENVELOPE_CHARS:
        raise _malformed("not a kl1 ciphertext of acceptable size")
    if len(text) <= _BODY_AT or _is_head(text) is None:
        raise _malformed("not a kl1 ciphertext (kl1.<32 lowercase hex>.<base64url>)")
    try:
        raw = b64url_decode(text[_BODY_AT:])
    except ValueError:
        raise _malformed("ciphertext body is not canonical unpadded base64url") from None
    if not MIN_BODY_BYTES <= len(raw) <= MAX_BODY_BYTES:
        raise _malformed(f"ciphertext body of {len(raw)} bytes is outside {MIN_BODY_BYTES}..{MAX_BODY_BYTES}")
    # tuple.__new__ builds the named tuple without the Python frame of its generated __new__
    return tuple.__new__(Envelope, (text[len(PREFIX):_BODY_AT - 1], raw[:NONCE_BYTES], raw[NONCE_BYTES:]))


def open_field(aead: AESGCM, envelope: Envelope, tenant_id: str, record_id: str, field: str) -> str:
    return RecordOpener(tenant_id, record_id).open(aead, envelope, field)


class RecordOpener:
    """`open_field` for the fields of one record, with the AAD's tail after the field name (key id,
    `record_id`, `tenant_id`) made once per key the record's fields name."""

    __slots__ = ("_tenant_id", "_record_id", "_tails")

    def __init__(self, tenant_id: str, record_id: str) -> None:
        self._tenant_id = tenant_id
        self._record_id = record_id
        self._tails: dict[str, str] = {}  # by key id, for this record only

    def open(self, aead: AESGCM, envelope: Envelope, field: str) -> str:
        key_id, nonce, sealed = envelope
        tail = self._tails.get(key_id)
        if tail is None:
            tail = self._tails[key_id] = _aad_tail(key_id, self._record_id, self._tenant_id)
        raw = _decrypt(aead, nonce, sealed, _aad(field, tail))
        try:
            return raw.decode()
        except UnicodeDecodeError:
            # authentic but not ours (seal_field only writes UTF-8): same answer as a forgery
            raise EnvelopeError("ciphertext does not decrypt", ErrorCode.DECRYPT_FAILED) from None


def _not_unicode() -> EnvelopeError:
    return EnvelopeError("field path or record id is not valid Unicode", ErrorCode.INVALID_MESSAGE)


# AES-GCM layer: 256-bit keys, 96-bit nonces, 128-bit tags, nothing else.


def aead_for_key(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise ValueError("an AES-256-GCM key is 32 bytes")  # AESGCM alone would accept 16 and 24
    return AESGCM(key)


def gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ciphertext || tag."""
    return _encrypt(aead_for_key(key), nonce, plaintext, aad)


def gcm_decrypt(key: bytes, nonce: bytes, ct_and_tag: bytes, aad: bytes) -> bytes:
    return _decrypt(aead_for_key(key), nonce, ct_and_tag, aad)


def _encrypt(aead: AESGCM, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        # AESGCM accepts 8..128 byte nonces; other lengths are GHASH-derived and not what we write
        raise ValueError("an AES-GCM nonce is 12 bytes here")
    return aead.encrypt(nonce, plaintext, aad)


def _decrypt(aead: AESGCM, nonce: bytes, ct_and_tag: bytes, aad: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES or len(ct_and_tag) < TAG_BYTES:
        raise _malformed("nonce or tag has the wrong length")
    try:
        return aead.decrypt(nonce, ct_and_tag, aad)
    except InvalidTag:
        # one answer for every failure: wrong key, moved field, flipped bit, truncated tag
        raise EnvelopeError("ciphertext does not decrypt", ErrorCode.DECRYPT_FAILED) from None


def _malformed(message: str) -> EnvelopeError:
    return EnvelopeError(message, ErrorCode.MALFORMED_CIPHERTEXT)
