"""Comparing two leaderboard entries, and the regression gate (``dllm-bench gate``).

Two entries are compared (a Δ between two systems) only when their **protocols** are equal
(:class:`~dllm_bench.schema.ProtocolKey`: task, dataset, prompt template, few-shot, scorer,
samples per problem, generation budget, sandbox); the gate (the *same* system across
commits) also requires equal **systems** (:class:`~dllm_bench.schema.SystemKey`: model,
chat template, sampler and every knob). Otherwise :class:`~dllm_bench.errors.BadInputError`
says in words which fields differ (exit code 2).

Every entry is **verified** before it is used (:func:`verify_entry`): its per-sample file
exists, has the recorded sha256 and record count, and every metric recomputed from the
records with the task's own aggregation equals the stored one.

Difference of a metric between entry ``a`` (the reference / baseline) and entry ``b``
(the candidate), ``diff = value_b - value_a``, with its standard error:

* **paired** (both entries have their per-sample JSONL): per problem ``i`` the metric's
  per-problem value ``x_i`` (accuracy = mean@k: mean of ``correct`` over the problem's
  samples; ``pass@k``: the unbiased estimator of Chen et al. 2021, eq. 1; ``maj@k``:
  majority vote over the first k samples) is computed for both, ``d_i = x_i^b - x_i^a``
  over the problems both have, ``diff = mean(d)``, ``stderr = std(d, ddof=1) / sqrt(n)``.
  Problems that both entries got right (or wrong) cancel, so this is much tighter than the
  unpaired bound on the same items (lm-eval ``scripts/model_comparator.py`` is the
  unpaired variant; paired differences as in Miller, arXiv 2411.00640).
* **stderr** (unpaired): ``diff = value_b - value_a``,
  ``stderr = sqrt(se_a^2 + se_b^2)`` from the entries' own metric stderrs (a missing
  stderr, e.g. n = 1, counts as 0 and is reported in ``note``).

Gate rule (one-sided, ``z`` = 1.645 for 95 %): for a metric where higher is better the
candidate regresses when ``diff + z * stderr < -max_drop``; i.e. even the optimistic end
of the one-sided confidence interval lies below the allowed drop. Cost gates: tokens/s
regresses when ``tps_b < tps_a * (1 - max_tps_drop)``; NFE per generated token when
``nfe_b/tok_b > nfe_a/tok_a * (1 + max_nfe_increase)``.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from .errors import BadInputError
from .metrics import majority_correct, mean_stderr, pass_at_k
from .schema import Entry, SampleRecord, sha256_file

log = logging.getLogger(__name__)

Mode = Literal["auto", "paired", "stderr"]
MODES = ("auto", "paired", "stderr")


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


def as_loaded(x: "Entry | LoadedEntry | str | Path") -> LoadedEntry:
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


# ---------------------------------------------------------------------- compare
def require_comparable(a: LoadedEntry, b: LoadedEntry, *, same_system: bool = False) -> None:
    """Raise :class:`BadInputError` saying in words which fields differ when the protocols
    differ (or, with ``same_system``, the systems).

    Raises:
        BadInputError: ``"entries are not comparable: 'A' vs 'B': protocol differs in
            max new tokens: 8 vs 16; ..."``.
    """
    from .schema import describe_differences

    parts = []
    for side, ka, kb in (("protocol", a.entry.protocol, b.entry.protocol),
                         ("system", a.entry.system, b.entry.system)):
        if side == "system" and not same_system:
            continue
        words = describe_differences(ka, kb)
        if words:
            shown = "; ".join(words[:6]) + (f" (+{len(words) - 6} more)" if len(words) > 6 else "")
            parts.append(f"{side} differs in {shown}")
    if parts:
        raise BadInputError(f"entries are not comparable: {a.name!r} vs {b.name!r}: " + "; ".join(parts),
                            path=b.path)


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
            if (x is None) != (y is None) or (x is not None and not _close(x, y)):
                probs.append(f"metric {name}: stored {fld} {_fmt(x)}, recomputed {_fmt(y)}")
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
    from .plugins import Verdict

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

    by_doc: dict[str, list[SampleRecord]] = {}
    for r in recs:
        by_doc.setdefault(r.doc_id, []).append(r)
    verdicts = {d: [Verdict(r.correct, r.score, r.extracted, r.details) for r in sorted(rs, key=lambda r: r.sample_index)]
                for d, rs in by_doc.items()}
    obj = registry.create("tasks", task, {}, source="entry")
    return obj.aggregate(verdicts) if verdicts else {}


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


def compare(entry_a: "Entry | LoadedEntry | str | Path", entry_b: "Entry | LoadedEntry | str | Path",
            metric: str = "accuracy", *, mode: Mode = "auto") -> dict[str, Any]:
    """Difference ``b - a`` of ``metric`` between two comparable entries, with its stderr.

    Args:
        entry_a: the reference (baseline; e.g. the SFT row): an Entry, LoadedEntry or a path.
        entry_b: the other entry (candidate; e.g. the TraceRL row).
        metric: metric name present in both entries (``accuracy``, ``pass@k``, ...).
        mode: ``paired`` (per-problem differences; needs both per-sample JSONLs),
            ``stderr`` (unpaired: ``sqrt(se_a^2 + se_b^2)``) or ``auto`` (paired when both
            per-sample files are present and the metric decomposes per problem, else stderr).

    Returns:
        ``{"metric", "diff", "stderr", "n", "mode", "value_a", "value_b",
        "higher_is_better", "note"}``; ``n`` is the number of paired problems (paired) or
        ``min(n_a, n_b)`` (stderr); ``stderr`` may be None in paired mode with one problem.

    Raises:
        BadInputError: protocols differ (fields named in words), the metric is missing from an entry, or
            ``mode="paired"`` without per-sample records on both sides.
    """
    if mode not in MODES:
        raise BadInputError(f"unknown gate mode {mode!r}; modes: {', '.join(MODES)}")
    a, b = as_loaded(entry_a), as_loaded(entry_b)
    require_comparable(a, b)
    for side in (a, b):
        if metric not in side.entry.metrics:
            raise BadInputError(f"metric {metric!r} not in entry {side.name!r} (has: "
                                f"{', '.join(side.entry.metrics) or 'none'})", path=side.path)
    ma, mb = a.entry.metrics[metric], b.entry.metrics[metric]
    out: dict[str, Any] = {"metric": metric, "value_a": ma.value, "value_b": mb.value,
                           "higher_is_better": ma.higher_is_better, "note": ""}
    if mode in ("auto", "paired"):
        paired, why = _paired(a, b, metric)
        if paired is not None:
            return out | paired
        if mode == "paired":
            raise BadInputError(f"paired comparison impossible: {why}", path=b.path)
        out["note"] = f"unpaired ({why})"
    se_a, se_b = ma.stderr, mb.stderr
    if se_a is None or se_b is None:
        out["note"] = (out["note"] + "; " if out["note"] else "") + "missing stderr counted as 0"
    se = math.sqrt((se_a or 0.0) ** 2 + (se_b or 0.0) ** 2)
    return out | {"diff": mb.value - ma.value, "stderr": se, "n": min(ma.n, mb.n), "mode": "stderr"}


def _paired(a: LoadedEntry, b: LoadedEntry, metric: str) -> tuple[dict[str, Any] | None, str]:
    ra, rb = a.records(), b.records()
    missing = [s.name for s, r in ((a, ra), (b, rb)) if r is None]
    if missing:
        return None, f"no per-sample records for {', '.join(repr(m) for m in missing)}"
    xa, xb = per_problem_values(ra, metric), per_problem_values(rb, metric)
    if xa is None or xb is None:
        return None, f"metric {metric!r} has no per-problem decomposition"
    common = sorted(set(xa) & set(xb))
    if not common:
        return None, "the per-sample records share no problem"
    d = [xb[i] - xa[i] for i in common]
    m, se = mean_stderr(d)
    note = "" if len(common) == len(xa) == len(xb) else \
        f"paired over the {len(common)} problems both have ({len(xa)} vs {len(xb)})"
    return {"diff": m, "stderr": se, "n": len(common), "mode": "paired", "note": note}, ""


# ------------------------------------------------------------------------- gate
@dataclass
class Check:
    """One verdict line of the gate (a metric or a cost check for one row)."""

    row: str
    task: str
    check: str
    baseline: float
    candidate: float
    diff: float
    stderr: float | None
    bound: float
    threshold: float
    mode: str
    n: int | None
    regression: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN / infinite numbers become null)."""
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}
        d["verdict"] = "REGRESSION" if self.regression else "ok"
        return d


