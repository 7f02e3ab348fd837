"""`keyledger client encrypt|decrypt|sign`: the caller side (workers/client.py) for shells.

Each verb builds one proved request, produces it to its request topic (key: the tenant id) and
waits for the record answering its `job_id` on the result topic, as any other producer would.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiokafka import ConsumerRecord

from schemas.topics import Topic
from workers.client import CallerClient
from workers.core.canonical import NotIJson, canonical_json, loads_ijson
from workers.errors import CheckFailed
from workers.kafka.tap import produce, read_topic


def _answering(job_id: str, records: list[ConsumerRecord]) -> dict[str, Any] | None:
    for record in records:
        if record.value is None or job_id.encode() not in record.value:
            continue
        try:
            value = loads_ijson(record.value)
        except (NotIJson, RecursionError):
            continue
        if isinstance(value, dict) and value.get("job_id") == job_id:
            return value
    return None


async def exchange(bootstrap: str, request_topic: str, result_topic: str, request: Mapping[str, Any],
                   timeout: float) -> dict[str, Any]:
    """Produces `request` and returns the record of `result_topic` with its job id; CheckFailed when none
    comes in `timeout` seconds (the workers may be down, or refused the request: see kms.dlq)."""
    job_id = str(request["job_id"])
    await produce(bootstrap, request_topic, [(str(request["tenant_id"]).encode(), canonical_json(dict(request)))])
    found: list[dict[str, Any]] = []

    def answered(records: list[ConsumerRecord]) -> bool:
        value = _answering(job_id, records)
        if value is not None:
            found.append(value)
        return value is not None

    await read_topic(bootstrap, result_topic, until=answered, timeout=timeout)
    if not found:
        raise CheckFailed(f"no answer to job {job_id} on {result_topic} in {timeout:g}s "
                          f"(are the workers running? a refused request goes to {Topic.DLQ.value})")
    return found[0]


async def pii(bootstrap: str, client: CallerClient, tenant_id: str, operation: str, fields: Mapping[str, str],
              record_id: str | None, timeout: float) -> dict[str, Any]:
    """The result of one PII request; decrypted fields opened with the caller's private key."""
    request = client.pii_request(tenant_id, operation, fields, record_id=record_id or str(uuid.uuid4()))
    result = await exchange(bootstrap, Topic.PII_REQUESTS, Topic.PII_RESULTS, request, timeout)
    if result.get("error") or result.get("errors"):
        return result
    return {**result, "fields": client.open_result(result)}


async def sign(bootstrap: str, client: CallerClient, tenant_id: str, span: Mapping[str, Any],
               timeout: float) -> dict[str, Any]:
    """The signed span (as on spans.signed) of one span."""
    return await exchange(bootstrap, Topic.SPANS_TO_SIGN, Topic.SPANS_SIGNED, client.span_request(tenant_id, span),
                          timeout)
