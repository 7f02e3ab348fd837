"""The contract published: a JSON Schema per topic and an AsyncAPI 3 document, generated from the models.

`keyledger docs` writes `docs/asyncapi.json` and `schemas/json/<topic>.json`; tests/tools/test_contract.py
regenerates both and fails when the committed files drift from schemas/.

The AsyncAPI document comes from FastStream itself: `build_docs_app()` registers the real consumer
groups' subscribers the way the process context does (never connecting), plus one publisher per topic
keyledger writes. The groups' handlers take raw records (they decode and validate themselves, to give
typed errors), so FastStream cannot see what a record holds; each subscriber channel's payload is set
from `schemas.topics.TOPIC_MODELS` instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from faststream.specification.schema import SubscriberSpec

from schemas.topics import TOPIC_MODELS, Topic
from workers.groups import GROUPS
from workers.groups.base import Deps
from workers.kafka.broker import build_broker
from workers.kafka.consume import run_group
from workers.kafka.publisher import BrokerPublisher
from workers.keys.audit import AuditTrail
from workers.keys.cache import SingleFlightCache
from workers.keys.service import KeyService, SecretKey
from workers.keystore.directory import KeyDirectory
from workers.kms.local import LocalKms
from workers.ledger.memory import MemoryLedger
from workers.settings import Settings

if TYPE_CHECKING:
    from faststream._internal.endpoint.subscriber import SubscriberSpecification

API_VERSION = "0.1.0"
DOCS_SERVER = "localhost:9092"  # `keyledger dev`'s broker; set KEYLEDGER_KAFKA_BOOTSTRAP for a real one
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REPO = Path(__file__).resolve().parents[2]

DESCRIPTION = (
    "keyledger's Kafka contract (docs/contract.md). Values are UTF-8 JSON (I-JSON, RFC 7493), one message per "
    "record. Every topic is keyed by `tenant_id` except `keys.material` (key = `key_id`, compacted), "
    "`kms.dlq` (the failed record's own key) and `kms.dlq.replays` (the letter). Inbound messages may carry more "
    "members than listed."
)

# What each topic carries, its record key, and who writes it (the models say what the values hold)
TOPICS: dict[Topic, str] = {
    Topic.TENANTS_CREATED: "A tenant to onboard: keyledger makes its signing and encryption keys. Key: tenant_id.",
    Topic.TENANTS_DELETED: "A tenant to crypto-shred: every key of it is destroyed. Key: tenant_id.",
    Topic.SPANS_TO_SIGN: "An OpenTelemetry span to sign; it carries no `signature` yet. Key: tenant_id.",
    Topic.SPANS_SIGNED: "The span as it arrived plus an Ed25519 `signature` over the RFC 8785 form of "
                        "{key_id, span, tenant_id}. Key: tenant_id. Written by keyledger-signer.",
    Topic.PII_REQUESTS: "Fields to encrypt, decrypt or reencrypt. Key: tenant_id.",
    Topic.PII_RESULTS: "The fields of a request, processed; per-field `errors`, or one `error` for the whole "
                       "request. Key: tenant_id. Written by keyledger-pii.",
    Topic.ROTATION_TICKS: "Rotate keys now (scheduled, manual or compromise); without tenant_id, every tenant. "
                          "Key: tenant_id (empty for all). Written by operators, `keyledger rotate`, and "
                          "keyledger-pii for a worn-out key.",
    Topic.KEYS_MATERIAL: "One wrapped key version (never plaintext); a null value (tombstone) for a destroyed "
                         "key. Compacted. Key: key_id. Written by keyledger-keygen and keyledger-rotation.",
    Topic.KEYS_EVENTS: "Key lifecycle: generated, rotated, revoked, destroyed; verifiers learn public keys "
                       "here. Key: tenant_id. Written by keyledger-keygen and keyledger-rotation.",
    Topic.KMS_AUDIT: "Names every TigerBeetle transfer: a lifecycle operation by an event of its own (event_id = "
                     "its transfer id); signing and PII by one event per batch, key, op, outcome and caller whose "
                     "`sources` offset runs each derive one transfer id. Key: tenant_id. "
                     "Written by every group.",
    Topic.KMS_AUDIT_DIGESTS: "A signed SHA-256 digest of a run of kms.audit records of one partition, chained to "
                             "the previous digest of that partition. Kept forever. Key: the kms.audit partition. "
                             "Written by keyledger-audit-digest.",
    Topic.DLQ: "A record that could not be processed, as it arrived (base64), with a typed error. "
               "Key: the record's own key. Written by every group.",
    Topic.KEYS_CALLERS: "A caller's policy (tenants, operations, HPKE public key, KMS-wrapped HMAC secret), signed "
                        "by the operator key; the latest version of each caller wins. Compacted. Key: caller_id. "
                        "Written by `keyledger caller`; read whole by every process.",
    Topic.DLQ_REPLAYS: "One dead letter sent back to its original topic by `keyledger dlq replay`: which letter, "
                       "where the record came from and where its replay landed. Kept forever. Key: the letter "
                       "(`<kms.dlq partition>/<offset>`). Written by `keyledger dlq replay`.",
}
# the topics keyledger writes: each gets a publisher in the document
OUTPUTS = (Topic.SPANS_SIGNED, Topic.PII_RESULTS, Topic.ROTATION_TICKS, Topic.KEYS_MATERIAL, Topic.KEYS_EVENTS,
           Topic.KMS_AUDIT, Topic.KMS_AUDIT_DIGESTS, Topic.DLQ, Topic.KEYS_CALLERS,
           Topic.DLQ_REPLAYS)
KEY_TABLE = "key-table"  # no consumer group: every process reads keys.material and keys.events to their end


# --- JSON Schema ------------------------------------------------------------------------------------


def topic_schema(topic: Topic) -> dict[str, Any]:
    """The JSON Schema of `topic`'s record values (pydantic's, validation mode)."""
    return {"$schema": JSON_SCHEMA_DIALECT, "x-topic": topic.value, **TOPIC_MODELS[topic].model_json_schema()}


# --- AsyncAPI ---------------------------------------------------------------------------------------


class _TopicPayloads:
    """A subscriber's FastStream specification whose channels carry the topic's model as their payload.

    Delegates everything else to FastStream's own specification of the subscriber."""

    def __init__(self, inner: Any, label: str) -> None:
        self._inner = inner
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_schema(self) -> dict[str, SubscriberSpec]:
        channels = {}
        for spec in self._inner.get_schema().values():
            topic = Topic(spec.address)
            spec.description = TOPICS[topic]
            spec.operation.message.title = f"{topic.value}:{self._label}:Message"
            spec.operation.message.payload = TOPIC_MODELS[topic].model_json_schema()
            channels[f"{topic.value}:{self._label}"] = spec
        return channels


