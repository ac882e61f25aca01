"""The ``dllm-bench`` command line (Typer + rich).

Exit codes: 0 ok; 1 run failed or regression (also an output that fails midway: a full disk);
2 bad input / usage (one line, no traceback), also an output directory that cannot be written
(checked before any model load) or that another process is writing; 130 / 143 interrupted by
SIGINT / SIGTERM (finished work is kept; re-running the same command resumes).
stdout carries only results (``--json`` output, final tables); logs and progress go to
stderr through one rich Console (:mod:`dllm_bench.console`).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .console import console, disable_progress, print_line, setup_logging, stdout_console
from .errors import (
    BadInputError,
    DllmBenchError,
    Interrupted,
    exit_on_signal,
    interrupt_in,
    note_signal,
    signal_received,
)
from .parallel import quiet_rank
from .sandboxes.cli import app as sandbox_app

app = typer.Typer(
    name="dllm-bench",
    help="Train -> evaluate harness for diffusion language models: samplers, trainers, tasks, "
         "sandboxes as plugins; every evaluation yields a comparable leaderboard entry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
leaderboard_app = typer.Typer(help="Build and show leaderboard tables from entries.", no_args_is_help=True)
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(sandbox_app, name="sandbox", help="Check sandboxes and build the Docker sandbox image.")


_in_command = False  # a handle_errors-wrapped command body is running (it reports interrupts itself)


def handle_errors(fn: Callable | None = None, *, saved: str | None = None) -> Callable:
    """Map errors to one stderr line (never a traceback, never parsed as markup) and an exit code.

    - :class:`DllmBenchError`: its ``exit_code`` (2 bad input, 1 failure);
    - :class:`OSError` (no space, read-only, permission denied, not a directory): exit 1 when
      it hits the claimed output directory midway (or the disk is full) — the line says what
      is saved and to re-run —, else exit 2 (an unusable path the user gave);
    - SIGINT / SIGTERM (:class:`KeyboardInterrupt`, :class:`~dllm_bench.errors.Interrupted`),
      also when a cleanup it started raised another error, or any error raised after the
      process received one of them: exit 130 / 143 with what is saved.

    Args:
        saved: what a re-run resumes from, for the interrupt and failure lines (e.g.
            "finished samples are saved"); None for commands with nothing to resume.
    """
    if fn is None:
        return functools.partial(handle_errors, saved=saved)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _in_command
        _in_command = True
        try:
            result = fn(*args, **kwargs)
        except (typer.Exit, SystemExit):
            if signal_received() is None:
                raise
            _report_interrupt(None, saved)
        except BaseException as exc:  # noqa: BLE001 - mapped below, anything else re-raised
            intr = interrupt_in(exc)
            if intr is not None or signal_received() is not None:
                # an error after a signal is its consequence (a library that swallowed the
                # KeyboardInterrupt of a half-done import fails later): reported as the interrupt
                _report_interrupt(intr, saved)
            if isinstance(exc, DllmBenchError):
                if not (isinstance(exc, BadInputError) and quiet_rank()):  # rank 0 reports the same input
                    print_line("error:", str(exc))
                raise typer.Exit(exc.exit_code) from None
            if isinstance(exc, OSError):
                code, line = _os_error_line(exc, saved)
                print_line("error:", line)
                raise typer.Exit(code) from None
            raise
        if signal_received() is not None:  # a library swallowed the interrupt and the command went on
            _report_interrupt(None, saved)
        return result

    return wrapper


def _report_interrupt(intr: KeyboardInterrupt | None, saved: str | None) -> None:
    """Print the interrupt line and exit 130 / 143 (the signal of ``intr``, else the one received).

    Raises:
        typer.Exit: always, with code ``128 + signum``.
    """
    signum = getattr(intr, "signum", None) or signal_received() or signal.SIGINT
    if quiet_rank():  # rank 0 of the launch says it for every rank
        raise typer.Exit(128 + int(signum)) from None
    if saved:
        print_line("interrupted:", f"{saved}; re-run the same command to resume")
    else:
        print_line("interrupted", "")
    raise typer.Exit(128 + int(signum)) from None


def _os_error_line(exc: OSError, saved: str | None) -> tuple[int, str]:
    """(exit code, one line) for an OSError that reached the CLI: 1 when the run's own output
    failed midway (a file inside a claimed output directory, a full disk), else 2."""
    import errno

    from .outdir import claimed, describe_os_error, held_by_us

    line = describe_os_error(exc)
    fname = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    midway = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) or (
        fname is not None and held_by_us(Path(os.fsdecode(fname)).parent))
    if not midway:
        return 2, line
    where = " in " + ", ".join(map(str, claimed())) if claimed() else ""
    return 1, line + (f"; the run stopped: {saved}{where}; fix this and re-run the same command to resume"
                      if saved else "; the command stopped; fix this and re-run it")


def _deterministic(on: bool, threads: int = 1) -> None:
    """Enter deterministic mode (may re-execute the process) before torch is imported."""
    if on:
        from . import determinism

        determinism.enter(threads)


def parse_value(v: str) -> Any:
    """An option value as a YAML scalar (``0.9`` -> float, ``true`` -> bool, ``4`` -> int);
    the empty string and text that is not valid YAML stay strings."""
    import yaml

    try:
        return yaml.safe_load(v) if v != "" else ""
    except yaml.YAMLError:
        return v


def parse_kv(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """Parse ``k=v`` options; values are YAML scalars (:func:`parse_value`)."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise BadInputError(f"{option} expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def parse_sweep(specs: list[str]) -> tuple[str, list[Any]]:
    """Parse ``--sweep KNOB=v1,v2,...`` into (knob, values); each value as :func:`parse_value`.

    Raises:
        BadInputError: more than one ``--sweep`` (one knob at a time), no ``=``, an empty
            knob name or value, or a value given twice.
    """
    if len(specs) != 1:
        raise BadInputError(f"--sweep takes one knob at a time, got {len(specs)}: {', '.join(specs)}")
    spec = specs[0]
    if "=" not in spec:
        raise BadInputError(f"--sweep expects KNOB=v1,v2,..., got {spec!r}")
    knob, text = (x.strip() for x in spec.split("=", 1))
    parts = [t.strip() for t in text.split(",")]
    if not knob or any(t == "" for t in parts):
        raise BadInputError(f"--sweep expects KNOB=v1,v2,... with no empty knob or value, got {spec!r}")
    values = [parse_value(t) for t in parts]
    for i, v in enumerate(values):
        if any(type(v) is type(w) and v == w for w in values[:i]):
            raise BadInputError(f"--sweep: value {parts[i]!r} is given twice")
    return knob, values


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _version_cb(value: bool) -> None:
    if value:
        sys.stdout.write(f"dllm-bench {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version_cb, is_eager=True, help="Print the version and exit.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level (stderr).")] = "INFO",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Never draw progress bars.")] = False,
) -> None:
    setup_logging(log_level)
    if no_progress:
        disable_progress()
    from .console import progress_enabled

    if not progress_enabled():  # also silence the libraries' own tqdm bars (transformers, hub, datasets)
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


