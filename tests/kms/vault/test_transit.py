"""The `vault` adapter against a real OpenBao dev server over HTTP: the Transit key, KEK versions, batches."""

from __future__ import annotations

import base64
import json
import urllib.error

import pytest

from tests.kms.vault.bao import ACME, GLOBEX, fresh_name, policy
from workers.kms import DataKeyRequest, KmsRefused, UnwrapRequest
from workers.kms.vault import TokenAuth, VaultKms

# --- the Transit key ---------------------------------------------------------------


async def test_a_missing_key_is_created_aes256_gcm96_and_derived(openbao, root_kms):
    name = root_kms.default_key_id
    with pytest.raises(urllib.error.HTTPError) as missing:
        openbao.admin("GET", f"transit/keys/{name}")
    assert missing.value.code == 404
    data_key = await root_kms.generate_data_key(None, ACME)
    key = openbao.admin("GET", f"transit/keys/{name}")["data"]
    assert key["type"] == "aes256-gcm96" and key["derived"] is True
    assert data_key.kms_key_id == name and data_key.kek_version == 1 == key["latest_version"]


@pytest.mark.parametrize("spec", [{"type": "aes256-gcm96"}, {"type": "chacha20-poly1305", "derived": True}])
async def test_an_existing_key_of_another_kind_is_refused(openbao, root_kms, spec):
    name = fresh_name("foreign")
    openbao.admin("POST", f"transit/keys/{name}", spec)
    assert await root_kms.generate_data_key(None, ACME)  # the adapter works; this key does not suit it
    with pytest.raises(KmsRefused, match=r"aes256-gcm96 derived=true"):
        await root_kms.generate_data_key(name, ACME)
    assert openbao.admin("GET", f"transit/keys/{name}")["data"]["latest_version"] == 1


async def test_the_context_is_base64_of_the_canonical_json_of_the_encryption_context(openbao, root_kms):
    """Another Transit client (an operator's script, a migration) unwraps with the same documented context."""
    data_key = await root_kms.generate_data_key(None, ACME)
    context = base64.b64encode(json.dumps(ACME, sort_keys=True, separators=(",", ":")).encode()).decode()
    reply = openbao.admin("POST", f"transit/decrypt/{data_key.kms_key_id}",
                          {"ciphertext": data_key.wrapped.decode(), "context": context})
    assert base64.b64decode(reply["data"]["plaintext"]) == data_key.plaintext


