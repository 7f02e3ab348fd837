"""No secret on any topic or in the log (issue 9): every data key `keyledger run` made is unwrapped
through the test's KMS (moto over HTTP) and searched for, raw and hex and base64 and base64url at
every alignment, in every record of every topic and in the worker's log; so is a PII plaintext,
which may only be on `pii.requests` (the producer's own encrypt request): a caller's decrypt result on
`pii.results` holds it only sealed to the caller."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime

import boto3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.messages import KeyMaterial, KeyType
from schemas.topics import Topic
from tests.support.callers import RegisteredCaller, register_caller
from tests.support.harness import span_job
from tests.support.kafka import read, records_for, tenant_created, unique_tenant
from tests.support.secrets import found_in, record_bytes
from workers.core.envelope import open_field, parse_envelope
from workers.core.signing import private_key_from_seed, public_key_bytes
from workers.kafka.tap import produce
from workers.kms import encryption_context

pytestmark = pytest.mark.integration

GROUPS = ("keyledger-keygen", "keyledger-signer", "keyledger-pii", "keyledger-rotation")


def pii(tenant: str, operation: str, fields: dict, job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "tenant_id": tenant, "record_id": "r1", "operation": operation,
                       "fields": fields}).encode()


async def result(bootstrap: str, tenant: str, job_id: str) -> dict:
    for _ in range(240):
        hits = [r for r in await records_for(bootstrap, "pii.results", tenant) if r.get("job_id") == job_id]
        if hits:
            return hits[0]
        await asyncio.sleep(0.5)
    raise TimeoutError(job_id)


async def drive_every_flow(bootstrap: str, tenant: str, plaintext: str, caller: RegisteredCaller) -> tuple[str, str]:
    """Keygen, signing, PII encrypt/decrypt, rotation, then signing and reencrypt under the new keys,
    and a malformed PII request (a dead letter). Returns the v1 ciphertext and the decrypted value."""
    await produce(bootstrap, "tenants.created", [(tenant.encode(), tenant_created(tenant))])
    await records_for(bootstrap, "keys.events", tenant, want=2, timeout=90)
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant, job_id=f"s{i}")) for i in range(20)])
    await produce(bootstrap, "pii.requests", [(tenant.encode(), pii(tenant, "encrypt", {"card": plaintext}, "e1"))])
    sealed = (await result(bootstrap, tenant, "e1"))["fields"]["card"]
    await produce(bootstrap, "pii.requests", [(tenant.encode(), caller.pii(tenant, "decrypt", {"card": sealed},
                                                                           job_id="d1"))])
    opened = caller.client.open_result(await result(bootstrap, tenant, "d1"))["card"]

    tick = {"tick_id": f"{tenant}-manual", "issued_at": datetime.now(UTC).isoformat(), "tenant_id": tenant,
            "reason": "manual"}
    await produce(bootstrap, "keys.rotation-ticks", [(tenant.encode(), json.dumps(tick).encode())])
    await records_for(bootstrap, "keys.events", tenant, want=4, timeout=90)
    await produce(bootstrap, "spans.to-sign", [(tenant.encode(), span_job(tenant, job_id=f"v2-{i}")) for i in range(5)])
    await produce(bootstrap, "pii.requests", [(tenant.encode(), caller.pii(tenant, "reencrypt", {"card": sealed},
                                                                           job_id="r1")),
                                              (tenant.encode(), b'{"tenant_id": "' + tenant.encode() +
                                               b'", "fields": {"card": "' + plaintext.encode() + b'"}}')])
    await records_for(bootstrap, "spans.signed", tenant, want=25, timeout=90)
    assert (await result(bootstrap, tenant, "r1"))["key_id"] != parse_envelope(sealed).key_id
    await records_for(bootstrap, "kms.dlq", tenant, want=1, timeout=90)
    return sealed, opened


def unwrap(moto_endpoint: str, material: KeyMaterial) -> bytes:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    context = encryption_context(material.tenant_id, material.key_id, material.key_type)
    answer = kms.decrypt(CiphertextBlob=base64.b64decode(material.wrapped_key), KeyId=material.kms_key_id,
                         EncryptionContext=context)
    return bytes(answer["Plaintext"])


async def test_no_data_key_and_no_pii_plaintext_reach_a_topic_or_the_log(topics_ready, worker_process, moto_endpoint,
                                                                         aws_env, tmp_path):
    bootstrap = topics_ready
    tenant = unique_tenant("nosecret")
    plaintext = f"4111 1111 1111 1111 {uuid.uuid4().hex}"
    operator, caller = await register_caller(bootstrap, tmp_path, f"nosecret-{uuid.uuid4().hex[:8]}", aws_env,
                                             tenants=[tenant])
    worker = worker_process(*GROUPS, env={"KEYLEDGER_OPERATOR_PUBLIC_KEY": operator.public})
    sealed, opened = await drive_every_flow(bootstrap, tenant, plaintext, caller)
    assert opened == plaintext
    worker.terminate()
    await asyncio.to_thread(worker.wait, 30)  # its last log lines (stats) are written

    materials = {m.key_id: m for m in (KeyMaterial.model_validate_json(r.value)
                                       for r in await read(bootstrap, Topic.KEYS_MATERIAL.value) if r.value)
                 if m.tenant_id == tenant}
    assert sorted((m.key_type.value, m.version) for m in materials.values()) == [
        ("encryption", 1), ("encryption", 2), ("signing", 1), ("signing", 2)]
    keys = {key_id: unwrap(moto_endpoint, m) for key_id, m in materials.items()}
    # the unwrapped keys are the ones in use: they give the published public keys and open the ciphertext
    for key_id, m in materials.items():
        if m.key_type is KeyType.SIGNING:
            assert public_key_bytes(private_key_from_seed(keys[key_id])) == base64.b64decode(m.public_key)
    envelope = parse_envelope(sealed)
    assert open_field(AESGCM(keys[envelope.key_id]), envelope, tenant, "r1", "card") == plaintext

    topics = {topic.value: record_bytes(await read(bootstrap, topic.value, timeout=120)) for topic in Topic}
    log = worker.log_path.read_bytes()
    assert sum(len(b) for blobs in topics.values() for b in blobs) > 0 and b"consumer groups running" in log
    for key_id, key in keys.items():
        assert found_in(key, [blob for blobs in topics.values() for blob in blobs]) == [], key_id
        assert found_in(key, [log]) == [], key_id
    # the producer's own encrypt request holds the plaintext; a caller's decrypt result only sealed to it
    allowed = {Topic.PII_REQUESTS.value}
    for topic, blobs in topics.items():
        if topic not in allowed:
            assert found_in(plaintext.encode(), blobs) == [], topic
    assert found_in(plaintext.encode(), topics[Topic.PII_REQUESTS.value])  # the scan finds what is there
    assert found_in(plaintext.encode(), [log]) == []
