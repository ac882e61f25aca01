"""Leaderboard entries as read from disk, and their verification.

An entry JSON file (:class:`~dllm_bench.schema.Entry`) is loaded together with its path
(:class:`LoadedEntry`): its per-sample JSONL is named relative to it. Every entry is
**verified** before the gate or the leaderboard uses it (:func:`verify_entry`): its per-sample
file exists, has the recorded sha256 and record count, and every metric recomputed from the
records with the task's own aggregation equals the stored one.

A metric's **per-problem values** (:func:`per_problem_values`) come from the per-sample
records: the gate's paired comparison and the verification of lm-eval entries use them.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .console import fmt_number
from .errors import BadInputError
from .metrics import majority_correct, mean_stderr, pass_at_k
from .schema import Entry, SampleRecord, sha256_file

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ loading
@dataclass
class LoadedEntry:
    """An entry together with the file it was read from (per-sample paths are relative to it).

    Attributes:
        entry: the validated :class:`~dllm_bench.schema.Entry`.
        path: the entry JSON file, or None for an entry built in memory (then the per-sample
            JSONL is found only when ``entry.samples.path`` is absolute).
    """

    entry: Entry
    path: Path | None = None
    verified: bool | None = None
    problems: list[str] = field(default_factory=list)
    _records: list[SampleRecord] | None = field(default=None, repr=False)
    _records_loaded: bool = field(default=False, repr=False)

    @property
    def name(self) -> str:
        """Row name: the entry's label, else the model id."""
        return self.entry.label or self.entry.repro.model.id

    @property
    def samples_path(self) -> Path | None:
        p = Path(self.entry.samples.path)
        if p.is_absolute():
            return p
        return None if self.path is None else self.path.parent / p

    def records(self) -> list[SampleRecord] | None:
        """The per-sample records, or None when the JSONL is absent.

        Raises:
            BadInputError: the file's sha256 differs from ``entry.samples.sha256`` (it was
                changed after the entry was written), or a line is not a valid record.
        """
        if self._records_loaded:
            return self._records
        self._records_loaded = True
        sp = self.samples_path
        if sp is None or not sp.is_file():
            return None
        digest = sha256_file(sp)
        if digest != self.entry.samples.sha256:
            raise BadInputError(f"per-sample file sha256 {digest[:12]}... does not match the entry's "
                                f"{self.entry.samples.sha256[:12]}... (changed after the entry was written)",
                                path=sp)
        opener = gzip.open if sp.suffix == ".gz" else open
        recs = []
        with opener(sp, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    recs.append(SampleRecord.model_validate(json.loads(line)))
                except Exception as exc:  # noqa: BLE001 - reported as bad input with the line
                    raise BadInputError(f"invalid sample record: {str(exc).splitlines()[0]}", path=sp,
                                        line=i) from None
        self._records = recs
        return recs


def as_loaded(x: Entry | LoadedEntry | str | Path) -> LoadedEntry:
    """Accept an Entry, a LoadedEntry or an entry JSON path."""
    if isinstance(x, LoadedEntry):
        return x
    if isinstance(x, Entry):
        return LoadedEntry(x, None)
    p = Path(x)
    return LoadedEntry(Entry.load(p), p)


def _is_entry_file(f: Path) -> bool:
    """A ``*.json`` that claims to be an entry (an object with ``schema_version``); run
    directories also hold other JSON (``DONE.json``, ``lmeval_results.json``), skipped."""
    try:
        with open(f, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return True  # let Entry.load report the unreadable file
    return isinstance(data, dict) and "schema_version" in data


def load_entries(path: str | Path, *, allow_empty: bool = False) -> list[LoadedEntry]:
    """Entries from one entry JSON file, or every entry ``*.json`` below a directory (recursive).

    Raises:
        BadInputError: the path does not exist, a directory holds no entries (unless
            ``allow_empty``), or an entry file is not valid (file + field named).
    """
    p = Path(path)
    if p.is_file():
        return [as_loaded(p)]
    if not p.is_dir():
        raise BadInputError("no such entry file or directory", path=p)
    files = sorted(f for f in p.rglob("*.json") if f.is_file() and _is_entry_file(f))
    if not files and not allow_empty:
        raise BadInputError("directory holds no entry JSON files", path=p)
    return [LoadedEntry(Entry.load(f), f) for f in files]


# ----------------------------------------------------------------- per-problem values
def _metric_k(metric: str) -> tuple[str, int | None]:
    base, _, k = metric.partition("@")
    return base, (int(k) if k.isdigit() else None)


def per_problem_values(records: Iterable[SampleRecord], metric: str) -> dict[str, float] | None:
    """``{doc_id: x_i}``: the metric's per-problem value from per-sample records.

    Supported: ``accuracy`` and ``mean@k`` (mean of ``correct``), ``score`` (mean of
    ``score``), ``pass@k`` (unbiased estimator, problems with >= k samples), ``maj@k``
    (majority of the first k samples), and any metric every record stores in
    ``details["metrics"]`` (lm-eval entries). Returns None otherwise (no per-problem
    decomposition is known, so no paired test).
    """
    by_doc: dict[str, list[SampleRecord]] = {}
    for r in records:
        by_doc.setdefault(r.doc_id, []).append(r)
    for v in by_doc.values():
        v.sort(key=lambda r: r.sample_index)
    base, k = _metric_k(metric)
    if base in ("accuracy", "mean") or metric == "accuracy":
        return {d: sum(r.correct for r in v) / len(v) for d, v in by_doc.items()}
    if base == "score":
        return {d: sum(r.score for r in v) / len(v) for d, v in by_doc.items()}
    if base == "pass" and k:
        return {d: pass_at_k(len(v), sum(r.correct for r in v), k) for d, v in by_doc.items() if len(v) >= k}
    if base == "maj" and k:
        return {d: float(majority_correct([r.extracted for r in v[:k]], [r.correct for r in v[:k]]))
                for d, v in by_doc.items() if len(v) >= k}
    if by_doc and all(metric in r.details.get("metrics", {}) for v in by_doc.values() for r in v):
        # per-document values stored by the scorer (lm-eval entries: "<metric>,<filter>")
        return {d: sum(float(r.details["metrics"][metric]) for r in v) / len(v) for d, v in by_doc.items()}
    return None


# ------------------------------------------------------------------------ verify
def verify_entry(e: LoadedEntry) -> list[str]:
    """What is wrong with an entry's evidence (empty when it verifies).

    Checks, in order: the per-sample file exists and its sha256 is the recorded one; it
    holds ``samples.n_records`` records, each (doc, sample index) once, and ``n_records``
    equals ``status.n_done``; every stored metric (value, stderr, n) equals the one
    recomputed from the records with the task's own aggregation (the task plugin's
    ``aggregate``; lm-eval entries: the per-document values each record stores), within
    1e-9.

    Returns:
        plain-words problems, e.g. ``["samples.jsonl is missing"]`` or
        ``["metric accuracy: stored 0.9000, recomputed 0.2050"]``.
    """
    sp = e.samples_path
    if sp is None or not sp.is_file():
        return [f"per-sample file {e.entry.samples.path} is missing"]
    try:
        recs = e.records()
    except BadInputError as exc:
        return [str(exc)]
    assert recs is not None
    probs = []
    n = e.entry.samples.n_records
    if len(recs) != n:
        probs.append(f"per-sample file has {len(recs)} records, the entry says {n}")
    if n != e.entry.status.n_done:
        probs.append(f"entry says {n} records but {e.entry.status.n_done} samples done")
    keys = [(r.doc_id, r.sample_index) for r in recs]
    if len(set(keys)) != len(keys):
        probs.append(f"{len(keys) - len(set(keys))} duplicated (doc, sample) records")
    if probs:
        return probs
    try:
        recomputed = _recompute_metrics(e.entry, recs)
    except Exception as exc:  # noqa: BLE001 - a plugin that cannot aggregate: reported, not raised
        return [f"metrics could not be recomputed: {type(exc).__name__}: {exc}"]
    for name, m in e.entry.metrics.items():
        r = recomputed.get(name)
        if r is None:
            probs.append(f"metric {name}: stored but not recomputable from the records")
            continue
        for fld in ("value", "stderr"):
            x, y = getattr(m, fld), r.get(fld)
            if (x is None) != (y is None) or (x is not None and y is not None and not _close(x, y)):
                probs.append(f"metric {name}: stored {fld} {fmt_number(x)}, recomputed {fmt_number(y)}")
                break
        else:
            if m.n != r.get("n"):
                probs.append(f"metric {name}: stored n {m.n}, recomputed {r.get('n')}")
    return probs


def _close(x: float, y: float) -> bool:
    if math.isnan(x) and math.isnan(y):
        return True
    return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))


