"""Evidence an insider with write access to Kafka (not to TigerBeetle or the KMS) cannot bend (issue 25,
findings 1-4), over a real broker and a real TigerBeetle.

Tampering is left the way such an insider would leave it: rewritten copies of the topics, which the
checker reads in place of the originals (as in test_digest_flow.py); the ledger is the real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.messages import SYSTEM_TENANT, Op
from tests.integration.isolated import read_logged, spans_of, wait_for_chain, write_copy
from tests.integration.test_digest_flow import DIGEST_GROUP, onboard, traffic
from tests.support.harness import span_job
from tests.support.kafka import unique_tenant
from tests.support.processes import in_process_workers
from workers.core import ids
from workers.core.digest import ZERO_SHA256, digest_body, encode, records_sha256, sign_digest
from workers.kafka.tap import produce, read_topic
from workers.ledger import transfer_ok
from workers.ledger.records import OpRecord
from workers.ledger.tigerbeetle import TigerBeetleLedger
from workers.source import Source
from workers.tools.audit_check import Logged, compare, verify_chain

pytestmark = pytest.mark.integration


def edited(record: Logged, **fields: object) -> Logged:
    return Logged(record.partition, record.offset, record.key, json.dumps({**json.loads(record.value), **fields}).encode())


def digests_of(digests: dict[int, list[Logged]], partition: int) -> list[dict]:
    return [json.loads(r.value) for rs in digests.values() for r in rs if json.loads(r.value)["partition"] == partition]


def without(digests: dict[int, list[Logged]], drop) -> dict[int, list[Logged]]:
    return {p: [r for r in rs if not drop(json.loads(r.value))] for p, rs in digests.items()}


async def test_an_insider_with_kafka_write_access_cannot_rewrite_drop_or_cut_the_evidence(own_broker, own_tigerbeetle,
                                                                                           monkeypatch):
    bootstrap = own_broker
    monkeypatch.setenv("KEYLEDGER_DIGEST_INTERVAL", "0.5")
    tenants = [unique_tenant("ev") for _ in range(4)]
    late = unique_tenant("cut")
    ledger = TigerBeetleLedger(own_tigerbeetle)  # the auditor's (a worker context closes its own at exit)
    try:
        async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer", DIGEST_GROUP],
                                      ledger=TigerBeetleLedger(own_tigerbeetle)):
            await onboard(bootstrap, tenants)
            chain = await wait_for_chain(bootstrap, min_records=2 * len(tenants))
            for _ in range(2):  # several digests per partition
                await traffic(bootstrap, tenants, 4)
                chain = await wait_for_chain(bootstrap, min_records=chain.records + 1)
        # the digest worker is down: every record of `late` lies after its partition's last digest
        async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer"],
                                      ledger=TigerBeetleLedger(own_tigerbeetle)):
            await onboard(bootstrap, [late])
            await traffic(bootstrap, [late], 3)
            await read_topic(bootstrap, "kms.audit", timeout=60, until=lambda rs: sum(
                json.loads(r.value)["tenant_id"] == late and json.loads(r.value)["op"] == "sign" for r in rs) == 3)

        audit = await read_logged(bootstrap, "kms.audit")
        digests = await read_logged(bootstrap, "kms.audit.digests")
        events = await read_logged(bootstrap, "keys.events")

        async def check(name: str, audit_copy, digest_copy, events_copy=None, *, with_ledger: bool = True):
            a = await write_copy(bootstrap, f"copy.{name}.audit", audit_copy)
            d = await write_copy(bootstrap, f"copy.{name}.digests", digest_copy)
            e = await write_copy(bootstrap, f"copy.{name}.events", events_copy or events)
            return await verify_chain(bootstrap, ledger=ledger if with_ledger else None, audit_topic=a,
                                      digest_topic=d, events_topic=e, settle=0)

        baseline = await check("baseline", audit, digests)
        assert baseline.intact, baseline.problems
        assert baseline.anchored and baseline.recorded == baseline.digests == chain.digests

        # finding 1: a digested record edited, its partition's digests dropped, re-digested under a key of the
        # insider's announced on keys.events as a keyledger-system signing key
        partition = max(audit, key=lambda p: len(digests_of(digests, p)))
        records = audit[partition]
        victim = next(i for i, r in enumerate(records) if r.offset <= digests_of(digests, partition)[0]["last_offset"])
        rewritten = [edited(r, reason="nothing to see") if i == victim else r for i, r in enumerate(records)]
        insider = Ed25519PrivateKey.generate()
        insider_key = uuid.uuid4().hex
        body = digest_body(partition=partition, first_offset=rewritten[0].offset, last_offset=rewritten[-1].offset,
                           count=len(rewritten), records_sha256=records_sha256((r.offset, r.value) for r in rewritten),
                           previous_digest_sha256=ZERO_SHA256, created_at=datetime.now(UTC), key_id=insider_key)
        forged = Logged(0, 0, str(partition).encode(), encode(sign_digest(insider, body)))
        raw_public = insider.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        announced = Logged(0, 0, SYSTEM_TENANT.encode(), json.dumps({
            "event_id": ids.event_id("generated", insider_key), "type": "generated", "tenant_id": SYSTEM_TENANT,
            "key_id": insider_key, "key_type": "signing", "version": 99, "occurred_at": datetime.now(UTC).isoformat(),
            "public_key": base64.b64encode(raw_public).decode()}).encode())
        rechained = without(digests, lambda d: d["partition"] == partition)
        rechained = {p: rs + ([forged] if p == 0 else []) for p, rs in rechained.items()}
        events_forged = {p: rs + ([announced] if p == 0 else []) for p, rs in events.items()}
        audit_edited = {**audit, partition: rewritten}
        topics_only = await check("rekeyed-topics", audit_edited, rechained, events_forged, with_ledger=False)
        assert topics_only.intact  # what the finding saw: keys.events is as writable as kms.audit
        rekeyed = await check("rekeyed", audit_edited, rechained, events_forged)
        assert not rekeyed.intact
        assert any(f"untrusted digest key {insider_key}" in p and "keys.events only" in p for p in rekeyed.problems)
        assert any("ledger recorded a digest" in p for p in rekeyed.problems)
        # configured out of band, a key is trusted as the operator says: its digest covers what the ledger's
        # recorded ones covered, as a re-digest after a crash would (the anchor is the operator's to choose)
        vouched = await verify_chain(bootstrap, ledger=ledger, configured=[raw_public], audit_topic="copy.rekeyed.audit",
                                     digest_topic="copy.rekeyed.digests", events_topic="copy.rekeyed.events", settle=0)
        assert vouched.intact and vouched.superseded == len(digests_of(digests, partition)), vouched.problems

        # finding 3: the newest digest of a partition dropped, then a record it covered edited
        newest = digests_of(digests, partition)[-1]
        covered = next(i for i, r in enumerate(records) if newest["first_offset"] <= r.offset <= newest["last_offset"])
        audit_late_edit = {**audit, partition: [edited(r, reason="edited later") if i == covered else r
                                                for i, r in enumerate(records)]}
        dropped = without(digests, lambda d: d == newest)
        assert (await check("dropped-topics", audit_late_edit, dropped, with_ledger=False)).intact  # the old hole
        caught = await check("dropped", audit_late_edit, dropped)
        assert not caught.intact
        assert (partition, newest["first_offset"], newest["last_offset"]) in spans_of(caught.problems)
        assert caught.digested_to[partition] >= newest["last_offset"]  # still claimed: never "not yet digested"

        # finding 2: a tenant whose every record lies after the last digest, cut from the tail
        cut = [r.value for rs in audit.values() for r in rs if json.loads(r.value)["tenant_id"] != late]
        verdict = await compare(ledger, cut)
        assert not verdict.agrees
        late_ref = ids.to_hex(ids.tenant_ref(late))
        assert sum(late_ref in m and "missing from kms.audit" in m for m in verdict.mismatches) >= 4  # generate + 3 signs
        whole = await compare(ledger, [r.value for rs in audit.values() for r in rs])
        assert whole.agrees, whole.mismatches
    finally:
        await ledger.aclose()


def audit_verify(bootstrap: str, tigerbeetle: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEYLEDGER_LEDGER": "tigerbeetle", "KEYLEDGER_TB_ADDRESSES": tigerbeetle,
           "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap}
    return subprocess.run([sys.executable, "-m", "workers.app.cli", "audit", "verify", *extra], env=env,
                          capture_output=True, text=True, timeout=180)


async def test_audit_verify_while_the_signer_works_raises_no_false_alarm_and_still_fails_a_missing_event(
        own_broker, own_tigerbeetle, monkeypatch):
    bootstrap = own_broker
    monkeypatch.setenv("KEYLEDGER_DIGEST_INTERVAL", "0.5")
    tenants = [unique_tenant("live") for _ in range(3)]
    ledger = TigerBeetleLedger(own_tigerbeetle)
    try:
        async with in_process_workers(bootstrap, ["keyledger-keygen", "keyledger-signer", DIGEST_GROUP],
                                      ledger=TigerBeetleLedger(own_tigerbeetle)):
            await onboard(bootstrap, tenants)
            await wait_for_chain(bootstrap, min_records=len(tenants))
            stop = asyncio.Event()

            async def steady_stream() -> None:
                while not stop.is_set():
                    await produce(bootstrap, "spans.to-sign", [(t.encode(), span_job(t)) for t in tenants for _ in range(10)])
                    await asyncio.sleep(0.05)

            stream = asyncio.create_task(steady_stream())
            try:
                await asyncio.sleep(2)  # the signer is busy before the first run
                runs = [await asyncio.to_thread(audit_verify, bootstrap, own_tigerbeetle) for _ in range(3)]
            finally:
                stop.set()
                await stream
            for run in runs:
                assert run.returncode == 0, run.stdout + run.stderr
                assert "MISMATCH" not in run.stdout and "digest chain intact" in run.stdout
            # the runs did meet work in flight (the finding: the ledger runs ahead of kms.audit), and settled it
            assert sum(int(re.search(r"(\d+) in flight at the read, settled", r.stdout)[1]) for r in runs) > 0

            # a transfer whose audit event never comes: still a mismatch once the bound has passed
            key_id = ids.key_id_for(tenants[0], "signing", 1)
            lost = OpRecord(ids.transfer_id(Op.SIGN, key_id, "lost", uuid.uuid4().hex), tenants[0], key_id, Op.SIGN,
                            Source("spans.to-sign", 0, 0))
            assert all(transfer_ok(r.status) for r in await ledger.create_transfers([lost.to_transfer()]))
            failed = await asyncio.to_thread(audit_verify, bootstrap, own_tigerbeetle, "--settle", "2")
    finally:
        await ledger.aclose()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    [line] = [line for line in failed.stdout.splitlines() if line.startswith("MISMATCH")]
    assert line.startswith(f"MISMATCH {ids.to_hex(lost.transfer_id)}: sign transfer of {tenants[0]}")
    assert "never arrived within 2 s" in line and line.endswith("missing from kms.audit")
