"""The stored form of a `keys.material` record in the key table (pure, no I/O).

A table of a million keys cannot afford a pydantic model per record (~2.7 KB a key with its
fingerprint and dicts). It keeps each record's bytes instead, and packs the records keyledger
itself writes (`KeyMaterial.to_json()`: members in field order, no nulls, no extras) into a
few hundred bytes: the ids the entry already holds are left out, the KMS key id is interned
(every key of a KMS key shares it), and base64 text is kept as the bytes it encodes.

Invariant: `unpack(pack(raw, ids), ids) == raw`, byte for byte. `pack` checks it on every record
and keeps the raw bytes when it does not hold, so a model parsed from the stored form is the
model parsed from the record: same fields, same fingerprint (the ledger's pins keep matching),
whatever a producer wrote.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

# A stored record is a packing, whose first byte holds these flags (< 0x08); or the record as read, when
# its first byte is 0x09 or above (JSON text begins with `{` or whitespace, all >= 0x09); or, for bytes
# that begin lower (never JSON, but the invariant holds for any bytes), 0x08 and then the bytes.
_PUBLIC, _PROVIDER, _KEK = 1, 2, 4
_PACKED_BELOW = _ESCAPED = 8
_HEAD = ("key_id", "tenant_id", "key_type", "version", "kms_key_id", "wrapped_key")

_PROVIDERS = ("aws", "vault", "local", "pkcs11", "gcp", "azure")  # KmsProviderName, by code (append only)

# Interned KMS key ids, process-wide: the default key, and one per BYOK tenant (its keys share it).
_kms_ids: list[str] = []
_kms_codes: dict[str, int] = {}


def _shapes() -> dict[tuple[str, ...], int]:
    """Member orders `KeyMaterial.to_json()` writes (field order, optional fields absent when None): flags."""
    shapes = {}
    for flags in range(_PACKED_BELOW):
        names = [*_HEAD, *(["public_key"] if flags & _PUBLIC else []), "created_at",
                 *(["kms_provider"] if flags & _PROVIDER else []), *(["kek_version"] if flags & _KEK else [])]
        shapes[tuple(names)] = flags
    return shapes


_SHAPES = _shapes()


Ids = tuple[str, str, str, int]
"""(key_id, tenant_id, key_type, version): what the entry holding a record already knows, left out of the
packing; a record naming other ids stays raw. A plain tuple: it is built for every record read."""


def is_packed(stored: bytes) -> bool:
    return stored[0] < _PACKED_BELOW  # a stored form is never empty


def pack(raw: bytes, ids: Ids) -> bytes:
    """The compact form of `raw` when it unpacks to exactly `raw`, else `raw` itself."""
    if not raw or raw[0] <= _ESCAPED:
        return bytes([_ESCAPED]) + raw
    try:
        members = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    packed = _pack(members, ids) if type(members) is dict else None
    return packed if packed is not None and unpack(packed, ids) == raw else raw


def unpack(stored: bytes, ids: Ids) -> bytes:
    """The record's bytes, as they were read."""
    if stored[0] > _ESCAPED:
        return stored
    if stored[0] == _ESCAPED:
        return stored[1:]
    return orjson.dumps(_members(stored, ids))


def kms_key_id(stored: bytes) -> str:
    """`kms_key_id` of a packed record, without rebuilding it."""
    return _kms_ids[int.from_bytes(stored[1:4], "big")]


def _pack(members: dict[str, Any], ids: Ids) -> bytes | None:
    """The packing of a record keyledger writes, or None for any other shape (it then stays raw)."""
    flags = _SHAPES.get(tuple(members))
    if flags is None:
        return None  # another order, extras, or a member missing: kept as read
    if (members["key_id"], members["tenant_id"], members["key_type"], members["version"]) != ids \
            or type(members["version"]) is not int:
        return None
    wrapped, created = _b64(members["wrapped_key"]), members["created_at"]
    # ASCII: its length in characters is its length in bytes, the one byte that prefixes it
    if wrapped is None or type(created) is not str or not created.isascii() or len(created) > 255:
        return None
    kms = _intern(members["kms_key_id"])
    if kms is None:
        return None
    parts = [bytes([flags]), kms]
    if flags & _PROVIDER:
        if members["kms_provider"] not in _PROVIDERS:
            return None
        parts.append(bytes([_PROVIDERS.index(members["kms_provider"])]))
    if flags & _KEK:
        kek = members["kek_version"]
        if type(kek) is not int or not 0 <= kek < 2**32:
            return None
        parts.append(kek.to_bytes(4, "big"))
    parts += [bytes([len(created)]), created.encode()]
    if flags & _PUBLIC:
        public = _b64(members["public_key"])
        if public is None or len(public) > 255:
            return None
        parts += [bytes([len(public)]), public]
    parts.append(wrapped)
    return b"".join(parts)


def _members(stored: bytes, ids: Ids) -> dict[str, Any]:
    """The record's members in the order they were written (orjson keeps insertion order)."""
    flags, at = stored[0], 4
    members: dict[str, Any] = {"key_id": ids[0], "tenant_id": ids[1], "key_type": ids[2], "version": ids[3],
                               "kms_key_id": kms_key_id(stored), "wrapped_key": None}  # None: holds its place
    provider = kek = None
    if flags & _PROVIDER:
        provider, at = _PROVIDERS[stored[at]], at + 1
    if flags & _KEK:
        kek, at = int.from_bytes(stored[at:at + 4], "big"), at + 4
    end = at + 1 + stored[at]
    created, at = stored[at + 1:end].decode(), end
    if flags & _PUBLIC:
        end = at + 1 + stored[at]
        members["public_key"], at = _b64text(stored[at + 1:end]), end
    members["wrapped_key"] = _b64text(stored[at:])
    members["created_at"] = created
    if provider is not None:
        members["kms_provider"] = provider
    if kek is not None:
        members["kek_version"] = kek
    return members


def _b64(text: Any) -> bytes | None:
    if type(text) is not str:
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _b64text(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()


def _intern(kms_key: Any) -> bytes | None:
    """A 3-byte code for a KMS key id; None for a non-string (the record then stays raw)."""
    if type(kms_key) is not str:
        return None
    code = _kms_codes.get(kms_key)
    if code is None:
        if len(_kms_ids) >= 2**24:
            return None
        code = _kms_codes[kms_key] = len(_kms_ids)
        _kms_ids.append(kms_key)
    return code.to_bytes(3, "big")