# ------------------------------------------------------------------------------ list
@app.command("list")
@handle_errors
def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="samplers | trainers | tasks | sandboxes (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Also import each plugin (may import torch).")] = False,
) -> None:
    """List installed plugins (without importing them unless --check)."""
    from rich.table import Table

    from . import registry

    kinds = [registry._check_kind(kind)] if kind else list(registry.KINDS)
    rows = []
    for k in kinds:
        for info in registry.discover(k):
            problem = info.problem
            if problem is None and check:
                problem = registry.try_import(k, info.name)
            rows.append({"kind": k, "name": info.name, "target": info.target, "distribution": info.distribution,
                         "version": info.dist_version, "status": "ok" if problem is None else "broken",
                         "problem": problem})
    for r in rows:
        if r["problem"]:
            print_line("warning:", f"{r['kind']} {r['name']!r}: {r['problem']}", style="yellow")
    if as_json:
        print_json(rows)
        return
    table = Table(title="dllm-bench plugins")
    for col in ("kind", "name", "target", "distribution", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["target"], f"{r['distribution']} {r['version']}", r["status"])
    stdout_console.print(table)


# ------------------------------------------------------------------------------ eval
NUM_PROCESSES_HELP = ("Data-parallel: run as N processes on this machine (one per GPU; gloo on CPU), each evaluating "
                      "every N-th batch; the result is that of one process. Same as `accelerate launch "
                      "--num_processes N -m dllm_bench ...`.")


def _relaunch(num_processes: str | None) -> None:
    """``--num-processes N`` > 1: run this command line again as N ranks
    (:func:`dllm_bench.parallel.spawn`) and exit with their exit code."""
    if num_processes is None:
        return
    from .parallel import parse_num_processes, spawn, strip_option

    n = parse_num_processes(num_processes)
    if n > 1:
        raise typer.Exit(spawn(n, strip_option(sys.argv[1:], "--num-processes")))


