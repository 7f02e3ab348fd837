"""Builds the configured KMS: one adapter, or a router over several during a provider migration."""

from __future__ import annotations

import os

from workers.core.b64 import b64decode
from workers.kms import Kms
from workers.settings import KmsProvider, Settings, VaultAuthMethod


def open_kms(settings: Settings) -> Kms:
    """The adapter of KEYLEDGER_KMS_PROVIDER; with KEYLEDGER_KMS_PROVIDERS naming others too, a KmsRouter
    whose primary (where new keys go) is that adapter."""
    providers = settings.configured_kms_providers
    if len(providers) == 1:
        return open_provider(settings, providers[0])
    from workers.kms.router import KmsRouter

    adapters = [open_provider(settings, provider) for provider in providers]
    return KmsRouter(adapters[0], adapters[1:])


def open_provider(settings: Settings, provider: KmsProvider) -> Kms:
    if provider is KmsProvider.AWS:
        from workers.kms.aws import AwsKms

        return AwsKms(
            settings.kms_key_id,
            region=settings.aws_region,
            endpoint_url=settings.kms_endpoint_url,
            timeout=settings.kms_timeout,
            max_attempts=settings.kms_max_attempts,
            concurrency=settings.kms_concurrency,
        )
    if provider is KmsProvider.VAULT:
        return open_vault(settings)
    if provider is KmsProvider.PKCS11:
        from workers.kms.pkcs11 import Pkcs11Kms, Pkcs11Settings

        return Pkcs11Kms.from_settings(Pkcs11Settings())
    if provider is KmsProvider.GCP:
        from workers.kms.gcp import GcpKms, GcpSettings

        return GcpKms.from_settings(GcpSettings())
    if provider is KmsProvider.AZURE:
        from workers.kms.azure import AzureKms, AzureSettings

        return AzureKms.from_settings(AzureSettings())
    from workers.kms.local import DEFAULT_KEY_ID, LocalKms

    kek = b64decode(settings.local_kek) if settings.local_kek else None
    # KEYLEDGER_KMS_KEY_ID names the local key only when local is the one provider (else it is AWS's key)
    key_id = settings.kms_key_id if settings.configured_kms_providers == [KmsProvider.LOCAL] else None
    return LocalKms(kek, default_key_id=key_id or DEFAULT_KEY_ID)


def open_vault(settings: Settings) -> Kms:
    from workers.kms.vault import (
        AppRoleAuth,
        KubernetesAuth,
        TokenAuth,
        VaultAuth,
        VaultKms,
    )

    if not settings.vault_addr:
        raise ValueError("KEYLEDGER_KMS_PROVIDER=vault needs KEYLEDGER_VAULT_ADDR")
    auth: VaultAuth
    if settings.vault_auth is VaultAuthMethod.APPROLE:
        if not (settings.vault_role_id and settings.vault_secret_id):
            raise ValueError("KEYLEDGER_VAULT_AUTH=approle needs KEYLEDGER_VAULT_ROLE_ID and KEYLEDGER_VAULT_SECRET_ID")
        auth = AppRoleAuth(settings.vault_role_id, settings.vault_secret_id.get_secret_value(),
                           mount=settings.vault_auth_mount or "approle")
    elif settings.vault_auth is VaultAuthMethod.KUBERNETES:
        if not settings.vault_k8s_role:
            raise ValueError("KEYLEDGER_VAULT_AUTH=kubernetes needs KEYLEDGER_VAULT_K8S_ROLE")
        auth = KubernetesAuth(settings.vault_k8s_role, settings.vault_k8s_jwt_path,
                              mount=settings.vault_auth_mount or "kubernetes")
    else:
        token = settings.vault_token.get_secret_value() if settings.vault_token else os.environ.get("VAULT_TOKEN")
        if not token:
            raise ValueError("KEYLEDGER_VAULT_AUTH=token needs KEYLEDGER_VAULT_TOKEN (or VAULT_TOKEN)")
        auth = TokenAuth(token)
    return VaultKms(
        settings.vault_addr,
        auth,
        default_key_id=settings.vault_key,
        mount=settings.vault_transit_mount,
        namespace=settings.vault_namespace,
        ca_cert=settings.vault_ca_cert,
        timeout=settings.vault_timeout,
        max_attempts=settings.kms_max_attempts,
        concurrency=settings.vault_concurrency,
        batch_max=settings.vault_batch_max,
    )
