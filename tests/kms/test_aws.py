"""The `aws` adapter over HTTP against moto's KMS server."""

import asyncio

import pytest

from workers.app.embedded import free_port
from workers.kms import KmsRefused, KmsUnavailable, encryption_context
from workers.kms.aws import AwsKms

CONTEXT = encryption_context("acme", "ab" * 16, "encryption")


@pytest.fixture
async def kms(moto_endpoint, moto_kms_key):
    adapter = AwsKms(moto_kms_key, endpoint_url=moto_endpoint, timeout=5, max_attempts=2)
    yield adapter
    await adapter.aclose()


async def test_generate_data_key_and_decrypt_round_trip(kms):
    data_key = await kms.generate_data_key(None, CONTEXT)
    assert len(data_key.plaintext) == 32
    assert data_key.wrapped != data_key.plaintext
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, CONTEXT) == data_key.plaintext


async def test_the_encryption_context_is_enforced(kms):
    data_key = await kms.generate_data_key(None, CONTEXT)
    with pytest.raises(KmsRefused):
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, {**CONTEXT, "tenant_id": "globex"})


async def test_a_tampered_blob_is_refused(kms):
    data_key = await kms.generate_data_key(None, CONTEXT)
    blob = bytearray(data_key.wrapped)
    blob[-1] ^= 1
    with pytest.raises(KmsRefused):
        await kms.decrypt(bytes(blob), data_key.kms_key_id, CONTEXT)


async def test_an_unknown_kms_key_is_refused(kms):
    with pytest.raises(KmsRefused):
        await kms.generate_data_key("alias/does-not-exist", CONTEXT)


async def test_concurrent_calls_all_succeed(kms):
    keys = await asyncio.gather(*(kms.generate_data_key(None, CONTEXT) for _ in range(20)))
    assert len({k.plaintext for k in keys}) == 20


async def test_an_unreachable_endpoint_is_transient():
    adapter = AwsKms("any", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=0.5, max_attempts=1)
    try:
        with pytest.raises(KmsUnavailable):
            await adapter.generate_data_key(None, CONTEXT)
    finally:
        await adapter.aclose()


def test_retry_mode_is_standard_not_legacy():
    adapter = AwsKms("k", timeout=1, max_attempts=3)
    assert adapter._config.retries == {"mode": "standard", "max_attempts": 3}
