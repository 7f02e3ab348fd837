"""Results sealed to their caller: HPKE (RFC 9180) once per result key, AES-256-GCM per field.

A result key is 32 random bytes made for one caller and one period; it is not a ledger key and
is never stored by keyledger, only sent sealed to the caller. It travels on every result it
seals, as the result's `result_key` member (`SealedResultKey`):

    {"id": <32 lowercase hex, random>, "caller": <caller_id>, "kem": "x25519" | "mlkem768-x25519",
     "enc": <base64url: HPKE encapsulated key>, "sealed_key": <base64url: HPKE ciphertext || tag>}

    HPKE mode base, suite (KEM, HKDF-SHA256, AES-256-GCM), single shot, empty AAD, plaintext = the
    32-byte result key, info = RESULT_KEY_INFO || caller_id || 0x00 || result key id.
    KEM x25519: DHKEM(X25519, HKDF-SHA256) (0x0020); enc 32 bytes; public key 32 raw bytes.
    KEM mlkem768-x25519: the ML-KEM-768 + X25519 hybrid (0x647a); enc 1120 bytes; public key is
    ML-KEM-768's encoded key (1184 bytes) followed by X25519's (32 bytes).

A caller opens `sealed_key` once per result key id (its private key) and each field value with it:

    klr1.<result_key_id>.<base64url(nonce (12) || ciphertext || tag (16))>

    AES-256-GCM under the result key, nonce random per field, AAD = RFC 8785 of
    {"caller": <caller_id>, "field": <path>, "job_id": <job_id>, "record_id": <record_id>,
     "tenant_id": <tenant_id>}

so a field value moved to another field, record, job, tenant or caller, or put under another
result key, fails to open. The per-field cost is one AES-GCM seal; the HPKE seal is paid once
per (caller, period) (`ResultKeyring`).

Caller private keys (base64url raw in the caller's key file): X25519, its 32 bytes; the hybrid, its
32-byte decapsulation key (seed) of draft-irtf-cfrg-concrete-hybrid-kems (X-Wing): SHAKE256(seed)
gives 96 bytes, ML-KEM-768's 64-byte seed (d || z) then X25519's private key.

Errors are `ResultSealError`; their messages never quote a key, a field value or a ciphertext.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from json.encoder import encode_basestring as _json_string

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.messages import CallerKem, SealedResultKey
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.canonical import canonical_json

PREFIX = "klr1."
RESULT_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
RESULT_KEY_INFO = b"keyledger result key v1\x00"
MLKEM768_PUBLIC_BYTES = 1184
MLKEM768_SEED_BYTES = 64
X25519_BYTES = 32
HYBRID_SEED_BYTES = 32
DEFAULT_PERIOD = timedelta(hours=1)

_KEM = {CallerKem.X25519: hpke.KEM.X25519, CallerKem.MLKEM768_X25519: hpke.KEM.MLKEM768_X25519}
_SUITES = {kem: hpke.Suite(value, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM) for kem, value in _KEM.items()}
_is_key_id = re.compile(r"[0-9a-f]{32}").fullmatch

HpkePublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
HpkePrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


class ResultSealError(ValueError):
    """A result key or field that cannot be sealed or opened (message names kinds and sizes only)."""


def suite(kem: CallerKem) -> hpke.Suite:
    return _SUITES[CallerKem(kem)]


def public_key(kem: CallerKem, raw: bytes) -> HpkePublicKey:
    """A caller's HPKE public key from its raw bytes (see the module docstring)."""
    kem = CallerKem(kem)
    try:
        if kem is CallerKem.X25519:
            if len(raw) != X25519_BYTES:
                raise ResultSealError("an X25519 public key is 32 bytes")
            return x25519.X25519PublicKey.from_public_bytes(raw)
        if len(raw) != MLKEM768_PUBLIC_BYTES + X25519_BYTES:
            raise ResultSealError("an ML-KEM-768+X25519 public key is 1216 bytes")
        return hpke.MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_BYTES]),
                                            x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_BYTES:]))
    except ValueError as exc:
        if isinstance(exc, ResultSealError):
            raise
        raise ResultSealError(f"not a {kem.value} public key") from None


