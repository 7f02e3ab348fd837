"""The `gcp` adapter beyond the contract: CRC32C checked both ways, settings, the double's refusals.
Against a local Cloud KMS protocol double (tests/kms/gcp_double.py), never Google's service."""

from __future__ import annotations

import pytest

from tests.kms.conftest import GCP_KEY
from workers.errors import ConfigError
from workers.kms import KmsRefused, KmsUnavailable, encryption_context
from workers.kms.gcp import GcpKms
from workers.settings import Settings

ACME = encryption_context("acme", "ab" * 16, "encryption")


@pytest.fixture
async def kms(cloud_kms):
    adapter = GcpKms(GCP_KEY, endpoint=cloud_kms.endpoint, insecure=True, timeout=5)
    yield adapter
    await adapter.aclose()


async def test_a_corrupted_answer_is_unavailable_never_a_key(kms, cloud_kms):
    data_key = await kms.generate_data_key(None, ACME)
    cloud_kms.corrupt = True  # the double flips a byte after computing the checksum it sends
    with pytest.raises(KmsUnavailable, match="checksum does not match"):
        await kms.generate_data_key(None, ACME)
    with pytest.raises(KmsUnavailable, match="checksum does not match"):
        await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME)
    cloud_kms.corrupt = False
    assert await kms.decrypt(data_key.wrapped, data_key.kms_key_id, ACME) == data_key.plaintext


async def test_the_key_version_is_the_kek_version(kms, cloud_kms):
    first = await kms.generate_data_key(None, ACME)
    assert first.kek_version == 1
    assert await kms.rotate_kek() == 2 and (await kms.kek_versions()).latest == 2
    second = await kms.generate_data_key(None, ACME)
    assert second.kek_version == 2
    assert await kms.decrypt(first.wrapped, first.kms_key_id, ACME) == first.plaintext  # v1 still enabled


async def test_key_names_and_the_shared_key(kms):
    with pytest.raises(KmsRefused, match="projects/P/locations/L"):
        await kms.generate_data_key("alias/not-a-gcp-key", ACME)
    with pytest.raises(KmsRefused, match="NOT_FOUND"):
        await kms.generate_data_key(GCP_KEY + "-absent", ACME)
    with pytest.raises(KmsRefused, match="shared key"):
        await kms.schedule_key_deletion(GCP_KEY, 7)
    assert await kms.describe_key(GCP_KEY) == GCP_KEY


def test_the_settings_read_their_own_prefix(monkeypatch):
    with pytest.raises(ConfigError, match="needs KEYLEDGER_GCP_KEY_NAME"):
        GcpKms.from_settings(Settings().kms.gcp)
    monkeypatch.setenv("KEYLEDGER_GCP_KEY_NAME", GCP_KEY)
    monkeypatch.setenv("KEYLEDGER_GCP_INSECURE", "true")
    with pytest.raises(ConfigError, match="needs KEYLEDGER_GCP_ENDPOINT"):
        GcpKms.from_settings(Settings().kms.gcp)
    monkeypatch.setenv("KEYLEDGER_GCP_ENDPOINT", "127.0.0.1:1")
    kms = GcpKms.from_settings(Settings().kms.gcp)
    assert kms.default_key_id == GCP_KEY and kms.capabilities.provider == "gcp"
