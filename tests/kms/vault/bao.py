"""Helpers for tests against the OpenBao dev server: fresh names, policies and approle mounts."""

from __future__ import annotations

import uuid

from workers.kms import encryption_context

ACME = encryption_context("acme", "ab" * 16, "encryption")
GLOBEX = encryption_context("globex", "ab" * 16, "encryption")


def fresh_name(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def policy(bao, key: str, *, key_caps: str = '"read", "create", "update"') -> str:
    """A fresh ACL policy: encrypt, decrypt and rewrap with `key`, and `key_caps` on the key itself."""
    policy_name = fresh_name("policy")
    hcl = "\n".join(f'path "transit/{op}/{key}" {{ capabilities = ["update"] }}' for op in ("encrypt", "decrypt", "rewrap"))
    if key_caps:
        hcl += f'\npath "transit/keys/{key}" {{ capabilities = [{key_caps}] }}'
    bao.admin("POST", f"sys/policies/acl/{policy_name}", {"policy": hcl})
    return policy_name


def approle(bao, token_policy: str, **role) -> tuple[str, str, str]:
    """A fresh approle mount with one role; returns (mount, role_id, secret_id)."""
    mount = fresh_name("approle")
    bao.admin("POST", f"sys/auth/{mount}", {"type": "approle"})
    bao.admin("POST", f"auth/{mount}/role/keyledger", {"token_policies": [token_policy], **role})
    role_id = bao.admin("GET", f"auth/{mount}/role/keyledger/role-id")["data"]["role_id"]
    secret_id = bao.admin("POST", f"auth/{mount}/role/keyledger/secret-id", {})["data"]["secret_id"]
    return mount, role_id, secret_id