SAVED_SAMPLES = "finished samples are saved"
SAVED_CHECKPOINTS = "checkpoints written so far are saved (training resumes from the last one)"
SAVED_RECIPE = "finished stages, checkpoints and samples are saved"


@app.command("eval")
@handle_errors(saved=SAVED_SAMPLES)
def eval_cmd(
    model: Annotated[str, typer.Option(
        help="Built-in spec (tiny-block-dlm, tiny-full-dlm, tiny-ar, smollm2-135m), a local checkpoint directory, a "
             ".gguf file or a hub id.")],
    task: Annotated[str, typer.Option(help="Task plugin name, or lm-eval:<task> to run an lm-eval task.")],
    sampler: Annotated[str, typer.Option(help="Sampler plugin name (see `dllm-bench list samplers`).")],
    sampler_arg: Annotated[list[str] | None, typer.Option(
        "--sampler-arg", help="Sampler config key=value (repeatable).")] = None,
    model_arg: Annotated[list[str] | None, typer.Option(
        "--model-arg", help="Model option key=value (repeatable): dtype, block_size, family, ...")] = None,
    task_arg: Annotated[list[str] | None, typer.Option(
        "--task-arg", help="Task config key=value (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N documents.")] = None,
    samples: Annotated[int, typer.Option(help="Samples per problem (k of mean@k / pass@k).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate() call.")] = 8,
    seed: Annotated[int, typer.Option(help="Base seed (python, numpy, torch, sampler).")] = 0,
    output: Annotated[Path, typer.Option(
        help="Output directory: entry JSON + per-sample JSONL; re-running resumes.")] = Path("runs/eval"),
    sandbox: Annotated[str | None, typer.Option(help="Code tasks: process | docker (default: best available).")] = None,
    data_source: Annotated[str, typer.Option(
        help="packaged (shipped data) | hub (datasets.load_dataset).")] = "packaged",
    record_trajectory: Annotated[bool, typer.Option(help="Store step maps in per-sample records.")] = False,
    label: Annotated[str | None, typer.Option(help="Row label for leaderboard tables.")] = None,
    sweep: Annotated[list[str] | None, typer.Option(
        "--sweep",
        help="KNOB=v1,v2,...: one evaluation per value of one sampler knob, each in <output>/KNOB=<value>/ "
             "(resumable; the model loads once).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the entry (with --sweep: the list of entries) as JSON on stdout.")] = False,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic/--native",
        help="Deterministic mode: pin the CPU code paths (ATen, MKL, oneDNN, libm), one thread and deterministic "
             "algorithms before torch loads, so any x86-64 machine gives the same bits.")] = False,
    num_processes: Annotated[str | None, typer.Option(
        "--num-processes", metavar="N", show_default=False, help=NUM_PROCESSES_HELP)] = None,
) -> None:
    """Evaluate MODEL on TASK with SAMPLER: writes a leaderboard entry + per-sample records."""
    _relaunch(num_processes)
    _deterministic(deterministic)
    if sweep:
        knob, values = parse_sweep(sweep)
        from .sweep import print_summary, run_sweep

        points = run_sweep(knob=knob, values=values, model=model, task=task, sampler=sampler,
                           sampler_args=parse_kv(sampler_arg, "--sampler-arg"),
                           model_args=parse_kv(model_arg, "--model-arg"), task_args=parse_kv(task_arg, "--task-arg"),
                           limit=limit, samples=samples, batch_size=batch_size, seed=seed, output=output,
                           sandbox=sandbox, data_source=data_source, record_trajectory=record_trajectory,
                           label=label)
        if quiet_rank():
            pass  # rank 0 prints the results
        elif as_json:
            print_json([p.entry.model_dump(mode="json") for p in points])
        else:
            print_summary(knob, points)
        if any(p.entry.status.state == "failed" for p in points):
            raise typer.Exit(1)
        return
    from .outdir import claim_output

    writable = claim_output(output, read_only_if="entry.json")  # before any model load
    from .evaluate import check_read_only_output, print_entry, run_eval

    if not writable:
        check_read_only_output(output)  # only a finished entry can be re-read from a read-only directory
    entry = run_eval(model=model, task=task, sampler=sampler, sampler_args=parse_kv(sampler_arg, "--sampler-arg"),
                     model_args=parse_kv(model_arg, "--model-arg"), task_args=parse_kv(task_arg, "--task-arg"),
                     limit=limit, samples=samples, batch_size=batch_size, seed=seed, output=output,
                     sandbox=sandbox, data_source=data_source, record_trajectory=record_trajectory, label=label)
    if quiet_rank():
        pass  # rank 0 prints the entry
    elif as_json:
        print_json(entry.model_dump(mode="json"))
    else:
        print_entry(entry)
    if entry.status.state == "failed":
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- serve
@app.command("serve")
@handle_errors
def serve_cmd(
    model: Annotated[str, typer.Option(
        help="Built-in spec, a local checkpoint directory, a .gguf file or a hub id (as for eval).")],
    sampler: Annotated[str, typer.Option(help="Default sampler plugin (requests may change its config fields).")],
    sampler_arg: Annotated[list[str] | None, typer.Option(
        "--sampler-arg", help="Default sampler config key=value (repeatable).")] = None,
    model_arg: Annotated[list[str] | None, typer.Option(
        "--model-arg", help="Model option key=value (repeatable), as for eval.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        help="Model name in /v1/models and responses (default: the --model value).")] = None,
    max_batch_size: Annotated[int, typer.Option(
        help="Most rows per generate() call when concurrent requests share a sampler config.")] = 8,
    batch_window: Annotated[float, typer.Option(
        help="Seconds to wait for more requests of the same config before a generate() call.")] = 0.01,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic/--native",
        help="Deterministic mode: pin the CPU code paths (ATen, MKL, oneDNN, libm), one thread and deterministic "
             "algorithms before torch loads, so any x86-64 machine gives the same bits.")] = False,
) -> None:
    """Serve MODEL with SAMPLER over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /v1/models, /health, /version); concurrent requests with the same sampler config are batched."""
    _deterministic(deterministic)
    from .serve import serve

    serve(model=model, model_args=parse_kv(model_arg, "--model-arg"), sampler=sampler,
          sampler_args=parse_kv(sampler_arg, "--sampler-arg"), host=host, port=port,
          served_model_name=served_model_name, max_batch_size=max_batch_size, batch_window_s=batch_window)


