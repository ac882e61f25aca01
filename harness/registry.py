"""Lazy entry-point plugin registry (lm-eval ``Registry`` semantics, ``importlib.metadata``).

Plugin kinds and their entry-point groups::

    samplers  -> dllm_bench.samplers       trainers  -> dllm_bench.trainers
    tasks     -> dllm_bench.tasks          sandboxes -> dllm_bench.sandboxes

An entry point's value names the plugin object itself (``"pkg.mod:Obj"``), a class with
class attributes ``name``, ``version`` and ``Config`` (a pydantic model,
``extra="forbid"``) implementing the kind's contract (:func:`contract`:
``dllm_bench.<kind>.base``). Built-ins are declared the same way in dllm-bench's own
``pyproject.toml``. Nothing is imported until a plugin is selected, so ``dllm-bench
list`` imports neither torch nor transformers.

Environment controls:
    ``DLLM_BENCH_PLUGINS=a,b``: allowlist of distributions whose plugins are visible
        (dllm-bench's own are always visible).
    ``DLLM_BENCH_DISABLE_PLUGIN_AUTOLOAD=1``: only dllm-bench's own plugins.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import BadInputError, PluginError, did_you_mean
from .plugins import check_plugin, conform, validate_config

KINDS: dict[str, str] = {
    "samplers": "dllm_bench.samplers",
    "trainers": "dllm_bench.trainers",
    "tasks": "dllm_bench.tasks",
    "sandboxes": "dllm_bench.sandboxes",
}
SINGULAR = {"samplers": "sampler", "trainers": "trainer", "tasks": "task", "sandboxes": "sandbox"}
OWN_DISTRIBUTION = "dllm-bench"


@dataclass
class PluginInfo:
    """What ``list`` shows about one plugin, known without importing it."""

    kind: str
    name: str
    target: str
    distribution: str
    dist_version: str
    entry_points: list[EntryPoint] = field(default_factory=list, repr=False)
    problem: str | None = None

    @property
    def status(self) -> str:
        return "ok" if self.problem is None else "broken"


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version or "?")


def _visible(dist_name: str) -> bool:
    if _canon(dist_name) == _canon(OWN_DISTRIBUTION):
        return True
    if os.environ.get("DLLM_BENCH_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0"):
        return False
    allow = os.environ.get("DLLM_BENCH_PLUGINS", "").strip()
    if allow:
        return _canon(dist_name) in {_canon(a) for a in allow.split(",") if a.strip()}
    return True


def _canon(name: str) -> str:
    return name.lower().replace("_", "-")


def _check_kind(kind: str) -> str:
    if kind in KINDS:
        return kind
    plural = kind + "s" if kind + "s" in KINDS else ("sandboxes" if kind == "sandbox" else None)
    if plural:
        return plural
    raise BadInputError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")


def discover(kind: str) -> list[PluginInfo]:
    """All visible plugins of ``kind``, sorted by name, without importing any of them.

    A name declared by two distributions (or twice) is reported once with ``problem`` set;
    a target whose module cannot be located is reported with ``problem`` set.
    """
    kind = _check_kind(kind)
    by_name: dict[str, list[EntryPoint]] = {}
    # Deduplicate identical entry points (the same distribution seen twice on sys.path).
    seen: set[tuple[str, str, str]] = set()
    for ep in entry_points(group=KINDS[kind]):
        dist, _ = _dist_of(ep)
        if not _visible(dist):
            continue
        sig = (ep.name, ep.value, _canon(dist))
        if sig in seen:
            continue
        seen.add(sig)
        by_name.setdefault(ep.name, []).append(ep)
    infos = []
    for name, eps in sorted(by_name.items()):
        dist, ver = _dist_of(eps[0])
        info = PluginInfo(kind, name, eps[0].value, dist, ver, eps)
        if len(eps) > 1:
            dists = ", ".join(f"{_dist_of(e)[0]} ({e.value})" for e in eps)
            info.problem = f"duplicate {SINGULAR[kind]} name {name!r} declared by: {dists}"
        else:
            info.problem = _locate_problem(eps[0])
        infos.append(info)
    return infos


def _locate_problem(ep: EntryPoint) -> str | None:
    """Find the module without executing it (``find_spec``); parent packages may be imported."""
    module = ep.value.split(":")[0].strip()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"cannot locate module {module!r}: {exc}"
    if spec is None:
        return f"module {module!r} not found"
    return None


def names(kind: str) -> list[str]:
    return [p.name for p in discover(kind)]


def _unknown(kind: str, name: str, available: list[str]) -> PluginError:
    hint = did_you_mean(name, available)
    avail = ", ".join(available) if available else "(none installed)"
    return PluginError(f"unknown {SINGULAR[kind]} {name!r}{hint} Available {kind}: {avail}")


def load(kind: str, name: str) -> Any:
    """Import and return the plugin class ``name`` of ``kind``: a subclass of the kind's
    :func:`contract` (a duck-typed class with every abstract method comes back as a subclass of
    itself and the contract, so the harness can call the contract's optional methods).

    Raises:
        PluginError: unknown name (with "did you mean" and the available names), a name
            declared twice, an import failure (original exception chained), or a class that
            does not implement the kind's contract (the missing attributes / methods named).
    """
    kind = _check_kind(kind)
    infos = {p.name: p for p in discover(kind)}
    if name not in infos:
        raise _unknown(kind, name, sorted(infos))
    info = infos[name]
    if len(info.entry_points) > 1:
        raise PluginError(info.problem or f"duplicate {SINGULAR[kind]} {name!r}")
    ep = info.entry_points[0]
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported
        raise PluginError(
            f"{SINGULAR[kind]} {name!r} ({ep.value}, from {info.distribution}) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    spec = contract(kind)
    problem = check_plugin(spec, obj)
    if problem:
        raise PluginError(f"{SINGULAR[kind]} {name!r} ({ep.value}) does not implement the {SINGULAR[kind]} "
                          f"contract ({spec.__module__}.{spec.__name__}): {problem}")
    try:
        return conform(spec, obj)
    except TypeError as exc:  # e.g. a metaclass conflict: the plugin must subclass the contract itself
        raise PluginError(f"{SINGULAR[kind]} {name!r} ({ep.value}) cannot take the defaults of "
                          f"{spec.__module__}.{spec.__name__} ({exc}); subclass it") from exc


def contract(kind: str) -> type:
    """The contract class of ``kind`` (``dllm_bench.<kind>.base``): what a plugin implements and
    the harness calls. Importing the samplers' or trainers' contract imports torch."""
    kind = _check_kind(kind)
    if kind == "tasks":
        from .tasks.base import Task

        return Task
    if kind == "samplers":
        from .samplers.base import Sampler

        return Sampler
    if kind == "trainers":
        from .trainers.base import Trainer

        return Trainer
    from .sandboxes.base import Sandbox

    return Sandbox


def create(kind: str, name: str, config: dict[str, Any] | None = None, *, source: str | None = None) -> Any:
    """Load plugin ``name`` and instantiate it with a validated config.

    ``config`` is validated by the plugin's pydantic ``Config`` (``extra="forbid"``).

    Raises:
        PluginError: see :func:`load`.
        BadInputError: the config does not validate (names the field and ``source``).
    """
    cls = load(kind, name)
    cfg = validate_config(cls.Config, config or {}, what=f"{SINGULAR[_check_kind(kind)]} {name!r} config",
                          source=source)
    return cls(cfg)


def try_import(kind: str, name: str) -> str | None:
    """Import a plugin for ``list --check``; returns the problem line or None."""
    try:
        load(kind, name)
    except PluginError as exc:
        return str(exc)
    return None
