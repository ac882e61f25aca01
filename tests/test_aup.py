"""AUP (d3LLM, arXiv 2601.07568) against values computed by hand from its equation:
AUP = ρ_1·y_1 + ½ Σ (ρ_i − ρ_{i−1})(y_i W(y_i) + y_{i−1} W(y_{i−1})), W(y) = min(exp(−3(1 − y/y_max)), 1),
y in percent, points with y < y_1 − 5 dropped."""

from __future__ import annotations

import math

import pytest

from dllm_bench.aup import aup, aup_by_system, kept_points, weight
from dllm_bench.errors import BadInputError


def test_one_point_is_the_rectangle():
    assert aup([(1.0, 0.80)]) == pytest.approx(80.0)  # 1 token/forward x 80 %
    assert aup([(2.5, 0.60)], y_max=0.9) == pytest.approx(150.0)  # the first term carries no weight


def test_three_points_by_hand():
    # (1, 80 %), (2, 79 %), (3, 76 %), y_max = 80 %:
    # W(80) = 1, W(79) = exp(-3/80), W(76) = exp(-3·4/80) = exp(-0.15)
    w79, w76 = math.exp(-0.0375), math.exp(-0.15)
    by_hand = 80 + 0.5 * 1 * (79 * w79 + 80) + 0.5 * 1 * (76 * w76 + 79 * w79)
    assert by_hand == pytest.approx(228.80, abs=0.01)
    # input order and the fraction API do not matter
    assert aup([(3, 0.76), (1, 0.80), (2, 0.79)]) == pytest.approx(by_hand, rel=1e-12)


def test_point_below_y_min_is_dropped():
    # y_1 = 80 -> y_min = 75: (4, 74 %) is dropped, (3, 76 %) kept; the curve ends at ρ = 3
    pts = [(1, 0.80), (2, 0.79), (3, 0.76), (4, 0.74)]
    assert [r for r, _ in kept_points(pts)] == [1, 2, 3]
    assert aup(pts) == pytest.approx(aup(pts[:3]))
    # a later point back above y_min is kept again, spanning the gap with one trapezoid
    gap = [(1, 0.80), (2, 0.70), (3, 0.78)]
    w78 = math.exp(-3 * (1 - 78 / 80))
    assert aup(gap) == pytest.approx(80 + 0.5 * 2 * (78 * w78 + 80))


def test_weight_is_one_at_y_max_and_decays():
    assert weight(80.0, 80.0) == 1.0
    assert weight(0.9, 0.9) == 1.0
    assert weight(90.0, 80.0) == 1.0  # capped
    assert weight(40.0, 80.0) == pytest.approx(math.exp(-1.5))
    assert weight(70.0, 80.0) < weight(75.0, 80.0) < 1.0


def test_monotonic_properties():
    base = [(1, 0.80), (2, 0.78), (3, 0.77)]
    # more accuracy at any kept point -> larger AUP (fixed y_max)
    better = [(1, 0.80), (2, 0.79), (3, 0.77)]
    assert aup(better, y_max=0.8) > aup(base, y_max=0.8)
    # one more kept point at higher parallelism -> larger AUP
    assert aup(base + [(4, 0.76)], y_max=0.8) > aup(base, y_max=0.8)
    # a better system elsewhere (higher y_max) lowers the weights, hence the AUP
    assert aup(base, y_max=0.9) < aup(base, y_max=0.8)
    # shifting the same curve to higher parallelism raises AUP
    assert aup([(2, 0.80), (4, 0.78)]) > aup([(1, 0.80), (2, 0.78)])


def test_ties_in_rho_average():
    assert aup([(1, 0.80), (1, 0.70)]) == pytest.approx(75.0)
    assert aup([(1, 0.80), (2, 0.78), (2, 0.76)], y_max=0.8) == pytest.approx(aup([(1, 0.80), (2, 0.77)], y_max=0.8))


def test_by_system_uses_the_best_accuracy_of_all():
    res = aup_by_system({"ar": [(1, 0.90)], "dllm": [(1, 0.85), (3, 0.85)]})
    assert res["ar"] == pytest.approx(90.0)
    w = math.exp(-3 * (1 - 85 / 90))
    assert res["dllm"] == pytest.approx(85 + 0.5 * 2 * (85 * w + 85 * w))


@pytest.mark.parametrize("pts, kw", [
    ([], {}),
    ([(0, 0.5)], {}),
    ([(-1, 0.5)], {}),
    ([(1, 1.2)], {}),
    ([(1, -0.1)], {}),
    ([(1, float("nan"))], {}),
    ([(1,)], {}),
    ([(1, 0.8)], {"y_max": 0.7}),
    ([(1, 0.8)], {"y_max": 80}),
])
def test_bad_input(pts, kw):
    with pytest.raises(BadInputError):
        aup(pts, **kw)


def test_all_zero_is_zero():
    assert aup([(1, 0.0), (2, 0.0)]) == 0.0


def test_curves_join_only_one_artifact_swept_in_a_parallelism_knob():
    """Runs of one system with another seed or other training steps are separate curves;
    the example sweep (one model, thresholds 0.9 / 0.7 / 0.5) is one curve."""
    from pathlib import Path

    from dllm_bench.aup import curve_points
    from dllm_bench.entries import load_entries

    fix = Path(__file__).resolve().parent / "fixtures"
    curves = curve_points(load_entries(fix / "entries"))
    assert len(curves) == 7 and all(len(p) == 1 for p in curves.values())
    ex = curve_points(load_entries(fix / "published-examples"))
    (sweep,) = [p for p in ex.values() if len(p) > 1]
    assert [e.entry.system.sampler.config["confidence_threshold"] for _, _, e in sweep] == [0.9, 0.7, 0.5]
    assert [r for r, _, _ in sweep] == sorted(r for r, _, _ in sweep)
