"""The aiokafka patch (workers/kafka/compat.py): applied only to a verified release, checked without a broker."""

from __future__ import annotations

import logging
import struct

import aiokafka
import aiokafka.producer.sender as sender
import pytest
from aiokafka.protocol import transaction

from workers.kafka import compat

TIMEOUT_MS = 60_000


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka's own sender for the test, whatever an earlier test installed; restored after it."""
    monkeypatch.setattr(sender, "InitProducerIdRequest", transaction.InitProducerIdRequest)


def test_the_installed_aiokafka_is_one_the_patch_was_verified_with() -> None:
    # a new release runs unpatched until this file passes against it and it joins PATCH_VERIFIED
    assert compat.patch_verified(aiokafka.__version__) is (aiokafka.__version__ in compat.PATCH_VERIFIED)


@pytest.mark.usefixtures("unpatched")
def test_a_verified_release_is_patched_once_and_for_all() -> None:
    assert compat.install(sorted(compat.PATCH_VERIFIED)[0]) is True
    patched = sender.InitProducerIdRequest
    assert patched is not transaction.InitProducerIdRequest
    assert issubclass(patched, transaction.InitProducerIdRequest)
    assert compat.install(sorted(compat.PATCH_VERIFIED)[0]) is True and sender.InitProducerIdRequest is patched


@pytest.mark.parametrize("transactional_id", [None, "keyledger-tx"])
def test_a_broker_offering_v3_is_asked_with_a_new_producer_id_and_epoch(transactional_id: str | None) -> None:
    request = compat.init_producer_id_request()(transactional_id=transactional_id, transaction_timeout_ms=TIMEOUT_MS)
    v3 = request.prepare({22: (0, 4)})
    assert v3.API_VERSION == 3 and v3.FLEXIBLE_VERSION
    name = (transactional_id or "").encode()
    # compact string (length + 1 as a varint, 0 for null), timeout, producer_id -1, epoch -1, no tagged fields
    head = bytes([len(name) + 1]) + name if transactional_id is not None else b"\x00"
    assert v3.encode() == head + struct.pack(">iqh", TIMEOUT_MS, -1, -1) + b"\x00"


def test_a_broker_offering_only_v0_is_asked_as_aiokafka_asks() -> None:
    patched = compat.init_producer_id_request()(transactional_id=None, transaction_timeout_ms=TIMEOUT_MS)
    own = transaction.InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=TIMEOUT_MS)
    v0 = patched.prepare({22: (0, 0)})
    assert type(v0) is transaction.InitProducerIdRequest_v0
    assert v0.encode() == own.prepare({22: (0, 0)}).encode()


@pytest.mark.usefixtures("unpatched")
def test_another_release_runs_unpatched_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="keyledger.kafka"):
        assert compat.install("0.13.99-unverified") is False
        assert compat.install("0.13.99-unverified") is False
    assert sender.InitProducerIdRequest is transaction.InitProducerIdRequest
    [line] = [r.getMessage() for r in caplog.records if "0.13.99-unverified" in r.getMessage()]
    assert "unpatched" in line