def metric_check(a: LoadedEntry, b: LoadedEntry, *, metric: str, mode: Mode, max_drop: float,
                 z: float) -> Check:
    """The metric gate for one (baseline, candidate) pair (see the module docstring)."""
    c = compare(a, b, metric, mode=mode)
    se = c["stderr"] or 0.0
    sign = 1.0 if c["higher_is_better"] else -1.0
    bound = sign * c["diff"] + z * se  # optimistic end of the one-sided interval, in "better" units
    return Check(row=b.name, task=b.entry.task, check=metric, baseline=c["value_a"],
                 candidate=c["value_b"], diff=c["diff"], stderr=c["stderr"], bound=bound,
                 threshold=-max_drop if max_drop else 0.0, mode=c["mode"], n=c["n"], regression=bound < -max_drop, note=c["note"])


def cost_checks(a: LoadedEntry, b: LoadedEntry, *, max_tps_drop: float | None,
                max_nfe_increase: float | None) -> list[Check]:
    """tokens/s and NFE-per-generated-token checks (ratios; None disables a check).

    Speed is compared only between runs on the same device (``repro.device``): across
    devices one ``skipped`` line (never a regression) says why.
    """
    out = []
    ca, cb = a.entry.cost, b.entry.cost
    common = dict(row=b.name, task=b.entry.task, stderr=None, mode="ratio", n=None)
    da, db = a.entry.repro.device, b.entry.repro.device
    if max_tps_drop is not None and da != db:
        out.append(Check(check="tokens/s", baseline=ca.tokens_per_s, candidate=cb.tokens_per_s,
                         diff=cb.tokens_per_s - ca.tokens_per_s, bound=math.nan, threshold=1.0 - max_tps_drop,
                         regression=False, **{**common, "mode": "skipped"},
                         note=f"tokens/s not compared across devices ({da} vs {db})"))
        max_tps_drop = None
    if max_tps_drop is not None:
        floor = ca.tokens_per_s * (1.0 - max_tps_drop)
        ratio = cb.tokens_per_s / ca.tokens_per_s if ca.tokens_per_s > 0 else math.inf
        out.append(Check(check="tokens/s", baseline=ca.tokens_per_s, candidate=cb.tokens_per_s,
                         diff=cb.tokens_per_s - ca.tokens_per_s, bound=ratio, threshold=1.0 - max_tps_drop,
                         regression=cb.tokens_per_s < floor, **common))
    if max_nfe_increase is not None:
        npt_a = ca.nfe / ca.generated_tokens if ca.generated_tokens else math.inf
        npt_b = cb.nfe / cb.generated_tokens if cb.generated_tokens else math.inf
        ratio = npt_b / npt_a if npt_a > 0 else math.inf
        out.append(Check(check="NFE/token", baseline=npt_a, candidate=npt_b, diff=npt_b - npt_a, bound=ratio,
                         threshold=1.0 + max_nfe_increase, regression=npt_b > npt_a * (1.0 + max_nfe_increase),
                         **common))
    return out


