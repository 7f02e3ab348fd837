"""Per-field sealing and opening in one process, keyledger beside its peers, on the same record.

The record: three fields of ~300 bytes, each bound to (tenant, record, field, key) by its AAD.
- keyledger:   workers.core.envelope.RecordSealer / RecordOpener (kl1 wire format, RFC 8785 AAD), as the
               PII worker calls them: text in, kl1 strings out
- tink:        Tink's AES256_GCM AEAD with the same associated data (ciphertext bytes only)
- tink_text:   the same, its ciphertext written and read as unpadded base64url, as a JSON field carries it
- aes-gcm:     cryptography's AESGCM, nonce + AAD given: the cipher itself, the floor
- aws-esdk:    the AWS Encryption SDK, caching CMM over a raw AES master key, its default suite
               (committing, ECDSA P-384 signed messages), one message per field with the AAD's
               coordinates as encryption context
Figures are records a second of CPU (3 fields each) measured in this process, one after another.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from workers.core.b64 import b64url_decode, b64url_encode
from workers.core.envelope import NoncePool, RecordOpener, RecordSealer, field_aad, parse_envelope, seal_field

TENANT, RECORD, KEY_ID = "tenant-001", "rec-1", "ab" * 16
FIELDS = {"email": "user1@example.com" + "x" * 280, "address": "1 Main Street " + "y" * 300, "notes": "z" * 300}


def rate(step: Callable[[], object], seconds: float = 1.5) -> float:
    """Records per second of this process's CPU time of `step` (one record per call), after a short warm-up:
    CPU, not wall time, so other work on a shared machine does not count against whichever peer it hit."""
    for _ in range(50):
        step()
    count, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(100):
            step()
        count += 100
    return count / elapsed


def keyledger(key: bytes) -> tuple[float, float]:
    aead = AESGCM(key)
    sealed = {p: seal_field(aead, KEY_ID, TENANT, RECORD, p, v) for p, v in FIELDS.items()}

    nonces = NoncePool()  # the PII worker draws one per batch

    def seal() -> None:  # as the PII worker seals a record: one RecordSealer for its fields
        sealer = RecordSealer(aead, KEY_ID, TENANT, RECORD, len(FIELDS), nonces)
        for path, value in FIELDS.items():
            sealer.seal(path, value)

    def open_all() -> None:  # as the PII worker opens a record: one RecordOpener for its fields
        opener = RecordOpener(TENANT, RECORD)
        for path, text in sealed.items():
            opener.open(aead, parse_envelope(text), path)

    return rate(seal), rate(open_all)


def bare_aes_gcm(key: bytes) -> tuple[float, float]:
    aead = AESGCM(key)
    aads = {p: field_aad(TENANT, RECORD, p, KEY_ID) for p in FIELDS}
    raw = {p: v.encode() for p, v in FIELDS.items()}
    nonce = os.urandom(12)
    sealed = {p: aead.encrypt(nonce, raw[p], aads[p]) for p in FIELDS}

    def seal() -> None:
        for path in FIELDS:
            aead.encrypt(os.urandom(12), raw[path], aads[path])

    def open_all() -> None:
        for path in FIELDS:
            aead.decrypt(nonce, sealed[path], aads[path])

    return rate(seal), rate(open_all)


def tink_aead() -> tuple[float, float, float, float] | None:
    try:
        import tink
        from tink import aead
    except ImportError:
        return None
    aead.register()
    primitive = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
    aads = {p: field_aad(TENANT, RECORD, p, KEY_ID) for p in FIELDS}
    sealed = {p: primitive.encrypt(v.encode(), aads[p]) for p, v in FIELDS.items()}

    def seal() -> None:
        for path, value in FIELDS.items():
            primitive.encrypt(value.encode(), aads[path])

    def open_all() -> None:
        for path in FIELDS:
            primitive.decrypt(sealed[path], aads[path]).decode()

    # a JSON field carries text: Tink's bytes as unpadded base64url, as keyledger's kl1 body is
    texts = {p: b64url_encode(c) for p, c in sealed.items()}

    def seal_text() -> None:
        for path, value in FIELDS.items():
            b64url_encode(primitive.encrypt(value.encode(), aads[path]))

    def open_text() -> None:
        for path in FIELDS:
            primitive.decrypt(b64url_decode(texts[path]), aads[path]).decode()

    return rate(seal), rate(open_all), rate(seal_text), rate(open_text)


def aws_esdk(key: bytes) -> tuple[float, float] | None:
    try:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
    except ImportError:
        return None

    class StaticProvider(RawMasterKeyProvider):  # type: ignore[misc]
        provider_id = "keyledger-bench"

        def _get_raw_key(self, key_id: bytes) -> WrappingKey:
            return WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                               wrapping_key=key, wrapping_key_type=EncryptionKeyType.SYMMETRIC)

    provider = StaticProvider()
    provider.add_master_key(b"bench-key")
    cmm = aws_encryption_sdk.CachingCryptoMaterialsManager(
        master_key_provider=provider, cache=aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=100),
        max_age=600.0, max_messages_encrypted=2**31)
    client = aws_encryption_sdk.EncryptionSDKClient()
    contexts = {p: {"field": p, "key_id": KEY_ID, "record_id": RECORD, "tenant_id": TENANT} for p in FIELDS}
    sealed = {p: client.encrypt(source=v.encode(), materials_manager=cmm, encryption_context=contexts[p])[0]
              for p, v in FIELDS.items()}

    def seal() -> None:
        for path, value in FIELDS.items():
            client.encrypt(source=value.encode(), materials_manager=cmm, encryption_context=contexts[path])

    def open_all() -> None:
        for path in FIELDS:
            client.decrypt(source=sealed[path], materials_manager=cmm)

    return rate(seal, 3.0), rate(open_all, 3.0)


def run() -> dict[str, float]:
    key = os.urandom(32)
    figures: dict[str, float] = {}
    tink = tink_aead()
    for name, result in (("keyledger", keyledger(key)), ("aes_gcm", bare_aes_gcm(key)),
                         ("tink", tink[:2] if tink else None), ("tink_text", tink[2:] if tink else None),
                         ("aws_esdk", aws_esdk(key))):
        if result is None:
            print(f"{name}: not installed (dev extra)", file=sys.stderr, flush=True)
            continue
        seal, open_ = result
        figures[f"fields_{name}_seal_records_per_s"] = round(seal)
        figures[f"fields_{name}_open_records_per_s"] = round(open_)
        print(f"{name:<10} seal {seal:>10,.0f} records/s   open {open_:>10,.0f} records/s", file=sys.stderr, flush=True)
    for peer in ("tink", "tink_text", "aws_esdk", "aes_gcm"):
        if f"fields_{peer}_seal_records_per_s" in figures:
            for op in ("seal", "open"):
                figures[f"fields_{op}_vs_{peer}"] = round(
                    figures[f"fields_keyledger_{op}_records_per_s"] / figures[f"fields_{peer}_{op}_records_per_s"], 3)
    return figures


if __name__ == "__main__":
    print(json.dumps(run()), flush=True)
