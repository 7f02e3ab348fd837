"""`keyledger dlq list|show|replay`: find dead letters on `kms.dlq` and send them back once the cause is fixed.

Listing and showing never print a field value: `list` gives one line of metadata per letter (its id,
when, which group, the original topic, the error code, the tenant, whether it can be replayed);
`show` adds the error message, the header names and, for a topic other than `pii.requests`, the
payload (a `pii.requests` payload is never printed, even when KEYLEDGER_DLQ_KEEP_PII kept it).

A letter's id is `<kms.dlq partition>/<offset>`: where the letter itself sits, so it names one
letter for good.

Replay writes the original record (key, headers, value, as the letter holds them) to its original
topic, keyed as it was, with one more header, `keyledger-dlq-letter: <letter id>`. It can replay
only a letter that holds the whole record: one whose payload was redacted (PII) or cut to a prefix,
or whose headers or key were dropped, is listed as not replayable and never sent. Nor is a letter
of a topic keyledger writes itself (`kms.audit`: a replay there would add an audit event no
operation made). A replayed record meets every check the workers make, as the first time: a
caller's request whose proof no longer holds (expired, revoked) is refused again, saying why.

Idempotence: a letter is answered once, however often it is replayed. Two designs were open: make
the workers derive their ids from the original record's coordinates when a replay header names
them, or deduplicate replays by letter id. The first would let anyone who may write an input topic
name another record's coordinates in a header and have its operation land on an existing ledger
transfer, so it would go unrecorded: the audit trail would trust a claim in the record. The second
needs nothing of the workers: after its record is acknowledged, each replay is recorded on
`kms.dlq.replays` (kept forever, keyed by the letter id: also the audit of the replay: who sent what
back, from where, to where), and `replay` skips every letter that has such a record. Durability
order: the replayed record first, then its replay record; a replay interrupted between the two is
sent again by the next `replay` (at least once, like every keyledger output), and the workers'
own ids keep the repeat harmless where they derive from the request (a tenant's keys from the
tenant: a second onboarding makes no second key). Two operators replaying the same letter at the
same moment can both send it; run one `replay` at a time.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from schemas.messages import DeadLetter, DeadLetterReplay
from schemas.topics import Topic
from workers.errors import ConfigError
from workers.kafka.tap import read_topic, started
from workers.settings import Settings

REPLAY_HEADER = "keyledger-dlq-letter"
# the topics keyledger consumes from outside callers and operators: a letter of one of them can go back
REPLAYABLE_TOPICS = frozenset({Topic.TENANTS_CREATED, Topic.TENANTS_DELETED, Topic.SPANS_TO_SIGN,
                               Topic.PII_REQUESTS, Topic.ROTATION_TICKS})
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
READ_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as `kms.dlq` holds it, and its replay when there was one."""

    id: str
    letter: DeadLetter
    replay: DeadLetterReplay | None = None

    @property
    def tenant(self) -> str | None:
        """The tenant the record names (its `tenant_id`, kept even in a redacted payload), else its key."""
        if self.letter.payload is not None and not self.letter.payload_truncated:
            try:
                data = json.loads(base64.b64decode(self.letter.payload))
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict) and isinstance(data.get("tenant_id"), str):
                return str(data["tenant_id"])
        if self.letter.key is not None:
            try:
                return base64.b64decode(self.letter.key).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
        return None

    @property
    def blocker(self) -> str | None:
        """Why this letter cannot be replayed; None when it can."""
        letter = self.letter
        if letter.topic not in REPLAYABLE_TOPICS:
            return f"{letter.topic} is written by keyledger, not an input"
        if letter.payload_redacted:
            return "payload redacted (PII)"
        if letter.payload_truncated:
            return "payload cut to a prefix"
        if letter.payload is None:
            return "no payload (a tombstone)"
        if letter.headers_dropped:
            return "headers dropped"
        if letter.key_dropped:
            return "key dropped"
        return None

    @property
    def state(self) -> str:
        if self.replay is not None:
            return (f"replayed {self.replay.replayed_at.isoformat(timespec='seconds')} -> "
                    f"{self.replay.topic}[{self.replay.replayed_partition}]@{self.replay.replayed_offset}")
        blocker = self.blocker
        return f"not replayable: {blocker}" if blocker else "replayable"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which letters a verb acts on: the given ids (all when none), narrowed by every filter given."""

    ids: frozenset[str] = frozenset()
    code: str | None = None
    tenant: str | None = None
    group: str | None = None
    since: datetime | None = None

    @property
    def narrowed(self) -> bool:
        return bool(self.ids) or any(v is not None for v in (self.code, self.tenant, self.group, self.since))

    def matches(self, letter: Letter) -> bool:
        dead = letter.letter
        return ((not self.ids or letter.id in self.ids)
                and (self.code is None or dead.error.type.value == self.code)
                and (self.tenant is None or letter.tenant == self.tenant)
                and (self.group is None or dead.group == self.group)
                and (self.since is None or dead.failed_at >= self.since))


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO 8601 time (UTC when it names no zone) or an age such as 30m, 2h, 7d."""
    text = text.strip()
    if match := _DURATION.match(text):
        amount, unit = int(match[1]), match[2]
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text}: not a time: give an ISO 8601 time (2026-12-07T09:30Z) or an age "
                          "(30m, 2h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def letter_id(partition: int, offset: int) -> str:
    return f"{partition}/{offset}"


