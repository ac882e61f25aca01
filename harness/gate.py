"""Comparing two leaderboard entries, and the regression gate (``dllm-bench gate``).

Two entries are compared (a Δ between two systems) only when their **protocols** are equal
(:class:`~dllm_bench.schema.ProtocolKey`: task, dataset, prompt template, few-shot, scorer,
samples per problem, generation budget, sandbox); the gate (the *same* system across
commits) also requires equal **systems** (:class:`~dllm_bench.schema.SystemKey`: model,
chat template, sampler and every knob). Otherwise :class:`~dllm_bench.errors.BadInputError`
says in words which fields differ (exit code 2).

Every entry is **verified** before it is used (:func:`dllm_bench.entries.verify_entry`): its
per-sample file exists, has the recorded sha256 and record count, and every metric recomputed
from the records with the task's own aggregation equals the stored one.

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

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .console import fmt_number, results_console
from .entries import LoadedEntry, as_loaded, load_entries, per_problem_values, verified
from .errors import BadInputError
from .metrics import mean_stderr
from .schema import Entry

log = logging.getLogger(__name__)

Mode = Literal["auto", "paired", "stderr"]
MODES = ("auto", "paired", "stderr")


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


def compare(entry_a: Entry | LoadedEntry | str | Path, entry_b: Entry | LoadedEntry | str | Path,
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
    if ra is None or rb is None:
        missing = [s.name for s, r in ((a, ra), (b, rb)) if r is None]
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
                 threshold=-max_drop if max_drop else 0.0, mode=c["mode"], n=c["n"], regression=bound < -max_drop,
                 note=c["note"])


def cost_checks(a: LoadedEntry, b: LoadedEntry, *, max_tps_drop: float | None,
                max_nfe_increase: float | None) -> list[Check]:
    """tokens/s and NFE-per-generated-token checks (ratios; None disables a check).

    Speed is compared only between runs on the same device (``repro.device``): across
    devices one ``skipped`` line (never a regression) says why.
    """
    out = []
    ca, cb = a.entry.cost, b.entry.cost
    common: dict[str, Any] = dict(row=b.name, task=b.entry.task, stderr=None, mode="ratio", n=None)
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

    Every entry on both sides is verified first (:func:`~dllm_bench.entries.verify_entry`); the gate never
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
        t.add_row(c.row, c.task, c.check, fmt_number(c.baseline), fmt_number(c.candidate), fmt_number(c.diff),
                  fmt_number(c.stderr), fmt_number(c.bound), fmt_number(c.threshold), c.mode,
                  "-" if c.n is None else str(c.n), verdict)
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
