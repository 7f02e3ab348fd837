"""Span signing: a parsed `spans.to-sign` request -> its signature (the group writes `spans.signed`).

Per batch: find each tenant's active signing key (cache; concurrent misses make one KMS call) and
sign every span; then the group's emitter makes it durable in one go: one `sign` transfer per span
(its id derived from the span's source alone), then one publish of all signed spans and audit events,
awaited (groups/base.py). Spans whose key cannot be unwrapped right now (KMS unreachable) wait and are
retried; their offsets are not committed. Unknown tenants, revoked or destroyed keys and spans without
an RFC 8785 form are refused with a typed error (the group sends their records to `kms.dlq`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import SYSTEM_TENANT, KeyType, Op
from workers.core import ids
from workers.core.callers import Admission
from workers.core.canonical import CanonicalizationError
from workers.core.signing import signing_input
from workers.errors import BadInput, KeyledgerError
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry
from workers.ledger.records import OpRecord, request_tag
from workers.services.outcome import Outcome
from workers.source import Source


@dataclass(slots=True)
class Job:
    """A parsed `spans.to-sign` request."""

    source: Source
    job_id: str
    tenant_id: str
    span: dict[str, Any]
    raw: bytes
    """The request as it arrived: `spans.signed` is this object with the signature member added."""
    plain: bool = False
    """Known at parse time to need no RFC 8785 number or key-order care (core/canonical.py)."""
    body: dict[str, Any] | None = field(default=None, repr=False)
    """The whole request as parsed (what a caller's proof covers)."""
    caller: Admission | None = None
    """The request's admitted caller, if it has one (services/callers.py)."""


@dataclass(slots=True)
class SignedJob:
    """A span's signature, by `key_id`, made at `signed_at` (RFC 3339, UTC as Z)."""

    job: Job
    key_id: str
    signature: bytes
    signed_at: str


@dataclass(slots=True)
class KeyBatch:
    entry: KeyEntry
    jobs: list[Job] = field(default_factory=list)


class SignerService:
    def __init__(self, keys: KeyService) -> None:
        self._keys = keys
        self.signed = 0

    async def sign(self, jobs: Sequence[Job], outcome: Outcome[SignedJob] | None = None) -> Outcome[SignedJob]:
        """`outcome`: one the caller gate has already put refusals in."""
        outcome = outcome if outcome is not None else Outcome[SignedJob]()
        by_key: dict[str, KeyBatch] = {}
        for job in jobs:
            if job.tenant_id == SYSTEM_TENANT:  # the audit digest key signs digests, never a caller's span
                outcome.refuse(job.source, BadInput(
                    f"invalid SpanToSign: tenant_id: {SYSTEM_TENANT} is reserved for keyledger's own keys"))
                continue
            try:
                entry = self._keys.active(job.tenant_id, KeyType.SIGNING)
            except KeyledgerError as exc:
                if self._keys.waits_for_tenant(exc, job.source):
                    outcome.blocked.append(job.source)  # its tenant's keys may be on their way
                else:
                    outcome.refuse(job.source, exc)
                continue
            batch = by_key.get(entry.key_id)
            if batch is None:
                batch = by_key[entry.key_id] = KeyBatch(entry)
            batch.jobs.append(job)
        await self._unwrap_missing(by_key, outcome)
        signed_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        keys, messages, kept = self._signing_inputs(by_key, outcome)
        signatures = await self._signatures(keys, messages)
        signed = [SignedJob(job, entry.key_id, signature, signed_at)
                  for (entry, job), signature in zip(kept, signatures, strict=True)]
        outcome.results += signed
        outcome.ops += [_sign_op(entry, job.source, job.caller) for entry, job in kept]
        self.signed += len(signed)
        return outcome

    async def _unwrap_missing(self, by_key: dict[str, KeyBatch], outcome: Outcome[SignedJob]) -> None:
        """Unwrap keys not in the cache; spans whose key cannot be had right now wait, refused ones are refused."""
        failures = await self._keys.unwrap_missing(b.entry for b in by_key.values())
        for key_id, failure in failures.items():
            batch = by_key.pop(key_id)
            if isinstance(failure, KeyledgerError):
                outcome.dead += [(job.source, failure) for job in batch.jobs]
            else:
                outcome.blocked += [job.source for job in batch.jobs]

    def _signing_inputs(self, by_key: dict[str, KeyBatch], outcome: Outcome[SignedJob]
                        ) -> tuple[list[Ed25519PrivateKey], list[bytes], list[tuple[KeyEntry, Job]]]:
        """The private key and RFC 8785 bytes of every span that has them; a span without an RFC 8785
        form is refused here."""
        keys, messages, kept = [], [], []
        for key_id, batch in by_key.items():
            private_key = self._keys.cached_secret(key_id)
            assert isinstance(private_key, Ed25519PrivateKey)
            for job in batch.jobs:
                try:
                    messages.append(signing_input(job.tenant_id, key_id, job.span, known_plain=job.plain))
                except CanonicalizationError as exc:
                    outcome.refuse(job.source, BadInput(f"span has no RFC 8785 form: {exc}"))
                    continue
                keys.append(private_key)
                kept.append((batch.entry, job))
        return keys, messages, kept

    async def _signatures(self, keys: list[Ed25519PrivateKey], messages: list[bytes]) -> list[bytes]:
        """Ed25519 releases the interpreter lock while it signs, so a batch is signed on a thread while the
        event loop parses, audits and publishes the next batches: the worker uses a second core for the one
        cost that dominates. Small batches are not worth the thread hop."""
        if len(messages) < THREAD_MIN_BATCH:
            return sign_each(keys, messages)
        return await asyncio.to_thread(sign_each, keys, messages)


THREAD_MIN_BATCH = 64


def sign_each(keys: list[Ed25519PrivateKey], messages: list[bytes]) -> list[bytes]:
    return [key.sign(message) for key, message in zip(keys, messages, strict=True)]


def _sign_op(entry: KeyEntry, source: Source, caller: Admission | None = None) -> OpRecord:
    """One transfer per signed span, its id derived from the span's source alone (topic, partition,
    offset): a redelivery, however the records are batched, lands on the same transfer (`exists`). A
    caller's span names the caller and its request (user_data_128, user_data_64): a copy produced again
    at another offset is signed again, a second transfer with the same request tag."""
    if caller is None or caller.caller_id is None:
        return OpRecord(
            transfer_id=ids.transfer_id(Op.SIGN, entry.key_id, source.topic, source.partition, source.offset),
            tenant_id=entry.tenant_id,
            key_id=entry.key_id,
            op=Op.SIGN,
            source=source,
            reason="span signed",
            id_parts=(),
        )
    return OpRecord(
        transfer_id=ids.transfer_id(Op.SIGN, entry.key_id, source.topic, source.partition, source.offset),
        tenant_id=entry.tenant_id, key_id=entry.key_id, op=Op.SIGN, source=source, reason="span signed",
        caller_id=caller.caller_id, tag=request_tag(caller.request_id) if caller.request_id else None,
        id_parts=())
