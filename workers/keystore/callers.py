"""The caller policy table every process holds, fed from `keys.callers`.

The records reach it through `workers.kafka.follow.TopicFollower` (no consumer group): the topic is
read whole at start, so a process never judges a request before it knows every caller, and then
followed (a new caller, a changed policy, a revocation).

Each record is verified against the operator's public key before anything else: a record the
operator key did not sign is refused and logged with the caller id it claims, and changes
nothing. A verified record of a lower version than the ledger pins for its caller (read into the
table before the topic: `CallerTable.pin`) is refused the same way, logged with the caller id and
both versions: after the first whole read, for a caller left below its pin (an uncompacted topic
holds every older version, and those are history), and as it comes from then on. Of the other verified records the highest version per caller wins (`CallerTable`). The
caller's HMAC secret is unwrapped through the KMS port when its record is installed (encryption
context {"caller_id": id}); a secret that does not unwrap leaves the caller granting nothing.
A tombstone changes nothing either: only a signed record (e.g. a revocation) changes a caller.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.messages import CallerPolicy
from workers.core.b64 import b64decode
from workers.core.callers import (
    SECRET_BYTES,
    CallerTable,
    Change,
    PolicyRecordRefused,
    secret_context,
    verify_policy_record,
)
from workers.kms import Kms, KmsError, kms_for

log = logging.getLogger("keyledger.callers")


class CallerPolicies:
    """Applies `keys.callers` records to a `CallerTable`: verify, order by version, unwrap the secret."""

    def __init__(self, table: CallerTable, kms: Kms, operator_key: Ed25519PublicKey) -> None:
        self.table = table
        self._kms = kms
        self._operator_key = operator_key
        self.refused = 0
        self.reading = True
        """Until `read_done`: the topic's first, whole read, where records below a pin may be mere history
        (an uncompacted topic holds every version) and only the outcome says whether one was rolled back."""
        self._below_pin: dict[str, int] = {}

    def read_done(self) -> None:
        """The whole topic has been read: a caller that held records below its pin and none at or above it
        was rolled back (refused, logged); from now on a record below a pin is refused as it comes."""
        self.reading = False
        for caller_id, version in sorted(self._below_pin.items()):
            held = self.table.get(caller_id)
            if held is None or held.policy.version < self.table.pinned(caller_id):
                self._rolled_back(caller_id, version)
        self._below_pin.clear()

    def _rolled_back(self, caller_id: str, version: int) -> None:
        self.refused += 1
        log.warning("refused a keys.callers record for caller %s: rolled back: version %d, the ledger pins %d",
                    caller_id, version, self.table.pinned(caller_id))

    async def apply(self, key: bytes | None, value: bytes | None) -> Change | None:
        """One record; None when it was refused (not signed by the operator key, a tombstone, keyed
        under another caller's id, or rolled back below the ledger's pin)."""
        if value is None:
            log.warning("ignored a tombstone on keys.callers: only a signed record changes a caller")
            return None
        try:
            policy = verify_policy_record(value, self._operator_key)
        except PolicyRecordRefused as refusal:
            self.refused += 1
            log.warning("refused a keys.callers record for caller %s: %s", refusal.caller_id or "(none named)",
                        refusal)
            return None
        if key is not None and key != policy.caller_id.encode():
            self.refused += 1
            log.warning("refused a keys.callers record for caller %s: keyed under another id", policy.caller_id)
            return None
        change = self.table.change(policy)
        if change is Change.ROLLED_BACK:
            if self.reading:  # history below the pin, unless no record at the pin follows (`read_done`)
                self._below_pin[policy.caller_id] = max(policy.version, self._below_pin.get(policy.caller_id, 0))
            else:
                self._rolled_back(policy.caller_id, policy.version)
            return None
        if change is Change.NEWER:
            self.table.install(policy, None if policy.revoked else await self._unwrap(policy))
            log.info("caller %s (%s) at version %d%s", policy.name, policy.caller_id, policy.version,
                     ": revoked" if policy.revoked else "")
        elif change is Change.TIE:
            self.table.tie(policy)
            log.warning("caller %s (%s): two different records of version %d; it grants nothing until a higher "
                        "version", policy.name, policy.caller_id, policy.version)
        elif change is Change.STALE:
            log.warning("ignored a stale keys.callers record for caller %s (version %d)", policy.caller_id,
                        policy.version)
        return change

    async def _unwrap(self, policy: CallerPolicy) -> bytes | None:
        try:
            wrapped = b64decode(policy.wrapped_secret)
            secret = await kms_for(self._kms, policy.kms_provider).decrypt(wrapped, policy.kms_key_id,
                                                                         secret_context(policy.caller_id))
        except (KmsError, ValueError) as exc:
            log.warning("caller %s: its secret does not unwrap (%s); it grants nothing", policy.caller_id,
                        type(exc).__name__)
            return None
        if len(secret) != SECRET_BYTES:
            log.warning("caller %s: its secret is not 32 bytes; it grants nothing", policy.caller_id)
            return None
        return secret
