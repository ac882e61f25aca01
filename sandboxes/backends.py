"""Choosing and opening a sandbox backend: :func:`best_available` (docker, else process) and
:func:`open_sandbox` (one shared instance per backend and config for the whole process).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .base import Sandbox

PREFERENCE = ("docker", "process")
"""Order tried when no backend is named: docker first (per-sandbox memory cgroup, a separate
root fs), then process (bubblewrap)."""

_shared: dict[tuple, Sandbox] = {}
_shared_lock = threading.Lock()


def best_available() -> tuple[str, dict[str, str]]:
    """The first usable backend in :data:`PREFERENCE` and every backend's availability line.

    Raises:
        dllm_bench.errors.BadInputError: none is usable (the message lists why for each).
    """
    from dllm_bench import registry
    from dllm_bench.errors import BadInputError

    reasons: dict[str, str] = {}
    for name in PREFERENCE:
        try:
            ok, why = registry.load("sandboxes", name).available()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is just unavailable
            ok, why = False, f"{type(exc).__name__}: {exc}"
        reasons[name] = why
        if ok:
            return name, reasons
    raise BadInputError("no code sandbox is available: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()))


def open_sandbox(name: str | None = None, config: dict[str, Any] | None = None, *, shared: bool = True) -> Sandbox:
    """A sandbox instance: ``name`` (an entry point of ``dllm_bench.sandboxes``) or the best
    available one. ``shared=True`` returns one instance per ``(name, config)`` for the whole
    process (a warm docker pool is started once and reused by every task / reward call).

    Raises:
        dllm_bench.errors.BadInputError: unknown name, bad config, or the backend cannot run
            here (the message says why, e.g. how to install bubblewrap or build the image).
    """
    from dllm_bench import registry
    from dllm_bench.errors import BadInputError

    if name is None:
        name, _ = best_available()
    key = (name, json.dumps(config or {}, sort_keys=True))
    if shared:
        with _shared_lock:
            if key in _shared and not _shared[key].closed:
                return _shared[key]
    try:
        sb = registry.create("sandboxes", name, config or {})
    except BadInputError:
        raise
    except RuntimeError as exc:  # SandboxUnavailable
        raise BadInputError(f"sandbox {name!r} is not available: {exc}") from None
    if shared:
        with _shared_lock:
            _shared[key] = sb
    return sb
