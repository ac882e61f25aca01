"""Deterministic mode: the same bits from a CPU run on any x86-64 machine.

Why it is needed: PyTorch's CPU kernels are chosen at run time from the instructions the
processor offers. ATen dispatches its vectorised kernels to ``DEFAULT`` / ``AVX2`` /
``AVX512`` code (vector widths, hence reduction orders and the ``exp`` / ``tanh``
approximations, differ), MKL picks a GEMM code path per CPU generation, oneDNN a JIT ISA,
glibc's libm an FMA or SSE2 variant of each function, and the thread count changes how
reductions are split. Every choice is correct to the last bit or two, but training and
sampling at T = 1 amplify last-bit differences into different weights and different
tokens, so the same recipe gave points of accuracy apart on two machines.

Deterministic mode removes every such choice *before* any of these libraries initialise,
by fixing, in the environment of the process and of every process it starts:

============================ ========================== =====================================
variable                     value                      what it fixes
============================ ========================== =====================================
``ATEN_CPU_CAPABILITY``      ``default``                ATen's vectorised kernels: the
                                                        baseline x86-64 build every CPU runs
``MKL_CBWR``                 ``COMPATIBLE,STRICT``      MKL Conditional Numerical
                                                        Reproducibility: one SSE2 code path
                                                        on every x86 CPU, bitwise even for
                                                        unaligned inputs (STRICT)
``ONEDNN_MAX_CPU_ISA``       ``SSE41``                  oneDNN's JIT ISA (its lowest level);
(+ legacy ``DNNL_MAX_CPU_ISA``)
``GLIBC_TUNABLES``           ``glibc.cpu.hwcaps=``      glibc's libm and string variants: the
                             ``-AVX,-AVX2,-FMA,-FMA4``  SSE2 ones every x86-64 CPU has
``OMP_NUM_THREADS``,         the recipe's thread count  reduction splits (and MKL CNR's
``MKL_NUM_THREADS``,         (1 for the CPU recipes)    "same number of threads" condition)
``MKL_DYNAMIC=FALSE``,
``OMP_DYNAMIC=FALSE``
``PYTHONHASHSEED``           ``0``                      set / dict-of-set iteration order
``CUBLAS_WORKSPACE_CONFIG``  ``:4096:8``                deterministic cuBLAS (GPU runs)
============================ ========================== =====================================

and, once torch is imported, ``torch.use_deterministic_algorithms(True)`` and torch's
intra-/inter-op thread counts. Variables read when a shared library is loaded (glibc's
tunables, ATen's capability) only take effect in a new process, so the CLI re-executes
itself once with the pins set (:func:`enter`); child processes inherit them.

Cost (measured side by side on an AVX-512 machine, README): the ``ci`` recipe's tiny model
runs at the same speed; the ``default`` recipe's SFT and TraceRL stages, whose GEMMs now
take MKL's compatible path and ATen's baseline kernels, make the whole run about 1.6x
slower than native.

Sources: PyTorch ``aten/src/ATen/native/DispatchStub.cpp`` (``ATEN_CPU_CAPABILITY``);
Intel oneMKL Developer Guide, "Obtaining Numerically Reproducible Results" (``MKL_CBWR``);
oneDNN documentation, "CPU Dispatcher Control" (``ONEDNN_MAX_CPU_ISA``); the GNU C Library
manual, "Hardware Capability Tunables" (``glibc.cpu.hwcaps``); PyTorch "Reproducibility"
notes (``use_deterministic_algorithms``, ``CUBLAS_WORKSPACE_CONFIG``).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("dllm_bench.determinism")

MARKER = "DLLM_BENCH_DETERMINISTIC"
"""Set (to the thread count) in the environment of a pinned process and its children."""

HWCAPS_MASK = "-AVX,-AVX2,-FMA,-FMA4"
"""glibc hardware capabilities masked so libm takes its SSE2 variants (glibc >= 2.33 names)."""

_REEXEC_ALLOWED = False
"""True only in the real console entry point (:func:`dllm_bench.cli.main`): re-executing an
in-process caller (a test's CliRunner, a notebook) would replace that caller."""


def allow_reexec(flag: bool = True) -> None:
    """Let :func:`enter` re-execute the current process (the CLI's ``main`` calls this)."""
    global _REEXEC_ALLOWED
    _REEXEC_ALLOWED = flag


def pins(threads: int = 1) -> dict[str, str]:
    """The environment deterministic mode fixes, for ``threads`` intra-op threads.

    Raises:
        ValueError: ``threads < 1``.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = str(int(threads))
    return {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE,STRICT",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "DNNL_MAX_CPU_ISA": "SSE41",
        "GLIBC_TUNABLES": _with_hwcaps(os.environ.get("GLIBC_TUNABLES", "")),
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_DYNAMIC": "FALSE",
        "OMP_DYNAMIC": "FALSE",
        "PYTHONHASHSEED": "0",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        MARKER: n,
    }


def _with_hwcaps(tunables: str) -> str:
    """``GLIBC_TUNABLES`` with our ``glibc.cpu.hwcaps`` mask, other tunables kept."""
    parts = [p for p in tunables.split(":") if p and not p.startswith("glibc.cpu.hwcaps=")]
    return ":".join(parts + [f"glibc.cpu.hwcaps={HWCAPS_MASK}"])


def mismatches(threads: int = 1, env: Mapping[str, str] | None = None) -> list[str]:
    """Pinned variables whose value in ``env`` (default ``os.environ``) differs from the pin."""
    env = os.environ if env is None else env
    return [k for k, v in pins(threads).items() if env.get(k) != v]


def enter(threads: int = 1) -> None:
    """Put the current process in deterministic mode; call before torch is imported.

    When the environment already carries every pin, only the in-process settings are
    applied (:func:`after_import`). Otherwise, in the console entry point, the process
    re-executes itself (same interpreter, ``-m dllm_bench``, same arguments) with the pins
    added to its environment, so that the dynamic loader, ATen, MKL and oneDNN start under
    them; the caller's values of these variables are overridden, which is how the same
    recipe gives the same bits whatever the machine (or the caller) would have chosen.
    In-process callers (tests, notebooks) get the pins set in ``os.environ``: they take
    effect for libraries not yet loaded and for child processes; what could not be
    fixed is reported by :func:`report` (``pinned: false``) and logged.

    Args:
        threads: intra-op threads (OpenMP / MKL / torch) the run uses.
    """
    missing = mismatches(threads)
    if missing and _REEXEC_ALLOWED and "torch" not in sys.modules:
        env = {**os.environ, **pins(threads)}
        argv = [sys.executable, "-m", "dllm_bench", *sys.argv[1:]]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    if missing:
        torch_loaded = "torch" in sys.modules
        os.environ.update(pins(threads))
        if torch_loaded:
            log.warning("deterministic mode: torch was imported before %s could be pinned; this process keeps "
                        "its native kernels (children are pinned)", ", ".join(missing))
    after_import(threads)


def after_import(threads: int = 1) -> None:
    """In-process settings: deterministic algorithms and torch's thread counts (imports torch)."""
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work has started: keep what is there
        pass


def _mkl_cbwr_branch() -> str | None:
    """The MKL CNR branch in effect, read from MKL itself (``mkl_cbwr_get``), or None."""
    names = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
             8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1",
             14: "AVX512_E1"}
    try:
        import ctypes

        import torch

        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        fn = getattr(lib, "mkl_serv_cbwr_get", None) or lib.mkl_cbwr_get
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        code = int(fn(1))  # MKL_CBWR_BRANCH
    except (OSError, AttributeError, ImportError):
        return None
    strict = ",STRICT" if code & 0x10000 else ""
    return names.get(code & 0xFFFF, str(code & 0xFFFF)) + strict


def report(threads: int | None = None) -> dict[str, Any]:
    """What this process actually runs with (imports torch): recorded in every entry.

    Returns a dict with ``mode`` (``deterministic`` / ``native``), ``pinned`` (every pin in
    effect), ``pins`` (the pinned variables' values in this process), ``mismatches``,
    ``aten_cpu_capability`` (torch's dispatch level), ``mkl_cbwr_branch`` (read from MKL),
    ``deterministic_algorithms`` and ``threads`` (torch intra / inter-op).
    """
    import torch

    marker = os.environ.get(MARKER)
    n = threads or (int(marker) if marker and marker.isdigit() else torch.get_num_threads())
    missing = mismatches(n)
    keys = list(pins(n))
    return {
        "mode": "deterministic" if marker else "native",
        "pinned": bool(marker) and not missing,
        "mismatches": missing if marker else [],
        "pins": {k: os.environ.get(k) for k in keys if k != MARKER},
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr_branch": _mkl_cbwr_branch() if torch.backends.mkl.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
    }
