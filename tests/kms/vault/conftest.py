from __future__ import annotations

import pytest

from tests.kms.vault.bao import fresh_name
from workers.kms.vault import TokenAuth, VaultKms


@pytest.fixture
async def root_kms(openbao):
    """The root token and a transit key of the test's own (rotations touch no other test)."""
    kms = VaultKms(openbao.addr, TokenAuth(openbao.token), default_key_id=fresh_name(), timeout=5)
    yield kms
    await kms.aclose()
