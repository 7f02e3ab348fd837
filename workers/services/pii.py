"""PII fields: a parsed `pii.requests` request -> its result (encrypt, decrypt, reencrypt; the group
writes `pii.results`).

Each request is resolved once into a `Plan` (its tenant's active encryption key, or why it has
none). Results are per field: one bad field gets a typed error under `errors` and the
rest of the record still succeeds. Plaintext values exist only inside this
module's locals, a request's `Plan` and `PiiAnswer` (its fields are left out of their reprs) and
the result the group publishes from it; they never reach logs,
exceptions or DLQ letters (a request that cannot be parsed is dead-lettered with
its field values replaced by their length and SHA-256 unless
KEYLEDGER_DLQ_KEEP_PII=true: kafka/letters.py).

Audit: one transfer per (request, key, operation, outcome) whose amount is the number
of fields; its id depends on the request's source alone, so a redelivery in other batches lands
on the same transfers. A field naming a key the tenant may not use is recorded as `denied`
against the tenant's own active encryption key, never against the key it named.
Wear-out: before sealing, each request's fields are charged to its active key's
budget in the ledger (keys/budget.py), so across every worker a key seals at most
KEYLEDGER_ENCRYPT_LIMIT fields, up to exactly that. Requests that no longer fit wait,
uncommitted, for the tenant's next key version, which one wear-out rotation tick per
key asks for; they are then sealed with it. No request is refused for wear-out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
from workers.core import ids
from workers.core.callers import Admission
from workers.core.envelope import Envelope, EnvelopeError, NoncePool, RecordOpener, RecordSealer, parse_envelope
from workers.errors import KeyledgerError, KeyRefused
from workers.keys.budget import Claim, EncryptionBudget
from workers.keys.service import KeyService
from workers.keystore.directory import KeyEntry, KeyState
from workers.ledger.records import OpRecord, request_tag
from workers.services.outcome import Outcome
from workers.source import Source


@dataclass(slots=True)
class PiiAnswer:
    """A `pii.results` value for the request from `source` (the group writes it, groups/pii.py): the
    fields it produced and the key that produced them, per-field errors, or one error for the request."""

    source: Source
    request: PiiRequest = field(repr=False)  # an encrypt's fields are plaintext
    fields: dict[str, str] = field(default_factory=dict, repr=False)  # a decrypt's are plaintext
    key_id: str | None = None
    errors: dict[str, ErrorInfo] | None = None
    error: ErrorInfo | None = None
    caller_id: str | None = None
    """The admitted caller that asked: a decrypt's fields are sealed to it (groups/pii.py)."""


@dataclass(slots=True)
class Plan:
    """One request, resolved once: the tenant's active encryption key, or why it has none (a sealing
    request is then answered with that error; a decrypt needs no active key)."""

    source: Source
    request: PiiRequest = field(repr=False)  # an encrypt's fields are plaintext
    active: KeyEntry | None
    no_active: KeyRefused | None
    charged: KeyEntry | None = None
    """The key this request's seals were charged to (a sealing request granted a budget)."""
    caller: Admission | None = None
    """The request's admitted caller, if it has one (services/callers.py)."""

    @property
    def seals(self) -> bool:
        return self.request.operation is not PiiOperation.DECRYPT

    @property
    def opens(self) -> bool:
        return self.request.operation is not PiiOperation.ENCRYPT


@dataclass(slots=True)
class Usage:
    """Operations per (request, key, op, outcome) in this batch: each becomes one audited transfer whose
    amount is the fields of that request it covers, and whose id depends on the request's source alone.
    Requests are told apart by identity (one Source per consumed record)."""

    counts: dict[tuple[int, str, str, Op, bool], int] = field(default_factory=lambda: defaultdict(int))
    sources: dict[int, Source] = field(default_factory=dict)
    callers: dict[int, Admission] = field(default_factory=dict)
    reasons: dict[tuple[int, str, str, Op, bool], str] = field(default_factory=dict)
    """Why a failed or denied operation was: the error code of its request's first such field."""

    def add(self, entry: KeyEntry, op: Op, source: Source, failed: bool = False, reason: str | None = None) -> None:
        self.sources[id(source)] = source
        counted = (id(source), entry.tenant_id, entry.key_id, op, failed)
        self.counts[counted] += 1
        if reason is not None:
            self.reasons.setdefault(counted, reason)


