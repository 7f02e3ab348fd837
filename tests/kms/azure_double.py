"""An Azure Key Vault protocol double: a local HTTPS server of the documented keys REST surface the
`azure` adapter uses (get key, list versions, create, update attributes, wrapkey, unwrapkey), with a
self-signed certificate made here and the bearer challenge the SDK's auth policy expects.

Refusals as Key Vault documents them: a disabled version is 403 Forbidden (get included, so the SDK
wraps remotely), an unknown key or version 404 KeyNotFound, a ciphertext that does not unwrap 400
BadParameter. RSA keys (RSA-OAEP-256) and oct-HSM keys (A256KW) alike. `fault` makes every call
answer one HTTP status. Not Azure: nothing here was checked against the service."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import NameOID

from workers.app.embedded import free_port

CHALLENGE = ('Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
             'resource="https://vault.azure.net"')
OAEP_256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, written under `directory`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyledger-test-vault")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "vault.pem", directory / "vault.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class _Version:
    secret: Any  # an RSA private key, or 32 AES bytes
    created: int
    enabled: bool = True


@dataclass
class _Key:
    kty: str  # "RSA" or "oct-HSM"
    versions: dict[str, _Version] = field(default_factory=dict)


class KeyVaultDouble:
    def __init__(self, directory: Path) -> None:
        self.cert, self._key_file = self_signed(directory)
        self.keys: dict[str, _Key] = {}
        self.fault: int | None = None
        self.url = ""
        self._clock = 1_700_000_000
        self._runner: web.AppRunner | None = None

    def create_key(self, name: str, kty: str = "RSA") -> str:
        """A new version of `name` (the key too when new). Returns the version."""
        key = self.keys.setdefault(name, _Key(kty))
        secret = rsa.generate_private_key(65537, 2048) if key.kty == "RSA" else os.urandom(32)
        self._clock += 1
        version = os.urandom(16).hex()
        key.versions[version] = _Version(secret, self._clock)
        return version

    def set_enabled(self, name: str, enabled: bool) -> None:
        for version in self.keys[name].versions.values():
            version.enabled = enabled

    async def start(self) -> KeyVaultDouble:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/keys/{name}/versions", self._list)
        app.router.add_post("/keys/{name}/create", self._create)
        app.router.add_get("/keys/{name}", self._get)
        app.router.add_get("/keys/{name}/", self._get)  # the SDK asks for the latest version so
        app.router.add_get("/keys/{name}/{version}", self._get)
        app.router.add_patch("/keys/{name}/{version}", self._update)
        app.router.add_post("/keys/{name}/{version}/wrapkey", self._wrap)
        app.router.add_post("/keys/{name}/{version}/unwrapkey", self._unwrap)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self._key_file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=context).start()
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a "
                                      "Bearer or PoP token."}}, status=401, headers={"WWW-Authenticate": CHALLENGE})
        if self.fault is not None:
            return _error(self.fault, {429: "Throttled", 503: "ServiceUnavailable"}.get(self.fault, "Forbidden"),
                          "scripted")
        try:
            return await handler(request)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.code, refusal.message)

    # --- the REST surface --------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.Response:
        name, key, version = self._resolve(request)
        return web.json_response(self._bundle(name, key, version))

    async def _list(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        key = self._key(name)
        return web.json_response({"value": [{"kid": f"{self.url}/keys/{name}/{v}", "attributes": self._attributes(x)}
                                            for v, x in key.versions.items()], "nextLink": None})

    async def _create(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        version = self.create_key(name, "oct-HSM" if body.get("kty", "RSA").startswith("oct") else "RSA")
        return web.json_response(self._bundle(name, self.keys[name], version))

    async def _update(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        key = self._key(name)
        version = key.versions.get(request.match_info["version"])
        if version is None:
            raise _Refusal(404, "KeyNotFound", "A key with (name/id) was not found in this key vault.")
        attributes = (await request.json()).get("attributes") or {}
        if "enabled" in attributes:
            version.enabled = bool(attributes["enabled"])
        return web.json_response(self._bundle(name, key, request.match_info["version"], check=False))

    async def _wrap(self, request: web.Request) -> web.Response:
        name, key, version = self._resolve(request)
        body = await request.json()
        value, secret = unb64url(body["value"]), key.versions[version].secret
        if body["alg"] == "RSA-OAEP-256" and key.kty == "RSA":
            wrapped = secret.public_key().encrypt(value, OAEP_256)
        elif body["alg"] == "A256KW" and key.kty == "oct-HSM":
            wrapped = aes_key_wrap(secret, value)
        else:
            raise _Refusal(400, "BadParameter", f"Algorithm {body['alg']} is not supported for this key.")
        return web.json_response({"kid": f"{self.url}/keys/{name}/{version}", "value": b64url(wrapped)})

    async def _unwrap(self, request: web.Request) -> web.Response:
        name, key, version = self._resolve(request)
        body = await request.json()
        value, secret = unb64url(body["value"]), key.versions[version].secret
        try:
            if body["alg"] == "RSA-OAEP-256" and key.kty == "RSA":
                plain = secret.decrypt(value, OAEP_256)
            elif body["alg"] == "A256KW" and key.kty == "oct-HSM":
                plain = aes_key_unwrap(secret, value)
            else:
                raise ValueError(body["alg"])
        except (ValueError, InvalidUnwrap):
            raise _Refusal(400, "BadParameter", "Bad ciphertext.") from None
        return web.json_response({"kid": f"{self.url}/keys/{name}/{version}", "value": b64url(plain)})

    # --- helpers ------------------------------------------------------------------------

    def _key(self, name: str) -> _Key:
        key = self.keys.get(name)
        if key is None:
            raise _Refusal(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        return key

    def _resolve(self, request: web.Request) -> tuple[str, _Key, str]:
        name = request.match_info["name"]
        key = self._key(name)
        version = request.match_info.get("version") or max(key.versions, key=lambda v: key.versions[v].created)
        if version not in key.versions:
            raise _Refusal(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found.")
        if not key.versions[version].enabled:
            raise _Refusal(403, "Forbidden", "Operation is not allowed on a disabled key.")
        return name, key, version

    def _attributes(self, version: _Version) -> dict[str, Any]:
        return {"enabled": version.enabled, "created": version.created, "updated": version.created,
                "recoveryLevel": "Recoverable+Purgeable"}

    def _bundle(self, name: str, key: _Key, version: str, *, check: bool = True) -> dict[str, Any]:
        entry = key.versions[version]
        jwk: dict[str, Any] = {"kid": f"{self.url}/keys/{name}/{version}", "kty": key.kty,
                               "key_ops": ["wrapKey", "unwrapKey"]}
        if key.kty == "RSA":
            numbers = entry.secret.public_key().public_numbers()
            jwk["n"] = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(numbers.e.to_bytes(3, "big"))
        return {"key": jwk, "attributes": self._attributes(entry)}


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
