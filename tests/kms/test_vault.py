"""The `vault` adapter against a real OpenBao dev server over HTTP: the Transit key, KEK versions,
auth methods (token, approle, kubernetes), and how Vault's failures map onto the port."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from workers.app.openbao import OpenBaoDevServer
from workers.kms import (
    DataKeyRequest,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
    UnwrapRequest,
    encryption_context,
)
from workers.kms.vault import AppRoleAuth, KubernetesAuth, TokenAuth, VaultKms

ACME = encryption_context("acme", "ab" * 16, "encryption")
GLOBEX = encryption_context("globex", "ab" * 16, "encryption")


def _name(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _policy(bao, key: str, *, key_caps: str = '"read", "create", "update"') -> str:
    name = _name("policy")
    hcl = "\n".join(f'path "transit/{op}/{key}" {{ capabilities = ["update"] }}' for op in ("encrypt", "decrypt", "rewrap"))
    if key_caps:
        hcl += f'\npath "transit/keys/{key}" {{ capabilities = [{key_caps}] }}'
    bao.admin("POST", f"sys/policies/acl/{name}", {"policy": hcl})
    return name


def _approle(bao, policy: str, **role) -> tuple[str, str, str]:
    """A fresh approle mount with one role; returns (mount, role_id, secret_id)."""
    mount = _name("approle")
    bao.admin("POST", f"sys/auth/{mount}", {"type": "approle"})
    bao.admin("POST", f"auth/{mount}/role/keyledger", {"token_policies": [policy], **role})
    role_id = bao.admin("GET", f"auth/{mount}/role/keyledger/role-id")["data"]["role_id"]
    secret_id = bao.admin("POST", f"auth/{mount}/role/keyledger/secret-id", {})["data"]["secret_id"]
    return mount, role_id, secret_id


@pytest.fixture
async def root_kms(openbao):
    """The root token and a transit key of the test's own (rotations touch no other test)."""
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=_name(), timeout=5)
    yield kms
    await kms.aclose()


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
    name = _name("foreign")
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
    key = _name()
    token = openbao.admin("POST", "auth/token/create", {"policies": [_policy(openbao, key, key_caps='"read"')]})
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
    key = _name()
    openbao.admin("POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "derived": True})
    token = openbao.admin("POST", "auth/token/create", {"policies": [_policy(openbao, key, key_caps="")]})
    kms = VaultKms(openbao.addr, TokenAuth(token["auth"]["client_token"]), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        other = _name()
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
    byok = _name("byok")
    data_key = await root_kms.generate_data_key(byok, ACME)
    assert await root_kms.decrypt(data_key.wrapped, byok, ACME) == data_key.plaintext
    await root_kms.schedule_key_deletion(byok, 7)
    with pytest.raises(KmsRefused):
        await root_kms.decrypt(data_key.wrapped, byok, ACME)
    assert await root_kms.kek_versions(byok) == (2, 2)  # kept: an operator can still undo it


# --- batches ------------------------------------------------------------------------------


async def test_batches_are_split_at_batch_max_and_grouped_by_key(openbao):
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=_name(), batch_max=4)
    byok = _name("byok")
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
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=_name(), batch_max=250)
    try:
        keys = await kms.generate_data_keys([DataKeyRequest(None, ACME)] * 250)
        assert all(not isinstance(k, Exception) for k in keys) and kms._batch_max == 125
        plaintexts = await kms.decrypt_many([UnwrapRequest(k.wrapped, k.kms_key_id, ACME) for k in keys])
        assert plaintexts == [k.plaintext for k in keys]
    finally:
        await kms.aclose()


# --- auth -----------------------------------------------------------------------------------