# ----------------------------------------------------------------------------- score
@app.command("score")
@handle_errors
def score_cmd(
    task: Annotated[str, typer.Option(help="Task plugin name.")],
    predictions: Annotated[Path, typer.Option(
        help='JSONL: {"id": "<doc id>", "completion": "..."} per line; several lines per id are several samples.')],
    as_json: Annotated[bool, typer.Option("--json", help="Print {task, metrics, n} as JSON on stdout.")] = False,
    output: Annotated[Path | None, typer.Option(help="Write per-sample verdicts (JSONL) here.")] = None,
    sandbox: Annotated[str | None, typer.Option(help="Code tasks: process | docker (default: best available).")] = None,
    task_arg: Annotated[list[str] | None, typer.Option(
        "--task-arg", help="Task config key=value (repeatable).")] = None,
    data_source: Annotated[str, typer.Option(help="packaged | hub")] = "packaged",
) -> None:
    """Score saved completions without a model (re-scoring, scorer upgrades, CPU CI)."""
    from .scoring import print_result, score_predictions

    result = score_predictions(task=task, predictions=predictions, output=output, sandbox=sandbox,
                               task_args=parse_kv(task_arg, "--task-arg"), data_source=data_source)
    if as_json:
        print_json(result)
    else:
        print_result(result)


# ----------------------------------------------------------------------------- train
@app.command("train")
@handle_errors(saved=SAVED_CHECKPOINTS)
def train_cmd(
    trainer: Annotated[str, typer.Option(
        help="Trainer plugin: sft, tracerl, value, block-adapt, dipo, random-mask-rl.")],
    config: Annotated[Path, typer.Option(help="Trainer config YAML (validated by the trainer's pydantic Config).")],
    output: Annotated[Path, typer.Option(
        help="Run directory: checkpoints, metrics.jsonl, final HF weights.")] = Path("runs/train"),
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config field key=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the train result as JSON on stdout.")] = False,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic/--native",
        help="Deterministic mode: pin the CPU code paths (ATen, MKL, oneDNN, libm), one thread and deterministic "
             "algorithms before torch loads, so any x86-64 machine gives the same bits.")] = False,
) -> None:
    """Train with a trainer plugin (single process here; `accelerate launch -m dllm_bench train ...` for many)."""
    _deterministic(deterministic)
    from .outdir import claim_output

    claim_output(output)  # before any model load
    from .trainers.cli import run_trainer

    result = run_trainer(trainer, config, output, overrides=parse_kv(set_, "--set"))
    if as_json:
        print_json(result.to_dict())
    else:
        stdout_console.print(f"final weights: {result.final_dir}", markup=False)


