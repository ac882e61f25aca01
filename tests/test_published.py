"""Published figures (leaderboards/published/*.yaml) and the published-vs-reproduced view,
with the committed data files and constructed measured results."""

from __future__ import annotations

import json

import pytest
import yaml

from dllm_bench.errors import BadInputError
from dllm_bench.published import (
    Measured,
    load_file,
    load_published,
    model_matches,
    reproduction_rows,
    sampling_mode,
    schema_text,
    to_dicts,
    to_markdown,
)

from .conftest import REPO, assert_same_tree

PUB = REPO / "leaderboards" / "published"
TRACERL, DIRL = "2509.06949", "2512.22234"


@pytest.fixture(scope="module")
def figs():
    return load_published(PUB)


def _one(figs, arxiv, hub, task, mode):
    hits = [f for f in figs if f.source.arxiv_id == arxiv and f.model.hub_id == hub and f.task == task
            and f.mode == mode]
    assert len(hits) == 1, hits
    return hits[0]


def test_files_hold_every_cell(figs):
    # TraceRL Table 2: 15 rows (2 AR, 13 dLLM model x mode) x 5 tasks, Dream's two AIME2024 cells are "-"
    assert sum(f.source.arxiv_id == TRACERL for f in figs) == 15 * 5 - 2
    # DiRL Table 1: 8 rows x (5 tasks + Avg)
    assert sum(f.source.arxiv_id == DIRL for f in figs) == 8 * 6
    assert all(f.model.hub_id and f.metric == "accuracy" and 0 <= f.value <= 1 for f in figs)
    assert not [f for f in figs if f.model.name == "Dream-7B-Instruct" and f.task == "aime2024"]


def test_cells_as_printed(figs):
    f = _one(figs, TRACERL, "Gen-Verse/TraDo-8B-Instruct", "math500", "static")
    assert f.value_percent == 78.5 and f.value == pytest.approx(0.785) and f.source.table == "Table 2"
    assert f.settings.repo_defaults and f.settings.samples_per_problem == 3 and f.settings.top_k == 1
    f = _one(figs, TRACERL, "Gen-Verse/TraDo-8B-Thinking", "livebench", "dynamic")
    assert f.value_percent == 36.0 and f.settings.confidence_threshold == 0.9
    assert f.settings.samples_per_problem == "not stated"
    f = _one(figs, DIRL, "OpenMOSS-Team/DiRL-8B-Instruct", "math500", "dynamic")
    assert (f.value_percent, f.tokens_per_forward, f.avg_output_tokens) == (83.1, 2.0, 2001)
    assert f.settings.samples_per_problem == 16 and f.settings.max_new_tokens == 8192 and f.settings.top_k == 50
    f = _one(figs, DIRL, "JetLM/SDAR-8B-Chat", "gsm8k", "dynamic")
    assert (f.value_percent, f.tokens_per_forward, f.avg_output_tokens) == (89.9, 2.8, None)
    f = _one(figs, DIRL, "Qwen/Qwen2.5-7B-Instruct", "aime2025", "ar")
    assert f.value_percent == 5.6 and f.settings.temperature == "not stated"


def test_schema_file_is_current():
    committed = (REPO / "leaderboards" / "schema" / "published.schema.json").read_text()
    assert committed == schema_text(), "regenerate: dllm-bench schema --output leaderboards/schema"


def test_invalid_file_is_one_line_bad_input(tmp_path):
    data = yaml.safe_load((PUB / "tracerl-2509.06949-table2.yaml").read_text())
    for mutate, needle in [
        (lambda d: d["rows"][0].__setitem__("model", "nobody"), "unknown model"),
        (lambda d: d["rows"][0]["values"].__setitem__(0, 150.0), "percent"),
        (lambda d: d["rows"][0]["values"].pop(), "task columns"),
        (lambda d: d["source"].__setitem__("arxiv_id", "2509"), "arxiv_id"),
        (lambda d: d["settings"]["block-static"].__setitem__("top_k", "maybe"), "top_k"),
    ]:
        bad = json.loads(json.dumps(data))
        mutate(bad)
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump(bad))
        with pytest.raises(BadInputError) as ei:
            load_file(p)
        msg = str(ei.value)
        assert needle in msg and str(p) in msg and "\n" not in msg