def match_pairs(baseline: list[LoadedEntry], candidate: list[LoadedEntry]) -> list[tuple[LoadedEntry, LoadedEntry]]:
    """Pair each baseline entry with its candidate by (protocol + system digests, row name).

    A single entry on each side is paired as given (protocol and system must still be equal).

    Raises:
        BadInputError: a baseline row has no candidate with the same protocol and system
            (when a candidate has the same row name and task, the differing fields are named
            in words), or has two candidates.
    """
    if len(baseline) == 1 and len(candidate) == 1:
        require_comparable(baseline[0], candidate[0], same_system=True)
        return [(baseline[0], candidate[0])]
    pairs = []
    used: set[int] = set()
    for b in baseline:
        digest = b.entry.pair_digest
        same = [c for c in candidate if c.name == b.name and c.entry.pair_digest == digest]
        if len(same) > 1:
            raise BadInputError(f"two candidate entries match baseline {b.name!r} ({b.entry.task}): "
                                f"{', '.join(str(c.path) for c in same)}")
        if same:
            pairs.append((b, same[0]))
            used.add(id(same[0]))
            continue
        near = [c for c in candidate if c.name == b.name and c.entry.task == b.entry.task]
        if near:
            require_comparable(b, near[0], same_system=True)
        raise BadInputError(f"no candidate entry for baseline row {b.name!r} (task {b.entry.task})",
                            path=b.path)
    for c in candidate:
        if id(c) not in used:
            log.warning("candidate %r (%s) has no baseline; not gated", c.name, c.path)
    return pairs


@dataclass
class GateReport:
    ok: bool
    checks: list[Check]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "settings": self.settings, "checks": [c.to_dict() for c in self.checks]}