class RefusedSealer:
    """Seals nothing: the active key is not available here, so every field it would seal gets `refusal`."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: KeyRefused) -> None:
        self.refusal = refusal

    def seal(self, path: str, plaintext: str) -> str:
        raise self.refusal


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
        """`parse_envelope` of `text`, once (a ciphertext that does not parse raises the same error each time)."""
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

    async def serve(self, requests: Sequence[tuple[Source, PiiRequest]],
                    callers: Mapping[Source, Admission] | None = None,
                    outcome: Outcome[PiiAnswer] | None = None) -> Outcome[PiiAnswer]:
        """`callers`: the admission of each request that has a caller (services/callers.py); their transfers
        name it and its request id. `outcome`: one the caller gate has already put refusals in."""
        memo = BatchMemo(self._keys)
        outcome = outcome if outcome is not None else Outcome[PiiAnswer]()
        plans = [self._plan(source, request) for source, request in self._patient(requests, outcome)]
        if callers:
            for plan in plans:
                plan.caller = callers.get(plan.source)
        blocked, warmed = await self._warm_keys(plans, memo)
        outcome.blocked += blocked
        waiting = {id(s) for s in outcome.blocked}
        plans = [p for p in plans if id(p.source) not in waiting]
        plans, out_of_budget, worn = await self._claim_budget(plans, warmed, memo)
        outcome.blocked += out_of_budget
        usage = Usage()
        for plan in plans:
            if plan.caller is not None and plan.caller.caller_id is not None:
                usage.callers[id(plan.source)] = plan.caller
        outcome.results = [self._serve(plan, usage, memo) for plan in plans]
        outcome.ops += _ops(usage)
        outcome.ticks = [_rotation_tick(entry) for entry in worn]
        self.results += len(outcome.results)
        return outcome

    def _patient(self, requests: Sequence[tuple[Source, PiiRequest]], outcome: Outcome[PiiAnswer]
                 ) -> list[tuple[Source, PiiRequest]]:
        """Requests of a tenant the key table has not seen yet wait for its keys (keys/patience.py)."""
        ready = []
        for source, request in requests:
            if self._keys.unknown_tenant(request.tenant_id) and self._keys.patience.waits(source):
                outcome.blocked.append(source)
            else:
                ready.append((source, request))
        return ready

    # --- keys ----------------------------------------------------------------

    def _plan(self, source: Source, request: PiiRequest) -> Plan:
        try:
            return Plan(source, request, self._keys.active(request.tenant_id, KeyType.ENCRYPTION), None)
        except KeyRefused as exc:
            return Plan(source, request, None, exc)

    def _entries_needed(self, plan: Plan, memo: BatchMemo) -> list[KeyEntry]:
        entries = [plan.active] if plan.seals and plan.active is not None else []
        if plan.opens:
            for text in plan.request.fields.values():
                try:
                    entries.append(self._keys.owned(plan.request.tenant_id, memo.envelope(text).key_id))
                except (EnvelopeError, KeyRefused):
                    pass  # answered per field in _serve
        return entries

    async def _warm_keys(self, plans: Sequence[Plan], memo: BatchMemo) -> tuple[list[Source], set[str]]:
        """Unwrap every key this batch needs (one KMS call per missing key); requests whose key can't be had
        yet wait. Refused keys are answered per field in _serve."""
        needed: dict[str, KeyEntry] = {}
        users: dict[str, list[Source]] = defaultdict(list)
        for plan in plans:
            for entry in self._entries_needed(plan, memo):
                if entry.state is not KeyState.DESTROYED:
                    needed[entry.key_id] = entry
                    users[entry.key_id].append(plan.source)
        failures = await self._keys.unwrap_missing(needed.values())
        blocked: dict[int, Source] = {}
        for key_id, failure in failures.items():
            if not isinstance(failure, KeyledgerError):
                blocked.update((id(s), s) for s in users[key_id])
        return list(blocked.values()), set(needed)

    async def _claim_budget(self, plans: list[Plan], warmed: set[str], memo: BatchMemo
                            ) -> tuple[list[Plan], list[Source], list[KeyEntry]]:
        """Charge each sealing request's fields to its active key's budget (keys/budget.py), in order.

        Returns the plans to serve (each granted one knows the key it was charged to), the requests that
        must wait for the tenant's next key version (their key's budget is spent: never answered
        `key_worn_out`), and the keys newly found spent, for which one wear-out rotation tick is asked (its
        id is derived from the key, so two workers asking for the same key ask for one rotation)."""
        claims: list[Claim] = []
        claimants: list[Plan] = []
        waiting: dict[int, Source] = {}
        for plan in plans:
            if not plan.seals:
                continue
            if plan.active is None or plan.active.state is not KeyState.ACTIVE:
                plan = self._replanned(plan)  # keys announced, rotated or deleted while the keys were unwrapped
            entry = plan.active
            if entry is None:
                continue  # answered per request in _serve
            if entry.key_id in self._worn or entry.key_id not in warmed:
                # spent, or the active version moved on (a rotation) since the keys were unwrapped: wait
                waiting[id(plan.source)] = plan.source
                continue
            if memo.secret(entry.key_id) is None:
                continue  # refused by the KMS: answered per field in _serve, nothing to charge
            source = plan.source
            claims.append(Claim(entry.key_id, source.topic, source.partition, source.offset, len(plan.request.fields)))
            claimants.append(plan)
        spent: dict[str, KeyEntry] = {}
        for plan, granted in zip(claimants, await self._budget.claim(claims), strict=True):
            assert plan.active is not None
            if granted:
                plan.charged = plan.active  # sealed with the key it was charged to, whatever is active by then
            else:
                waiting[id(plan.source)] = plan.source
                spent[plan.active.key_id] = plan.active
        newly = [entry for key_id, entry in spent.items() if key_id not in self._worn]
        self._worn.update(spent)
        return [p for p in plans if id(p.source) not in waiting], list(waiting.values()), newly

    def _replanned(self, plan: Plan) -> Plan:
        """`plan` with the tenant's active key as it is now (the plan object itself: the batch holds it)."""
        fresh = self._plan(plan.source, plan.request)
        plan.active, plan.no_active = fresh.active, fresh.no_active
        return plan

    # --- one request -----------------------------------------------------------

    def _serve(self, plan: Plan, usage: Usage, memo: BatchMemo) -> PiiAnswer:
        request = plan.request
        active: KeyEntry | None = None
        sealer: RecordSealer | RefusedSealer | None = None
        if plan.seals:
            active = plan.charged or plan.active
            if active is None:
                assert plan.no_active is not None
                return PiiAnswer(plan.source, request, error=plan.no_active.info())
            sealer = self._sealer(request, active, memo)
        fields: dict[str, str] = {}
        errors: dict[str, ErrorInfo] = {}
        used: str | None = active.key_id if active else None
        opener = RecordOpener(request.tenant_id, request.record_id) if plan.opens else None
        for path, value in request.fields.items():
            try:
                fields[path], key_id = self._field(plan, path, value, active, sealer, opener, usage, memo)
            except KeyledgerError as exc:
                errors[path] = exc.info()
            else:
                used = used or key_id
        caller_id = plan.caller.caller_id if plan.caller is not None else None
        return PiiAnswer(plan.source, request, fields, used, errors or None, caller_id=caller_id)

    def _sealer(self, request: PiiRequest, active: KeyEntry, memo: BatchMemo) -> RecordSealer | RefusedSealer:
        """What seals this request's fields; when the key is not available, each field is answered so."""
        try:
            return RecordSealer(self._aead(active, memo), active.key_id, request.tenant_id, request.record_id,
                                len(request.fields), memo.nonces)
        except KeyRefused as exc:
            return RefusedSealer(exc)

    def _field(self, plan: Plan, path: str, value: str, active: KeyEntry | None,
               sealer: RecordSealer | RefusedSealer | None, opener: RecordOpener | None, usage: Usage,
               memo: BatchMemo) -> tuple[str, str]:
        """The field's output and the key that produced it."""
        operation = plan.request.operation
        if operation is PiiOperation.ENCRYPT:
            assert active is not None and sealer is not None
            sealed = sealer.seal(path, value)
            usage.add(active, Op.ENCRYPT, plan.source)
            return sealed, active.key_id
        assert opener is not None
        plaintext, opened_with = self._open(plan, path, value, opener, usage, memo)
        if operation is PiiOperation.DECRYPT:
            return plaintext, opened_with
        assert active is not None and sealer is not None
        usage.add(active, Op.REENCRYPT, plan.source)
        return sealer.seal(path, plaintext), active.key_id

    def _open(self, plan: Plan, path: str, value: str, opener: RecordOpener, usage: Usage,
              memo: BatchMemo) -> tuple[str, str]:
        request = plan.request
        try:
            envelope = memo.envelope(value)
        except EnvelopeError as exc:
            raise KeyledgerError(str(exc), ErrorCode.MALFORMED_CIPHERTEXT) from None
        try:
            entry = self._keys.owned(request.tenant_id, envelope.key_id)
        except KeyRefused as refused:
            if plan.active is not None:  # a tenant without keys has no account to record against; the result says why
                usage.add(plan.active, Op.DENIED, plan.source, failed=True, reason=refused.code.value)
            raise
        if entry.state is KeyState.REVOKED and request.operation is PiiOperation.DECRYPT:
            raise KeyRefused(f"key {entry.key_id} is revoked: reencrypt to migrate", ErrorCode.KEY_REVOKED)
        try:
            plaintext = opener.open(self._aead(entry, memo), envelope, path)
        except EnvelopeError as exc:
            usage.add(entry, Op.DECRYPT, plan.source, failed=True, reason=ErrorCode(exc.code).value)
            raise KeyledgerError(str(exc), ErrorCode(exc.code)) from None
        if request.operation is PiiOperation.DECRYPT:
            usage.add(entry, Op.DECRYPT, plan.source)
        return plaintext, entry.key_id

    def _aead(self, entry: KeyEntry, memo: BatchMemo) -> AESGCM:
        secret = memo.secret(entry.key_id)
        if not isinstance(secret, AESGCM):
            raise KeyRefused(f"key {entry.key_id} is not available", ErrorCode.KEY_NOT_FOUND)
        return secret


