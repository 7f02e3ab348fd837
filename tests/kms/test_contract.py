"""One KMS contract, every adapter and wrapper of the port: local (in process), aws (moto's server over
HTTP), vault (an OpenBao dev server over HTTP), pkcs11 (a fresh SoftHSM2 token through its PKCS#11
module), gcp (the official client against a local Cloud KMS protocol double over gRPC), azure (the official
client against a local HTTPS Key Vault protocol double), the router (vault primary, local beside it) and the metered KMS around vault. Key states
(disabled, pending deletion, retired versions) are refused by the KMS itself; errors map to the
port's three kinds (unavailable, throttled, refused). Every refusal below is preceded by the same call succeeding on the untouched
input, so a refusal is the KMS saying no, not a broken setup."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

import boto3
import pytest

from tests.kms.conftest import GCP_KEY, azure_kms
from tests.support.faults import SwitchableKms
from workers.app.embedded import free_port
from workers.app.observability.metrics import Metrics
from workers.app.observability.ports import MeteredKms
from workers.kms import (
    MAX_WRAPPED_BYTES,
    DataKey,
    DataKeyRequest,
    KekVersions,
    KekVersionsUnsupported,
    Kms,
    KmsCapabilities,
    KmsError,
    KmsRefused,
    KmsThrottled,
    KmsUnavailable,
    UnwrapRequest,
    WrapRequest,
    decrypt_many,
    encryption_context,
    generate_data_keys,
    provider_of,
    rewrap,
    rewrap_many,
    wrap_many,
)
from workers.kms.aws import AwsKms
from workers.kms.gcp import GcpKms
from workers.kms.local import LocalKms
from workers.kms.pkcs11 import Pkcs11Kms
from workers.kms.router import KmsRouter
from workers.kms.vault import TokenAuth, VaultKms

ACME = encryption_context("acme", "ab" * 16, "encryption")
OTHERS = {
    "another tenant": {**ACME, "tenant_id": "globex"},
    "another key_id": {**ACME, "key_id": "cd" * 16},
    "another key_type": {**ACME, "key_type": "signing"},
}
# per provider: the largest wrapped key it may return (local and vault blobs have a fixed size)
WRAPPED_BOUND = {"local": 64, "aws": MAX_WRAPPED_BYTES, "vault": len("vault:v99:") + 80, "pkcs11": 88, "gcp": MAX_WRAPPED_BYTES, "azure": MAX_WRAPPED_BYTES}
VERSIONED = {"vault", "pkcs11", "gcp", "azure"}  # providers whose data keys carry the KEK version that wrapped them
NATIVE_REWRAP = {"aws", "vault"}
UNREACHABLE_TIMEOUT = 1.0
# each adapter under test: the provider whose keys it makes, and the wrapper around it (if any)
ADAPTERS = {"local": ("local", None), "aws": ("aws", None), "vault": ("vault", None), "pkcs11": ("pkcs11", None),
            "gcp": ("gcp", None), "azure": ("azure", None),
            "router": ("vault", "router"), "metered": ("vault", "metered")}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request) -> str:
    return request.param


@pytest.fixture
def provider(adapter) -> str:
    """The provider whose keys the adapter under test makes."""
    return ADAPTERS[adapter][0]


@pytest.fixture
def make_kms(request, adapter):
    """Builds the adapter under test; `unreachable=True` points it at a closed port."""
    provider, wrapper = ADAPTERS[adapter]

    def make(*, unreachable: bool = False, batch_max: int = 250) -> Kms:
        closed = f"http://127.0.0.1:{free_port()}"
        kms: Kms
        if provider == "local":
            if unreachable:
                pytest.skip("the local KMS has no endpoint")
            kms = LocalKms()
        elif provider == "pkcs11":
            if unreachable:
                pytest.skip("a PKCS#11 module has no endpoint (a lost device: test_errors_map_to_the_port_kinds)")
            hsm = request.getfixturevalue("softhsm")
            kms = Pkcs11Kms(hsm.module, hsm.token_label, hsm.pin, sessions=2)
        elif provider == "gcp":
            endpoint = closed.removeprefix("http://") if unreachable else request.getfixturevalue("cloud_kms").endpoint
            kms = GcpKms(GCP_KEY, endpoint=endpoint, insecure=True, timeout=UNREACHABLE_TIMEOUT if unreachable else 5)
        elif provider == "azure":
            server = request.getfixturevalue("key_vault_server")
            kms = (azure_kms(f"https://127.0.0.1:{free_port()}", server.cert, timeout=UNREACHABLE_TIMEOUT,
                             max_attempts=1) if unreachable
                   else azure_kms(request.getfixturevalue("key_vault").url, server.cert, timeout=5))
        elif provider == "aws":
            endpoint, key = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("moto_kms_key")
            kms = (AwsKms("any", endpoint_url=closed, timeout=UNREACHABLE_TIMEOUT, max_attempts=1) if unreachable
                   else AwsKms(key, endpoint_url=endpoint, timeout=5, max_attempts=2))
        else:
            bao = request.getfixturevalue("openbao")
            kms = (VaultKms(closed, TokenAuth("unused"), timeout=UNREACHABLE_TIMEOUT) if unreachable
                   else VaultKms(bao.addr, TokenAuth(bao.token), timeout=5, batch_max=batch_max))
        if wrapper == "router":
            return KmsRouter(kms, [LocalKms()])
        if wrapper == "metered":
            return MeteredKms(kms, Metrics())
        return kms

    return make  # adapters are closed by the `kms` fixture or by the test that made them


@pytest.fixture
async def kms(make_kms):
    adapter = make_kms()
    yield adapter
    await adapter.aclose()


def _forms(secret: bytes) -> list[str]:
    """Ways a key could leak into text."""
    return [repr(secret)[2:-1], secret.hex(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


def _assert_no_secret(text: str, secret: bytes) -> None:
    for form in _forms(secret):
        assert form not in text


async def test_round_trip(kms, provider):
    data_key = await kms.generate_data_key(None, ACME)
    assert len(data_key.plaintext) == 32
    assert data_key.kms_key_id
    assert data_key.plaintext not in data_key.wrapped
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    assert provider_of(kms) == provider
    if provider == "vault":
        assert data_key.kek_version is not None and data_key.wrapped.startswith(b"vault:v%d:" % data_key.kek_version)
    elif provider in VERSIONED:
        assert data_key.kek_version is not None and data_key.kek_version >= 1
    else:
        assert data_key.kek_version is None


async def test_two_data_keys_differ(kms):
    first, second = [await kms.generate_data_key(None, ACME) for _ in range(2)]
    assert first.plaintext != second.plaintext and first.wrapped != second.wrapped


async def test_wrapped_length_is_bounded(kms, provider):
    for _ in range(3):
        data_key = await kms.generate_data_key(None, ACME)
        assert 0 < len(data_key.wrapped) <= WRAPPED_BOUND[provider] <= MAX_WRAPPED_BYTES


@pytest.mark.parametrize("other", list(OTHERS))
async def test_another_context_is_refused(kms, other):
    data_key = await kms.generate_data_key(None, ACME)
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    with pytest.raises(KmsRefused) as refused:
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, OTHERS[other])
    _assert_no_secret(str(refused.value) + repr(refused.value), data_key.plaintext)


async def test_a_tampered_blob_is_refused(kms):
    data_key = await kms.generate_data_key(None, ACME)
    blob = data_key.wrapped
    assert await kms.decrypt(blob, data_key.kms_key_id, ACME) == data_key.plaintext
    positions = sorted({0, 1, len(blob) // 3, len(blob) // 2, len(blob) - 2, len(blob) - 1,
                        *range(0, len(blob), max(1, len(blob) // 16))})
    errors: list[KmsError] = []
    for position in positions:
        for bit in (0, 3, 6):
            flipped = bytearray(blob)
            flipped[position] ^= 1 << bit
            with pytest.raises(KmsRefused) as refused:
                await kms.decrypt(bytes(flipped), data_key.kms_key_id, ACME)
            errors.append(refused.value)
    for size in sorted({0, 1, len(blob) // 2, len(blob) - 16, len(blob) - 1}):
        with pytest.raises(KmsRefused) as refused:
            await kms.decrypt(blob[:size], data_key.kms_key_id, ACME)
        errors.append(refused.value)
    with pytest.raises(KmsRefused):
        await kms.decrypt(blob + b"A", data_key.kms_key_id, ACME)
    for error in errors:
        _assert_no_secret(str(error) + repr(error), data_key.plaintext)


async def test_batch_generation_agrees_with_single_calls(make_kms, provider):
    kms = make_kms(batch_max=2)  # vault: several batch requests for one call
    try:
        assert kms.capabilities.batching == (provider == "vault")
        contexts = [encryption_context(f"tenant-{i}", f"{i:032x}", kt)
                    for i in range(3) for kt in ("signing", "encryption")]
        keys = await kms.generate_data_keys([DataKeyRequest(None, c) for c in contexts])
        assert len(keys) == len(contexts) and all(isinstance(k, DataKey) for k in keys)
        assert len({k.plaintext for k in keys}) == len(contexts)
        for key, context in zip(keys, contexts, strict=True):
            assert await kms.decrypt(key.wrapped, key.kms_key_id, context) == key.plaintext
            assert 0 < len(key.wrapped) <= WRAPPED_BOUND[provider]
        # and the other way: keys wrapped one by one unwrap in one batch, in order
        singles = [await kms.generate_data_key(None, c) for c in contexts]
        plaintexts = await kms.decrypt_many([UnwrapRequest(k.wrapped, k.kms_key_id, c)
                                             for k, c in zip(singles, contexts, strict=True)])
        assert plaintexts == [k.plaintext for k in singles]
        assert await kms.generate_data_keys([]) == [] and await kms.decrypt_many([]) == []
    finally:
        await kms.aclose()


async def test_one_bad_item_fails_alone_in_a_batch(kms):
    keys = await kms.generate_data_keys([DataKeyRequest(None, ACME) for _ in range(3)])
    tampered = bytearray(keys[2].wrapped)
    tampered[len(tampered) // 2] ^= 0x04
    results = await kms.decrypt_many([
        UnwrapRequest(keys[0].wrapped, keys[0].kms_key_id, ACME),
        UnwrapRequest(keys[1].wrapped, keys[1].kms_key_id, OTHERS["another tenant"]),
        UnwrapRequest(bytes(tampered), keys[2].kms_key_id, ACME),
        UnwrapRequest(keys[2].wrapped, keys[2].kms_key_id, ACME),
    ])
    assert results[0] == keys[0].plaintext and results[3] == keys[2].plaintext
    assert isinstance(results[1], KmsRefused) and isinstance(results[2], KmsRefused)
    for error in results[1:3]:
        _assert_no_secret(str(error) + repr(error), keys[1].plaintext)
        _assert_no_secret(str(error) + repr(error), keys[2].plaintext)


async def test_the_defaults_of_the_port_use_single_calls_for_an_adapter_without_batches():
    """SwitchableKms writes single calls only: batches gather them, rewrap unwraps and wraps again here."""
    kms = SwitchableKms()
    assert not kms.capabilities.batching and not kms.capabilities.native_rewrap
    keys = await generate_data_keys(kms, [DataKeyRequest(None, ACME), DataKeyRequest(None, OTHERS["another key_id"])])
    assert kms.calls == 2
    results = await decrypt_many(kms, [UnwrapRequest(keys[0].wrapped, keys[0].kms_key_id, ACME),
                                       UnwrapRequest(keys[1].wrapped, keys[1].kms_key_id, ACME)])
    assert kms.calls == 4
    assert results[0] == keys[0].plaintext and isinstance(results[1], KmsRefused)
    rewrapped = await rewrap(kms, keys[0].wrapped, keys[0].kms_key_id, ACME)
    assert kms.calls == 6 and rewrapped.wrapped != keys[0].wrapped and rewrapped.kek_version is None
    assert await kms.decrypt(rewrapped.wrapped, keys[0].kms_key_id, ACME) == keys[0].plaintext
    with pytest.raises(KmsRefused):  # the default rewrap checks the context as the unwrap does
        await kms.rewrap(keys[0].wrapped, keys[0].kms_key_id, OTHERS["another tenant"])
    kms.down = True
    results = await decrypt_many(kms, [UnwrapRequest(keys[0].wrapped, keys[0].kms_key_id, ACME)])
    assert isinstance(results[0], KmsUnavailable)


async def test_the_default_batches_keep_at_most_concurrency_calls_in_flight():
    class Slow(SwitchableKms):
        concurrency = 3
        in_flight = peak = 0

        async def decrypt(self, wrapped: bytes, kms_key_id: str, context: dict[str, str]) -> bytes:
            type(self).in_flight += 1
            type(self).peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(0.01)
                return await super().decrypt(wrapped, kms_key_id, context)
            finally:
                type(self).in_flight -= 1

    kms = Slow()
    key = await kms.generate_data_key(None, ACME)
    results = await kms.decrypt_many([UnwrapRequest(key.wrapped, key.kms_key_id, ACME)] * 10)
    assert results == [key.plaintext] * 10 and Slow.peak == 3


async def test_capabilities_are_declared_and_each_one_holds(kms, provider):
    """What `capabilities` says is what the adapter does: KEK versions answer or are refused by type,
    rewrap is native or not (a native one never unwraps here), routing names the providers."""
    capabilities = kms.capabilities
    assert isinstance(capabilities, KmsCapabilities) and capabilities.provider == provider == provider_of(kms)
    assert capabilities.routing == isinstance(kms, KmsRouter)
    assert list(kms.providers) == ([provider, "local"] if capabilities.routing else [provider])
    await kms.generate_data_key(None, ACME)  # the default key exists
    if capabilities.kek_versions:
        versions = await kms.kek_versions()
        assert isinstance(versions, KekVersions) and versions.latest >= versions.min_decryption >= 1
    else:
        for call in (kms.kek_versions(), kms.rotate_kek(), kms.retire_kek_versions(1)):
            with pytest.raises(KekVersionsUnsupported, match=f"the {provider} KMS provider has no KEK versions"):
                await call
    assert capabilities.native_rewrap == (provider in NATIVE_REWRAP)
    assert capabilities.batching == (provider == "vault")


async def test_rewrap_keeps_the_plaintext_and_the_context(kms, provider):
    data_key = await kms.generate_data_key(None, ACME)
    rewrapped, kek_version = await rewrap(kms, data_key.wrapped, data_key.kms_key_id, ACME)
    assert rewrapped != data_key.wrapped
    assert 0 < len(rewrapped) <= WRAPPED_BOUND[provider]
    assert (kek_version is not None) == (provider in VERSIONED)
    assert await kms.decrypt(rewrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    for other in OTHERS.values():
        with pytest.raises(KmsRefused):
            await kms.decrypt(rewrapped, data_key.kms_key_id, other)
    # rewrap checks the context too: a blob cannot be moved to another context by rewrapping it
    with pytest.raises(KmsRefused):
        await kms.rewrap(data_key.wrapped, data_key.kms_key_id, OTHERS["another tenant"])


def _well_formed_blob(provider: str) -> bytes:
    """A blob of the provider's shape (no adapter refuses it before asking its KMS)."""
    return {"pkcs11": b"KLH1\0\0\0\1" + b"A" * 80, "azure": b"KLA1\x02v1" + b"A" * 256}.get(
        provider, b"vault:v1:" + b"A" * 80)


