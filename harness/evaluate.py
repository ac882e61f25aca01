"""``dllm-bench eval``: model x task x sampler -> a leaderboard entry + per-sample records.

:func:`run_eval` does, in order:

1. builds the task (``registry.create("tasks", ...)`` with ``--task-arg`` values plus
   ``limit`` / ``data_source`` / ``sandbox`` where the task's Config has them), loads the
   model (:func:`dllm_bench.models.load_model`), builds the sampler (its ``block_size``
   defaults to the model's, and the resolved value is what the key records);
2. forms the work list: every (document, sample index) pair in document order, cut into
   fixed batches of ``batch_size``; a sample's seed is ``sample_seed(seed, doc index,
   sample index)`` and its random draws depend only on that seed (per-row generators), so
   a resumed run produces the same samples as an uninterrupted one;
3. for each batch, skips samples already in ``<output>/samples.jsonl`` (a re-run
   resumes: finished samples are neither lost nor recomputed), renders the prompts with
   ``task.prompt(doc, tokenizer)``, generates, scores (``task.score_batch``), and appends one
   :class:`~dllm_bench.schema.SampleRecord` per sample, flushed to disk;
4. aggregates the verdicts of all records (``task.aggregate``) and writes ``<output>/entry.json``
   (:class:`~dllm_bench.schema.Entry`) through :func:`dllm_bench.entry_writer.write_entry`, the
   path lm-eval tasks take too (per-sample costs summed there).

Under a distributed launch (``accelerate launch``, ``dllm-bench eval --num-processes N``;
:mod:`dllm_bench.parallel`) batch ``b`` runs on rank ``b % N``, each rank appends to
``samples.rank<R>.jsonl`` (any records file there counts as done, whichever launch wrote it),
and rank 0 alone folds the rank files into ``samples.jsonl`` in document order and writes the
entry (step 4) once every rank is done; the other ranks return that entry. Every batch keeps
its one-process composition, so the records and the entry are those of a one-process run
(wall time aside).

``<output>/run.json`` pins the protocol and system digests and the model identity of the run:
re-running into the same directory with a different task / sampler config / model is bad
input (exit code 2) instead of silently mixing samples. ``--task lm-eval:<name>`` is
delegated to :func:`dllm_bench.lmeval.run_lmeval_task`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import console, progress, stdout_console
from .entry_writer import ENTRY_FILE, SAMPLES_FILE, write_entry
from .errors import BadInputError, RunFailedError
from .schema import Entry, Metric, ModelInfo, SampleRecord, sha256_text, split_keys

if TYPE_CHECKING:
    from .models import ModelAdapter
    from .plugins import Doc
    from .samplers.base import Sampler
    from .tasks.base import Task

log = logging.getLogger("dllm_bench.evaluate")

RUN_FILE = "run.json"


def _build_task(task: str, task_args: dict[str, Any], limit: int | None, data_source: str,
                sandbox: str | None) -> tuple[Task, list[Doc]]:
    from . import registry
    from .scoring import build_task

    cls = registry.load("tasks", task)
    fields = dict(cls.Config.model_fields)
    args = dict(task_args)
    if limit is not None and "limit" in fields:
        if "limit" in args and args["limit"] != limit:
            raise BadInputError(f"--limit {limit} conflicts with --task-arg limit={args['limit']}")
        args["limit"] = limit
    obj = build_task(task, args, data_source=data_source, sandbox=sandbox)
    docs = list(obj.docs())
    if limit is not None and "limit" not in fields:
        docs = docs[:limit]
    return obj, docs


def _build_sampler(name: str, sampler_args: dict[str, Any], adapter: ModelAdapter,
                   source: str = "--sampler-arg") -> Sampler:
    """The sampler ``name`` with ``sampler_args`` (validated; errors name ``source``), its
    ``block_size`` / ``block_alignment`` defaulting to the model's, checked against the model."""
    from . import registry

    cls = registry.load("samplers", name)
    args = dict(sampler_args)
    fields = cls.Config.model_fields
    if "block_size" in fields and args.get("block_size") is None and adapter.block_size is not None:
        args["block_size"] = adapter.block_size
    if "block_alignment" in fields and args.get("block_alignment") is None:
        args["block_alignment"] = adapter.block_alignment  # recorded in the key
    obj = registry.create("samplers", name, args, source=source)
    obj.check_model(adapter)
    return obj


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _check_run_file(path: Path, ident: dict[str, Any], pin: bool = True) -> None:
    from .outdir import check_run, pin_run

    if not check_run(path, ident, conflict="output directory holds a run with a different {fields}; use another "
                     "--output (or delete it) instead of mixing samples") and pin:
        pin_run(path, ident)