def test_model_matching_rule():
    assert model_matches("Gen-Verse/TraDo-8B-Instruct", "Gen-Verse/TraDo-8B-Instruct")
    assert model_matches("gen-verse/trado-8b-instruct", "Gen-Verse/TraDo-8B-Instruct")
    assert model_matches("/models/TraDo-8B-Instruct/", "Gen-Verse/TraDo-8B-Instruct")
    assert not model_matches("/models/TraDo-8B-Instruct-sft", "Gen-Verse/TraDo-8B-Instruct")
    assert not model_matches("Gen-Verse/TraDo-4B-Instruct", "Gen-Verse/TraDo-8B-Instruct")
    assert not model_matches("TraDo-8B-Instruct", None)


def test_sampling_modes():
    assert sampling_mode("block-static", {}) == "static"
    assert sampling_mode("block-dynamic", {"confidence_threshold": 0.9}) == "dynamic"
    assert sampling_mode("block-dynamic", {"confidence_threshold": 1.0}) == "static"
    assert sampling_mode("full-diffusion", {"confidence_threshold": None}) == "static"
    assert sampling_mode("full-diffusion", {"confidence_threshold": 0.95}) == "dynamic"
    assert sampling_mode("ar", {}) == sampling_mode("ar-vllm", {}) == "ar"
    assert sampling_mode("something-else", {}) is None


