"""The caller side: what a service adopting keyledger's callers needs, in a few lines.

    caller = CallerClient(CallerCredential.load("billing.secret"), CallerKeyPair.load("billing.key"))
    request = caller.pii_request("acme", "decrypt", {"email": ciphertext}, record_id="user-7")
    # produce `request` to pii.requests (key: tenant id); then, for its result on pii.results:
    fields = caller.open_result(result)            # {"email": "a@example.com"}

    signed = ...                                   # a record of spans.signed
    verify_signed_span(signed, public_key)         # the key's public half from keys.events

It shares the contract code with the workers (workers/core/callers.py for proofs,
workers/core/results.py for sealed results, workers/core/signing.py for spans): no second copy.

Files (JSON, written 0600 by `keyledger caller add|keygen`; see docs/contract.md "Callers"):

    credential   {"caller_id": <32 hex>, "name": <name>, "secret": <base64url of 32 bytes>}
    private key  {"kem": "x25519" | "mlkem768-x25519", "private_key": <base64url>}
    public key   {"kem": ..., "public_key": <base64url>}
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.messages import CallerKem, CallerOperation, PiiOperation, SealedResultKey
from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.callers import SECRET_BYTES, prove
from workers.core.results import PREFIX as SEALED_PREFIX
from workers.core.results import HpkePrivateKey, ResultSealError, open_field, open_result_key, private_key
from workers.core.signing import signing_input, verify

__all__ = ["CallerClient", "CallerCredential", "CallerKeyPair", "ResultSealError", "load_public_key", "verify_signed_span",
           "write_private_file"]


def write_private_file(path: Path, text: str) -> None:
    """Writes `text` to a new file readable by its owner only (0600); an existing file is never replaced."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)


def _read_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable {what} file ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a {what} file")
    return value


@dataclass(frozen=True, slots=True)
class CallerCredential:
    """Who a caller is to keyledger: its id and the HMAC secret `keyledger caller add` issued."""

    caller_id: str
    name: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise ValueError("a caller secret is 32 bytes")

    def to_json(self) -> str:
        return json.dumps({"caller_id": self.caller_id, "name": self.name, "secret": b64url_encode(self.secret)}) + "\n"

    @classmethod
    def load(cls, path: Path | str) -> CallerCredential:
        value = _read_object(Path(path), "caller credential")
        try:
            return cls(str(value["caller_id"]), str(value["name"]), b64url_decode(str(value["secret"])))
        except (KeyError, ValueError):
            raise ValueError(f"{path}: not a caller credential file") from None


@dataclass(frozen=True, slots=True)
class CallerKeyPair:
    """A caller's HPKE key pair (raw bytes, see workers/core/results.py); results are sealed to `public`."""

    kem: CallerKem
    private: bytes = field(repr=False)
    public: bytes | None = None

    def private_json(self) -> str:
        return json.dumps({"kem": self.kem.value, "private_key": b64url_encode(self.private)}) + "\n"

    def public_json(self) -> str:
        if self.public is None:
            raise ValueError("no public key held")
        return json.dumps({"kem": self.kem.value, "public_key": b64url_encode(self.public)}) + "\n"

    @classmethod
    def load(cls, path: Path | str) -> CallerKeyPair:
        value = _read_object(Path(path), "caller private key")
        try:
            return cls(CallerKem(value["kem"]), b64url_decode(str(value["private_key"])))
        except (KeyError, ValueError):
            raise ValueError(f"{path}: not a caller private key file") from None


def load_public_key(path: Path | str) -> tuple[CallerKem, bytes]:
    """(KEM, raw public key) of a caller's public key file."""
    value = _read_object(Path(path), "caller public key")
    try:
        return CallerKem(value["kem"]), b64url_decode(str(value["public_key"]))
    except (KeyError, ValueError):
        raise ValueError(f"{path}: not a caller public key file") from None


class CallerClient:
    """Builds proved requests and opens the results sealed to this caller. Opened result keys are kept
    by id, so a result key costs one HPKE open however many results it seals."""

    def __init__(self, credential: CallerCredential, keys: CallerKeyPair | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.credential = credential
        self._private: HpkePrivateKey | None = private_key(keys.kem, keys.private) if keys is not None else None
        self._clock = clock
        self._result_keys: dict[str, bytes] = {}

    @property
    def caller_id(self) -> str:
        return self.credential.caller_id

    def prove(self, request: Mapping[str, Any], operation: str) -> dict[str, Any]:
        """`request` with its `caller` member (id, now, proof); the request is not changed afterwards."""
        return prove(request, operation, self.credential.caller_id, self.credential.secret, self._clock())

    def pii_request(self, tenant_id: str, operation: str, fields: Mapping[str, str], *, record_id: str,
                    job_id: str | None = None) -> dict[str, Any]:
        operation = PiiOperation(operation).value
        request = {"job_id": job_id or str(uuid.uuid4()), "tenant_id": tenant_id, "record_id": record_id,
                   "operation": operation, "fields": dict(fields)}
        return self.prove(request, operation)

    def span_request(self, tenant_id: str, span: Mapping[str, Any], *, job_id: str | None = None) -> dict[str, Any]:
        request = {"job_id": job_id or str(uuid.uuid4()), "tenant_id": tenant_id, "span": dict(span)}
        return self.prove(request, CallerOperation.SIGN.value)

    def open_result(self, result: Mapping[str, Any]) -> dict[str, str]:
        """The fields of a `pii.results` record: sealed values opened, ciphertexts (encrypt, reencrypt)
        as they are. ResultSealError when a sealed value is not this caller's or was tampered with."""
        fields = result.get("fields") or {}
        if not any(isinstance(v, str) and v.startswith(SEALED_PREFIX) for v in fields.values()):
            return dict(fields)
        key = self._result_key(result.get("result_key"))
        tenant_id, job_id, record_id = (str(result.get(name, "")) for name in ("tenant_id", "job_id", "record_id"))
        return {path: open_field(key, self.caller_id, tenant_id, job_id, record_id, path, value)
                for path, value in fields.items()}

    def _result_key(self, sealed: Any) -> bytes:
        if self._private is None:
            raise ResultSealError("no private key to open sealed results with")
        try:
            sealed_key = SealedResultKey.model_validate(sealed)
        except ValueError:
            raise ResultSealError("the result carries no valid result_key") from None
        if sealed_key.id not in self._result_keys:
            self._result_keys[sealed_key.id] = open_result_key(sealed_key, self.caller_id, self._private)
        return self._result_keys[sealed_key.id]


def verify_signed_span(signed: Mapping[str, Any], public_key: bytes) -> bool:
    """Whether a `spans.signed` record carries a valid Ed25519 signature under `public_key` (the raw public
    half of its `signature.key_id`, from keys.events) over {key_id, span, tenant_id}."""
    signature = signed.get("signature")
    if not isinstance(signature, Mapping) or not isinstance(signed.get("span"), Mapping):
        return False
    key_id, value, tenant_id = signature.get("key_id"), signature.get("value"), signed.get("tenant_id")
    if not (isinstance(key_id, str) and isinstance(value, str) and isinstance(tenant_id, str)):
        return False
    try:
        message = signing_input(tenant_id, key_id, dict(signed["span"]))
    except ValueError:
        return False
    return verify(public_key, message, value)