async def test_an_unreachable_kms_is_unavailable_within_the_timeout(make_kms, provider):
    """A closed port: refused connections are retried (vault: within its deadline; aws: the client is
    built with one attempt, as botocore's backoff ignores the timeout) and reported as unavailable."""
    kms = make_kms(unreachable=True)
    try:
        for call in (lambda: kms.generate_data_key(None, ACME),
                     lambda: kms.decrypt(_well_formed_blob(provider), kms.default_key_id, ACME)):
            started = time.monotonic()
            with pytest.raises(KmsUnavailable):
                await call()
            assert time.monotonic() - started < UNREACHABLE_TIMEOUT + 1.0
        results = await kms.decrypt_many([UnwrapRequest(_well_formed_blob(provider), kms.default_key_id, ACME)])
        assert isinstance(results[0], KmsUnavailable)
    finally:
        await kms.aclose()


async def test_data_keys_never_show_their_plaintext(kms):
    data_key = await kms.generate_data_key(None, ACME)
    for text in (repr(data_key), str(data_key)):
        _assert_no_secret(text, data_key.plaintext)
    batch = await kms.generate_data_keys([DataKeyRequest(None, ACME)])
    _assert_no_secret(repr(batch), batch[0].plaintext)


async def test_wrap_many_wraps_given_keys_each_under_its_own_context(make_kms, provider):
    kms = make_kms(batch_max=2)
    try:
        contexts = [encryption_context(f"tenant-{i}", f"{i:032x}", "encryption") for i in range(3)]
        plaintexts = [bytes([i]) * 32 for i in range(3)]
        results = await wrap_many(kms, [WrapRequest(p, None, c) for p, c in zip(plaintexts, contexts, strict=True)]
                                  + [WrapRequest(b"short", None, ACME)])
        assert isinstance(results[3], KmsRefused)
        for result, plaintext, context in zip(results[:3], plaintexts, contexts, strict=True):
            assert isinstance(result, DataKey) and result.plaintext == plaintext
            assert plaintext not in result.wrapped and 0 < len(result.wrapped) <= WRAPPED_BOUND[provider]
            assert await kms.decrypt(result.wrapped, result.kms_key_id, context) == plaintext
            with pytest.raises(KmsRefused):
                await kms.decrypt(result.wrapped, result.kms_key_id, ACME)
        assert "\\x00" * 4 not in repr(WrapRequest(plaintexts[0], None, ACME))  # the key never shows
    finally:
        await kms.aclose()