def _trado_dynamic(**kw):
    base = dict(system="trado dyn", model_id="/models/TraDo-8B-Instruct", task="math500", value=0.75, stderr=0.01,
                n=500, sampler="block-dynamic", samples_per_problem=3, tokens_per_forward=2.1,
                sampler_config={"block_size": 4, "denoising_steps": None, "confidence_threshold": 0.8,
                                "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 2000})
    base.update(kw)
    return Measured(**base)


def test_reproduction_rows_one_per_source(figs):
    rows = reproduction_rows([_trado_dynamic()], figs)
    by = {r.arxiv_id: r for r in rows}
    assert len(rows) == 2 and set(by) == {TRACERL, DIRL}
    t, d = by[TRACERL], by[DIRL]
    assert t.published == pytest.approx(0.755) and d.published == pytest.approx(0.756)
    assert t.delta == pytest.approx(0.75 - 0.755) and d.delta == pytest.approx(0.75 - 0.756)
    assert t.within_2se is True and d.within_2se is True  # |Δ| <= 0.02
    assert d.published_tokens_per_forward == 2.3 and d.measured_tokens_per_forward == 2.1
    # the settings that differ, in words
    assert t.mismatches == ["threshold: published 0.9 (repo default), measured 0.8"]
    assert sorted(d.mismatches) == sorted(["samples per problem: published 16, measured 3",
                                           "max new tokens: published 8192, measured 2000",
                                           "threshold: published 0.9, measured 0.8",
                                           "top_k: published 50, measured 0"])
    # a tighter stderr puts the same Δ outside 2 stderr; no stderr -> unknown
    tight = reproduction_rows([_trado_dynamic(stderr=0.002)], figs)
    assert all(r.within_2se is False for r in tight)
    assert all(r.within_2se is None for r in reproduction_rows([_trado_dynamic(stderr=None)], figs))


def test_matching_needs_model_task_and_mode(figs):
    static = reproduction_rows([_trado_dynamic(sampler="block-static",
                                               sampler_config={"block_size": 4, "temperature": 1.0, "top_k": 1,
                                                               "max_new_tokens": 2000})], figs)
    assert sorted(r.published for r in static) == pytest.approx([0.767, 0.785])
    assert all(r.mode == "static" for r in static)
    assert next(r for r in static if r.arxiv_id == TRACERL).mismatches == []
    assert reproduction_rows([_trado_dynamic(task="gsm8k_calc")], figs) == []
    assert reproduction_rows([_trado_dynamic(model_id="Gen-Verse/TraDo-4B-Instruct-x")], figs) == []
    assert reproduction_rows([_trado_dynamic(sampler="mystery")], figs) == []
    ar = reproduction_rows([Measured(system="qwen", model_id="qwen/qwen2.5-7b-instruct", task="gsm8k", value=0.9,
                                     stderr=0.008, sampler="ar", sampler_config={"max_new_tokens": 512})], figs)
    assert sorted(r.published for r in ar) == pytest.approx([0.898, 0.899])
    assert all(r.mismatches == [] for r in ar)  # the AR settings are not stated


def test_unrecorded_setting_is_named(figs):
    m = _trado_dynamic(samples_per_problem=None)
    d = next(r for r in reproduction_rows([m], figs) if r.arxiv_id == DIRL)
    assert "samples per problem: published 16, measured not recorded" in d.mismatches


def test_measured_must_be_a_fraction(figs):
    with pytest.raises(BadInputError, match="fraction"):
        reproduction_rows([_trado_dynamic(value=75.0)], figs)


def test_formatting(figs):
    rows = reproduction_rows([_trado_dynamic()], figs)
    md = to_markdown(rows)
    assert "| trado dyn" in md and "75.5" in md and "75.6" in md and "75.0 ± 1.0" in md and "-0.5" in md
    assert "threshold: published 0.9 (repo default), measured 0.8" in md
    dicts = to_dicts(rows)
    assert json.loads(json.dumps(dicts)) == dicts and dicts[0]["mismatches"] == rows[0].mismatches
    assert "No measured result" in to_markdown([])


def test_default_directory_from_elsewhere(tmp_path, monkeypatch, figs):
    monkeypatch.chdir(tmp_path)  # no leaderboards/ here: the checkout's files are found
    assert len(load_published()) == len(figs)
    with pytest.raises(BadInputError, match="not found"):
        load_published(tmp_path / "nope")


# ------------------------------------------------ committed (synthetic) example entries
EXAMPLES = REPO / "tests" / "fixtures" / "published-examples"


def test_example_entries_are_current(tmp_path):
    from .make_published_examples import build

    build(tmp_path)
    assert_same_tree(EXAMPLES, tmp_path, ".venv/bin/python -m tests.make_published_examples")


def test_reproduction_view_of_example_entries(figs):
    """Entries -> Measured -> rows: every published counterpart found, Δ and the 2-stderr
    verdict by hand, and the settings that differ named in words."""
    from dllm_bench.entries import load_entries, verified
    from dllm_bench.published import measured_from_entry

    entries = verified(load_entries(EXAMPLES))
    assert all(e.verified for e in entries)
    rows = reproduction_rows([measured_from_entry(e) for e in entries], figs)
    by = {(r.system, r.arxiv_id): r for r in rows}
    static = by[("TraDo-4B-Instruct · static (synthetic)", TRACERL)]
    assert static.published == pytest.approx(0.912) and static.measured == pytest.approx(0.9)  # 108 of 120
    assert static.delta == pytest.approx(0.9 - 0.912) and static.within_2se
    assert static.mismatches == ["documents evaluated: published the whole test set, measured 40 of 1319"]
    low = by[("TraDo-4B-Instruct · dynamic 0.5 (synthetic)", TRACERL)]
    assert low.published == pytest.approx(0.903) and not low.within_2se
    assert "threshold: published 0.9 (repo default), measured 0.5" in low.mismatches
    # the AR baseline has a counterpart in both papers
    assert {a for s, a in by if s == "Qwen2.5-7B-Instruct (synthetic)"} == {TRACERL, DIRL}


def test_aup_of_the_example_threshold_sweep():
    """The three dynamic points form one curve; AUP by hand from the definition
    (d3LLM, arXiv 2601.07568): the 0.5 point (75 %) is > 5 points below y_1 = 90 % and
    dropped; AUP = 2·90 + ½·(3.2 − 2)·(87.5·W(87.5) + 90·W(90)), W(y) = min(e^{−3(1 − y/90)}, 1)."""
    import math

    from dllm_bench.aup import aup_by_system, curve_points
    from dllm_bench.entries import load_entries

    curves = curve_points(load_entries(EXAMPLES))
    sizes = sorted(len(p) for p in curves.values())
    assert sizes == [1, 1, 3]  # static, AR, and the dynamic sweep
    got = aup_by_system({cid: [(r, v) for r, v, _ in pts] for (_, cid), pts in curves.items()})
    sweep = next(cid for (_, cid), pts in curves.items() if len(pts) == 3)
    want = 2 * 90 + 0.5 * 1.2 * (87.5 * math.exp(-3 * (1 - 87.5 / 90)) + 90)
    assert got[sweep] == pytest.approx(want)
    assert sorted(v for k, v in got.items() if k != sweep) == [pytest.approx(90.0)] * 2  # ρ = 1: AUP = y