def private_key(kem: CallerKem, raw: bytes) -> HpkePrivateKey:
    """A caller's HPKE private key from its raw bytes (see the module docstring)."""
    kem = CallerKem(kem)
    try:
        if kem is CallerKem.X25519:
            if len(raw) != X25519_BYTES:
                raise ResultSealError("an X25519 private key is 32 bytes")
            return x25519.X25519PrivateKey.from_private_bytes(raw)
        if len(raw) != HYBRID_SEED_BYTES:
            raise ResultSealError("an ML-KEM-768+X25519 private key is a 32-byte seed")
        return hpke.MLKEM768X25519PrivateKey(*_hybrid_parts(raw))
    except ValueError as exc:
        if isinstance(exc, ResultSealError):
            raise
        raise ResultSealError(f"not a {kem.value} private key") from None


def generate_keypair(kem: CallerKem) -> tuple[bytes, bytes]:
    """A new caller key pair as raw (private, public) bytes."""
    kem = CallerKem(kem)
    if kem is CallerKem.X25519:
        classical = x25519.X25519PrivateKey.generate()
        return classical.private_bytes_raw(), classical.public_key().public_bytes_raw()
    seed = os.urandom(HYBRID_SEED_BYTES)
    return seed, hybrid_public_bytes(seed)


def hybrid_public_bytes(seed: bytes) -> bytes:
    """The encoded public key of a hybrid seed: ML-KEM-768's public key, then X25519's."""
    quantum, classical = _hybrid_parts(seed)
    return quantum.public_key().public_bytes_raw() + classical.public_key().public_bytes_raw()


def _hybrid_parts(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """The two private keys a hybrid seed expands to (SHAKE256, 96 bytes)."""
    expanded = hashlib.shake_256(seed).digest(MLKEM768_SEED_BYTES + X25519_BYTES)
    return (mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:MLKEM768_SEED_BYTES]),
            x25519.X25519PrivateKey.from_private_bytes(expanded[MLKEM768_SEED_BYTES:]))


def result_key_info(caller_id: str, result_key_id: str) -> bytes:
    return RESULT_KEY_INFO + caller_id.encode() + b"\x00" + result_key_id.encode()


@dataclass(frozen=True, slots=True)
class ResultKey:
    """A result key for one caller: the secret bytes (kept by the worker for its period) and the
    sealed form that travels on each result it seals."""

    key: bytes = field(repr=False)
    sealed: SealedResultKey
    aead: AESGCM = field(init=False, repr=False, compare=False)
    """AES-GCM under `key`, made once: every field the key seals uses it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "aead", AESGCM(self.key))

    @property
    def id(self) -> str:
        return self.sealed.id


def new_result_key(caller_id: str, kem: CallerKem, caller_public_key: bytes) -> ResultKey:
    """32 random bytes, sealed once with HPKE to the caller's public key."""
    kem = CallerKem(kem)
    key, key_id = os.urandom(RESULT_KEY_BYTES), os.urandom(16).hex()
    hpke_suite = suite(kem)
    sealed = hpke_suite.encrypt(key, public_key(kem, caller_public_key), info=result_key_info(caller_id, key_id))
    enc_length = _KEM[kem].enc_length()
    return ResultKey(key, SealedResultKey(id=key_id, caller=caller_id, kem=kem, enc=b64url_encode(sealed[:enc_length]),
                                          sealed_key=b64url_encode(sealed[enc_length:])))


def open_result_key(sealed: SealedResultKey, caller_id: str, caller_private_key: HpkePrivateKey) -> bytes:
    """The result key, when it was sealed to this caller's key under this id; else ResultSealError."""
    if sealed.caller != caller_id:
        raise ResultSealError("the result key is sealed to another caller")
    try:
        ciphertext = b64url_decode(sealed.enc) + b64url_decode(sealed.sealed_key)
        key = suite(sealed.kem).decrypt(ciphertext, caller_private_key, info=result_key_info(caller_id, sealed.id))
    except (ValueError, TypeError, InvalidTag):
        raise ResultSealError("the result key does not open with this private key") from None
    if len(key) != RESULT_KEY_BYTES:
        raise ResultSealError("a result key is 32 bytes")
    return key


