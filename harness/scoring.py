"""``dllm-bench score``: score saved completions without a model.

Input (``--predictions FILE``), one JSON object per line, either

* ``{"id": "<doc id>", "completion": "<model output>"}`` (other keys are ignored); several
  lines with the same id are several samples of that problem, in file order; or
* a per-sample record (:class:`dllm_bench.schema.SampleRecord`, recognised by ``doc_id``),
  e.g. the ``samples.jsonl`` of an entry or of an earlier ``score --output``: its
  ``sample_index`` orders the samples and its prompt hash, cost, seed and trajectory are
  carried over, so re-scoring an entry's per-sample file reproduces its metrics exactly.

Document ids are the task's stable ids (MATH: ``unique_id``; GSM8K: ``gsm8k/test/<line>``).
Only the problems present in the file are scored; ``n`` says how many, ``n_docs`` how many
the task has.

Bad input — a file that cannot be read, malformed JSON on line N, a missing ``id`` /
``completion``, a non-string completion, an unknown id, a repeated ``(doc_id,
sample_index)`` — raises :class:`~dllm_bench.errors.BadInputError` naming the file and line
(exit code 2). An empty or garbage completion is simply wrong.

Output: :func:`score_predictions` returns ``{"task", "task_version", "scorer", "n",
"n_samples", "n_docs", "metrics"}`` where ``metrics`` is flat:
``{"accuracy": .., "accuracy_stderr": .., "pass@1": .., "pass@1_stderr": .., ...}``
(accuracy = mean@k, pass@k unbiased, maj@k; stderr across problems). With ``output`` the
directory receives ``samples.jsonl`` (SampleRecord lines, input order) and ``result.json``.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError
from .jsonl import iter_jsonl_objects
from .outdir import write_atomic
from .plugins import Doc, Verdict
from .schema import SampleRecord, sha256_text

if TYPE_CHECKING:
    from .tasks.base import Task

log = logging.getLogger("dllm_bench.scoring")

SAMPLES_FILE = "samples.jsonl"
RESULT_FILE = "result.json"


@dataclass
class Prediction:
    """One sample to score.

    Attributes:
        doc: the task document.
        completion: the model output.
        sample_index: 0..k-1 within the problem.
        line: 1-based line in the predictions file.
        record: the input per-sample record, when the line was one.
    """

    doc: Doc
    completion: str
    sample_index: int
    line: int
    record: SampleRecord | None = None


# ------------------------------------------------------------------------- the task
def _merge_option(cfg: dict[str, Any], fields: dict[str, Any], key: str, value: Any, default: Any,
                  task: str, what: str) -> None:
    """Put a CLI option into the task config unless it is the default; reject conflicts."""
    if value == default:
        return
    if key not in fields:
        raise BadInputError(f"{what} does not apply to task {task!r} (its config has no {key!r})")
    if key in cfg and cfg[key] != value:
        raise BadInputError(f"{what} {value!r} conflicts with --task-arg {key}={cfg[key]!r}")
    cfg[key] = value


def build_task(task: str, task_args: dict[str, Any] | None = None, *, data_source: str = "packaged",
               sandbox: str | None = None) -> Task:
    """Create task plugin ``task`` from ``--task-arg`` values plus ``--data-source`` / ``--sandbox``.

    Raises:
        BadInputError: unknown task, invalid config, or an option the task does not have.
    """
    from . import registry

    cls = registry.load("tasks", task)
    cfg = dict(task_args or {})
    fields = dict(cls.Config.model_fields)
    _merge_option(cfg, fields, "data_source", data_source, "packaged", task, "--data-source")
    _merge_option(cfg, fields, "sandbox", sandbox, None, task, "--sandbox")
    return registry.create("tasks", task, cfg, source="--task-arg")


# ---------------------------------------------------------------------- predictions
def _unknown_id(doc_id: str, task: Task, ids: list[str]) -> str:
    close = difflib.get_close_matches(doc_id, ids, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown id {doc_id!r} for task {task.name!r} ({len(ids)} documents){hint}"


def read_predictions(path: str | Path, task: Task) -> list[Prediction]:
    """Parse and check a predictions file against ``task``'s documents (see module doc).

    Raises:
        BadInputError: naming the file and the 1-based line of the first problem.
    """
    path = Path(path)
    from .jsonl import read_text

    text = read_text(path, "predictions")
    table = {d.id: d for d in task.docs()}
    preds: list[Prediction] = []
    counts: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for lineno, obj in iter_jsonl_objects(text, path):
        record: SampleRecord | None = None
        if "doc_id" in obj:
            try:
                record = SampleRecord.model_validate(obj)
            except Exception as exc:  # noqa: BLE001 - pydantic ValidationError -> one line
                errs: list[Any] = getattr(exc, "errors", lambda: [])()
                msg = (f"field {'.'.join(map(str, errs[0]['loc']))!r}: {errs[0]['msg']}" if errs
                       else str(exc).splitlines()[0])
                raise BadInputError(f"invalid sample record: {msg}", path=path, line=lineno) from None
            doc_id, completion, index = record.doc_id, record.completion, record.sample_index
        else:
            for field in ("id", "completion"):
                if field not in obj:
                    raise BadInputError(f"missing field {field!r}", path=path, line=lineno)
            doc_id, completion = obj["id"], obj["completion"]
            if not isinstance(doc_id, str):
                raise BadInputError(f"field 'id' must be a string, got {type(doc_id).__name__}",
                                    path=path, line=lineno)
            if not isinstance(completion, str):
                raise BadInputError(f"field 'completion' must be a string, got {type(completion).__name__}",
                                    path=path, line=lineno)
            index = counts.get(doc_id, 0)
        doc = table.get(doc_id)
        if doc is None:
            raise BadInputError(_unknown_id(doc_id, task, list(table)), path=path, line=lineno)
        if (doc_id, index) in seen:
            raise BadInputError(f"sample {index} of id {doc_id!r} already given on line {seen[(doc_id, index)]}",
                                path=path, line=lineno)
        seen[(doc_id, index)] = lineno
        counts[doc_id] = counts.get(doc_id, 0) + 1
        preds.append(Prediction(doc, completion, index, lineno, record))
    if not preds:
        raise BadInputError("no predictions (the file is empty)", path=path)
    return preds


# -------------------------------------------------------------------------- scoring
def flatten_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """``{"accuracy": {"value", "stderr", ...}}`` -> ``{"accuracy": v, "accuracy_stderr": s}``."""
    flat: dict[str, float | None] = {}
    for name, m in metrics.items():
        flat[name] = m["value"]
        flat[f"{name}_stderr"] = m.get("stderr")
    return flat


def score_samples(task: Task, preds: list[Prediction]) -> list[Verdict]:
    """Verdicts for ``preds`` in order, through the task's batch scorer (:meth:`Task.score_batch`)."""
    return list(task.score_batch([(p.doc, p.completion) for p in preds]))


