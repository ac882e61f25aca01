"""The wheel ships every Python package folder under the mapped roots (a missing
`packages` entry works editable but ships nothing), plus the package data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from .conftest import REPO


def _mapped_roots() -> dict[str, str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-dir"]


def _expected_packages() -> set[str]:
    pkgs = set()
    for pkg, folder in _mapped_roots().items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            pkgs.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    return pkgs


def test_packages_list_matches_folders():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(cfg["tool"]["setuptools"]["packages"]) == _expected_packages()


def test_wheel_contains_every_package_and_data(tmp_path: Path):
    # built from a copy of the sources: a legacy build writes dllm_bench.egg-info into the tree,
    # whose entry points would then shadow the installed ones for anything run from the checkout
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs",
                                                             "__pycache__", ".ruff_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("dllm_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in _expected_packages():
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, f"{pkg} missing from the wheel"
    # every .py module under the mapped roots is shipped
    for pkg, folder in _mapped_roots().items():
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder)
            assert "/".join([*pkg.split("."), *rel.parts]) in names, f"{py} missing from the wheel"
    # package data: recipes and shipped datasets, when present in the tree
    for pkg, folder in _mapped_roots().items():
        for data in (REPO / folder).rglob("*"):
            wanted = data.suffix in {".yaml", ".jsonl", ".json", ".md"} and "__pycache__" not in data.parts
            if data.is_file() and wanted:
                rel = data.relative_to(REPO / folder)
                assert "/".join([*pkg.split("."), *rel.parts]) in names, f"{data} missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for group in ("dllm_bench.samplers", "dllm_bench.trainers", "dllm_bench.tasks", "dllm_bench.sandboxes"):
        assert f"[{group}]" in text