async def test_rewrap_many_agrees_with_single_rewraps_and_one_bad_item_fails_alone(make_kms, provider):
    kms = make_kms(batch_max=2)  # vault: several batch requests for one call
    try:
        keys = [await kms.generate_data_key(None, ACME) for _ in range(3)]
        requests = [UnwrapRequest(k.wrapped, k.kms_key_id, ACME) for k in keys]
        requests.insert(1, UnwrapRequest(keys[0].wrapped, keys[0].kms_key_id, OTHERS["another tenant"]))
        results = await rewrap_many(kms, requests)
        assert isinstance(results[1], KmsRefused)
        del results[1]
        for key, result in zip(keys, results, strict=True):
            assert not isinstance(result, KmsError)
            assert result.wrapped != key.wrapped and (result.kek_version is not None) == (provider in VERSIONED)
            assert await kms.decrypt(result.wrapped, key.kms_key_id, ACME) == key.plaintext
        assert await rewrap_many(kms, []) == []
    finally:
        await kms.aclose()


# --- key states: the KMS itself refuses a disabled key, a key pending deletion, a retired version ----


@pytest.fixture
def fresh_key(request, provider):
    """A new KMS key beside the default one (a tenant's own key), made the provider's way."""

    async def make(kms: Kms) -> str:
        name = f"tenant-{secrets.token_hex(4)}"
        if provider == "aws":
            client = boto3.client("kms", endpoint_url=request.getfixturevalue("moto_endpoint"), region_name="us-east-1")
            return str(client.create_key(KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"])
        if provider == "pkcs11":
            assert isinstance(kms, Pkcs11Kms)
            await kms.create_key(name)
        if provider == "azure":
            request.getfixturevalue("key_vault").create_key(name)
        if provider == "gcp":
            return str(request.getfixturevalue("cloud_kms").create_key(GCP_KEY.rsplit("/", 1)[0] + "/" + name))
        return f"local/{name}" if provider == "local" else name  # vault: created at first use

    return make


@pytest.fixture
def disable(request, provider):
    """Disables a key beside the adapter, as an operator would; skips for a provider without that state."""

    def run(kms_key_id: str) -> None:
        if provider == "aws":
            client = boto3.client("kms", endpoint_url=request.getfixturevalue("moto_endpoint"), region_name="us-east-1")
            client.disable_key(KeyId=kms_key_id)
        elif provider == "pkcs11":
            import pkcs11

            hsm = request.getfixturevalue("softhsm")
            token = pkcs11.lib(hsm.module).get_token(token_label=hsm.token_label)
            with token.open(rw=True) as session:  # logged in already: the adapter's login is the process's
                for key in session.get_objects({pkcs11.Attribute.ID: kms_key_id.encode()}):
                    key[pkcs11.Attribute.WRAP] = False
                    key[pkcs11.Attribute.UNWRAP] = False
        elif provider == "azure":
            request.getfixturevalue("key_vault").set_enabled(kms_key_id, False)
        elif provider == "gcp":
            from tests.kms.gcp_double import State

            request.getfixturevalue("cloud_kms").set_state(kms_key_id, State.DISABLED)
        else:
            pytest.skip(f"{provider} keys have no disabled state (vault: retire versions; local: none)")

    return run


async def test_a_disabled_key_is_refused(kms, provider, fresh_key, disable):
    key_id = await fresh_key(kms)
    data_key = await kms.generate_data_key(key_id, ACME)
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    disable(data_key.kms_key_id)
    if provider == "aws":
        pytest.skip("moto still wraps and unwraps under a disabled key (AWS refuses: DisabledException)")
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
    if provider == "azure":
        pytest.skip("the Azure SDK wraps with an RSA public key it has read locally: a disabled key still wraps "
                    "(nothing it wraps unwraps, as above)")
    with pytest.raises(KmsRefused):
        await kms.generate_data_key(key_id, ACME)


async def test_a_key_pending_deletion_is_refused(kms, adapter, provider, fresh_key):
    if adapter == "router":
        pytest.skip("the router refuses to schedule deletions with several providers configured (test_router)")
    key_id = await fresh_key(kms)
    data_key = await kms.generate_data_key(key_id, ACME)
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    await kms.schedule_key_deletion(data_key.kms_key_id, 7)
    if provider == "aws":
        pytest.skip("moto unwraps under a key pending deletion (AWS refuses: KMSInvalidStateException)")
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
    if provider not in ("vault", "azure"):  # azure: see test_a_disabled_key_is_refused; vault's pending deletion retires the versions so far; new wraps use a new one
        with pytest.raises(KmsRefused):
            await kms.generate_data_key(key_id, ACME)


async def test_retired_kek_versions_are_refused(kms, fresh_key):
    if not kms.capabilities.kek_versions:
        pytest.skip(f"the {kms.provider} provider has no KEK versions keyledger manages")
    key_id = await fresh_key(kms)
    old = await kms.generate_data_key(key_id, ACME)
    latest = await kms.rotate_kek(old.kms_key_id)
    assert latest == (old.kek_version or 0) + 1
    assert await kms.decrypt(old.wrapped, old.kms_key_id, ACME) == old.plaintext  # an older version unwraps
    rewrapped = await kms.rewrap(old.wrapped, old.kms_key_id, ACME)
    assert rewrapped.kek_version == latest
    await kms.retire_kek_versions(latest, old.kms_key_id)
    assert await kms.kek_versions(old.kms_key_id) == KekVersions(latest, latest)
    for call in (lambda: kms.decrypt(old.wrapped, old.kms_key_id, ACME),
                 lambda: kms.rewrap(old.wrapped, old.kms_key_id, ACME)):
        with pytest.raises(KmsRefused):
            await call()
    assert await kms.decrypt(rewrapped.wrapped, old.kms_key_id, ACME) == old.plaintext
    new = await kms.generate_data_key(key_id, ACME)
    assert new.kek_version == latest


# --- error mapping: each provider's failures arrive as the port's three kinds ---------------------

FAULTS = {  # kind -> (HTTP status, AWS error type) of a scripted KMS
    "unavailable": (503, "KMSInternalException"),
    "throttled": (429, "ThrottlingException"),
    "refused": (403, "AccessDeniedException"),
}
EXPECTED = {"unavailable": KmsUnavailable, "throttled": KmsThrottled, "refused": KmsRefused}


@pytest.fixture
async def scripted_kms_server():
    """An HTTP server answering every request with one fault, in AWS's and Vault's JSON shapes."""
    from aiohttp import web

    answer: dict[str, int | str] = {}

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"__type": answer["type"], "message": "scripted", "errors": ["scripted"]},
                                 status=int(answer["status"]))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def script(kind: str) -> str:
        answer["status"], answer["type"] = FAULTS[kind]
        return f"http://127.0.0.1:{port}"

    yield script
    await runner.cleanup()