def _recompute_metrics(entry: Entry, recs: list[SampleRecord]) -> dict[str, dict[str, Any]]:
    task = entry.protocol.task.name
    if task.startswith("lm-eval:"):
        out = {}
        for name in entry.metrics:
            x = per_problem_values(recs, name)
            if x:
                m, se = mean_stderr(list(x.values()))
                out[name] = {"value": m, "stderr": se, "n": len(x)}
        return out
    from . import registry

    return record_metrics(registry.create("tasks", task, {}, source="entry"), recs)


def record_metrics(task: Any, records: Iterable[SampleRecord]) -> dict[str, dict[str, Any]]:
    """A task's metrics from per-sample records: the records grouped by document in sample
    order, as :class:`~dllm_bench.plugins.Verdict` lists, through the task's ``aggregate``
    (what an entry stores, and what verification recomputes). Empty when there are no records.

    Returns:
        ``{metric: {"value", "stderr", "n", ...}}`` (valid :class:`~dllm_bench.schema.Metric`).
    """
    from .plugins import Verdict

    by_doc: dict[str, list[SampleRecord]] = {}
    for r in records:
        by_doc.setdefault(r.doc_id, []).append(r)
    verdicts = {d: [Verdict(r.correct, r.score, r.extracted, r.details)
                    for r in sorted(rs, key=lambda r: r.sample_index)]
                for d, rs in by_doc.items()}
    return task.aggregate(verdicts) if verdicts else {}


def verified(entries: list[LoadedEntry], *, allow_unverified: bool = False,
             what: str = "entry") -> list[LoadedEntry]:
    """Verify every entry (:func:`verify_entry`); return them, each with ``verified`` set.

    Raises:
        BadInputError: one line naming the first entry that fails and what failed (unless
            ``allow_unverified``: then it is kept, marked ``verified=False``, and logged).
    """
    for e in entries:
        probs = verify_entry(e)
        e.verified = not probs
        e.problems = probs
        if probs and not allow_unverified:
            raise BadInputError(f"{what} {e.name!r} does not verify: {'; '.join(probs[:3])}", path=e.path)
        if probs:
            log.warning("unverified %s %r (%s): %s", what, e.name, e.path, "; ".join(probs[:3]))
    return entries
