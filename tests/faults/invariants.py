"""The invariants every fault test ends with, read from the topics and the ledger as an auditor would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict

from schemas.messages import KeyEvent, KeyEventType, KeyMaterial
from tests.support.kafka import read
from workers.keystore.directory import KeyDirectory, KeyState


async def key_table(bootstrap: str) -> KeyDirectory:
    """The key table as any process would build it from keys.material and keys.events."""
    directory = KeyDirectory()
    for record in await read(bootstrap, "keys.material", timeout=120):
        if record.value is None:
            directory.apply_tombstone(record.key.decode())
        else:
            directory.apply_material(KeyMaterial.model_validate_json(record.value))
    for record in await read(bootstrap, "keys.events", timeout=120):
        if record.value is not None:
            directory.apply_event(KeyEvent.model_validate_json(record.value))
    return directory


async def assert_key_invariants(bootstrap: str, tenants: list[str], *, destroyed: bool = False) -> KeyDirectory:
    """No duplicate key versions (one key id per tenant, type and version, each announced once as
    generated/rotated); exactly one active key per (tenant, type), or none at all once destroyed."""
    directory = await key_table(bootstrap)
    wanted = set(tenants)
    ids_of_version: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for record in await read(bootstrap, "keys.events", timeout=120):
        if record.value is None:
            continue
        event = KeyEvent.model_validate_json(record.value)
        if event.tenant_id in wanted and event.type in (KeyEventType.GENERATED, KeyEventType.ROTATED):
            ids_of_version[(event.tenant_id, event.key_type.value, event.version)].add(event.key_id)
    assert [v for v, key_ids in ids_of_version.items() if len(key_ids) > 1] == [], "two keys for one version"
    for tenant in tenants:
        entries = directory.tenant_keys(tenant)
        assert entries, f"{tenant} has no keys"
        for key_type in {e.key_type for e in entries}:
            active = [e for e in entries if e.key_type is key_type and e.state is KeyState.ACTIVE]
            assert len(active) == (0 if destroyed else 1), (tenant, key_type, [e.state for e in entries])
        if destroyed:
            assert all(e.state is KeyState.DESTROYED for e in entries), tenant
    return directory


def assert_audit_agrees(bootstrap: str, env: dict[str, str], tenants: list[str], *, lost_by_broker: int = 0) -> int:
    """`keyledger audit verify` (as an operator runs it) agrees with the ledger for every tenant.

    `lost_by_broker`: records of kms.audit the broker lost after acknowledging them (holes below the end
    of its partitions, found by the caller). Only that many transfers may be reported missing from
    kms.audit, and nothing else may disagree. Returns how many were reported missing."""
    missing = 0
    for tenant in tenants:
        done = subprocess.run([sys.executable, "-m", "workers.app.cli", "audit", "verify", "--tenant", tenant],
                              env={**os.environ, **env, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap},
                              capture_output=True, text=True, timeout=180)
        mismatches = [line for line in done.stdout.splitlines() if "MISMATCH" in line]
        if lost_by_broker and mismatches and all(line.endswith("missing from kms.audit") for line in mismatches):
            missing += len(mismatches)
            continue
        assert "kms.audit agrees with" in done.stdout, done.stdout + done.stderr
        assert not mismatches, done.stdout
    assert missing <= lost_by_broker, f"{missing} transfers missing from kms.audit, the broker lost {lost_by_broker}"
    return missing
