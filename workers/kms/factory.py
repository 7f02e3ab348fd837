"""Builds the configured KMS: one adapter, or a router over several during a provider migration."""

from __future__ import annotations

import os

from workers.core.b64 import b64decode
from workers.kms import Kms
from workers.settings import KmsProvider, KmsSettings, VaultAuthMethod


def open_kms(kms: KmsSettings) -> Kms:
    """The adapter of KEYLEDGER_KMS_PROVIDER; with KEYLEDGER_KMS_PROVIDERS naming others too, a KmsRouter
    whose primary (where new keys go) is that adapter. An `aws` provider without a region anywhere raises
    MissingSetting (workers.settings.AwsSettings.resolved_region)."""
    providers = kms.configured_providers
    if len(providers) == 1:
        return open_provider(kms, providers[0])
    from workers.kms.router import KmsRouter

    adapters = [open_provider(kms, provider) for provider in providers]
    return KmsRouter(adapters[0], adapters[1:])


def open_provider(kms: KmsSettings, provider: KmsProvider) -> Kms:
    if provider is KmsProvider.AWS:
        from workers.kms.aws import AwsKms

        return AwsKms(
            kms.key_id,
            region=kms.aws.resolved_region(),
            endpoint_url=kms.aws.endpoint_url,
            timeout=kms.timeout,
            max_attempts=kms.max_attempts,
            concurrency=kms.concurrency,
        )
    if provider is KmsProvider.VAULT:
        return open_vault(kms)
    if provider is KmsProvider.PKCS11:
        from workers.kms.pkcs11 import Pkcs11Kms

        return Pkcs11Kms.from_settings(kms.pkcs11)
    if provider is KmsProvider.GCP:
        from workers.kms.gcp import GcpKms

        return GcpKms.from_settings(kms.gcp)
    if provider is KmsProvider.AZURE:
        from workers.kms.azure import AzureKms

        return AzureKms.from_settings(kms.azure)
    from workers.kms.local import DEFAULT_KEY_ID, LocalKms

    kek = b64decode(kms.local_kek) if kms.local_kek else None
    # KEYLEDGER_KMS_KEY_ID names the local key only when local is the one provider (else it is AWS's key)
    key_id = kms.key_id if kms.configured_providers == [KmsProvider.LOCAL] else None
    return LocalKms(kek, default_key_id=key_id or DEFAULT_KEY_ID)


def open_vault(kms: KmsSettings) -> Kms:
    from workers.kms.vault import (
        AppRoleAuth,
        KubernetesAuth,
        TokenAuth,
        VaultAuth,
        VaultKms,
    )

    if not kms.vault.addr:
        raise ValueError("KEYLEDGER_KMS_PROVIDER=vault needs KEYLEDGER_VAULT_ADDR")
    auth: VaultAuth
    if kms.vault.auth is VaultAuthMethod.APPROLE:
        if not (kms.vault.role_id and kms.vault.secret_id):
            raise ValueError("KEYLEDGER_VAULT_AUTH=approle needs KEYLEDGER_VAULT_ROLE_ID and KEYLEDGER_VAULT_SECRET_ID")
        auth = AppRoleAuth(kms.vault.role_id, kms.vault.secret_id.get_secret_value(),
                           mount=kms.vault.auth_mount or "approle")
    elif kms.vault.auth is VaultAuthMethod.KUBERNETES:
        if not kms.vault.k8s_role:
            raise ValueError("KEYLEDGER_VAULT_AUTH=kubernetes needs KEYLEDGER_VAULT_K8S_ROLE")
        auth = KubernetesAuth(kms.vault.k8s_role, kms.vault.k8s_jwt_path,
                              mount=kms.vault.auth_mount or "kubernetes")
    else:
        token = kms.vault.token.get_secret_value() if kms.vault.token else os.environ.get("VAULT_TOKEN")
        if not token:
            raise ValueError("KEYLEDGER_VAULT_AUTH=token needs KEYLEDGER_VAULT_TOKEN (or VAULT_TOKEN)")
        auth = TokenAuth(token)
    return VaultKms(
        kms.vault.addr,
        auth,
        default_key_id=kms.vault.key,
        mount=kms.vault.transit_mount,
        namespace=kms.vault.namespace,
        ca_cert=kms.vault.ca_cert,
        timeout=kms.vault.timeout,
        max_attempts=kms.max_attempts,
        concurrency=kms.vault.concurrency,
        batch_max=kms.vault.batch_max,
    )