# ------------------------------------------------------------------------------- run
@app.command("run")
@handle_errors(saved=SAVED_RECIPE)
def run_cmd(
    recipe: Annotated[str | None, typer.Argument(
        help="Packaged recipe name or a recipe YAML path (default: the embedded default).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List packaged recipes.")] = False,
    output: Annotated[Path | None, typer.Option(
        help="Output directory (default: runs/<recipe>); re-running resumes.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, resolve every plugin and print the plan.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final leaderboard as JSON on stdout.")] = False,
    seed: Annotated[int | None, typer.Option(
        help="Override the recipe's seed (model init, training, sampling); default output then "
             "runs/<recipe>-seed<N>.")] = None,
    deterministic: Annotated[bool | None, typer.Option(
        "--deterministic/--native",
        help="Deterministic mode (the default for CPU recipes) or the machine's native kernels (default for GPU "
             "recipes).",
        show_default=False)] = None,
    num_processes: Annotated[str | None, typer.Option(
        "--num-processes", metavar="N", show_default=False,
        help="Run as N processes on this machine: evaluations are shared as in `eval --num-processes`, training "
             "stages run data-parallel (DDP).")] = None,
) -> None:
    """Run a train -> evaluate recipe; ends by printing the leaderboard table."""
    if not (list_ or dry_run):
        _relaunch(num_processes)
    from .recipes import run_cli

    run_cli(recipe=recipe, list_only=list_, output=output, dry_run=dry_run, as_json=as_json, seed=seed,
            deterministic=deterministic)


# ----------------------------------------------------------------------- leaderboard
@leaderboard_app.command("build")
@handle_errors
def leaderboard_build(
    entries: Annotated[Path, typer.Option(
        help="Directory of entry JSON files (searched recursively).")] = Path("leaderboards/entries"),
    output: Annotated[Path, typer.Option(
        help="Where to write README.md, leaderboard.csv/.json, index.html.")] = Path("leaderboards"),
    reference: Annotated[str | None, typer.Option(
        help="Row label to show a 'Δ vs <reference> ± stderr' column against (rows may also name theirs: an "
             "entry's reference field).")] = None,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified",
        help="List entries that do not verify, marked 'unverified' and never in a Δ (default: refuse them, "
             "exit 2).")] = False,
) -> None:
    """Write Markdown, CSV, JSON and a static HTML page: one systems × tasks table (rows: systems,
    columns: tasks under one protocol) plus a table per cell under another protocol.

    Every entry is verified first (samples sha256, record count, every metric recomputed from the
    per-sample records); one that fails is refused with one line (exit 2).
    """
    from .outdir import claim_output

    claim_output(output)
    from .leaderboard import build_cli

    build_cli(entries, output, reference=reference, allow_unverified=allow_unverified)


@leaderboard_app.command("show")
@handle_errors
def leaderboard_show(
    entries: Annotated[Path, typer.Option(help="Directory of entry JSON files.")] = Path("leaderboards/entries"),
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    reference: Annotated[str | None, typer.Option(help="Row label for the 'Δ vs <reference>' column.")] = None,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified",
        help="List entries that do not verify, marked 'unverified' and never in a Δ (default: refuse them, "
             "exit 2).")] = False,
) -> None:
    """Print the systems × tasks tables, each with its protocol in words (entries verified first)."""
    from .leaderboard import show_cli

    show_cli(entries, as_json=as_json, reference=reference, allow_unverified=allow_unverified)


@leaderboard_app.command("migrate")
@handle_errors
def leaderboard_migrate(
    path: Annotated[Path, typer.Argument(help="An entry JSON file or a directory of entries (searched recursively).")],
) -> None:
    """Rewrite every version-1 entry under PATH as schema version 2, in place (atomic writes;
    entry ids and per-sample files untouched; running it again changes nothing)."""
    from .leaderboard import migrate_cli

    migrate_cli(path)


