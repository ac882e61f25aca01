"""Metrics over per-problem samples, each with a standard error across problems.

For a task with P problems and n samples per problem, problem i having c_i correct:

* ``accuracy`` (= mean@n): mean over problems of c_i / n; stderr = sample std / sqrt(P).
* ``pass@k`` (k <= n): mean over problems of the unbiased estimator
  1 - C(n - c_i, k) / C(n, k)  (Chen et al. 2021, "Evaluating Large Language Models
  Trained on Code", eq. 1); stderr across problems.
* ``maj@k`` (k <= n): the majority answer among the first k samples is correct (ties
  broken by first occurrence); stderr across problems.

Standard errors are across *problems* (the unit that is sampled from the benchmark),
never across samples of one problem.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std with ddof=1 / sqrt(n)).

    Returns ``(nan, None)`` for no values and ``(x, None)`` for one value.
    """
    n = len(values)
    if n == 0:
        return float("nan"), None
    m = math.fsum(values) / n
    if n == 1:
        return m, None
    var = math.fsum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct.

    Raises:
        ValueError: if k > n or c outside [0, n].
    """
    if not 0 <= c <= n:
        raise ValueError(f"c={c} outside [0, n={n}]")
    if k > n or k < 1:
        raise ValueError(f"pass@{k} needs 1 <= k <= n={n}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i), numerically stable form of 1 - C(n-c,k)/C(n,k)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """True if the most common non-empty answer (first occurrence wins ties) is correct."""
    counts = Counter(a for a in answers if a is not None and a != "")
    if not counts:
        return False
    best = max(counts.values())
    for a, ok in zip(answers, correct):
        if a is not None and a != "" and counts[a] == best:
            return bool(ok)
    return False


def standard_metrics(per_problem: dict[str, list[tuple[str | None, bool]]],
                     ks: Sequence[int] = (1,), *, maj: bool = True) -> dict[str, dict]:
    """accuracy, pass@k (each k <= n) and maj@k from ``{doc_id: [(answer, correct), ...]}``.

    Returns ``{metric_name: {"value", "stderr", "n", "k"}}`` dicts ready for
    :class:`dllm_bench.schema.Metric`. Problems may have different sample counts; pass@k
    and maj@k use only problems with at least k samples, and are omitted when none have.
    """
    out: dict[str, dict] = {}
    problems = [v for v in per_problem.values() if v]
    acc = [sum(ok for _, ok in v) / len(v) for v in problems]
    m, se = mean_stderr(acc)
    n_min = min((len(v) for v in problems), default=0)
    out["accuracy"] = {"value": m, "stderr": se, "n": len(problems), "k": n_min or None}
    for k in sorted(set(ks)):
        eligible = [v for v in problems if len(v) >= k]
        if not eligible:
            continue
        vals = [pass_at_k(len(v), sum(ok for _, ok in v), k) for v in eligible]
        m, se = mean_stderr(vals)
        out[f"pass@{k}"] = {"value": m, "stderr": se, "n": len(eligible), "k": k}
        if maj and k > 1:
            mv = [float(majority_correct([a for a, _ in v[:k]], [ok for _, ok in v[:k]])) for v in eligible]
            m, se = mean_stderr(mv)
            out[f"maj@{k}"] = {"value": m, "stderr": se, "n": len(eligible), "k": k}
    return out
