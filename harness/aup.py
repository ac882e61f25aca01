"""AUP: Accuracy Under Parallelism (d3LLM, arXiv 2601.07568; hao-ai-lab blog "AUP: when
Accuracy Meets Parallelism in Diffusion Language Models").

One number per system and task for an accuracy-vs-parallelism curve, e.g. a threshold sweep
(``dllm-bench eval --sweep confidence_threshold=...``). Implemented here from the definition:

Given m points (ρ_i, y_i) sorted by parallelism ρ (tokens per forward, ρ_1 < ρ_2 < ...) with
accuracy y in percent [0, 100]:

    y_min = y_1 − 5                          (y_1: the accuracy at the smallest ρ)
    keep only the points with y_i ≥ y_min    (y_1 is always kept)
    AUP   = ρ_1·y_1 + ½ Σ_{i=2..m} (ρ_i − ρ_{i−1}) · (y_i·W(y_i) + y_{i−1}·W(y_{i−1}))
    W(y)  = min(exp(−α·(1 − y / y_max)), 1),   α = 3

where the sum runs over the kept points and y_max is the highest accuracy on that task
across all systems compared. The first term is the rectangle under the lowest-parallelism
point (an AR model at ρ = 1 scores ρ_1·y_1 = y_1); the sum is a trapezoid rule over the curve
with each accuracy weighted by W, which is 1 at y_max and decays exponentially as the
accuracy falls below it, so parallelism bought by losing accuracy counts less.

Conventions of this implementation (not part of the paper's statement):

- **Units.** The API takes accuracy as a *fraction* (0-1, the unit of dllm-bench entries)
  and converts to percent internally; the result is in (tokens per forward) x percent, the
  scale of the paper (an AR model with 80 % accuracy has AUP 80).
- **Ties in ρ.** Points with equal ρ are merged into one whose y is the mean of their y
  (a trapezoid of zero width would otherwise make the result depend on input order).
- **y_max.** Defaults to the curve's own highest accuracy; :func:`aup_by_system` uses the
  highest over all systems. A y_max below the curve's highest y is bad input. When
  y_max = 0 every y is 0 and AUP = 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from .errors import BadInputError

if TYPE_CHECKING:
    from pathlib import Path

    from .entries import LoadedEntry
    from .schema import Entry

# one item of curve_points' entries, returned unchanged in its points
EntryItem = TypeVar("EntryItem", bound="Entry | LoadedEntry | str | Path")

ALPHA = 3.0
"""α of the weight W (d3LLM, arXiv 2601.07568)."""
DROP_POINTS = 5.0
"""Accuracy drop (percentage points) below y_1 under which points are discarded."""


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """W(y) = min(exp(−α·(1 − y/y_max)), 1) (d3LLM, arXiv 2601.07568).

    Args:
        y: accuracy; y_max: the highest accuracy compared (same unit as y, > 0).
        alpha: decay rate α (default 3).

    Raises:
        BadInputError: y_max <= 0.
    """
    if y_max <= 0:
        raise BadInputError(f"AUP: y_max must be > 0, got {y_max}")
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def _points(points: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """Validated (ρ, y in percent) pairs, sorted by ρ, ties merged by mean y."""
    raw: list[tuple[float, float]] = []
    for p in points:
        try:
            rho, acc = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError):
            raise BadInputError(f"AUP: a point must be (tokens_per_forward, accuracy), got {p!r}") from None
        if not math.isfinite(rho) or rho <= 0:
            raise BadInputError(f"AUP: tokens per forward must be a positive number, got {p[0]!r}")
        if not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
            raise BadInputError(f"AUP: accuracy must be a fraction in [0, 1], got {p[1]!r}")
        raw.append((rho, 100.0 * acc))
    if not raw:
        raise BadInputError("AUP: no points")
    by_rho: dict[float, list[float]] = {}
    for rho, y in raw:
        by_rho.setdefault(rho, []).append(y)
    return [(rho, sum(ys) / len(ys)) for rho, ys in sorted(by_rho.items())]


def kept_points(points: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """The curve AUP integrates: (ρ, y in percent) sorted by ρ, ties merged, and only the
    points with y ≥ y_1 − 5 kept.

    Raises:
        BadInputError: see :func:`aup`.
    """
    pts = _points(points)
    y_min = pts[0][1] - DROP_POINTS
    return [(rho, y) for rho, y in pts if y >= y_min]


def aup(points: Iterable[Sequence[float]], *, y_max: float | None = None, alpha: float = ALPHA) -> float:
    """Accuracy Under Parallelism of one curve (equation in the module docstring; d3LLM,
    arXiv 2601.07568).

    Args:
        points: (tokens_per_forward, accuracy) pairs: tokens per forward > 0, accuracy a
            fraction in [0, 1]; any order.
        y_max: the highest accuracy on this task across the systems compared (fraction);
            None = this curve's highest accuracy.
        alpha: α of the weight W (default 3).

    Returns:
        AUP in (tokens per forward) x percent.

    Raises:
        BadInputError: no points, a non-positive or non-finite ρ, an accuracy outside
            [0, 1], a malformed point, or a y_max outside [0, 1] or below the curve's
            highest accuracy.
    """
    pts = _points(points)
    top = max(y for _, y in pts)
    if y_max is None:
        ymax = top
    else:
        if not 0.0 <= y_max <= 1.0:
            raise BadInputError(f"AUP: y_max must be a fraction in [0, 1], got {y_max}")
        ymax = 100.0 * y_max
        if ymax < top - 1e-9:
            raise BadInputError(f"AUP: y_max {y_max} is below the curve's highest accuracy {top / 100.0}")
    if ymax == 0.0:
        return 0.0  # every y is 0
    kept = kept_points(points)
    rho1, y1 = kept[0]
    total = rho1 * y1
    for (r0, y0), (r1, yy1) in zip(kept, kept[1:]):
        total += 0.5 * (r1 - r0) * (yy1 * weight(yy1, ymax, alpha) + y0 * weight(y0, ymax, alpha))
    return total


def aup_by_system(curves: Mapping[str, Iterable[Sequence[float]]], *, alpha: float = ALPHA) -> dict[str, float]:
    """AUP of every system's curve on one task, with y_max = the highest accuracy of all
    the curves (as the definition requires).

    Args:
        curves: system name -> (tokens_per_forward, accuracy fraction) pairs.

    Returns:
        system name -> AUP ((tokens per forward) x percent), in the order of ``curves``.

    Raises:
        BadInputError: no curves, or a curve :func:`aup` rejects.
    """
    if not curves:
        raise BadInputError("AUP: no curves")
    lists = {k: list(v) for k, v in curves.items()}
    y_max = max(max(y for _, y in _points(v)) for v in lists.values()) / 100.0
    return {k: aup(v, y_max=y_max, alpha=alpha) for k, v in lists.items()}


# Sampler knobs that trade accuracy for parallelism: entries that differ only in these (under
# one protocol) are points of one accuracy-parallelism curve.
PARALLELISM_KNOBS = ("confidence_threshold", "denoising_steps")


def curve_points(entries: Iterable[EntryItem],
                 metric: str = "accuracy") -> dict[tuple[str, str], list[tuple[float, float, EntryItem]]]:
    """Accuracy-vs-parallelism curves from entries (anything
    :func:`dllm_bench.entries.as_loaded` accepts: an Entry, a LoadedEntry, a path).

    Entries under one protocol whose systems differ only in :data:`PARALLELISM_KNOBS` (a
    threshold sweep, a denoising-steps sweep) *and* that evaluated the same weights with the
    same seeds (``repro.model`` less its id and Δ reference, ``repro.seeds``) form one
    curve; each point is (tokens per forward, ``metric`` value, the entry). Two runs of one
    system (another seed, a retrained model) are separate curves; a second entry at the same
    knob values in one curve is left out. Entries without ``metric`` or with no generated
    tokens are left out.

    Returns:
        ``{(protocol_digest, curve id): [(tokens_per_forward, value, entry), ...]}`` with
        points sorted by tokens per forward; the curve id is the sha256 prefix of the system
        key without the parallelism knobs.
    """
    from .entries import as_loaded
    from .schema import canonical_json, sha256_text

    out: dict[tuple[str, str], list[tuple[float, float, EntryItem]]] = {}
    for item in entries:
        e = as_loaded(item).entry
        m = e.metrics.get(metric)
        if m is None or not e.cost.tokens_per_forward or not math.isfinite(m.value):
            continue
        sysd = e.system.model_dump(mode="json")
        sysd["sampler"]["config"] = {k: v for k, v in sysd["sampler"]["config"].items() if k not in PARALLELISM_KNOBS}
        model = e.repro.model.model_dump(mode="json", exclude={"id"})
        model["training"] = {k: v for k, v in (model.get("training") or {}).items() if k != "reference"}
        cid = sha256_text(canonical_json({"system": sysd, "model": model, "seeds": e.repro.seeds}))[:12]
        pts = out.setdefault((e.protocol_digest, cid), [])
        if all(as_loaded(p[2]).entry.system_digest != e.system_digest for p in pts):
            pts.append((float(e.cost.tokens_per_forward), m.value, item))
    for pts in out.values():
        pts.sort(key=lambda t: t[0])
    return out