def parse_letter_id(text: str) -> str:
    if not re.fullmatch(r"\d+/\d+", text):
        raise ConfigError(f"{text}: not a letter id: ids are <partition>/<offset>, as `keyledger dlq list` prints")
    partition, offset = text.split("/")
    return letter_id(int(partition), int(offset))


# --- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetters:
    letters: list[Letter]
    unreadable: int  # records on kms.dlq that are not letters (another writer's)


async def read_letters(bootstrap: str) -> DeadLetters:
    """Every letter on `kms.dlq`, in order, each with its replay from `kms.dlq.replays` when it has one."""
    replays = await read_replays(bootstrap)
    letters, unreadable = [], 0
    for record in await read_topic(bootstrap, Topic.DLQ, timeout=READ_TIMEOUT):
        if record.value is None:
            continue
        try:
            dead = DeadLetter.model_validate_json(record.value)
        except ValidationError:
            unreadable += 1
            continue
        ident = letter_id(record.partition, record.offset)
        letters.append(Letter(ident, dead, replays.get(ident)))
    letters.sort(key=lambda letter: (letter.letter.failed_at, letter.id))
    return DeadLetters(letters, unreadable)


async def read_replays(bootstrap: str) -> dict[str, DeadLetterReplay]:
    """The replay record of every letter replayed so far (none while `kms.dlq.replays` does not exist)."""
    from aiokafka import AIOKafkaConsumer

    consumer = await started(AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False))
    try:
        exists = Topic.DLQ_REPLAYS.value in await consumer.topics()
    finally:
        await consumer.stop()
    if not exists:
        return {}
    replays: dict[str, DeadLetterReplay] = {}
    for record in await read_topic(bootstrap, Topic.DLQ_REPLAYS, timeout=READ_TIMEOUT):
        if record.value is None:
            continue
        try:
            replay = DeadLetterReplay.model_validate_json(record.value)
        except ValidationError:
            continue
        replays.setdefault(replay.letter, replay)  # the first replay is the one that counts
    return replays


# --- printing -----------------------------------------------------------------------------------------


def list_lines(letters: Iterable[Letter]) -> list[str]:
    """One line per letter: id, failed at, group, topic, code, tenant, state. No message, no value."""
    return [f"{letter.id}  {letter.letter.failed_at.isoformat(timespec='seconds')}  {letter.letter.group}  "
            f"{letter.letter.topic}  {letter.letter.error.type.value}  tenant={letter.tenant or '-'}  {letter.state}"
            for letter in letters]