def gate(baseline: str | Path | list[LoadedEntry], candidate: str | Path | list[LoadedEntry], *,
         mode: Mode = "auto", max_drop: float = 0.0, z: float = 1.645, metric: str = "accuracy",
         max_tps_drop: float | None = None, max_nfe_increase: float | None = None) -> GateReport:
    """Gate candidate entries against baseline entries (files or directories).

    A candidate whose status is not ``complete`` fails the gate (a ``status`` check).

    Every entry on both sides is verified first (:func:`verify_entry`); the gate never
    trusts a stored metric its per-sample records do not reproduce.

    Raises:
        BadInputError: an entry that does not verify, different protocol or system, unmatched
            rows, a missing metric, a baseline that is not complete, bad options.
    """
    if z < 0 or max_drop < 0:
        raise BadInputError("--z and --max-drop must be >= 0")
    for name, v in (("--max-tps-drop", max_tps_drop), ("--max-nfe-increase", max_nfe_increase)):
        if v is not None and v < 0:
            raise BadInputError(f"{name} must be >= 0")
    base = verified(baseline if isinstance(baseline, list) else load_entries(baseline), what="baseline entry")
    cand = verified(candidate if isinstance(candidate, list) else load_entries(candidate), what="candidate entry")
    checks: list[Check] = []
    for a, b in match_pairs(base, cand):
        if a.entry.status.state != "complete":
            raise BadInputError(f"baseline entry {a.name!r} is {a.entry.status.state}; a baseline must be complete",
                                path=a.path)
        if b.entry.status.state != "complete":
            st = b.entry.status
            checks.append(Check(row=b.name, task=b.entry.task, check="status", baseline=1.0,
                                candidate=st.n_done / max(st.n_expected, 1), diff=math.nan, stderr=None,
                                bound=math.nan, threshold=1.0, mode="status", n=st.n_done, regression=True,
                                note=f"candidate is {st.state} ({st.n_done}/{st.n_expected} done, "
                                     f"{st.n_failed} failed)"))
        checks.append(metric_check(a, b, metric=metric, mode=mode, max_drop=max_drop, z=z))
        checks += cost_checks(a, b, max_tps_drop=max_tps_drop, max_nfe_increase=max_nfe_increase)
    settings = {"mode": mode, "max_drop": max_drop, "z": z, "metric": metric, "max_tps_drop": max_tps_drop,
                "max_nfe_increase": max_nfe_increase}
    return GateReport(ok=not any(c.regression for c in checks), checks=checks, settings=settings)


def _fmt(x: float | None, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def results_console():
    """The stdout console for final tables; when stdout is not a terminal (CI logs, pipes)
    a 160-column one, so that wide tables are not truncated to rich's 80-column default."""
    from rich.console import Console

    from .console import stdout_console

    return stdout_console if stdout_console.is_terminal else Console(soft_wrap=True, width=160)


def print_report(report: GateReport) -> None:
    """The verdict table (rich, stdout): every check is printed before the exit code says fail."""
    from rich.table import Table

    stdout_console = results_console()

    s = report.settings
    t = Table(title=f"dllm-bench gate ({s['metric']}, mode={s['mode']}, z={s['z']}, max drop={s['max_drop']})")
    for col in ("row", "task", "check", "baseline", "candidate", "diff", "± stderr", "bound", "threshold",
                "mode", "n", "verdict"):
        t.add_column(col, justify="right" if col not in ("row", "task", "check", "mode", "verdict") else "left")
    for c in report.checks:
        verdict = "[bold red]REGRESSION[/]" if c.regression else "[green]ok[/]"
        t.add_row(c.row, c.task, c.check, _fmt(c.baseline), _fmt(c.candidate), _fmt(c.diff), _fmt(c.stderr),
                  _fmt(c.bound), _fmt(c.threshold), c.mode, "-" if c.n is None else str(c.n), verdict)
    stdout_console.print(t)
    for c in report.checks:
        if c.note:
            stdout_console.print(f"note: {c.row} / {c.check}: {c.note}", markup=False, highlight=False, soft_wrap=True)
    stdout_console.print("[bold red]REGRESSION[/]" if not report.ok else "[green]no regression[/]")


def gate_cli(*, baseline: Path, candidate: Path, mode: str = "auto", max_drop: float = 0.0, z: float = 1.645,
             metric: str = "accuracy", max_tps_drop: float | None = None, max_nfe_increase: float | None = None,
             as_json: bool = False) -> bool:
    """``dllm-bench gate``: print the verdicts (table or ``--json``); True when no regression."""
    if mode not in MODES:
        raise BadInputError(f"unknown --mode {mode!r}; modes: {', '.join(MODES)}")
    report = gate(baseline, candidate, mode=mode, max_drop=max_drop, z=z, metric=metric,  # type: ignore[arg-type]
                  max_tps_drop=max_tps_drop, max_nfe_increase=max_nfe_increase)
    if as_json:
        import sys

        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        print_report(report)
    return report.ok