# ------------------------------------------------------------------------------ gate
@app.command("gate")
@handle_errors
def gate_cmd(
    baseline: Annotated[Path, typer.Option(help="Baseline entry JSON or directory of entries.")],
    candidate: Annotated[Path, typer.Option(help="Candidate entry JSON or directory of entries.")],
    mode: Annotated[str, typer.Option(
        help="auto (paired when both sides have per-sample records, else stderr) | paired (per-problem outcomes) | "
             "stderr (one-sided bound with both stderrs).")] = "auto",
    max_drop: Annotated[float, typer.Option(help="Allowed drop in the metric (absolute, e.g. 0.02 = 2 points).")] = 0.0,
    z: Annotated[float, typer.Option(help="One-sided z for the bound (1.645 = 95%).")] = 1.645,
    metric: Annotated[str, typer.Option(help="Metric to gate on.")] = "accuracy",
    max_tps_drop: Annotated[float | None, typer.Option(
        help="Fail if tokens/s falls below baseline x (1 - this).")] = None,
    max_nfe_increase: Annotated[float | None, typer.Option(
        help="Fail if NFE per token rises above baseline x (1 + this).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON verdicts on stdout.")] = False,
) -> None:
    """Regression gate: exit 1 on a regression, 2 when entries are not comparable or do not verify.

    Every entry on both sides is verified first: its samples file's sha256 and record count, and
    every metric recomputed from the per-sample records with the task's own aggregation. An entry
    that fails (edited metric, truncated or deleted samples) is refused with one line (exit 2).
    """
    from .gate import gate_cli

    ok = gate_cli(baseline=baseline, candidate=candidate, mode=mode, max_drop=max_drop, z=z, metric=metric,
                  max_tps_drop=max_tps_drop, max_nfe_increase=max_nfe_increase, as_json=as_json)
    if not ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------- env
@app.command("env")
@handle_errors
def env_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic/--native", help="Show the environment a deterministic-mode run gets (pins applied).")] = False,
) -> None:
    """Versions, git sha, the device precisely (CPU model, ISA, torch CPU capability, threads, GPU,
    driver, CUDA / cuDNN, compute capability), the deterministic-mode pins, Docker and bubblewrap."""
    from rich.table import Table

    from .envinfo import collect

    _deterministic(deterministic)
    info = collect()
    if as_json:
        print_json(info)
        return
    t = Table(title="dllm-bench env", show_header=False)
    t.add_column("what")
    t.add_column("value")

    def rows(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k, sub in v.items():
                rows(f"{prefix}.{k}" if prefix else str(k), sub)
        elif isinstance(v, list):
            t.add_row(prefix, ", ".join(map(str, v)) or "-")
        else:
            t.add_row(prefix, "absent" if v is None else str(v))

    rows("", info)
    stdout_console.print(t)


# ---------------------------------------------------------------------------- schema
@app.command("schema")
@handle_errors
def schema_cmd(
    output: Annotated[Path | None, typer.Option(help="Write <name>.schema.json files into this directory.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this schema (entry, sample, recipe, published).")] = None,
) -> None:
    """Print or write the JSON Schemas of entries, per-sample records, recipes and published figures."""
    from .published import SCHEMA_NAME, published_schema
    from .recipes import Recipe
    from .schema import schemas

    all_s = {**schemas(), "recipe": Recipe.model_json_schema(), SCHEMA_NAME: published_schema()}
    if name and name not in all_s:
        raise BadInputError(f"unknown schema {name!r}; available: {', '.join(all_s)}")
    chosen = {name: all_s[name]} if name else all_s
    if output is None:
        print_json(chosen[name] if name else chosen)
        return
    output.mkdir(parents=True, exist_ok=True)
    for n, s in chosen.items():
        (output / f"{n}.schema.json").write_text(json.dumps(s, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {output / f'{n}.schema.json'}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point (the only caller allowed to re-execute the process for
    deterministic mode, :func:`dllm_bench.determinism.enter`).

    SIGINT and SIGTERM go through :func:`_on_signal` (an inherited SIG_IGN for SIGINT, as in
    a background job, is kept); :mod:`dllm_bench.__main__` installs one-line handlers even
    earlier, before this module's imports.
    """
    from . import determinism

    determinism.allow_reexec()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    app()


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT / SIGTERM inside a command body unwind like Ctrl-C (:class:`Interrupted`, finished
    work is kept and :func:`handle_errors` reports it; exit 130 / 143). Outside one (argument
    parsing, a command without :func:`handle_errors`) they print one ``interrupted`` line and
    exit 130 / 143 at once: never Click's ``Aborted!`` nor a traceback."""
    note_signal(signum)
    if not _in_command:
        exit_on_signal(signum)
    raise Interrupted(signum)


if __name__ == "__main__":
    main()