def show_text(letter: Letter) -> str:
    """A letter's metadata and, unless it comes from `pii.requests`, its payload."""
    dead = letter.letter
    lines = [
        f"letter {letter.id} ({Topic.DLQ.value} partition/offset)",
        f"  record     {dead.topic}[{dead.partition}]@{dead.offset}",
        f"  tenant     {letter.tenant or '-'}",
        f"  group      {dead.group} (attempts: {dead.attempts})",
        f"  failed at  {dead.failed_at.isoformat()}",
        f"  error      {dead.error.type.value}: {dead.error.message}",
        f"  headers    {', '.join(name for name, _ in dead.headers) or '-'}"
        + (" (dropped: the letter did not fit)" if dead.headers_dropped else ""),
        f"  state      {letter.state}",
    ]
    if dead.payload_size is not None:
        lines.append(f"  original   {dead.payload_size} bytes, sha256 {dead.payload_sha256}")
    lines.append(f"  payload    {_shown_payload(dead)}")
    return "\n".join(lines)


def _shown_payload(dead: DeadLetter) -> str:
    if dead.payload is None:
        return "none"
    if dead.topic == Topic.PII_REQUESTS:
        return "not shown (pii.requests: its fields may hold personal data)"
    raw = base64.b64decode(dead.payload)
    note = " (a prefix: the letter did not fit the rest)" if dead.payload_truncated else ""
    try:
        return raw.decode("utf-8") + note
    except UnicodeDecodeError:
        return f"{len(raw)} bytes, not UTF-8 (base64: {dead.payload}){note}"


# --- replaying ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    letter: Letter
    replay: DeadLetterReplay | None  # the record made now; None when nothing was sent
    reason: str = ""  # why nothing was sent

    def line(self) -> str:
        if self.replay is not None:
            return (f"{self.letter.id}  replayed to {self.replay.topic}[{self.replay.replayed_partition}]@"
                    f"{self.replay.replayed_offset}")
        return f"{self.letter.id}  skipped: {self.reason}"


async def replay(bootstrap: str, settings: Settings, letters: Sequence[Letter]) -> list[Outcome]:
    """Send each replayable letter not replayed yet back to its topic, then record its replay; in order.
    `settings` sizes `kms.dlq.replays` when this is the first replay of a deployment older than the verb."""
    from aiokafka import AIOKafkaProducer

    from workers.kafka import compat
    from workers.kafka.topics import ensure_topics

    outcomes: list[Outcome] = []
    todo: list[Letter] = []
    for letter in letters:
        if letter.replay is not None:
            outcomes.append(Outcome(letter, None, f"already {letter.state}"))
        elif blocker := letter.blocker:
            outcomes.append(Outcome(letter, None, f"not replayable: {blocker}"))
        else:
            todo.append(letter)
    if not todo:
        return outcomes
    await ensure_topics(bootstrap, settings, [Topic.DLQ_REPLAYS.value])
    compat.install()  # the idempotent producer on brokers that need InitProducerId v3 (as the workers' own)
    producer = await started(AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="keyledger-dlq", acks="all",
                                              enable_idempotence=settings.kafka.idempotence,
                                              max_request_size=settings.kafka.producer_max_request_bytes))
    try:
        for letter in todo:
            dead = letter.letter
            headers = [(name, _b64(value) if value is not None else None) for name, value in dead.headers]
            sent = await (await producer.send(
                dead.topic, _b64(dead.payload or ""), key=_b64(dead.key) if dead.key is not None else None,
                headers=[*headers, (REPLAY_HEADER, letter.id.encode())]))
            made = DeadLetterReplay(
                letter=letter.id, topic=dead.topic, partition=dead.partition, offset=dead.offset,
                replayed_partition=sent.partition, replayed_offset=sent.offset, error_code=dead.error.type.value,
                group=dead.group, tenant_id=letter.tenant, replayed_at=datetime.now(UTC))
            await (await producer.send(Topic.DLQ_REPLAYS.value, made.to_json(), key=letter.id.encode()))
            outcomes.append(Outcome(letter, made))
    finally:
        await producer.stop()
    order = {letter.id: i for i, letter in enumerate(letters)}
    return sorted(outcomes, key=lambda o: order[o.letter.id])


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ConfigError("a letter holds base64 that does not decode: it was not written by keyledger") from None