async def test_a_missing_key_the_token_may_not_create_is_a_clear_refusal(openbao):
    key = fresh_name()
    token = openbao.admin("POST", "auth/token/create", {"policies": [policy(openbao, key, key_caps='"read"')]})
    kms = VaultKms(openbao.addr, TokenAuth(token["auth"]["client_token"]), default_key_id=key)
    try:
        with pytest.raises(KmsRefused, match=rf"does not exist and could not be created .*bao write -f transit/keys/{key}"):
            await kms.generate_data_key(None, ACME)
        openbao.admin("POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "derived": True})
        data_key = await kms.generate_data_key(None, ACME)  # once an operator created it
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
    finally:
        await kms.aclose()


async def test_a_token_that_may_only_encrypt_and_decrypt_uses_an_existing_key(openbao):
    key = fresh_name()
    openbao.admin("POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "derived": True})
    token = openbao.admin("POST", "auth/token/create", {"policies": [policy(openbao, key, key_caps="")]})
    kms = VaultKms(openbao.addr, TokenAuth(token["auth"]["client_token"]), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        other = fresh_name()
        openbao.admin("POST", f"transit/keys/{other}", {"type": "aes256-gcm96", "derived": True})
        with pytest.raises(KmsRefused, match="403 permission denied"):
            await kms.generate_data_key(other, ACME)  # a key outside its policy
    finally:
        await kms.aclose()


@pytest.mark.parametrize("name", ["../sys/seal", "a/b", "a?b", "a%2fb", " a", ""])
async def test_key_names_never_leave_the_transit_mount(openbao, name):
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token))
    try:
        for call in (kms.generate_data_key(name or "/", ACME), kms.decrypt(b"vault:v1:AAAA", name or "/", ACME),
                     kms.rotate_kek(name or "/")):
            with pytest.raises(KmsRefused, match="not a vault transit key name"):
                await call
        assert kms.calls == 0
        assert openbao.admin("GET", "sys/seal-status")["sealed"] is False
        assert await kms.generate_data_key(None, ACME)  # the same adapter, with a proper name, works
    finally:
        await kms.aclose()


# --- KEK versions ---------------------------------------------------------------------


async def test_kek_rotation_then_rewrap_moves_the_kek_version_up(root_kms):
    old = await root_kms.generate_data_key(None, ACME)
    assert old.kek_version == 1
    assert await root_kms.rotate_kek() == 2
    assert await root_kms.kek_versions() == (2, 1)
    rewrapped, version = await root_kms.rewrap(old.wrapped, old.kms_key_id, ACME)
    assert version == 2 and rewrapped.startswith(b"vault:v2:")
    assert await root_kms.decrypt(rewrapped, old.kms_key_id, ACME) == old.plaintext
    assert (await root_kms.generate_data_key(None, ACME)).kek_version == 2


async def test_retired_kek_versions_refuse_old_blobs_and_rewrapped_ones_still_unwrap(root_kms):
    old = await root_kms.generate_data_key(None, ACME)
    await root_kms.rotate_kek()
    rewrapped, _ = await root_kms.rewrap(old.wrapped, old.kms_key_id, ACME)
    assert await root_kms.decrypt(old.wrapped, old.kms_key_id, ACME) == old.plaintext
    await root_kms.retire_kek_versions(2)
    assert await root_kms.kek_versions() == (2, 2)
    with pytest.raises(KmsRefused, match="disallowed by policy"):
        await root_kms.decrypt(old.wrapped, old.kms_key_id, ACME)
    with pytest.raises(KmsRefused):
        await root_kms.rewrap(old.wrapped, old.kms_key_id, ACME)
    assert await root_kms.decrypt(rewrapped, old.kms_key_id, ACME) == old.plaintext
    with pytest.raises(KmsRefused, match="latest key version is 2"):
        await root_kms.retire_kek_versions(3)


async def test_the_shared_key_is_never_deleted(root_kms):
    data_key = await root_kms.generate_data_key(None, ACME)
    with pytest.raises(KmsRefused, match="vault provider does not delete transit keys"):
        await root_kms.schedule_key_deletion(root_kms.default_key_id, 7)
    assert await root_kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext


async def test_deleting_a_tenant_key_makes_everything_it_wrapped_unusable(root_kms):
    byok = fresh_name("byok")
    data_key = await root_kms.generate_data_key(byok, ACME)
    assert await root_kms.decrypt(data_key.wrapped, byok, ACME) == data_key.plaintext
    await root_kms.schedule_key_deletion(byok, 7)
    with pytest.raises(KmsRefused):
        await root_kms.decrypt(data_key.wrapped, byok, ACME)
    assert await root_kms.kek_versions(byok) == (2, 2)  # kept: an operator can still undo it


# --- batches ------------------------------------------------------------------------------


async def test_batches_are_split_at_batch_max_and_grouped_by_key(openbao):
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=fresh_name(), batch_max=4)
    byok = fresh_name("byok")
    try:
        await kms.generate_data_key(None, ACME)
        await kms.generate_data_key(byok, ACME)  # both keys exist and are checked: only batches follow
        before = kms.calls
        requests = [DataKeyRequest(None, ACME)] * 10 + [DataKeyRequest(byok, GLOBEX)] * 3
        keys = await kms.generate_data_keys(requests)
        assert kms.calls - before == 3 + 1  # ceil(10/4) + ceil(3/4)
        assert [k.kms_key_id for k in keys] == [kms.default_key_id] * 10 + [byok] * 3
        before = kms.calls
        plaintexts = await kms.decrypt_many([UnwrapRequest(k.wrapped, k.kms_key_id, r.context)
                                             for k, r in zip(keys, requests, strict=True)])
        assert plaintexts == [k.plaintext for k in keys] and kms.calls - before == 4
    finally:
        await kms.aclose()


async def test_a_batch_the_server_finds_too_complex_is_split(openbao):
    """OpenBao refuses JSON with more than 1000 strings by default: 250 items of 4 strings do not fit."""
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=fresh_name(), batch_max=250)
    try:
        keys = await kms.generate_data_keys([DataKeyRequest(None, ACME)] * 250)
        assert all(not isinstance(k, Exception) for k in keys) and kms.batch_max == 125
        plaintexts = await kms.decrypt_many([UnwrapRequest(k.wrapped, k.kms_key_id, ACME) for k in keys])
        assert plaintexts == [k.plaintext for k in keys]
    finally:
        await kms.aclose()
