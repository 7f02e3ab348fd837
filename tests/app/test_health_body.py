"""`/readyz` names every failing dependency with the settings to check; the retry log line does too."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from workers.app.observability.health import HealthServer, failing
from workers.errors import Unavailable, what_to_check
from workers.kafka.publisher import BrokerUnavailable
from workers.kms import KmsUnavailable
from workers.ledger import LedgerUnavailable

KMS_DOWN = {"state": "unavailable", "since": "2026-12-07T00:00:00+00:00",
            "last_error": "GenerateDataKey: EndpointConnectionError", "fatal": False}


def checks(**changed: Any) -> dict[str, Any]:
    return {"broker": {"ok": True}, "key_table": {"loaded": True, "keys": 2}, "groups": {},
            "kms": {"state": "ok", "since": None, "last_error": None, "fatal": False},
            "ledger": {"state": "ok", "since": None, "last_error": None, "fatal": True}, **changed}


def test_only_failing_dependencies_are_named_each_with_its_settings():
    assert failing(checks()) == {}
    named = failing(checks(kms=KMS_DOWN, broker={"ok": False}))
    assert named == {"kms": "GenerateDataKey: EndpointConnectionError; check KEYLEDGER_KMS_ENDPOINT_URL and "
                            "KEYLEDGER_AWS_REGION (aws) or KEYLEDGER_VAULT_ADDR (vault), and the KMS credentials",
                     "broker": "no answer; check KEYLEDGER_KAFKA_BOOTSTRAP"}


async def test_a_process_ready_from_cached_keys_still_names_the_kms_it_cannot_reach():
    async def readiness() -> tuple[bool, dict[str, Any]]:
        return True, checks(kms=KMS_DOWN)

    async def refresh() -> None:
        return None

    server = HealthServer(CollectorRegistry(), readiness, refresh)
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as reply:
            status, body = reply.status, json.loads(await reply.text())
    finally:
        await server.aclose()
    assert status == 200 and body["ready"] and set(body["failing"]) == {"kms"}


def test_the_retry_reason_names_the_setting_of_what_is_out_of_reach():
    assert what_to_check(KmsUnavailable("GenerateDataKey: EndpointConnectionError")).startswith(
        "GenerateDataKey: EndpointConnectionError; check KEYLEDGER_KMS_ENDPOINT_URL")
    assert what_to_check(LedgerUnavailable("TigerBeetle did not answer within 10s")).endswith(
        "; check KEYLEDGER_TB_ADDRESSES, KEYLEDGER_TB_CLUSTER_ID and that TigerBeetle is up")
    assert "KEYLEDGER_KAFKA_BOOTSTRAP" in what_to_check(BrokerUnavailable("timed out"))
    assert what_to_check(Unavailable("key table behind")) == "key table behind"
