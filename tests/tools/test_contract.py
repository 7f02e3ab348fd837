"""The published contract (docs/asyncapi.json, schemas/json/) is the models' own, and complete."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import ErrorCode
from schemas.messages import SpanToSign
from schemas.topics import TOPIC_MODELS, Topic
from tests.support.strategies import models
from workers.app import cli
from workers.groups import GROUPS
from workers.settings import ENV_NAMES
from workers.tools import contract

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contract")
    contract.write_contract(root)
    return root


@pytest.fixture(scope="module")
def document(generated: Path) -> dict[str, Any]:
    return load(generated / "docs/asyncapi.json")


def resolve(document: dict[str, Any], ref: dict[str, str]) -> Any:
    node: Any = document
    for part in ref["$ref"].removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def payloads_by_topic(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each channel address with the payload schemas of its messages, $refs followed."""
    found: dict[str, list[dict[str, Any]]] = {}
    for channel in document["channels"].values():
        for message in channel["messages"].values():
            payload = resolve(document, message)["payload"]
            found.setdefault(channel["address"], []).append(resolve(document, payload) if "$ref" in payload else payload)
    return found


def required(model: type) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.is_required()]


# --- no drift ------------------------------------------------------------------------------------------


def test_the_committed_files_are_what_the_models_generate(generated: Path):
    produced = sorted(p.relative_to(generated) for p in generated.rglob("*.json"))
    committed = sorted([Path("docs/asyncapi.json"), *(p.relative_to(ROOT) for p in (ROOT / "schemas/json").glob("*.json"))])
    assert committed == produced, "run `keyledger docs` and commit the result"
    drifted = [str(p) for p in produced if load(ROOT / p) != load(generated / p)]
    assert drifted == [], f"{drifted} drifted from schemas/: run `keyledger docs` and commit the result"


def test_a_changed_model_shows_as_drift(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    class SpanToSignV2(SpanToSign):
        trace_flags: int

    monkeypatch.setitem(TOPIC_MODELS, Topic.SPANS_TO_SIGN, SpanToSignV2)
    contract.write_contract(tmp_path)
    for relative in ("schemas/json/spans.to-sign.json", "docs/asyncapi.json"):
        assert load(tmp_path / relative) != load(ROOT / relative)


@pytest.mark.process  # runs the keyledger CLI
def test_keyledger_docs_writes_the_contract(generated: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "workers.app.cli", "docs", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert written == sorted(p.relative_to(generated) for p in generated.rglob("*.json"))
    assert all(load(tmp_path / p) == load(generated / p) for p in written)
    assert str(tmp_path / "docs/asyncapi.json") in run.stdout.splitlines()


def test_a_stale_topic_schema_is_removed(tmp_path: Path):
    (tmp_path / "schemas/json").mkdir(parents=True)
    (tmp_path / "schemas/json/spans.retired.json").write_text("{}")
    contract.write_contract(tmp_path)
    assert not (tmp_path / "schemas/json/spans.retired.json").exists()


# --- complete --------------------------------------------------------------------------------------------


def test_every_topic_has_its_model():
    assert set(TOPIC_MODELS) == set(Topic)


def test_the_document_is_asyncapi_3_with_every_topic_as_a_channel(document: dict[str, Any]):
    assert document["asyncapi"] == "3.0.0"
    payloads = payloads_by_topic(document)
    assert set(payloads) == {t.value for t in Topic}
    for topic, schemas in payloads.items():
        model = TOPIC_MODELS[Topic(topic)]
        for schema in schemas:
            assert schema["title"] == model.__name__, topic
            assert schema["required"] == required(model), topic
            assert set(schema["properties"]) == set(model.model_fields), topic


def test_every_group_consumes_its_topics_and_keyledger_publishes_its_outputs(document: dict[str, Any]):
    receive = {(op["channel"]["$ref"].split("/")[-1]) for op in document["operations"].values()
               if op["action"] == "receive"}
    for name, group in GROUPS.items():
        for topic in getattr(group, "topics"):  # noqa: B009 - GROUPS is typed as factories; these are classes
            assert f"{topic}:{name}" in receive
    send = {document["channels"][op["channel"]["$ref"].split("/")[-1]]["address"]
            for op in document["operations"].values() if op["action"] == "send"}
    assert send == {t.value for t in contract.OUTPUTS}
    assert {"keys.material:key-table", "keys.events:key-table"} <= receive


def test_every_schema_reference_resolves(document: dict[str, Any]):
    def refs(node: Any) -> list[dict[str, str]]:
        if isinstance(node, dict):
            return ([node] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(document):
        assert resolve(document, ref) is not None, ref


# --- the JSON Schemas say what the models say ---------------------------------------------------------------


@pytest.mark.parametrize("topic", list(Topic), ids=str)
def test_what_keyledger_writes_validates_against_the_published_schema(topic: Topic):
    validator = jsonschema.Draft202012Validator(load(ROOT / "schemas/json" / f"{topic.value}.json"))

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(models(TOPIC_MODELS[topic], extras=True))
    def valid(message: Any) -> None:
        validator.validate(json.loads(message.to_json()))

    valid()


@settings(max_examples=25, deadline=None, database=None)
@given(models(SpanToSign), st.none() | st.booleans() | st.text())
def test_the_published_schema_refuses_a_span_that_is_already_signed(job: SpanToSign, signature: Any):
    validator = jsonschema.Draft202012Validator(load(ROOT / "schemas/json/spans.to-sign.json"))
    value = {**json.loads(job.to_json()), "signature": signature}
    assert not validator.is_valid(value)
    assert validator.is_valid({k: v for k, v in value.items() if k != "signature"})


# docs/contract.md, the contract of record, names everything the code offers


CONTRACT = (ROOT / "docs/contract.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_contract():
    documented = set(re.findall(r"KEYLEDGER_[A-Z0-9_]+", CONTRACT))
    assert sorted(set(ENV_NAMES.values()) - documented) == []


def test_every_topic_and_error_code_is_in_the_contract():
    assert [t.value for t in Topic if f"`{t.value}`" not in CONTRACT] == []
    assert [c.value for c in ErrorCode if f"`{c.value}`" not in CONTRACT] == []


def test_every_cli_verb_is_in_the_contract():
    parser = cli._parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = [f"keyledger {verb}" for verb in verbs.choices if verb != "audit"]
    audit = next(a for a in verbs.choices["audit"]._actions if isinstance(a, argparse._SubParsersAction))
    named += [f"keyledger audit {verb}" for verb in audit.choices]
    assert [name for name in named if f"`{name}" not in CONTRACT] == []
