"""MeteredKms (app/observability/ports.py): every method of the KMS port forwarded to the same method of
the adapter, every KMS call metered; capabilities read through, a router's adapters metered too."""

from __future__ import annotations

import inspect

import pytest

from tests.support.kms import ACME, BLOB, CALLS, Recording, call_port_method
from workers.app.observability.metrics import Metrics
from workers.app.observability.ports import MeteredKms
from workers.kms import Kms, kms_for, provider_of
from workers.kms.router import KmsRouter


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_metered_kms_forwards_and_meters_every_port_method(name):
    inner, metrics = Recording(), Metrics()
    kms = MeteredKms(inner, metrics)
    result = await call_port_method(kms, name)
    assert inner.called == [name]  # the same method of the adapter, once: never a default in between
    sample = metrics.registry.get_sample_value
    if inspect.iscoroutinefunction(getattr(Kms, name)):  # a KMS call: counted, timed
        assert sample("keyledger_kms_calls_total", {"operation": name, "outcome": "success"}) == 1
        assert sample("keyledger_kms_seconds_count", {"operation": name}) == 1
    elif name == "route":  # the adapter serves every record: the metered adapter is this one
        assert result is kms


async def test_metered_kms_reads_capabilities_calls_and_providers_through():
    inner = Recording()
    kms = MeteredKms(inner, Metrics())
    assert kms.capabilities is inner.capabilities and kms.provider == "local" == provider_of(kms)
    await kms.decrypt(BLOB, "k", ACME)
    assert kms.calls == inner.calls == 1
    assert kms.providers == {"local": kms}  # metered too


async def test_metered_router_hands_out_metered_adapters():
    local, metrics = Recording(), Metrics()
    kms = MeteredKms(KmsRouter(local), metrics)
    routed = kms_for(kms, "local")
    assert isinstance(routed, MeteredKms) and routed.inner is local and routed is kms.route("local")
    assert kms.providers == {"local": routed} and kms.capabilities.routing
    await routed.kek_versions("k")
    assert metrics.registry.get_sample_value(
        "keyledger_kms_calls_total", {"operation": "kek_versions", "outcome": "success"}) == 1
    assert routed.reachability is kms.reachability
