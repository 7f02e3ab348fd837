"""`keyledger caller add|list|revoke|keygen` and `keyledger operator keygen`: callers and their policy.

A caller's policy is a record on the compacted `keys.callers` topic (key = caller id), signed by
the operator key (workers/core/callers.py); the workers hold the operator's public key only.
`add` issues the caller a fresh 32-byte HMAC secret from the KMS (generate_data_key, encryption
context {"caller_id": id}); the record carries it wrapped, and the plaintext goes to one file,
created 0600, never to the screen. `add` of a known name writes the next policy version (with a
new secret); `revoke` writes the next version with `revoked: true`. Each verb reads the ledger's
caller pins and the topic first, so versions only go up (above the highest pinned one too).

Durability order: each verb pins the new record in the ledger (ledger/records.py caller pins) BEFORE
it publishes it, so a published record is always pinned and a worker refuses any record of a lower
version than the pin (an older operator-signed record re-published by whoever can write the topic).
A publish that fails after the pin leaves the caller granting nothing in processes that read the pin
(its only record is below it) until the verb is run again, which writes a version above the pin.
With the memory ledger (development, one process) the pin lives only as long as the verb: nothing
another process reads; pins protect with TigerBeetle only.

Key files (JSON unless said otherwise, private ones created 0600, never overwritten):

    operator.key   {"private_key": <base64url Ed25519 seed, 32 bytes>}
    operator.pub   base64url of the raw public key: the value of KEYLEDGER_OPERATOR_PUBLIC_KEY
    caller.key     {"kem": ..., "private_key": ...}   (workers/client.py)
    caller.pub     {"kem": ..., "public_key": ...}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.messages import ALL_TENANTS, TENANT_ID_PATTERN, CallerKem, CallerOperation, CallerPolicy
from schemas.topics import Topic
from workers.client import CallerCredential, CallerKeyPair, load_public_key, write_private_file
from workers.core.b64 import b64encode, b64url_decode, b64url_encode
from workers.core.callers import (
    CallerTable,
    Change,
    PolicyRecordRefused,
    caller_id_for,
    format_at,
    secret_context,
    sign_policy,
    verify_policy_record,
)
from workers.core.canonical import canonical_json
from workers.core.results import ResultSealError, generate_keypair, public_key
from workers.errors import CheckFailed, ConfigError
from workers.kafka.tap import produce, read_topic
from workers.kms import Kms, provider_of
from workers.ledger import Ledger
from workers.ledger.records import pin_caller_policy, pinned_versions

OPERATOR_KEY_FILE = "operator.key"
OPERATOR_PUBLIC_FILE = "operator.pub"
CALLER_KEY_FILE = "caller.key"
CALLER_PUBLIC_FILE = "caller.pub"
_is_tenant = re.compile(TENANT_ID_PATTERN).match


# --- key files -----------------------------------------------------------------------------------


def _new_files(*paths: Path) -> None:
    """Refuses before anything is made when a file to write exists already (keys are never replaced)."""
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists: keyledger never overwrites a key file; move it or choose another place")


def operator_keygen(out: Path) -> tuple[Path, Path]:
    """A new operator key pair in `out`: (private key file, public key file)."""
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / OPERATOR_KEY_FILE, out / OPERATOR_PUBLIC_FILE
    _new_files(private, public)
    key = Ed25519PrivateKey.generate()
    write_private_file(private, json.dumps({"private_key": b64url_encode(key.private_bytes_raw())}) + "\n")
    write_private_file(public, b64url_encode(key.public_key().public_bytes_raw()) + "\n")
    return private, public


def load_operator_key(path: Path) -> Ed25519PrivateKey:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return Ed25519PrivateKey.from_private_bytes(b64url_decode(value["private_key"]))
    except OSError as exc:
        raise ConfigError(f"--operator-key {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"--operator-key {path}: not an operator key file (`keyledger operator keygen` writes one)"
                          ) from None


def caller_keygen(out: Path, kem: CallerKem) -> tuple[Path, Path]:
    """A new caller HPKE key pair in `out`: (private key file, public key file)."""
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / CALLER_KEY_FILE, out / CALLER_PUBLIC_FILE
    _new_files(private, public)
    keys = CallerKeyPair(kem, *generate_keypair(kem))
    write_private_file(private, keys.private_json())
    write_private_file(public, keys.public_json())
    return private, public


def read_caller_public_key(path: Path, kem: CallerKem | None) -> tuple[CallerKem, bytes]:
    """A caller's public key file (caller.pub), or a file holding only the base64url raw key and `--kem`."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--public-key {path}: cannot read it ({exc.strerror})") from None
    try:
        if text.startswith("{"):
            found, raw = load_public_key(path)
            if kem is not None and kem is not found:
                raise ConfigError(f"--public-key {path} is a {found.value} key, not {kem.value}")
        else:
            found, raw = kem or CallerKem.X25519, b64url_decode(text)
        public_key(found, raw)
    except (ValueError, ResultSealError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--public-key {path}: not a caller public key ({exc})") from None
    return found, raw


# --- arguments -----------------------------------------------------------------------------------


def parse_tenants(text: str) -> list[str] | str:
    if text.strip() == ALL_TENANTS:
        return ALL_TENANTS
    tenants = sorted({t.strip() for t in text.split(",") if t.strip()})
    wrong = [t for t in tenants if not _is_tenant(t)]
    if not tenants or wrong:
        raise ConfigError(f"--tenants: {', '.join(wrong) or 'none given'}: tenant ids, comma separated, or '*'")
    return tenants


def parse_operations(text: str) -> list[str]:
    names = sorted({o.strip() for o in text.split(",") if o.strip()})
    allowed = {o.value for o in CallerOperation}
    if not names or not set(names) <= allowed:
        raise ConfigError(f"--operations: comma separated, each one of {', '.join(sorted(allowed))}")
    return names


# --- the topic -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyState:
    """What `keys.callers` says: the table (no secrets: nothing is unwrapped here) and the refused records."""

    table: CallerTable
    refused: list[tuple[str | None, str]]  # (caller id it names, why)


async def read_policies(bootstrap: str, operator: Ed25519PublicKey, timeout: float = 60.0) -> PolicyState:
    table, refused = CallerTable(), []
    for record in await read_topic(bootstrap, Topic.KEYS_CALLERS, timeout=timeout):
        if record.value is None:
            continue
        try:
            policy = verify_policy_record(record.value, operator)
        except PolicyRecordRefused as refusal:
            refused.append((refusal.caller_id, str(refusal)))
            continue
        change = table.change(policy)
        if change is Change.NEWER:
            table.install(policy, None)
        elif change is Change.TIE:
            table.tie(policy)
    return PolicyState(table, refused)


async def pin_and_publish(bootstrap: str, ledger: Ledger, record: dict[str, object], version: int) -> None:
    """Pins the signed record (of policy `version`) in the ledger, then publishes it (never the other way
    round: a published record is always pinned). The pin covers the very bytes published."""
    caller_id, value = str(record["caller_id"]), canonical_json(record)
    await pin_caller_policy(ledger, caller_id, version, value)
    await produce(bootstrap, Topic.KEYS_CALLERS, [(caller_id.encode(), value)])


async def next_version(bootstrap: str, ledger: Ledger, operator: Ed25519PublicKey,
                       caller_id: str) -> tuple[CallerPolicy | None, int]:
    """The caller's latest record on the topic (None when there is none) and the version to write next:
    above that record's and above the ledger's highest pin of the caller."""
    pinned = (await pinned_versions(ledger)).get(caller_id, 0) if ledger.shared else 0
    held = (await read_policies(bootstrap, operator)).table.get(caller_id)
    return (held.policy if held else None), max(held.policy.version if held else 0, pinned) + 1


async def caller_add(bootstrap: str, kms: Kms, operator: Ed25519PrivateKey, name: str, *, ledger: Ledger,
                     tenants: list[str] | str, operations: list[str], kem: CallerKem, caller_public_key: bytes,
                     secret_out: Path) -> CallerPolicy:
    """Pins, then publishes, the caller's next policy version with a fresh secret; the secret goes to
    `secret_out` only."""
    _new_files(secret_out)
    caller_id = caller_id_for(name)
    _, version = await next_version(bootstrap, ledger, operator.public_key(), caller_id)
    data_key = await kms.generate_data_key(None, secret_context(caller_id))
    record = sign_policy({
        "caller_id": caller_id, "name": name, "tenants": tenants, "operations": operations, "kem": kem.value,
        "public_key": b64url_encode(caller_public_key), "wrapped_secret": b64encode(data_key.wrapped),
        "kms_key_id": data_key.kms_key_id, "kms_provider": provider_of(kms), "created_at": format_at(datetime.now(UTC)),
        "revoked": False, "version": version,
    }, operator)
    policy = CallerPolicy.model_validate(record)
    # the secret is saved before the record that makes it usable exists: a failed publish leaves a
    # file that grants nothing, never a published caller whose secret was lost
    write_private_file(secret_out, CallerCredential(caller_id, name, data_key.plaintext).to_json())
    await pin_and_publish(bootstrap, ledger, record, version)
    return policy


async def caller_revoke(bootstrap: str, operator: Ed25519PrivateKey, name: str, *, ledger: Ledger) -> CallerPolicy:
    """Pins, then publishes, the caller's next policy version with `revoked: true`."""
    caller_id = caller_id_for(name)
    held, version = await next_version(bootstrap, ledger, operator.public_key(), caller_id)
    if held is None:
        raise CheckFailed(f"no caller {name!r} signed by this operator key on {Topic.KEYS_CALLERS.value}: "
                          "nothing revoked (`keyledger caller list` lists them)")
    unsigned = held.model_dump(mode="json", exclude_none=True, exclude={"signature"})
    record = sign_policy({**unsigned, "revoked": True, "version": version,
                          "created_at": format_at(datetime.now(UTC))}, operator)
    await pin_and_publish(bootstrap, ledger, record, version)
    return CallerPolicy.model_validate(record)


def render(state: PolicyState) -> str:
    lines = [f"{'name':<24} {'caller id':<32} {'ver':>4} {'state':<8} {'kem':<16} operations / tenants"]
    for caller in sorted(state.table, key=lambda c: c.policy.name):
        policy = caller.policy
        condition = "revoked" if policy.revoked else "tied" if caller.tied else "active"
        tenants = policy.tenants if isinstance(policy.tenants, str) else ",".join(policy.tenants)
        lines.append(f"{policy.name:<24} {policy.caller_id:<32} {policy.version:>4} {condition:<8} "
                     f"{policy.kem.value:<16} {','.join(o.value for o in policy.operations)} / {tenants}")
    for caller_id, why in state.refused:
        lines.append(f"REFUSED record for caller {caller_id or '(none named)'}: {why}")
    return "\n".join(lines)
