"""Environment facts for ``dllm-bench env`` and every entry's ``repro`` block.

Nothing here imports torch unless asked for (``with_torch=True``).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

LIBRARIES = ("torch", "transformers", "accelerate", "deepspeed", "lm-eval", "math-verify", "triton",
             "docker", "pydantic", "typer", "rich", "datasets")


def lib_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {name: lib_version(name) for name in LIBRARIES}


def _source_root() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    return here if (here / ".git").exists() else None


def git_info() -> tuple[str | None, bool | None]:
    """(sha, dirty) of the harness checkout; (None, None) outside a git checkout."""
    root = _source_root()
    if root is None or not shutil.which("git"):
        return None, None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10).stdout
        return sha, bool(st.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def docker_engine() -> str | None:
    """Server version of a reachable Docker engine, or None."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return client.version().get("Version")
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means no engine
        return None


def gpu_name() -> str | None:
    """Name of CUDA device 0 (imports torch)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
             "amx_bf16")
"""/proc/cpuinfo flags that decide which native code paths the math libraries would take."""


def cpu_info() -> dict[str, Any]:
    """CPU model name, logical cores and the ISA flags of :data:`ISA_FLAGS` it offers (no torch)."""
    model: str | None = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = val.strip()
            elif key == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "machine": platform.machine(),
            "logical_cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def device_info() -> dict[str, Any]:
    """The device, precisely (imports torch): recorded in every entry and by ``dllm-bench env``.

    Keys: ``cpu`` (:func:`cpu_info`), ``torch_cpu_capability`` (ATen's dispatch level:
    DEFAULT / AVX2 / AVX512 ...), ``threads`` (torch intra / inter-op, OMP / MKL env),
    ``gpu`` (None without CUDA; else ``name``, ``count``, ``driver``, ``cuda``, ``cudnn``,
    ``compute_capability``) and ``nccl`` (version, only when a distributed run is set up:
    ``WORLD_SIZE`` > 1 or an initialised process group).
    """
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_info(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")},
        "gpu": None,
        "nccl": None,
    }
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        cap = torch.cuda.get_device_capability(0)
        names = [torch.cuda.get_device_name(i) for i in range(n)]  # each device queried once
        info["gpu"] = {"name": names[0], "count": n, "names": sorted(set(names)),
                       "driver": _nvidia_driver(), "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                       "compute_capability": f"{cap[0]}.{cap[1]}"}
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        if dist or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            try:
                v = torch.cuda.nccl.version()
                info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            except (AttributeError, RuntimeError):
                info["nccl"] = None
    return info


def device_string() -> str:
    """``cuda:<GPU name>`` or ``cpu:<CPU model name>`` (one line; :func:`device_info` has the rest)."""
    g = gpu_name()
    return f"cuda:{g}" if g else f"cpu:{cpu_info()['model']}"


def collect(with_torch: bool = True) -> dict:
    """Everything ``dllm-bench env`` prints."""
    sha, dirty = git_info()
    info: dict[str, Any] = {
        "dllm_bench": __version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "docker_engine": docker_engine(),
        "docker_cli": shutil.which("docker"),
        "bubblewrap": shutil.which("bwrap"),
    }
    if with_torch and info["libraries"]["torch"]:
        from .determinism import report

        dev = device_info()  # queries the GPU once; its name is repeated at the top level
        info["gpu"] = dev["gpu"]["name"] if dev["gpu"] else None
        info["device"] = dev
        info["determinism"] = report()
    return info
