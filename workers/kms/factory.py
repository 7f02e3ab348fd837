"""Builds the configured KMS adapter."""

from __future__ import annotations

from workers.core.b64 import b64decode
from workers.kms import Kms
from workers.settings import KmsProvider, Settings


def open_kms(settings: Settings) -> Kms:
    if settings.kms_provider is KmsProvider.AWS:
        from workers.kms.aws import AwsKms

        return AwsKms(
            settings.kms_key_id,
            region=settings.aws_region,
            endpoint_url=settings.kms_endpoint_url,
            timeout=settings.kms_timeout,
            max_attempts=settings.kms_max_attempts,
            concurrency=settings.kms_concurrency,
        )
    from workers.kms.local import DEFAULT_KEY_ID, LocalKms

    kek = b64decode(settings.local_kek) if settings.local_kek else None
    return LocalKms(kek, default_key_id=settings.kms_key_id or DEFAULT_KEY_ID)