_OK, _FAILED = ("ok",), ("fail",)  # what a PII transfer id derives from besides the record (core/ids.py)


def _ops(usage: Usage) -> list[OpRecord]:
    """One transfer per (request, key, op, outcome); a redelivered request, however batched, lands on the
    same transfers (`exists`), so the ledger counts each field once. A copy of a caller's request produced
    again at another offset is served again: its own transfers, with the same caller and request tag
    (user_data_128, user_data_64) as the original's."""
    ops = []
    for counted, count in usage.counts.items():
        source_key, tenant_id, key_id, op, failed = counted
        source = usage.sources[source_key]
        caller = usage.callers.get(source_key)
        ops.append(OpRecord(
            transfer_id=ids.transfer_id(op, key_id, "fail" if failed else "ok", source.topic, source.partition,
                                        source.offset),
            tenant_id=tenant_id,
            key_id=key_id,
            op=op,
            source=source,
            count=count,
            failed=failed,
            reason="pii fields" if not failed else usage.reasons.get(counted, "refused"),
            caller_id=caller.caller_id if caller is not None else None,
            tag=request_tag(caller.request_id) if caller is not None and caller.request_id else None,
            id_parts=_FAILED if failed else _OK,
        ))
    return ops


def _rotation_tick(entry: KeyEntry) -> RotationTick:
    return RotationTick(tick_id=f"wear-out-{entry.key_id}", issued_at=datetime.now(UTC), tenant_id=entry.tenant_id,
                        key_type=entry.key_type, reason=RotationReason.MANUAL, cause=WEAR_OUT, key_id=entry.key_id)
