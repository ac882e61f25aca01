"""Shared pytest fixtures for dllm-bench."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dllm_bench.schema import SampleRecord

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:  # helper modules next to the tests (refckpt) import by name
    sys.path.insert(0, str(REPO / "tests"))
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    """Keep torch to the machine's 2 cores and never try a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tiny test models are overhead-bound: one intra-op thread avoids spin-wait
    contention on the 2 shared cores (measured ~3x faster SFT steps)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_ci_recipe(out: Path, extra_env: dict[str, str] | None = None, *args: str):
    """``python -m dllm_bench run ci --output OUT [args]`` in a subprocess (the real CLI, so
    deterministic mode can re-execute it); ``extra_env`` is what the caller sets."""
    env = {**os.environ, "CI": "true", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "dllm_bench", "run", "ci", "--output", str(out), *args],
                          capture_output=True, text=True, timeout=1200, env=env)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """The CI-sized recipe run once per session, as a user runs it (native caller env)."""
    out = tmp_path_factory.mktemp("ci") / "run"
    t0 = time.time()
    p = run_ci_recipe(out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p, time.time() - t0


def read_records(path: Path) -> list[SampleRecord]:
    """Every per-sample record of ``samples.jsonl``-style ``path``, in file order (duplicates kept),
    split at ``\\n`` only as the harness reads them (:func:`dllm_bench.jsonl.jsonl_lines`)."""
    from dllm_bench.jsonl import jsonl_lines
    from dllm_bench.schema import SampleRecord

    text = path.read_text(encoding="utf-8")
    return [SampleRecord.model_validate_json(line) for line in jsonl_lines(text) if line.strip()]


def sigkill_after_samples(cmd: list[str], samples: Path, n: int, env: dict[str, str]) -> list[bytes]:
    """Start ``cmd`` (an eval), SIGKILL it once ``samples`` (its samples.jsonl) has ``n`` lines;
    returns the whole lines written before the kill (it must have been killed, not finished)."""
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= n:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = samples.read_bytes()
    return before[: before.rfind(b"\n") + 1].splitlines()


def assert_same_tree(committed: Path, fresh: Path, regenerate: str) -> None:
    """Generated files committed under ``committed`` are byte for byte what a fresh run of their
    generator wrote under ``fresh`` (same file set, same bytes); ``regenerate`` is the command
    named in the failure."""
    names = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    new = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert names == new, f"run: {regenerate}"
    for rel in names:
        assert (committed / rel).read_bytes() == (fresh / rel).read_bytes(), (rel, f"run: {regenerate}")


def open_sandbox_or_skip(backend: str):
    """A real sandbox backend (the Docker image is built on first use), or skip with the reason."""
    from dllm_bench.sandboxes.cli import try_open

    sb, why = try_open(backend, build_missing_image=True, **({"pool_size": 1} if backend == "docker" else {}))
    if sb is None:
        pytest.skip(why)
    return sb


@pytest.fixture(scope="module", params=["process", "docker"])
def sandbox(request):
    """Each sandbox backend in turn, shared by a test module and closed after it."""
    sb = open_sandbox_or_skip(request.param)
    yield sb
    sb.close()
