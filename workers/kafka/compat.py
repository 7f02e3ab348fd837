"""Lets aiokafka's idempotent producer start on brokers that need InitProducerId v3+.

aiokafka only speaks InitProducerId v0, which has no producer_id/epoch fields;
some Kafka-compatible brokers (tansu, used for dev and tests) refuse a request
without them. This adds the flexible v3 form (producer_id = epoch = -1, i.e.
"give me a new id"); brokers that only know v0 still get v0 via ApiVersions.

The patch replaces a name in aiokafka's sender and subclasses its protocol
classes: private API. It is applied only to an aiokafka release it was verified
with (`PATCH_VERIFIED`); any other release runs unpatched (an idempotent producer
then starts only on brokers that accept InitProducerId v0) and says so once in
the log. tests/kafka/test_compat.py checks the patch without a broker.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import aiokafka

log = logging.getLogger("keyledger.kafka")

PATCH_VERIFIED = frozenset({"0.14.0"})
"""aiokafka releases whose sender and InitProducerId request classes the patch was checked against;
another release runs unpatched until tests/kafka/test_compat.py passes against it and it is added here."""


def install(version: str = aiokafka.__version__) -> bool:
    """Make aiokafka's sender ask for a producer id with InitProducerId v3 where the broker offers it, if
    `version` is one the patch was verified with. Returns whether aiokafka is patched; idempotent."""
    if not patch_verified(version):
        return False
    import aiokafka.producer.sender as sender

    sender.InitProducerIdRequest = init_producer_id_request()
    return True


@functools.cache
def patch_verified(version: str) -> bool:
    """Whether `version` of aiokafka is one the patch was verified with; the first answer for a version
    that is not says so in the log (cached: once a process)."""
    if version in PATCH_VERIFIED:
        return True
    log.warning("aiokafka %s is not one the InitProducerId v3 patch was verified with (%s): running it "
                "unpatched, so an idempotent producer starts only on brokers that accept InitProducerId v0",
                version, ", ".join(sorted(PATCH_VERIFIED)))
    return False


@functools.cache
def init_producer_id_request() -> Any:
    """aiokafka's InitProducerIdRequest that also builds the flexible v3 form (one class a process, so
    installing twice changes nothing). Imported here, not at module level: only a verified release is
    asked for these private classes."""
    from aiokafka.protocol import transaction
    from aiokafka.protocol.api import RequestStruct, Response
    from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

    class InitProducerIdResponseV3(Response):  # type: ignore[misc]
        FLEXIBLE_VERSION = True
        API_KEY = 22
        API_VERSION = 3
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            ("error_code", Int16),
            ("producer_id", Int64),
            ("producer_epoch", Int16),
            ("tags", TaggedFields),
        )

    class InitProducerIdRequestV3(RequestStruct):  # type: ignore[misc]
        FLEXIBLE_VERSION = True
        API_KEY = 22
        API_VERSION = 3
        RESPONSE_TYPE = InitProducerIdResponseV3
        SCHEMA = Schema(
            ("transactional_id", CompactString("utf-8")),
            ("transaction_timeout_ms", Int32),
            ("producer_id", Int64),
            ("producer_epoch", Int16),
            ("tags", TaggedFields),
        )

    class InitProducerIdRequest(transaction.InitProducerIdRequest):  # type: ignore[misc]
        def build(self, request_struct_class: Any) -> Any:
            if request_struct_class is InitProducerIdRequestV3:
                return InitProducerIdRequestV3(self._transactional_id, self._transaction_timeout_ms, -1, -1, {})
            return super().build(request_struct_class)

    InitProducerIdRequest._CLASSES = (transaction.InitProducerIdRequest_v0, InitProducerIdRequestV3)
    return InitProducerIdRequest
