"""A Cloud KMS protocol double: a local gRPC server of `google.cloud.kms.v1.KeyManagementService`,
speaking the client package's own request and response types over plaintext gRPC.

No emulator of Cloud KMS exists. This serves the calls the `gcp` adapter makes and refuses as Cloud KMS
documents: the AAD must match (INVALID_ARGUMENT otherwise), a tampered ciphertext is INVALID_ARGUMENT,
a disabled or destroyed version FAILED_PRECONDITION, an unknown key NOT_FOUND, and request checksums
(CRC32C) that do not match INVALID_ARGUMENT. Ciphertexts are version (4) || nonce (12) || AES-GCM.
`fault` makes every call fail with one status; `corrupt` flips a ciphertext byte after its checksum is
computed (the client must notice)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms_v1

from workers.app.embedded import free_port

SERVICE = "google.cloud.kms.v1.KeyManagementService"
State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState


@dataclass
class _Key:
    versions: dict[int, tuple[bytes, State]] = field(default_factory=dict)
    primary: int = 0

    def add_version(self) -> int:
        number = len(self.versions) + 1
        self.versions[number] = (os.urandom(32), State.ENABLED)
        return number


class CloudKmsDouble:
    def __init__(self) -> None:
        self.keys: dict[str, _Key] = {}
        self.fault: grpc.StatusCode | None = None
        self.corrupt = False
        self.server: grpc.aio.Server | None = None
        self.endpoint = ""

    def create_key(self, name: str) -> str:
        key = self.keys[name] = _Key()
        key.primary = key.add_version()
        return name

    def set_state(self, name: str, state: State, version: int | None = None) -> None:
        key = self.keys[name]
        for number in [version] if version else list(key.versions):
            key.versions[number] = (key.versions[number][0], state)

    async def start(self) -> CloudKmsDouble:
        methods = {
            "Encrypt": (self.encrypt, kms_v1.EncryptRequest, kms_v1.EncryptResponse),
            "Decrypt": (self.decrypt, kms_v1.DecryptRequest, kms_v1.DecryptResponse),
            "GetCryptoKey": (self.get_crypto_key, kms_v1.GetCryptoKeyRequest, kms_v1.CryptoKey),
            "ListCryptoKeyVersions": (self.list_versions, kms_v1.ListCryptoKeyVersionsRequest,
                                      kms_v1.ListCryptoKeyVersionsResponse),
            "CreateCryptoKeyVersion": (self.create_version, kms_v1.CreateCryptoKeyVersionRequest,
                                       kms_v1.CryptoKeyVersion),
            "UpdateCryptoKeyPrimaryVersion": (self.update_primary, kms_v1.UpdateCryptoKeyPrimaryVersionRequest,
                                              kms_v1.CryptoKey),
            "UpdateCryptoKeyVersion": (self.update_version, kms_v1.UpdateCryptoKeyVersionRequest,
                                       kms_v1.CryptoKeyVersion),
            "DestroyCryptoKeyVersion": (self.destroy_version, kms_v1.DestroyCryptoKeyVersionRequest,
                                        kms_v1.CryptoKeyVersion),
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            self._guarded(call), request_deserializer=request.deserialize, response_serializer=response.serialize)
            for name, (call, request, response) in methods.items()}
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        port = free_port()
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        self.endpoint = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)

    def _guarded(self, call):
        async def handle(request, context: grpc.aio.ServicerContext):
            if self.fault is not None:
                await context.abort(self.fault, f"scripted {self.fault.name}")
            try:
                return call(request)
            except _Abort as abort:
                await context.abort(abort.code, abort.message)

        return handle

    # --- the calls ---------------------------------------------------------------------

    def encrypt(self, request: kms_v1.EncryptRequest) -> kms_v1.EncryptResponse:
        key, number = self._resolve(request.name)
        _check_crc(request.plaintext, request.plaintext_crc32c, "plaintext")
        aad = request.additional_authenticated_data
        _check_crc(aad, request.additional_authenticated_data_crc32c, "additional_authenticated_data")
        secret = self._usable(key, number, request.name)
        nonce = os.urandom(12)
        ciphertext = number.to_bytes(4, "big") + nonce + AESGCM(secret).encrypt(nonce, request.plaintext, aad)
        checksum = google_crc32c.value(ciphertext)
        if self.corrupt:
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
        return kms_v1.EncryptResponse(
            name=f"{self._key_name(request.name)}/cryptoKeyVersions/{number}", ciphertext=ciphertext,
            ciphertext_crc32c=checksum, verified_plaintext_crc32c=request.plaintext_crc32c is not None,
            verified_additional_authenticated_data_crc32c=request.additional_authenticated_data_crc32c is not None)

    def decrypt(self, request: kms_v1.DecryptRequest) -> kms_v1.DecryptResponse:
        name = self._key_name(request.name)
        key = self._key(name)
        _check_crc(request.ciphertext, request.ciphertext_crc32c, "ciphertext")
        _check_crc(request.additional_authenticated_data, request.additional_authenticated_data_crc32c,
                   "additional_authenticated_data")
        blob = request.ciphertext
        number = int.from_bytes(blob[:4], "big") if len(blob) > 16 else 0
        if number not in key.versions:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        secret = self._usable(key, number, name)
        try:
            plaintext = AESGCM(secret).decrypt(blob[4:16], blob[16:], request.additional_authenticated_data)
        except InvalidTag:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.") from None
        checksum = google_crc32c.value(plaintext)
        if self.corrupt:
            plaintext = plaintext[:-1] + bytes([plaintext[-1] ^ 1])
        return kms_v1.DecryptResponse(plaintext=plaintext, plaintext_crc32c=checksum,
                                      used_primary=number == key.primary)

    def get_crypto_key(self, request: kms_v1.GetCryptoKeyRequest) -> kms_v1.CryptoKey:
        key = self._key(request.name)
        return kms_v1.CryptoKey(name=request.name, primary=self._version(request.name, key, key.primary))

    def list_versions(self, request: kms_v1.ListCryptoKeyVersionsRequest) -> kms_v1.ListCryptoKeyVersionsResponse:
        key = self._key(request.parent)
        versions = [self._version(request.parent, key, n) for n in sorted(key.versions)]
        return kms_v1.ListCryptoKeyVersionsResponse(crypto_key_versions=versions, total_size=len(versions))

    def create_version(self, request: kms_v1.CreateCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        key = self._key(request.parent)
        return self._version(request.parent, key, key.add_version())

    def update_primary(self, request: kms_v1.UpdateCryptoKeyPrimaryVersionRequest) -> kms_v1.CryptoKey:
        key = self._key(request.name)
        number = int(request.crypto_key_version_id)
        if key.versions.get(number, (b"", State.DESTROYED))[1] != State.ENABLED:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "the primary version must be enabled")
        key.primary = number
        return self.get_crypto_key(kms_v1.GetCryptoKeyRequest(name=request.name))

    def update_version(self, request: kms_v1.UpdateCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        name, number = request.crypto_key_version.name.rsplit("/cryptoKeyVersions/", 1)
        key = self._key(name)
        if list(request.update_mask.paths) != ["state"] or int(number) not in key.versions:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "only a version's state is updated here")
        self.set_state(name, request.crypto_key_version.state, int(number))
        return self._version(name, key, int(number))

    def destroy_version(self, request: kms_v1.DestroyCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        name, number = request.name.rsplit("/cryptoKeyVersions/", 1)
        key = self._key(name)
        self.set_state(name, State.DESTROY_SCHEDULED, int(number))
        return self._version(name, key, int(number))

    # --- helpers ------------------------------------------------------------------------

    def _key_name(self, name: str) -> str:
        return name.split("/cryptoKeyVersions/")[0]

    def _key(self, name: str) -> _Key:
        key = self.keys.get(name)
        if key is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        return key

    def _resolve(self, name: str) -> tuple[_Key, int]:
        key = self._key(self._key_name(name))
        return key, int(name.rsplit("/", 1)[1]) if "/cryptoKeyVersions/" in name else key.primary

    def _usable(self, key: _Key, number: int, name: str) -> bytes:
        secret, state = key.versions[number]
        if state != State.ENABLED:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"{name}/cryptoKeyVersions/{number} is not enabled, current state is: {state.name}.")
        return secret

    def _version(self, name: str, key: _Key, number: int) -> kms_v1.CryptoKeyVersion:
        return kms_v1.CryptoKeyVersion(name=f"{name}/cryptoKeyVersions/{number}", state=key.versions[number][1])


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _check_crc(data: bytes, checksum: int | None, field_name: str) -> None:
    if checksum is not None and google_crc32c.value(data) != checksum:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"The checksum in field {field_name}_crc32c did not match "
                                                       f"the data in field {field_name}.")
