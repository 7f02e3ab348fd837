"""The import graph shows the architecture: no cycles, and imports only point down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lower number = lower layer; a module may import its own layer (same package) or any lower one
LAYERS = {
    "schemas": 0,
    "workers": 0,  # the package itself: a docstring
    "workers.errors": 0,
    "workers.settings": 0,
    "workers.source": 0,  # where a request came from, without the transport
    "workers.core": 1,
    "workers.kms": 2,
    "workers.ledger": 2,
    "workers.keystore": 2,
    "workers.keys": 3,
    "workers.client": 3,  # the caller side: proofs and sealed results (core), for services adopting callers
    "workers.services": 4,
    "workers.kafka": 5,  # the transport: above the services, which take parsed requests and return results
    "workers.groups": 6,
    "workers.tools": 6,
    "workers.app": 7,
}
TRANSPORT_FREE = ("workers.services", "workers.keys")  # decide without knowing where requests come from
PURE = ("schemas", "workers.core")  # no I/O: nothing but the standard library, pydantic and crypto primitives
IO_MODULES = ("aiokafka", "faststream", "aioboto3", "botocore", "tigerbeetle", "httpx", "socket", "subprocess")


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("workers/**/*.py"), *ROOT.glob("schemas/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _layer(name: str) -> tuple[str, int] | None:
    owners = [k for k in LAYERS if name == k or (k != "workers" and name.startswith(k + "."))]
    return (max(owners, key=len), LAYERS[max(owners, key=len)]) if owners else None


MODULES = _modules()
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert [name for name in MODULES if _layer(name) is None] == []


def test_no_import_points_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
              if _layer(b)[1] > _layer(a)[1]]  # type: ignore[index]
    assert upward == []


def test_services_and_keys_import_nothing_of_the_transport():
    # the groups parse records into requests and encode results; services and keys never see a record
    transport_free = [name for name in MODULES if any(name == p or name.startswith(p + ".") for p in TRANSPORT_FREE)]
    offenders = [f"{name}: {imp}" for name in transport_free for imp in _imports(MODULES[name])
                 if imp == "workers.kafka" or imp.startswith("workers.kafka.") or imp.split(".")[0] in IO_MODULES[:2]]
    assert offenders == []


def test_no_import_cycle():
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in GRAPH[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_pure_layers_import_no_io():
    offenders = [f"{name}: {imp}" for name, path in MODULES.items() if name.startswith(PURE)
                 for imp in _imports(path) if imp.split(".")[0] in IO_MODULES]
    assert offenders == []


def test_the_check_would_catch_an_upward_import():
    # the graph is read from the files themselves: a core module importing a service is seen
    assert _layer("workers.core.policy")[1] < _layer("workers.services.pii")[1]  # type: ignore[index]
    assert "workers.services.outcome" in GRAPH["workers.services.pii"]
    # and a service importing the transport would point up a layer
    assert _layer("workers.services.pii")[1] < _layer("workers.kafka.records")[1]  # type: ignore[index]


def test_only_the_app_layer_imports_metrics_or_tracing_libraries():
    # ports, runner and services report through small Protocols; workers/app/observability implements them
    observability = ("prometheus_client", "opentelemetry", "aiohttp")
    offenders = [f"{name}: {imp}" for name, path in MODULES.items() if not name.startswith("workers.app")
                 for imp in _imports(path) if imp.split(".")[0] in observability]
    assert offenders == []
