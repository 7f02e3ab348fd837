"""Vault tokens against a real OpenBao dev server: token, approle and kubernetes auth, renewal, login again."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from tests.kms.vault.bao import ACME, approle, fresh_name, policy
from workers.kms import KmsRefused
from workers.kms.vault import AppRoleAuth, KubernetesAuth, TokenAuth, VaultKms


async def test_approle_logs_in_and_a_wrong_secret_id_is_refused(openbao):
    key = fresh_name()
    mount, role_id, secret_id = approle(openbao, policy(openbao, key))
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    wrong = VaultKms(openbao.addr, AppRoleAuth(role_id, "not-the-secret-id", mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext and kms.session.logins == 1
        with pytest.raises(KmsRefused, match="login refused") as refused:
            await wrong.decrypt(data_key.wrapped, key, ACME)
        assert "not-the-secret-id" not in str(refused.value) + repr(wrong.session.auth)
        assert secret_id not in repr(kms.session.auth)
    finally:
        await kms.aclose()
        await wrong.aclose()


async def test_approle_logs_in_again_after_its_token_is_revoked(openbao):
    key = fresh_name()
    mount, role_id, secret_id = approle(openbao, policy(openbao, key), token_ttl="1h")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(1.1)  # a token refused within a second of its login is not replaced
        openbao.admin("POST", f"sys/leases/revoke-prefix/auth/{mount}/login", {})
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.session.logins == 2
    finally:
        await kms.aclose()


async def test_approle_tokens_are_renewed_at_half_their_ttl(openbao):
    key = fresh_name()
    mount, role_id, secret_id = approle(openbao, policy(openbao, key), token_ttl="2s", token_max_ttl="1h")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(3.5)  # past the token's first TTL
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.session.logins == 1 and kms.session.renewals >= 2
        token = kms.session.token
        assert openbao.admin("POST", "auth/token/lookup", {"token": token})["data"]["ttl"] > 0
    finally:
        await kms.aclose()
    with pytest.raises(urllib.error.HTTPError):  # aclose revoked the token it logged in with
        openbao.admin("POST", "auth/token/lookup", {"token": token})


async def test_approle_logs_in_again_when_its_token_nears_its_max_ttl(openbao):
    key = fresh_name()
    mount, role_id, secret_id = approle(openbao, policy(openbao, key), token_ttl="2s", token_max_ttl="3s")
    kms = VaultKms(openbao.addr, AppRoleAuth(role_id, secret_id, mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(4.0)  # past the first token's max TTL: renewal alone cannot keep it
        assert kms.session.logins >= 2
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
    finally:
        await kms.aclose()


async def test_a_renewable_token_is_renewed(openbao):
    key = fresh_name()
    token = openbao.admin("POST", "auth/token/create",
                          {"policies": [policy(openbao, key)], "ttl": "2s", "renewable": True})
    kms = VaultKms(openbao.addr, TokenAuth(token["auth"]["client_token"]), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        await asyncio.sleep(3.5)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.session.renewals >= 2 and kms.session.logins == 0
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
    key, mount = fresh_name(), fresh_name("kubernetes")
    openbao.admin("POST", f"sys/auth/{mount}", {"type": "kubernetes"})
    openbao.admin("POST", f"auth/{mount}/config", {
        "kubernetes_host": f"http://127.0.0.1:{kubernetes.server_port}",
        "disable_local_ca_jwt": True, "kubernetes_ca_cert": _self_signed_ca()})  # required; unused over http
    openbao.admin("POST", f"auth/{mount}/role/keyledger", {
        "bound_service_account_names": ["keyledger"], "bound_service_account_namespaces": ["keyledger"],
        "token_policies": [policy(openbao, key)]})
    token_file = tmp_path / "token"
    token_file.write_text(jwt + "\n")
    kms = VaultKms(openbao.addr, KubernetesAuth("keyledger", str(token_file), mount=mount), default_key_id=key)
    try:
        data_key = await kms.generate_data_key(None, ACME)
        assert await kms.decrypt(data_key.wrapped, key, ACME) == data_key.plaintext
        assert kms.session.logins == 1 and handler.reviewed == [jwt]
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
