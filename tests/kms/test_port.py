"""The port itself: one declared interface whose wrappers (the router, MeteredKms) write every method and
forward it, MeteredKms metering each KMS call; capabilities are declared by each class, never probed."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tests.support.kms import CALLS, PROPERTIES, Recording, call_port_method, port_methods, port_properties
from workers.app.observability.ports import MeteredKms
from workers.kms import KmsCapabilities, is_shared_key
from workers.kms.aws import AwsKms
from workers.kms.azure import AzureKms
from workers.kms.gcp import GcpKms
from workers.kms.local import LocalKms
from workers.kms.pkcs11 import Pkcs11Kms
from workers.kms.router import KmsRouter
from workers.kms.vault import VaultKms

ROOT = Path(__file__).resolve().parents[2]


def test_every_port_method_is_listed_in_the_shared_test_table():
    assert port_methods() == set(CALLS)
    assert port_properties() == PROPERTIES
    assert {name for name in vars(Recording) if not name.startswith("_")} >= port_methods()


@pytest.mark.parametrize("wrapper", [MeteredKms, KmsRouter])  # MeteredKms's calls: tests/app/test_ports.py
def test_wrappers_write_the_whole_port_and_forward_nothing_implicitly(wrapper):
    """No method or property of the port is inherited from the defaults, and nothing passes through
    `__getattr__`: what a wrapper does with each call is written in it."""
    assert "__getattr__" not in vars(wrapper) and "__getattribute__" not in vars(wrapper)
    written = set(vars(wrapper))
    assert port_methods() - written == set()
    assert (port_properties() - {"provider"}) - written == set()  # `provider` is read from capabilities


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_the_router_forwards_every_port_method(name):
    """KEK versions, wraps and new keys go to the primary, blobs to the provider their form names;
    routing is the router's own (no call reaches an adapter)."""
    local = Recording()
    router = KmsRouter(local)
    result = await call_port_method(router, name)
    if name in ("route", "is_shared_key"):
        assert local.called == [] and result == (local if name == "route" else True)
    else:
        assert local.called == [name]
    assert is_shared_key(router, "local", "k") and not is_shared_key(router, "aws", "k")
    assert router.capabilities == KmsCapabilities("local", batching=True, native_rewrap=True, kek_versions=True,
                                                  routing=True)


def test_each_adapter_declares_its_capabilities_in_its_class():
    for adapter, expected in ((LocalKms, KmsCapabilities("local")),
                              (AwsKms, KmsCapabilities("aws", native_rewrap=True, tenant_keys=True)),
                              (VaultKms, KmsCapabilities("vault", batching=True, native_rewrap=True,
                                                         kek_versions=True)),
                              (Pkcs11Kms, KmsCapabilities("pkcs11", kek_versions=True)),
                              (GcpKms, KmsCapabilities("gcp", kek_versions=True)),
                              (AzureKms, KmsCapabilities("azure", kek_versions=True))):
        assert vars(adapter)["capabilities"] == expected
        assert not inspect.isabstract(adapter)


def _kms_sources() -> list[Path]:
    return [*sorted((ROOT / "workers" / "kms").rglob("*.py")), ROOT / "workers" / "app" / "observability" / "ports.py"]


def test_capabilities_are_read_never_probed():
    """No getattr with a default, hasattr, runtime-checkable Protocol, isinstance against a KMS type, or
    `__getattr__` in a KMS class, in the port, its adapters or its wrappers: what a KMS can do is what it
    declares."""
    found = []
    for path in _kms_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) > 2):
                    found.append(f"{where} {node.func.id}")
                kinds = ast.unparse(node.args[1]) if node.func.id == "isinstance" and len(node.args) == 2 else ""
                if any(kind.strip("() ").endswith("Kms") for kind in kinds.split(",")):
                    found.append(f"{where} isinstance(..., {kinds})")
            if isinstance(node, ast.Name) and node.id == "runtime_checkable":
                found.append(f"{where} runtime_checkable")
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base) == "Kms" for base in node.bases):
                found += [f"{where} {node.name}.__getattr__" for item in node.body
                          if isinstance(item, ast.FunctionDef) and item.name == "__getattr__"]
    assert found == []