def field_aad(caller_id: str, tenant_id: str, job_id: str, record_id: str, field_path: str) -> bytes:
    """RFC 8785 of the five coordinates. Spelled out as core/envelope.py's `field_aad` is: the names are
    ASCII and written sorted (caller < field < job_id < record_id < tenant_id), each value as JSON with only
    `"`, `\\` and control characters escaped (`encode_basestring`, what JCS writes); a value that is not
    Unicode text (a lone surrogate) goes to `canonical_json`, which refuses it as it always did. Tied to
    `canonical_json` of the same object by tests/core/test_results.py."""
    try:
        return (f'{{"caller":{_json_string(caller_id)},"field":{_json_string(field_path)},'
                f'"job_id":{_json_string(job_id)},"record_id":{_json_string(record_id)},'
                f'"tenant_id":{_json_string(tenant_id)}}}').encode()
    except UnicodeEncodeError:
        return canonical_json({"caller": caller_id, "field": field_path, "job_id": job_id, "record_id": record_id,
                               "tenant_id": tenant_id})


def seal_field(key: ResultKey, tenant_id: str, job_id: str, record_id: str, field_path: str, value: str) -> str:
    """One field value sealed under a result key: `klr1.<result_key_id>.<body>`."""
    nonce = os.urandom(NONCE_BYTES)
    aad = field_aad(key.sealed.caller, tenant_id, job_id, record_id, field_path)
    return f"{PREFIX}{key.id}.{b64url_encode(nonce + key.aead.encrypt(nonce, value.encode(), aad))}"


def field_key_id(text: str) -> str:
    """The result key id a sealed field names; ResultSealError when it is not a `klr1.` value."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or parts[0] + "." != PREFIX or not _is_key_id(parts[1]):
        raise ResultSealError("not a sealed result field")
    return parts[1]


def open_field(key: bytes, caller_id: str, tenant_id: str, job_id: str, record_id: str, field_path: str,
               text: str) -> str:
    """The value of a sealed field, when it was sealed under `key` for exactly these coordinates."""
    field_key_id(text)
    try:
        body = b64url_decode(text.rsplit(".", 1)[1])
    except ValueError:
        raise ResultSealError("a sealed field body is not base64url") from None
    if len(body) < NONCE_BYTES + TAG_BYTES:
        raise ResultSealError("a sealed field body is too short")
    aad = field_aad(caller_id, tenant_id, job_id, record_id, field_path)
    try:
        return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad).decode()
    except InvalidTag:
        raise ResultSealError("the sealed field does not open here (moved, tampered, or another key)") from None
    except UnicodeDecodeError:
        raise ResultSealError("a sealed field is not UTF-8") from None


class ResultKeyring:
    """The current result key of each caller, made anew after `period` or when the caller's public key
    changes. Held by one worker process; result keys die with it (each result carries its own)."""

    def __init__(self, period: timedelta = DEFAULT_PERIOD) -> None:
        self._period = period
        self._keys: dict[str, tuple[datetime, str, bytes, ResultKey]] = {}

    def key_for(self, caller_id: str, kem: CallerKem, caller_public_key: bytes, now: datetime) -> ResultKey:
        held = self._keys.get(caller_id)
        if held is not None:
            made, held_kem, held_public, key = held
            if held_kem == kem and held_public == caller_public_key and made <= now < made + self._period:
                return key
        key = new_result_key(caller_id, kem, caller_public_key)
        self._keys[caller_id] = (now, kem, caller_public_key, key)
        return key

    def forget(self, caller_id: str) -> None:
        """A caller revoked or re-keyed: its next result gets a new key."""
        self._keys.pop(caller_id, None)
