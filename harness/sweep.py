"""``dllm-bench eval --sweep KNOB=v1,v2,...``: one evaluation per value of one sampler knob.

Output layout (``--output OUT``)::

    OUT/
      .dllm-bench.lock            one writer for the whole sweep
      sweep.json                  {"knob": ..., "points": [{"value": ..., "dir": ...}, ...]}
      KNOB=<value>/               an ordinary eval output directory per point, locked too:
        entry.json  samples.jsonl  run.json  .dllm-bench.lock

The point directory is named ``<knob>=<value>`` (:func:`point_dirname`): the value as JSON
writes it (``0.5``, ``true``, ``null``, strings bare) with every character outside
``A-Z a-z 0-9 . _ + - =`` replaced by ``_``, e.g. ``confidence_threshold=0.5``.

Each point is :func:`dllm_bench.evaluate.run_eval` with the knob's value overriding that
sampler arg, so each point resumes like any eval directory: a re-run skips finished samples
(a complete point generates nothing) and resumes a partial one. The model is loaded once and
passed to every point. Every value is validated by the sampler's pydantic Config, and the
directories are claimed, before the model loads: an unknown knob, an invalid value, a knob
also given as ``--sampler-arg``, or an ``OUT`` that holds a sweep of another knob (or a
single evaluation) is bad input (exit code 2) that writes nothing. Sweeping a knob over
several runs into the same ``OUT`` adds the new values to ``sweep.json``. Under a launch
(``accelerate launch``, ``--num-processes``) each point is shared by the ranks like any
evaluation (:mod:`dllm_bench.parallel`) and rank 0 writes ``sweep.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .schema import Entry

MANIFEST = "sweep.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=\-]")
_KNOB = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SweepPoint:
    """One finished point: the knob's value, its output directory and its entry."""

    value: Any
    directory: Path
    entry: Entry


def point_dirname(knob: str, value: Any) -> str:
    """``<knob>=<value>``, filesystem-safe (module docstring): ``point_dirname("confidence_threshold", 0.5)``
    is ``confidence_threshold=0.5``."""
    text = value if isinstance(value, str) else json.dumps(value)
    return _UNSAFE.sub("_", f"{knob}={text}")


def check_points(knob: str, values: list[Any], sampler: str, sampler_args: dict[str, Any]) -> None:
    """Validate every point's sampler config without a model (the sampler's pydantic Config).

    Raises:
        BadInputError: unknown sampler, a knob the sampler does not have, a knob also given
            as ``--sampler-arg``, or a value its Config rejects.
    """
    from . import registry

    if not _KNOB.match(knob):
        raise BadInputError(f"--sweep: {knob!r} is not a knob name")
    cls = registry.load("samplers", sampler)
    fields = cls.Config.model_fields
    if knob not in fields:
        raise BadInputError(f"--sweep: sampler {sampler!r} has no knob {knob!r}; its knobs: {', '.join(fields)}")
    if knob in sampler_args:
        raise BadInputError(f"--sweep {knob} is also given as --sampler-arg {knob}={sampler_args[knob]}")
    for v in values:
        registry.validate_config(cls.Config, {**sampler_args, knob: v}, what=f"sampler {sampler!r} config",
                                 source=f"--sweep {knob}={v}")