def _sample_record(task: Task, p: Prediction, v: Verdict) -> SampleRecord:
    if p.record is not None:
        base = p.record.model_dump()
    else:
        base = {"doc_id": p.doc.id, "sample_index": p.sample_index,
                "prompt_sha256": sha256_text(task.prompt(p.doc, None)), "completion": p.completion}
    base.update(extracted=v.extracted, correct=bool(v.correct), score=float(v.score), details=v.details)
    return SampleRecord.model_validate(base)


def score_predictions(*, task: str, predictions: str | Path, output: str | Path | None = None,
                      sandbox: str | None = None, task_args: dict[str, Any] | None = None,
                      data_source: str = "packaged") -> dict[str, Any]:
    """Score a predictions file with task ``task`` (see the module docstring).

    Args:
        task: task plugin name.
        predictions: the JSONL file.
        output: directory for ``samples.jsonl`` + ``result.json`` (created), or None.
        sandbox: code tasks: sandbox plugin name.
        task_args: task config values (``--task-arg``).
        data_source: ``packaged`` or ``hub``.

    Returns:
        ``{"task", "task_version", "scorer", "n", "n_samples", "n_docs", "metrics"}``
        (+ ``"output"`` when written); ``metrics`` flat, see :func:`flatten_metrics`.

    Raises:
        BadInputError: see :func:`read_predictions` and :func:`build_task`.
    """
    t = build_task(task, task_args, data_source=data_source, sandbox=sandbox)
    try:
        preds = read_predictions(predictions, t)
        log.info("scoring %d samples of %d problems with %s", len(preds), len({p.doc.id for p in preds}), task)
        verdicts = score_samples(t, preds)
        per_doc: dict[str, list[tuple[int, Verdict]]] = {}
        for p, v in zip(preds, verdicts):
            per_doc.setdefault(p.doc.id, []).append((p.sample_index, v))
        grouped = {d: [v for _, v in sorted(vs, key=lambda x: x[0])] for d, vs in per_doc.items()}
        metrics = t.aggregate(grouped)
        scorer = t.scorer()
        result: dict[str, Any] = {
            "task": t.name,
            "task_version": t.version,
            "scorer": scorer.model_dump() if scorer is not None else None,
            "n": len(grouped),
            "n_samples": len(preds),
            "n_docs": len(t.docs()),
            "metrics": flatten_metrics(metrics),
        }
        if output is not None:
            out = Path(output)
            out.mkdir(parents=True, exist_ok=True)
            lines = [_sample_record(t, p, v).model_dump_json() for p, v in zip(preds, verdicts)]
            write_atomic(out / SAMPLES_FILE, "".join(line + "\n" for line in lines))
            result["output"] = str(out)
            write_atomic(out / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        return result
    finally:
        t.close()


def print_result(result: dict[str, Any]) -> None:
    """The metrics table on stdout (``value ± stderr``; problems ``n``)."""
    from rich.table import Table

    from .console import stdout_console

    title = (f"{result['task']} v{result.get('task_version', '?')}: {result['n']} problems, "
             f"{result['n_samples']} samples")
    table = Table(title=title)
    for col in ("metric", "value", "stderr"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    metrics = result["metrics"]
    for name, value in metrics.items():
        if name.endswith("_stderr"):
            continue
        se = metrics.get(f"{name}_stderr")
        table.add_row(name, f"{value:.4f}" if value is not None else "-", f"{se:.4f}" if se is not None else "-")
    stdout_console.print(table)
    if result.get("output"):
        stdout_console.print(f"per-sample verdicts: {Path(result['output']) / SAMPLES_FILE}", markup=False)