async def test_approle_logs_in_and_a_wrong_secret_id_is_refused(openbao):
    key = _name()
    mount, role_id, secret_id = _approle(openbao, _policy(openbao, key))
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    wrong = VaultKms(openbao.addr, AppRoleAuth(role_id, "not-the-secret-id", mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext and kms.logins == 1
        with pytest.raises(KmsRefused, match="login refused") as refused:
            await wrong.decrypt(data_key.wrapped, key, ACME)
        assert "not-the-secret-id" not in str(refused.value) + repr(wrong._auth)
        assert secret_id not in repr(kms._auth)
    finally:
        await kms.aclose()
        await wrong.aclose()


async def test_approle_logs_in_again_after_its_token_is_revoked(openbao):
    key = _name()
    mount, role_id, secret_id = _approle(openbao, _policy(openbao, key), token_ttl="1h")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(1.1)  # a token refused within a second of its login is not replaced
        openbao.admin("POST", f"sys/leases/revoke-prefix/auth/{mount}/login", {})
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.logins == 2
    finally:
        await kms.aclose()


async def test_approle_tokens_are_renewed_at_half_their_ttl(openbao):
    key = _name()
    mount, role_id, secret_id = _approle(openbao, _policy(openbao, key), token_ttl="2s", token_max_ttl="1h")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(3.5)  # past the token's first TTL
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.logins == 1 and kms.renewals >= 2
        token = kms._token
        assert openbao.admin("POST", "auth/token/lookup", {"token": token})["data"]["ttl"] > 0
    finally:
        await kms.aclose()
    with pytest.raises(urllib.error.HTTPError):  # aclose revoked the token it logged in with
        openbao.admin("POST", "auth/token/lookup", {"token": token})


async def test_approle_logs_in_again_when_its_token_nears_its_max_ttl(openbao):
    key = _name()
    mount, role_id, secret_id = _approle(openbao, _policy(openbao, key), token_ttl="2s", token_max_ttl="3s")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(4.0)  # past the first token's max TTL: renewal alone cannot keep it
        assert kms.logins >= 2
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
    finally:
        await kms.aclose()


async def test_a_renewable_token_is_renewed(openbao):
    key = _name()
    token = openbao.admin("POST", "auth/token/create",
                          {"policies": [_policy(openbao, key)], "ttl": "2s", "renewable": True})
    kms = VaultKms(openbao.addr, TokenAuth(token["auth"]["client_token"]), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(3.5)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.renewals >= 2 and kms.logins == 0
    finally:
        await kms.aclose()


class _TokenReview(BaseHTTPRequestHandler):
    """Kubernetes' TokenReview API, as far as Vault's kubernetes auth uses it: the one JWT it knows is valid."""

    valid_jwt = ""
    reviewed: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        token = review["spec"]["token"]
        type(self).reviewed.append(token)
        status = ({"authenticated": True, "user": {"username": "system:serviceaccount:keyledger:keyledger",
                                                   "uid": "uid-1", "groups": ["system:serviceaccounts"]},
                   "audiences": review["spec"].get("audiences") or []}
                  if token == self.valid_jwt else {"authenticated": False, "error": "invalid token"})
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "spec": review["spec"], "status": status}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _service_account_jwt() -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:keyledger:keyledger",
              "aud": ["https://kubernetes.default.svc"], "iat": now, "nbf": now, "exp": now + 3600,
              "kubernetes.io": {"namespace": "keyledger", "serviceaccount": {"name": "keyledger", "uid": "uid-1"}}}
    signing_input = f"{part({'alg': 'RS256', 'typ': 'JWT', 'kid': 'test'})}.{part(claims)}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _self_signed_ca() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_kubernetes_auth_logs_in_with_the_service_account_jwt_file(openbao, tmp_path):
    jwt = _service_account_jwt()
    handler = type("Review", (_TokenReview,), {"valid_jwt": jwt, "reviewed": []})
    kubernetes = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=kubernetes.serve_forever, daemon=True).start()
    key, mount = _name(), _name("kubernetes")
    openbao.admin("POST", f"sys/auth/{mount}", {"type": "kubernetes"})
    openbao.admin("POST", f"auth/{mount}/config", {
        "kubernetes_host": f"http://127.0.0.1:{kubernetes.server_port}",
        "disable_local_ca_jwt": True, "kubernetes_ca_cert": _self_signed_ca()})  # required; unused over http
    openbao.admin("POST", f"auth/{mount}/role/keyledger", {
        "bound_service_account_names": ["keyledger"], "bound_service_account_namespaces": ["keyledger"],
        "token_policies": [_policy(openbao, key)]})
    token_file = tmp_path / "token"
    token_file.write_text(jwt + "\n")
    kms = VaultKms(openbao.addr, KubernetesAuth("keyledger", str(token_file), mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.logins == 1 and handler.reviewed == [jwt]
        # the file is read at every login: a rotated-out token is refused
        token_file.write_text(_service_account_jwt())
        await asyncio.sleep(1.1)
        openbao.admin("POST", f"sys/leases/revoke-prefix/auth/{mount}/login", {})
        with pytest.raises(KmsRefused, match="KubernetesAuth login refused"):
            await kms.decrypt(data_key.wrapped, key, ACME)
        assert len(handler.reviewed) == 2 and handler.reviewed[1] != jwt
        token_file.unlink()
        missing = VaultKms(openbao.addr, KubernetesAuth("keyledger", str(token_file), mount=mount))
        with pytest.raises(KmsRefused, match="cannot read the service-account token"):
            await missing.generate_data_key(None, ACME)
        await missing.aclose()
    finally:
        await kms.aclose()
        kubernetes.shutdown()
        kubernetes.server_close()


# --- failures of the server ----------------------------------------------------------------------


async def test_a_sealed_vault_is_unavailable_within_the_timeout():
    with OpenBaoDevServer() as bao:
        kms = VaultKms(bao.addr, TokenAuth(bao.token), timeout=1.0)
        try:
            data_key = await kms.generate_data_key(None, ACME)
            bao.admin("POST", "sys/seal", {})
            started = time.monotonic()
            with pytest.raises(KmsUnavailable, match="503 Vault is sealed") as unavailable:
                await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
            assert time.monotonic() - started < 1.5
            assert not isinstance(unavailable.value, KmsThrottled)
            results = await kms.generate_data_keys([DataKeyRequest(None, ACME)] * 2)
            assert all(isinstance(r, KmsUnavailable) for r in results)
        finally:
            await kms.aclose()


async def test_rate_limited_calls_are_throttled(openbao):
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=_name(), timeout=0.5)
    quota = _name("quota")
    try:
        data_key = await kms.generate_data_key(None, ACME)
        openbao.admin("POST", f"sys/quotas/rate-limit/{quota}",
                      {"rate": 1, "interval": "10s", "path": f"transit/decrypt/{kms.default_key_id}"})
        outcomes = await asyncio.gather(*(kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) for _ in range(5)),
                                        return_exceptions=True)
        assert outcomes.count(data_key.plaintext) >= 1
        throttled = [o for o in outcomes if isinstance(o, BaseException)]
        assert throttled and all(isinstance(o, KmsThrottled) and "429" in str(o) for o in throttled)
    finally:
        openbao.admin("DELETE", f"sys/quotas/rate-limit/{quota}")
        await kms.aclose()


async def test_tls_needs_the_ca_cert():
    with OpenBaoDevServer(tls=True) as bao:
        trusted = VaultKms(bao.addr, TokenAuth(bao.token), ca_cert=bao.ca_cert)
        untrusted = VaultKms(bao.addr, TokenAuth(bao.token), timeout=1.0)
        try:
            data_key = await trusted.generate_data_key(None, ACME)
            assert await trusted.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
            with pytest.raises(KmsUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
        finally:
            await trusted.aclose()
            await untrusted.aclose()


async def test_a_namespace_is_sent_with_every_call(openbao):
    namespace = _name("ns")
    openbao.admin("POST", f"sys/namespaces/{namespace}", {})
    openbao.admin("POST", "sys/mounts/transit", {"type": "transit"}, namespace=namespace)
    key = _name()
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=key, namespace=namespace)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert openbao.admin("GET", f"transit/keys/{key}", namespace=namespace)["data"]["derived"] is True
        with pytest.raises(urllib.error.HTTPError):
            openbao.admin("GET", f"transit/keys/{key}")  # not in the root namespace
    finally:
        await kms.aclose()
