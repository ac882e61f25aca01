"""Ruff, configured in pyproject.toml ([tool.ruff]), finds nothing: CI runs it as part of the
test suite. Skipped, with the reason, where ruff is not installed (it is in the ``dev`` extra
and requirements/cpu.lock)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .conftest import REPO


def test_ruff_check_finds_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]', or scripts/setup.sh)")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"ruff check . (exit {p.returncode}):\n{p.stdout[-6000:]}{p.stderr[-2000:]}"