def _manifest_points(out: Path, knob: str) -> list[dict[str, Any]]:
    """The points already recorded in ``out/sweep.json`` (empty when there is none).

    Raises:
        BadInputError: ``out`` holds a sweep of another knob, a single evaluation, or an
            unreadable manifest.
    """
    from .evaluate import RUN_FILE

    if (out / RUN_FILE).exists():
        raise BadInputError("output directory holds a single evaluation, not a sweep; use another --output",
                            path=out)
    path = out / MANIFEST
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
        old_knob, points = old["knob"], list(old["points"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"invalid sweep manifest: {exc}", path=path) from None
    if old_knob != knob:
        raise BadInputError(f"output directory holds a sweep of {old_knob!r}, not {knob!r}; use another --output",
                            path=path)
    return points


def run_sweep(*, knob: str, values: list[Any], model: str, task: str, sampler: str,
              sampler_args: dict[str, Any] | None = None, model_args: dict[str, Any] | None = None,
              output: str | Path, label: str | None = None, **eval_kwargs: Any) -> list[SweepPoint]:
    """Evaluate once per value of sampler knob ``knob``, each point in ``output/<knob>=<value>``.

    Args:
        knob: a field of the sampler's Config (e.g. ``confidence_threshold``).
        values: its values, in order (parsed like ``--sampler-arg`` values).
        model / model_args: loaded once (:func:`dllm_bench.models.load_model`) for all points.
        sampler_args: the other sampler knobs (must not contain ``knob``).
        output: the sweep directory (layout in the module docstring).
        label: when given, point labels are ``"<label> <knob>=<value>"``.
        eval_kwargs: the rest of :func:`dllm_bench.evaluate.run_eval`'s arguments (task_args,
            limit, samples, batch_size, seed, sandbox, data_source, record_trajectory).

    Returns:
        one :class:`SweepPoint` per value, in order.

    Raises:
        BadInputError: see :func:`check_points` and :func:`_manifest_points`; a point directory
            name given twice; anything :func:`dllm_bench.evaluate.run_eval` rejects.
    """
    from .evaluate import run_eval
    from .models import load_model
    from .outdir import claim_output, write_atomic
    from .parallel import ranks

    if not values:
        raise BadInputError(f"--sweep {knob}: no values")
    sargs = dict(sampler_args or {})
    check_points(knob, values, sampler, sargs)
    out = Path(output)
    names = [point_dirname(knob, v) for v in values]
    if len(set(names)) != len(names):
        raise BadInputError(f"--sweep {knob}: two values give the same point directory ({', '.join(names)})")
    known = _manifest_points(out, knob) if out.is_dir() else []
    claim_output(out)
    dirs = [out / n for n in names]
    for d in dirs:
        claim_output(d, own_lock=True)  # before any model load
    group = ranks()  # under a launch every point is shared by the ranks; rank 0 writes the manifest
    adapter = load_model(str(model), arg_source="--model-arg", **group.model_args(model_args))
    recorded = {p.get("dir") for p in known}
    points = known + [{"value": v, "dir": n} for v, n in zip(values, names) if n not in recorded]
    if group.main:
        write_atomic(out / MANIFEST, json.dumps({"knob": knob, "points": points}, indent=2) + "\n")
    results = []
    for v, d in zip(values, dirs):
        entry = run_eval(model=adapter, task=task, sampler=sampler, sampler_args={**sargs, knob: v}, output=d,
                         label=f"{label} {knob}={v}" if label else None, **eval_kwargs)
        results.append(SweepPoint(value=v, directory=d, entry=entry))
    return results


def primary_metric(entry: Entry) -> str | None:
    """``accuracy`` when the entry has it, else its first metric, else None."""
    if "accuracy" in entry.metrics:
        return "accuracy"
    return next(iter(entry.metrics), None)


def summary_rows(knob: str, points: list[SweepPoint]) -> list[dict[str, Any]]:
    """One dict per point: point (``knob=value``), state, metric name, value, stderr, n,
    tokens per forward, NFE per sample (the entry's NFE / samples done)."""
    rows = []
    for p in points:
        e = p.entry
        name = primary_metric(e)
        m = e.metrics.get(name) if name else None
        rows.append({"point": f"{knob}={p.value}", "state": e.status.state, "metric": name,
                     "value": m.value if m else None, "stderr": m.stderr if m else None, "n": m.n if m else None,
                     "tokens_per_forward": e.cost.tokens_per_forward,
                     "nfe_per_sample": e.cost.nfe / e.status.n_done if e.status.n_done else None,
                     "directory": str(p.directory)})
    return rows


def print_summary(knob: str, points: list[SweepPoint]) -> None:
    """Print the sweep's summary table on stdout (:func:`summary_rows`)."""
    from rich.markup import escape
    from rich.table import Table

    from .console import stdout_console

    def f(x: float | None, digits: int) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    rows = summary_rows(knob, points)
    metric = next((r["metric"] for r in rows if r["metric"]), None) or "metric"
    t = Table(title=escape(f"sweep over {knob}: {metric} ± stderr, tokens per forward, NFE per sample"))
    for col in ("value", "state", metric, "n", "tok/fwd", "NFE/sample"):
        t.add_column(escape(col), justify="left" if col in ("value", "state") else "right", no_wrap=True)
    for p, r in zip(points, rows):
        val = f(r["value"], 4) + ("" if r["stderr"] is None else f" ± {r['stderr']:.4f}")
        t.add_row(escape(str(p.value)), r["state"], val, "-" if r["n"] is None else str(r["n"]),
                  f(r["tokens_per_forward"], 3), f(r["nfe_per_sample"], 2))
    stdout_console.print(t)
