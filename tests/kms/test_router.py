"""Several providers in one process (a migration's hybrid period): new keys go to the primary, records
unwrap with the provider they name, a provider that is not configured is refused saying so."""

from __future__ import annotations

import pytest

from workers.kms import KmsRefused, encryption_context, is_shared_key, kms_for
from workers.kms.aws import AwsKms
from workers.kms.factory import open_kms
from workers.kms.local import LocalKms
from workers.kms.router import KmsRouter
from workers.settings import Settings

ACME = encryption_context("acme", "ab" * 16, "signing")


@pytest.fixture
async def router(moto_endpoint, moto_kms_key):
    aws = AwsKms(moto_kms_key, endpoint_url=moto_endpoint, timeout=5, max_attempts=2)
    routed = KmsRouter(LocalKms(), [aws])
    yield routed
    await routed.aclose()


async def test_new_keys_go_to_the_primary_and_each_record_unwraps_with_its_provider(router):
    assert router.provider == "local" and router.default_key_id == LocalKms().default_key_id
    local_key = await router.generate_data_key(None, ACME)
    assert local_key.wrapped.startswith(b"KLK1")
    aws = kms_for(router, "aws")
    aws_key = await aws.generate_data_key(None, ACME)
    calls = router.calls
    assert await kms_for(router, "local").decrypt(local_key.wrapped, local_key.kms_key_id, ACME) == local_key.plaintext
    assert await kms_for(router, None).decrypt(aws_key.wrapped, aws_key.kms_key_id, ACME) == aws_key.plaintext  # absent = aws
    assert router.calls == calls + 2
    # callers that do not know the provider: the blob's form decides
    assert await router.decrypt(aws_key.wrapped, aws_key.kms_key_id, ACME) == aws_key.plaintext
    assert await router.decrypt_many([]) == []


async def test_a_provider_that_is_not_configured_is_refused_by_name(router):
    key = await router.generate_data_key(None, ACME)
    with pytest.raises(KmsRefused, match="'vault'.*configured: local, aws.*KEYLEDGER_KMS_PROVIDERS"):
        kms_for(router, "vault")
    with pytest.raises(KmsRefused, match="vault"):
        await router.decrypt(b"vault:v1:" + b"A" * 40, key.kms_key_id, ACME)


async def test_shared_keys_are_known_per_provider_and_never_deleted(router, moto_kms_key):
    assert is_shared_key(router, "aws", moto_kms_key) and is_shared_key(router, "local", router.default_key_id)
    assert not is_shared_key(router, "aws", "arn:aws:kms:us-east-1:111122223333:key/tenant-own")
    assert not is_shared_key(router, "vault", "keyledger")  # not configured: nothing is shared there
    for key in (moto_kms_key, router.default_key_id):
        with pytest.raises(KmsRefused, match="shared default key"):
            await router.schedule_key_deletion(key, 7)
    with pytest.raises(KmsRefused, match="by hand"):  # which provider holds a tenant's own key is not known here
        await router.schedule_key_deletion("tenant-own", 7)


def test_one_provider_twice_is_a_configuration_error():
    with pytest.raises(ValueError, match="twice"):
        KmsRouter(LocalKms(), [LocalKms()])


async def test_settings_build_one_adapter_or_a_router(moto_endpoint, moto_kms_key):
    single = open_kms(Settings(kms_provider="local").kms)
    assert isinstance(single, LocalKms)
    hybrid = open_kms(Settings(kms_provider="aws", kms_providers="local, aws", kms_key_id=moto_kms_key,
                               kms_endpoint_url=moto_endpoint, aws_region="us-east-1").kms)
    try:
        assert isinstance(hybrid, KmsRouter) and list(hybrid.providers) == ["aws", "local"]
        assert hybrid.provider == "aws" and hybrid.default_key_id == moto_kms_key
        # the AWS key id is not the local provider's key name
        assert kms_for(hybrid, "local").default_key_id == LocalKms().default_key_id
    finally:
        await hybrid.aclose()
        await single.aclose()


def test_settings_refuse_an_unknown_provider_and_check_every_configured_one():
    with pytest.raises(ValueError, match="KEYLEDGER_KMS_PROVIDERS"):
        Settings(kms_providers="aws,ibm")  # an unknown name (gcp is known since issue 28)
    settings = Settings(kms_provider="aws", kms_providers="vault", kms_key_id="alias/k")
    assert [p.value for p in settings.kms.configured_providers] == ["aws", "vault"]
    assert "KEYLEDGER_VAULT_ADDR is unset" in settings.production_problems()
    assert "KEYLEDGER_KMS_PROVIDERS names local" in Settings(kms_provider="aws", kms_providers="local",
                                                             kms_key_id="k").production_problems()