def check_read_only_output(output: str | Path) -> None:
    """A read-only ``output`` (``claim_output(..., read_only_if="entry.json")`` returned False)
    can only be re-read: it must hold a finished entry. Checked before the model loads, so an
    unfinished run there is refused at once instead of after loading and generating.

    Raises:
        BadInputError: naming the directory: why it cannot be written, and that its entry is
            unfinished (``partial`` / ``failed``) or unreadable.
    """
    from .outdir import check_writable

    out = Path(output)
    try:
        check_writable(out)
        return  # writable after all (a race with a remount): the normal path handles it
    except BadInputError as exc:
        reason = exc.message
    try:
        entry = Entry.load(out / ENTRY_FILE)
    except BadInputError as exc:
        raise BadInputError(f"{reason}; its {ENTRY_FILE} cannot be read ({exc.message}), so the run there cannot "
                            "be reported or resumed; make it writable or use another --output", path=out) from None
    st = entry.status
    if st.state != "complete":
        raise BadInputError(f"{reason}; it holds an unfinished run ({ENTRY_FILE} status {st.state}, {st.n_done} of "
                            f"{st.n_expected} samples) that cannot be resumed there; make it writable to resume, or "
                            "use another --output", path=out)


def run_eval(*, model: str | Path | ModelAdapter, task: str, sampler: str, sampler_args: dict[str, Any] | None = None,
             model_args: dict[str, Any] | None = None, task_args: dict[str, Any] | None = None,
             limit: int | None = None, samples: int = 1, batch_size: int = 8, seed: int = 0,
             output: str | Path = "runs/eval", sandbox: str | None = None, data_source: str = "packaged",
             record_trajectory: bool = False, label: str | None = None,
             reference: str | None = None) -> Entry:
    """Evaluate ``model`` on ``task`` with ``sampler``; write and return the entry.

    Args:
        model: a :func:`dllm_bench.models.load_model` spec, or an already loaded
            :class:`~dllm_bench.models.ModelAdapter` (then ``model_args`` must be empty).
        task: a task plugin name, or ``lm-eval:<task>``.
        sampler: a sampler plugin name.
        sampler_args / model_args / task_args: configs (``--sampler-arg`` etc.).
        limit: only the first N documents.
        samples: samples per problem (k of mean@k / pass@k), >= 1.
        batch_size: prompts per ``generate`` call, >= 1.
        seed: base seed; sample (doc i, sample j) uses ``sample_seed(seed, i, j)``.
        output: directory for ``entry.json``, ``samples.jsonl``, ``run.json``; re-running resumes.
        sandbox / data_source: passed to the task when its Config has them.
        record_trajectory: store each sample's step map and per-step commits in its record.
        label: row label for leaderboard tables.
        reference: label of the row this entry is compared against (a Δ column).

    Returns:
        the written :class:`~dllm_bench.schema.Entry` (status ``complete``, ``partial`` when
        some batches failed, ``failed`` when none succeeded).

    Raises:
        BadInputError: unknown plugin / model, invalid config, a sampler that does not fit the
            model family, an output directory holding a different run, an ``lm-eval:`` task
            under a launch of several processes.
        OSError: writing ``output`` failed (no space, read-only, ...): finished samples stay in
            ``samples.jsonl``. A read-only ``output`` that already holds this finished run's
            entry is not an error: that entry is returned.
    """
    from .parallel import ranks

    group = ranks()
    if task.startswith("lm-eval:"):
        if group.sharded:
            raise BadInputError(f"--task {task} runs in one process; lm-eval tasks cannot be shared by "
                                f"{group.world_size} processes (run it without a launch or --num-processes)")
        from .lmeval import run_lmeval_task

        return run_lmeval_task(model=model, task=task, sampler=sampler, sampler_args=sampler_args,
                               model_args=model_args, task_args=task_args, limit=limit, samples=samples,
                               batch_size=batch_size, seed=seed, output=output, sandbox=sandbox,
                               data_source=data_source, record_trajectory=record_trajectory, label=label,
                               reference=reference)
    if samples < 1:
        raise BadInputError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise BadInputError(f"--limit must be >= 1, got {limit}")

    from .models import ModelAdapter, load_model
    from .results import RunSamples, merge_rank_files
    from .samplers.base import sample_seed

    _seed_everything(seed)
    task_obj, docs = _build_task(task, dict(task_args or {}), limit, data_source, sandbox)
    if not docs:
        raise BadInputError(f"task {task!r} has no documents to evaluate")
    if isinstance(model, ModelAdapter):
        if model_args:
            raise BadInputError("model_args cannot be applied to an already loaded model")
        adapter = model
    else:
        adapter = load_model(str(model), arg_source="--model-arg", **group.model_args(model_args))
    sampler_obj = _build_sampler(sampler, dict(sampler_args or {}), adapter)
    tok = adapter.tokenizer
    minfo = ModelInfo(**adapter.model_info())
    protocol, system = split_keys(task_obj.key(tok), samples, sampler_obj.key(), task_obj.sandbox_key(), minfo)
    seeds = {"seed": seed, "python": seed, "numpy": seed % 2 ** 32, "torch": seed}

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(out / RUN_FILE, {"protocol_digest": protocol.digest(), "system_digest": system.digest(),
                                     "model": minfo.id,
                                     "weights": minfo.weights_sha256 or minfo.config_sha256, "seed": seed},
                    pin=group.main)
    items = [(di, doc, si) for di, doc in enumerate(docs) for si in range(samples)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    errors: list[str] = []
    n_failed = 0
    with RunSamples(out, group.rank, group.world_size) as store:
        done = sum(1 for _, d, s in items if (d.id, s) in store)
        mine = [b for i, b in enumerate(batches) if group.owns(i)]  # all of them in one process
        todo = sum(1 for b in mine for _, d, s in b if (d.id, s) not in store)
        group.barrier()  # every rank has counted what was there before any of them writes
        if group.sharded and group.main:
            console.print(f"shared by {group.world_size} processes: batch b of {len(batches)} runs on rank b mod "
                          f"{group.world_size}", markup=False, highlight=False, soft_wrap=True)
        if done and group.main:
            where = out / SAMPLES_FILE if not group.sharded else f"{out} (samples.jsonl and rank files)"
            console.print(f"resuming: {done} of {len(items)} samples already in {where}",
                          markup=False, highlight=False, soft_wrap=True)
        with progress(f"eval {task}", todo) as advance:
            for batch in mine:
                pending = [(di, d, si) for di, d, si in batch if (d.id, si) not in store]
                if not pending:
                    continue
                prompts = [task_obj.prompt(d, tok) for _, d, _ in pending]
                row_seeds = [sample_seed(seed, di, si) for di, _, si in pending]
                try:
                    gens = sampler_obj.generate(adapter, [adapter.encode(p) for p in prompts], seed=row_seeds,
                                                record_trajectory=record_trajectory)
                except BadInputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing batch is recorded, the run goes on
                    n_failed += len(pending)
                    errors.append(f"{type(exc).__name__}: {exc}"[:500])
                    log.error("batch failed (%s samples): %s", len(pending), errors[-1])
                    advance(len(pending))
                    continue
                verdicts = task_obj.score_batch([(d, g.text) for (_, d, _), g in zip(pending, gens)])
                for (_, d, si), p, g, v, s in zip(pending, prompts, gens, verdicts, row_seeds):
                    store.append(SampleRecord(
                        doc_id=d.id, sample_index=si, prompt_sha256=sha256_text(p), completion=g.text,
                        extracted=v.extracted, correct=bool(v.correct), score=float(v.score),
                        details={**(v.details or {}), "finish_reason": g.finish_reason}, cost=g.cost(), seed=s,
                        trajectory=g.trajectory.to_dict() if (record_trajectory and g.trajectory) else None))
                advance(len(pending), info=f"{sum(r.correct for r in store)}/{len(store)} correct")
        wanted = {(d.id, si) for _, d, si in items}
        records = [r for r in store if (r.doc_id, r.sample_index) in wanted]
    task_obj.close()
    from .entry_writer import peak_memory_mb

    # a meeting point: every rank has written its batches; rank 0 alone writes the shared files
    parts = group.gather({"todo": todo, "n_failed": n_failed, "errors": errors,
                          "peak_memory_mb": peak_memory_mb(adapter.device) if group.sharded else None})
    if not group.main:
        group.barrier()  # rank 0 writes samples.jsonl and entry.json
        return Entry.load(out / ENTRY_FILE)
    from .entries import record_metrics

    try:
        merged = merge_rank_files(out, [(d.id, si) for _, d, si in items])
        if merged is not None:
            records = merged
        metrics = {k: Metric(**v) for k, v in record_metrics(task_obj, records).items()}
        peaks = [p["peak_memory_mb"] for p in parts if p["peak_memory_mb"] is not None]
        entry = write_entry(out, protocol=protocol, system=system, model=minfo, seeds=seeds, metrics=metrics,
                            costs=[r.cost for r in records], device=adapter.device, n_expected=len(items),
                            n_done=len(records), n_failed=sum(p["n_failed"] for p in parts),
                            errors=[e for p in parts for e in p["errors"]], label=label, reference=reference,
                            keep_unchanged=sum(p["todo"] for p in parts) == 0,
                            peak_mb=max(peaks) if peaks else None)
    finally:
        group.barrier()
    state = entry.status.state
    if state == "failed" and not errors:  # pragma: no cover - defensive
        raise RunFailedError("no sample was produced")
    return entry


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_entry(entry: Entry) -> None:
    """Print an entry as rich tables on stdout: identity, metrics (value ± stderr, n), cost, status."""
    from rich.markup import escape
    from rich.table import Table

    p, sy = entry.protocol, entry.system
    title = entry.label or f"{entry.repro.model.id} · {p.task.name} · {sy.sampler.name}"
    head = Table(title=escape(title), show_header=False)
    head.add_column("field")
    head.add_column("value")
    cfg = {**sy.sampler.config, "max_new_tokens": p.generation.max_new_tokens}
    knobs = ", ".join(f"{n}={cfg[n]}" for n in ("block_size", "denoising_steps", "remasking", "confidence_threshold",
                                                 "temperature", "top_k", "top_p", "max_new_tokens", "cache_mode")
                      if n in cfg)
    m, ds = entry.repro.model, p.task.dataset
    head.add_row("model", escape(f"{m.id} ({m.family}, {m.dtype}, {m.num_parameters:,} params)"))
    head.add_row("task", escape(f"{p.task.name} v{p.task.version} ({ds.n_effective}/{ds.n_original} docs, "
                                f"{p.samples_per_problem} sample(s) each)"))
    head.add_row("sampler", escape(f"{sy.sampler.name} v{sy.sampler.version}: {knobs}"))
    head.add_row("status", f"{entry.status.state} ({entry.status.n_done}/{entry.status.n_expected} samples"
                           + (f", {entry.status.n_failed} failed" if entry.status.n_failed else "") + ")")
    head.add_row("protocol / system", f"{entry.protocol_digest[:10]} / {entry.system_digest[:10]}")
    stdout_console.print(head)
    mt = Table(title="metrics")
    for col in ("metric", "value", "stderr", "n"):
        mt.add_column(col, justify="left" if col == "metric" else "right")
    for name, metric in entry.metrics.items():
        mt.add_row(name, _fmt(metric.value), _fmt(metric.stderr), str(metric.n))
    stdout_console.print(mt)
    c = entry.cost
    ct = Table(title="cost")
    for col in ("NFE", "generated tokens", "tokens / forward", "wall s", "tokens / s", "peak MiB"):
        ct.add_column(col, justify="right")
    ct.add_row(str(c.nfe), str(c.generated_tokens), _fmt(c.tokens_per_forward, 3), _fmt(c.wall_s, 2),
               _fmt(c.tokens_per_s, 1), _fmt(c.peak_memory_mb, 0))
    stdout_console.print(ct)
