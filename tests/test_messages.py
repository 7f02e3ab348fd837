"""Every message model survives its own wire form: model -> to_json() -> model, for generated instances."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import field_serializer

from schemas import messages
from schemas.topics import TOPIC_MODELS
from tests.support.strategies import models

MESSAGE_MODELS = sorted(
    (m for _, m in inspect.getmembers(messages, inspect.isclass)
     if issubclass(m, messages._Message) and m.__module__ == messages.__name__ and not m.__name__.startswith("_")),
    key=lambda m: m.__name__,
)


def test_every_topic_model_is_a_message_model_and_the_list_is_complete():
    assert set(TOPIC_MODELS.values()) <= set(MESSAGE_MODELS)
    # the outbound building blocks are messages too, and covered below
    assert {messages.Signature, messages.AuditSource, messages.AuditRanges, messages.CallerProof, messages.SealedResultKey} <= set(MESSAGE_MODELS)
    assert len(MESSAGE_MODELS) == 19


def check_round_trip(model: type[messages._Message]) -> None:
    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(models(model, extras=True))
    def round_trip(message: messages._Message) -> None:
        wire = message.to_json()
        again = model.model_validate_json(wire)
        assert again == message
        assert again.to_json() == wire  # and the bytes are stable: a replay republishes the same bytes

    round_trip()


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
def test_a_message_round_trips_through_its_json(model: type[messages._Message]):
    check_round_trip(model)


def test_the_check_catches_a_model_whose_json_loses_information():
    class Lossy(messages._Message):
        value: float

        @field_serializer("value")
        def _rounded(self, value: float) -> float:
            return round(value, 1)

    with pytest.raises(AssertionError):
        check_round_trip(Lossy)
