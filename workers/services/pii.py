"""PII fields: pii.requests -> pii.results (encrypt, decrypt, reencrypt).

Results are per field: one bad field gets a typed error under `errors` and the
rest of the record still succeeds. Plaintext values exist only inside this
module's locals and the published result of a `decrypt`; they never reach logs,
exceptions or DLQ letters (a request that cannot be parsed is dead-lettered with
its field values replaced by their length and SHA-256 unless
KEYLEDGER_DLQ_KEEP_PII=true: kafka/letters.py).

Audit: one transfer per (record, key, operation, outcome) whose amount is the number
of fields; its id depends on the record alone, so a redelivery in other batches lands
on the same transfers. A field naming a key the tenant may not use is recorded as `denied`
against the tenant's own active encryption key, never against the key it named.
Wear-out: before sealing, each request's fields are charged to its active key's
budget in the ledger (keys/budget.py), so across every worker a key seals at most
KEYLEDGER_ENCRYPT_LIMIT fields, up to exactly that. Requests that no longer fit wait,
uncommitted, for the tenant's next key version, which one wear-out rotation tick per
key asks for; they are then sealed with it. No request is refused for wear-out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import ErrorCode, ErrorInfo
from schemas.messages import (
    WEAR_OUT,
    KeyType,
    Op,
    PiiOperation,
    PiiRequest,
    RotationReason,
    RotationTick,
)
from schemas.topics import Topic
from workers.core import ids
from workers.core.envelope import Envelope, EnvelopeError, NoncePool, RecordOpener, RecordSealer, parse_envelope
from workers.errors import KeyledgerError, KeyRefused
from workers.kafka.publisher import Outgoing
from workers.kafka.records import InboundRecord
from workers.keys.budget import Claim, EncryptionBudget
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.ledger.records import OpRecord
from workers.services.outcome import Outcome


@dataclass(slots=True)
class Usage:
    """Operations per (record, key, op, outcome) in this batch: each becomes one audited transfer whose
    amount is the fields of that record it covers, and whose id depends on the record alone. Records are
    told apart by identity (one object per consumed record): hashing the record itself hashed its value."""

    counts: dict[tuple[int, str, str, Op, bool], int] = field(default_factory=lambda: defaultdict(int))
    records: dict[int, InboundRecord] = field(default_factory=dict)

    def add(self, entry: KeyEntry, op: Op, record: InboundRecord, failed: bool = False) -> None:
        self.records[id(record)] = record
        self.counts[(id(record), entry.tenant_id, entry.key_id, op, failed)] += 1


class BatchMemo:
    """What one `serve` call looks up or draws once: key secrets (the TTL cache's bookkeeping costs more than
    the AES-GCM of a short field), parsed ciphertexts (finding the keys a batch needs parses them already)
    and the nonces its seals take (one `os.urandom` call for many records). One per call, never on the
    service: pipelined batches are served concurrently."""

    __slots__ = ("_keys", "_secrets", "_envelopes", "nonces")

    def __init__(self, keys: KeyService) -> None:
        self._keys = keys
        self.nonces = NoncePool()
        self._secrets: dict[str, object] = {}
        self._envelopes: dict[str, Envelope | EnvelopeError] = {}

    def secret(self, key_id: str) -> object | None:
        secret = self._secrets.get(key_id)
        if secret is None:
            secret = self._secrets[key_id] = self._keys.cached_secret(key_id)
        return secret

    def envelope(self, text: str) -> Envelope:
        """`parse_envelope` of `text`, once."""
        parsed = self._envelopes.get(text)
        if parsed is None:
            try:
                parsed = parse_envelope(text)
            except EnvelopeError as exc:
                parsed = exc
            self._envelopes[text] = parsed
        if isinstance(parsed, EnvelopeError):
            raise parsed
        return parsed


class PiiService:
    def __init__(self, keys: KeyService, budget: EncryptionBudget) -> None:
        self._keys = keys
        self._budget = budget
        self._worn: set[str] = set()  # active keys whose budget ran out: their requests wait for the next version
        self.results = 0

    async def serve(self, parsed: Sequence[tuple[InboundRecord, PiiRequest]]) -> Outcome:
        memo = BatchMemo(self._keys)
        outcome = Outcome()
        parsed = self._patient(parsed, outcome)
        blocked, warmed = await self._warm_keys(parsed, memo)
        outcome.blocked += blocked
        waiting = {id(r) for r in outcome.blocked}
        requests = [(r, q) for r, q in parsed if id(r) not in waiting]
        requests, out_of_budget, worn, sealing_keys = await self._claim_budget(requests, warmed, memo)
        outcome.blocked += out_of_budget
        usage = Usage()
        results = [self._serve(record, request, usage, sealing_keys.get(id(record)), memo)
                   for record, request in requests]
        outcome.ops = _ops(usage)
        topic = Topic.PII_RESULTS.value
        outcome.outputs = [Outgoing(topic, request.tenant_id.encode(), _json(r), cause=record.coordinates)
                           for (record, request), r in zip(requests, results, strict=True)]
        outcome.outputs += [Outgoing.of(Topic.ROTATION_TICKS, entry.tenant_id, _rotation_tick(entry)) for entry in worn]
        self.results += len(results)
        return outcome

    def _patient(self, parsed: Sequence[tuple[InboundRecord, PiiRequest]], outcome: Outcome
                 ) -> list[tuple[InboundRecord, PiiRequest]]:
        """Requests of a tenant the key table has not seen yet wait for its keys (keys/patience.py)."""
        ready = []
        for record, request in parsed:
            if self._keys.unknown_tenant(request.tenant_id) and self._keys.patience.waits(record):
                outcome.blocked.append(record)
            else:
                ready.append((record, request))
        return ready

    # --- keys ----------------------------------------------------------------

    def _entries_needed(self, request: PiiRequest, memo: BatchMemo) -> list[KeyEntry]:
        entries = []
        if request.operation is not PiiOperation.DECRYPT:
            try:
                entries.append(self._keys.active(request.tenant_id, KeyType.ENCRYPTION))
            except KeyRefused:
                pass  # answered per request in _serve
        if request.operation is not PiiOperation.ENCRYPT:
            for text in request.fields.values():
                try:
                    entries.append(self._keys.owned(request.tenant_id, memo.envelope(text).key_id))
                except (EnvelopeError, KeyRefused):
                    pass  # answered per field in _serve
        return entries

    async def _warm_keys(self, requests: Sequence[tuple[InboundRecord, PiiRequest]], memo: BatchMemo
                         ) -> tuple[list[InboundRecord], set[str]]:
        """Unwrap every key this batch needs (one KMS call per missing key); records whose key can't be had yet wait.
        Refused keys are answered per field in _serve."""
        needed: dict[str, KeyEntry] = {}
        users: dict[str, list[InboundRecord]] = defaultdict(list)
        for record, request in requests:
            for entry in self._entries_needed(request, memo):
                if entry.state is not KeyState.DESTROYED:
                    needed[entry.key_id] = entry
                    users[entry.key_id].append(record)
        failures = await self._keys.unwrap_missing(needed.values())
        blocked: dict[int, InboundRecord] = {}
        for key_id, failure in failures.items():
            if not isinstance(failure, KeyledgerError):
                blocked.update((id(r), r) for r in users[key_id])
        return list(blocked.values()), set(needed)

    async def _claim_budget(self, requests: list[tuple[InboundRecord, PiiRequest]], warmed: set[str],
                            memo: BatchMemo) -> tuple[list[tuple[InboundRecord, PiiRequest]], list[InboundRecord], list[KeyEntry],
                                       dict[int, KeyEntry]]:
        """Charge each sealing request's fields to its active key's budget (keys/budget.py), in order.

        Returns the requests to serve, the records that must wait for the tenant's next key version
        (their key's budget is spent: never answered `key_worn_out`), and the keys newly found spent,
        for which one wear-out rotation tick is asked (its id is derived from the key, so two workers
        asking for the same key ask for one rotation)."""
        claims: list[Claim] = []
        claimants: list[tuple[InboundRecord, KeyEntry]] = []
        waiting: dict[int, InboundRecord] = {}
        for record, request in requests:
            if request.operation is PiiOperation.DECRYPT:
                continue
            try:
                entry = self._keys.active(request.tenant_id, KeyType.ENCRYPTION)
            except KeyRefused:
                continue  # answered per request in _serve
            if entry.key_id in self._worn or entry.key_id not in warmed:
                # spent, or the active version moved on (a rotation) since the keys were unwrapped: wait
                waiting[id(record)] = record
                continue
            if memo.secret(entry.key_id) is None:
                continue  # refused by the KMS: answered per field in _serve, nothing to charge
            claims.append(Claim(entry.key_id, record.topic, record.partition, record.offset, len(request.fields)))
            claimants.append((record, entry))
        spent: dict[str, KeyEntry] = {}
        sealing_keys: dict[int, KeyEntry] = {}
        for (record, entry), granted in zip(claimants, await self._budget.claim(claims), strict=True):
            if granted:
                sealing_keys[id(record)] = entry  # sealed with the key it was charged to, whatever is active by then
            else:
                waiting[id(record)] = record
                spent[entry.key_id] = entry
        newly = [entry for key_id, entry in spent.items() if key_id not in self._worn]
        self._worn.update(spent)
        return ([(r, q) for r, q in requests if id(r) not in waiting], list(waiting.values()), newly,
                sealing_keys)

    # --- one request -----------------------------------------------------------

    def _serve(self, record: InboundRecord, request: PiiRequest, usage: Usage, charged: KeyEntry | None,
               memo: BatchMemo) -> dict[str, object]:
        """`charged`: the key this request's seals were charged to (sealing requests that got a budget)."""
        active: KeyEntry | None = charged
        if request.operation is not PiiOperation.DECRYPT and active is None:
            try:
                active = self._keys.active(request.tenant_id, KeyType.ENCRYPTION)
            except KeyRefused as exc:
                return _result(request, error=_error(exc.info()))
        fields: dict[str, str] = {}
        errors: dict[str, dict[str, str]] = {}
        used: str | None = active.key_id if active else None
        sealer = self._sealer(request, active, memo)
        opener = None if request.operation is PiiOperation.ENCRYPT else RecordOpener(request.tenant_id, request.record_id)
        for path, value in request.fields.items():
            try:
                fields[path], key_id = self._field(record, request, path, value, active, sealer, opener, usage,
                                                  memo)
            except KeyledgerError as exc:
                errors[path] = _error(exc.info())
            else:
                used = used or key_id
        return _result(request, fields=fields, errors=errors or None, key_id=used)

    def _sealer(self, request: PiiRequest, active: KeyEntry | None, memo: BatchMemo
                ) -> RecordSealer | KeyRefused | None:
        """What seals this request's fields (None for a decrypt), or why nothing can: answered per field."""
        if request.operation is PiiOperation.DECRYPT or active is None:
            return None
        try:
            return RecordSealer(self._aead(active, memo), active.key_id, request.tenant_id, request.record_id,
                                len(request.fields), memo.nonces)
        except KeyRefused as exc:
            return exc

    def _field(self, record: InboundRecord, request: PiiRequest, path: str, value: str, active: KeyEntry | None,
               sealer: RecordSealer | KeyRefused | None, opener: RecordOpener | None, usage: Usage,
               memo: BatchMemo) -> tuple[str, str]:
        """The field's output and the key that produced it."""
        if request.operation is PiiOperation.ENCRYPT:
            assert active is not None
            sealed = _sealer_of(sealer).seal(path, value)
            usage.add(active, Op.ENCRYPT, record)
            return sealed, active.key_id
        assert opener is not None
        plaintext, opened_with = self._open(record, request, path, value, opener, usage, memo)
        if request.operation is PiiOperation.DECRYPT:
            return plaintext, opened_with
        assert active is not None
        usage.add(active, Op.REENCRYPT, record)
        return _sealer_of(sealer).seal(path, plaintext), active.key_id

    def _open(self, record: InboundRecord, request: PiiRequest, path: str, value: str, opener: RecordOpener,
              usage: Usage, memo: BatchMemo) -> tuple[str, str]:
        try:
            envelope = memo.envelope(value)
        except EnvelopeError as exc:
            raise KeyledgerError(str(exc), ErrorCode.MALFORMED_CIPHERTEXT) from None
        try:
            entry = self._keys.owned(request.tenant_id, envelope.key_id)
        except KeyRefused:
            self._deny(request.tenant_id, record, usage)
            raise
        if entry.state is KeyState.REVOKED and request.operation is PiiOperation.DECRYPT:
            raise KeyRefused(f"key {entry.key_id} is revoked: reencrypt to migrate", ErrorCode.KEY_REVOKED)
        try:
            plaintext = opener.open(self._aead(entry, memo), envelope, path)
        except EnvelopeError as exc:
            usage.add(entry, Op.DECRYPT, record, failed=True)
            raise KeyledgerError(str(exc), ErrorCode(exc.code)) from None
        if request.operation is PiiOperation.DECRYPT:
            usage.add(entry, Op.DECRYPT, record)
        return plaintext, entry.key_id

    def _deny(self, tenant_id: str, record: InboundRecord, usage: Usage) -> None:
        try:
            own = self._keys.active(tenant_id, KeyType.ENCRYPTION)
        except KeyRefused:
            return  # a tenant without keys has no account to record against; the result says why
        usage.add(own, Op.DENIED, record, failed=True)

    def _aead(self, entry: KeyEntry, memo: BatchMemo) -> AESGCM:
        secret = memo.secret(entry.key_id)
        if not isinstance(secret, AESGCM):
            raise KeyRefused(f"key {entry.key_id} is not available", ErrorCode.KEY_NOT_FOUND)
        return secret


def _sealer_of(sealer: RecordSealer | KeyRefused | None) -> RecordSealer:
    if isinstance(sealer, KeyRefused):
        raise sealer  # the active key is not available: this field's error
    assert sealer is not None
    return sealer


def _result(request: PiiRequest, *, fields: dict[str, str] | None = None, key_id: str | None = None,
            errors: dict[str, dict[str, str]] | None = None, error: dict[str, str] | None = None) -> dict[str, object]:
    """A `pii.results` value as a plain dict, built per record on the hot path. Members come in
    PiiResult's field order and None is left out, so `_json` of it is byte for byte
    `PiiResult(...).to_json()` (tests/services/test_contract_fast_paths.py holds them together)."""
    result: dict[str, object] = {"job_id": request.job_id, "tenant_id": request.tenant_id, "record_id": request.record_id,
                                 "operation": request.operation.value, "fields": {} if fields is None else fields}
    if key_id is not None:
        result["key_id"] = key_id
    if errors is not None:
        result["errors"] = errors
    if error is not None:
        result["error"] = error
    return result


def _error(info: ErrorInfo) -> dict[str, str]:
    return {"type": info.type.value, "message": info.message}


def _json(value: dict[str, object]) -> bytes:
    try:
        return orjson.dumps(value)  # the same bytes as json's below, in C
    except TypeError:  # a lone surrogate (not UTF-8): json writes it and the publish refuses, as before
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _ops(usage: Usage) -> list[OpRecord]:
    """One transfer per (record, key, op, outcome); a redelivered record, however batched, lands on the
    same transfers (`exists`), so the ledger counts each field once."""
    ops = []
    for (record_key, tenant_id, key_id, op, failed), count in usage.counts.items():
        record = usage.records[record_key]
        ops.append(OpRecord(
            transfer_id=ids.transfer_id(op, key_id, "fail" if failed else "ok", record.topic, record.partition,
                                        record.offset),
            tenant_id=tenant_id,
            key_id=key_id,
            op=op,
            source=record,
            count=count,
            failed=failed,
            reason="pii fields" if not failed else "refused",
        ))
    return ops


def _rotation_tick(entry: KeyEntry) -> RotationTick:
    return RotationTick(tick_id=f"wear-out-{entry.key_id}", issued_at=datetime.now(UTC), tenant_id=entry.tenant_id,
                        key_type=entry.key_type, reason=RotationReason.MANUAL, cause=WEAR_OUT, key_id=entry.key_id)
