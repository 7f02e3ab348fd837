"""Moving keys to another KMS provider: unwrap under the old one, wrap under the new one's default key,
and prove the new wrapping holds the same key before anything is written (services/rewrap.py then makes
it durable in its order)."""

from __future__ import annotations

from schemas.errors import ErrorCode
from workers.core import signing
from workers.core.b64 import b64encode
from workers.errors import KeyRefused
from workers.kms import (
    DataKey,
    Kms,
    KmsError,
    KmsRefused,
    UnwrapRequest,
    WrapRequest,
    decrypt_many,
    provider_of,
    wrap_many,
)
from workers.services.moves import Move, failure


async def migrate(source: Kms, target: Kms, moves: list[Move]) -> None:
    """Unwrap under `source`, check a signing key against its public key, wrap under `target`'s default
    key, unwrap that once under `target`: only a wrapping proven to hold the same key becomes `move.new`;
    every other move gets its `error`."""
    unwrapped = await decrypt_many(source, [m.unwrap_request() for m in moves])
    ready: list[tuple[Move, bytes]] = []
    for move, plaintext in zip(moves, unwrapped, strict=True):
        if isinstance(plaintext, KmsError):
            move.error = failure(move, plaintext)
        elif not _same_key(move, plaintext):
            move.error = KeyRefused(f"key {move.entry.key_id} unwrapped to another key than its public key",
                                    ErrorCode.MATERIAL_MISMATCH)
        else:
            ready.append((move, plaintext))
    del unwrapped
    try:
        wrapped: list[DataKey | KmsError] = await wrap_many(target, [WrapRequest(p, None, m.context)
                                                                      for m, p in ready])
    except KmsRefused as exc:  # an adapter that cannot wrap a given key refuses them all
        wrapped = [exc] * len(ready)
    checks: list[tuple[Move, bytes, DataKey]] = []
    for (move, plaintext), result in zip(ready, wrapped, strict=True):
        if isinstance(result, KmsError):
            move.error = failure(move, result)
        else:
            checks.append((move, plaintext, result))
    proofs = await decrypt_many(target, [UnwrapRequest(w.wrapped, w.kms_key_id, m.context) for m, _, w in checks])
    for (move, plaintext, data_key), proof in zip(checks, proofs, strict=True):
        if isinstance(proof, KmsError):
            move.error = failure(move, proof)
        elif proof != plaintext:
            move.error = KeyRefused(f"the {provider_of(target)} wrapping of {move.entry.key_id} did not unwrap "
                                    "to the same key", ErrorCode.KMS_REFUSED)
        else:
            move.new = move.current.model_copy(update={
                "kms_provider": provider_of(target), "kms_key_id": data_key.kms_key_id,
                "wrapped_key": b64encode(data_key.wrapped), "kek_version": data_key.kek_version})


def _same_key(move: Move, plaintext: bytes) -> bool:
    """A signing key unwraps to the seed of its published public key; an encryption key has nothing to
    compare with (the round trip under the target is its proof)."""
    public = move.old.public_key if move.old else None
    if public is None:
        return True
    return b64encode(signing.public_key_bytes(signing.private_key_from_seed(plaintext))) == public