class _FailingSession:
    """A PKCS#11 session whose every call fails with one library error (a lost device, no sessions left,
    a function the token does not permit): put in the adapter's pool in place of its real sessions."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            raise self.error

        return fail

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", list(FAULTS))
async def test_errors_map_to_the_port_kinds(request, adapter, provider, kind, scripted_kms_server, monkeypatch):
    wrapper = ADAPTERS[adapter][1]
    kms: Kms
    if provider == "local":
        pytest.skip("the local KMS has no failures of its own to map")
    if provider == "pkcs11":
        import pkcs11.exceptions as p11

        hsm = request.getfixturevalue("softhsm")
        kms = Pkcs11Kms(hsm.module, hsm.token_label, hsm.pin, sessions=2)
        error = {"unavailable": p11.DeviceRemoved(), "throttled": p11.SessionCount(),
                 "refused": p11.PKCS11Error("function not permitted")}[kind]
        slots = [kms._slots.get_nowait() for _ in range(kms._slots.qsize())]  # where the module's sessions are
        for slot in slots:
            slot.session = _FailingSession(error)
            kms._slots.put_nowait(slot)
    elif provider == "gcp":
        import grpc

        double = request.getfixturevalue("cloud_kms")
        double.fault = {"unavailable": grpc.StatusCode.UNAVAILABLE, "throttled": grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "refused": grpc.StatusCode.PERMISSION_DENIED}[kind]
        kms = GcpKms(GCP_KEY, endpoint=double.endpoint, insecure=True, timeout=UNREACHABLE_TIMEOUT)
    elif provider == "azure":
        double = request.getfixturevalue("key_vault")
        double.fault = {"unavailable": 503, "throttled": 429, "refused": 403}[kind]
        kms = azure_kms(double.url, double.cert, timeout=UNREACHABLE_TIMEOUT, max_attempts=1)
    elif provider == "aws":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        kms = AwsKms("any", endpoint_url=scripted_kms_server(kind), timeout=UNREACHABLE_TIMEOUT, max_attempts=1)
    else:
        kms = VaultKms(scripted_kms_server(kind), TokenAuth("unused"), timeout=UNREACHABLE_TIMEOUT)
    if wrapper == "router":
        kms = KmsRouter(kms, [LocalKms()])
    elif wrapper == "metered":
        kms = MeteredKms(kms, Metrics())
    try:
        for call in (lambda: kms.generate_data_key(None, ACME),
                     lambda: kms.decrypt(_well_formed_blob(provider), kms.default_key_id, ACME)):
            with pytest.raises(EXPECTED[kind]) as raised:
                await call()
            if kind == "unavailable":
                assert not isinstance(raised.value, KmsThrottled)
        if provider == "pkcs11" and kind == "unavailable":  # a lost session is dropped: the next call reopens one
            data_key = await kms.generate_data_key(None, ACME)
            assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext
    finally:
        await kms.aclose()
