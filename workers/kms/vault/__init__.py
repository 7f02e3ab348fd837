"""`vault` KMS provider: HashiCorp Vault / OpenBao Transit, in three parts that each do one job.

  client.py   HTTP to the server: TLS trust, namespace, bounded pool, retries within a deadline;
  auth.py     tokens: token / approle / kubernetes auth, renewal, login again, revoke on close;
  transit.py  the `Kms` adapter: Transit keys, wraps and unwraps (batched), rewrap, KEK versions.
"""

from workers.kms.vault.auth import AppRoleAuth, KubernetesAuth, TokenAuth, VaultAuth
from workers.kms.vault.transit import VaultKms, transit_context

__all__ = ["AppRoleAuth", "KubernetesAuth", "TokenAuth", "VaultAuth", "VaultKms", "transit_context"]
