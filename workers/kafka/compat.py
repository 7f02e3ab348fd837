"""Lets aiokafka's idempotent producer start on brokers that need InitProducerId v3+.

aiokafka only speaks InitProducerId v0, which has no producer_id/epoch fields;
some Kafka-compatible brokers (tansu, used for dev and tests) refuse a request
without them. This adds the flexible v3 form (producer_id = epoch = -1, i.e.
"give me a new id"); brokers that only know v0 still get v0 via ApiVersions.
"""

from __future__ import annotations

from typing import Any

import aiokafka.producer.sender as _sender
from aiokafka.protocol import transaction as _txn
from aiokafka.protocol.api import RequestStruct, Response
from aiokafka.protocol.types import (
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)


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


class InitProducerIdRequest(_txn.InitProducerIdRequest):  # type: ignore[misc]
    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class is InitProducerIdRequestV3:
            return InitProducerIdRequestV3(self._transactional_id, self._transaction_timeout_ms, -1, -1, {})
        return super().build(request_struct_class)


InitProducerIdRequest._CLASSES = (_txn.InitProducerIdRequest_v0, InitProducerIdRequestV3)


def install() -> None:
    _sender.InitProducerIdRequest = InitProducerIdRequest