async def _follow_key_table(body: Any) -> None:
    """Every keyledger process reads keys.material and keys.events to their end before it consumes anything,
    and follows them afterwards: its key table, and cache eviction on rotation, revocation and destruction."""


def _offline_deps(settings: Settings, broker: KafkaBroker) -> Deps:
    """Real adapters that need nothing running (local KMS, memory ledger): enough to build the groups."""
    ledger = MemoryLedger()
    secrets: SingleFlightCache[SecretKey] = SingleFlightCache(ttl=1, max_entries=1)
    keys = KeyService(KeyDirectory(), LocalKms(), ledger, secrets)
    return Deps(settings, keys, ledger, AuditTrail(ledger), BrokerPublisher(broker))


def build_docs_app() -> FastStream:
    """A FastStream app that only documents: the real groups' subscribers, a publisher per output topic.

    Nothing connects. Settings are the defaults, not the environment's, so the document is the same
    everywhere. Also `faststream docs gen --factory workers.tools.contract:build_docs_app`."""
    settings = Settings.model_construct()
    broker = build_broker(settings.kafka, DOCS_SERVER)
    deps = _offline_deps(settings, broker)
    for build in GROUPS.values():  # as ProcessContext.register does
        run_group(broker, deps.publisher, settings, build(deps))
    broker.subscriber(Topic.KEYS_MATERIAL.value, Topic.KEYS_EVENTS.value, auto_offset_reset="earliest",
                      description=_follow_key_table.__doc__)(_follow_key_table)
    for subscriber in broker.subscribers:
        label = getattr(subscriber, "group_id", None) or KEY_TABLE
        # duck-typed: FastStream only calls get_schema() and reads attributes, which the wrapper passes through
        subscriber.specification = cast("SubscriberSpecification[Any, Any]",
                                        _TopicPayloads(subscriber.specification, label))
    for topic in OUTPUTS:
        broker.publisher(topic.value, schema=TOPIC_MODELS[topic], title=topic.value, description=TOPICS[topic])
    spec = AsyncAPI(broker, title="keyledger", version=API_VERSION, description=DESCRIPTION, schema_version="3.0.0")
    return FastStream(broker, specification=spec)


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3 document as JSON data; channels, operations and components sorted by name (FastStream
    keeps endpoints in weak sets, whose order changes from run to run)."""
    document: dict[str, Any] = build_docs_app().schema.to_specification().to_jsonable()
    for holder, name in ((document, "channels"), (document, "operations"),
                         (document["components"], "messages"), (document["components"], "schemas")):
        holder[name] = dict(sorted(holder[name].items()))
    return document


# --- files --------------------------------------------------------------------------------------------


def contract_files() -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path relative to the repository, content) of every published contract file."""
    yield Path("docs/asyncapi.json"), asyncapi_document()
    for topic in Topic:
        yield Path("schemas/json") / f"{topic.value}.json", topic_schema(topic)


def write_contract(root: Path = REPO) -> list[Path]:
    """Write the contract under `root` (docs/, schemas/json/); a schema of a topic that no longer exists goes."""
    written = []
    for relative, content in contract_files():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    for stale in set((root / "schemas/json").glob("*.json")) - set(written):
        stale.unlink()
    return written


def docs_command(out: str | None) -> int:
    """`keyledger docs [--out DIR]`: write the contract files and name them."""
    for path in write_contract(Path(out) if out else REPO):
        print(path)
    return 0
