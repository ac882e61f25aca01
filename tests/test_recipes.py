"""Recipes (`dllm-bench run`): every packaged recipe validates and resolves its plugins; the
CI-sized recipe runs the whole train -> evaluate cycle end to end, its entries match the
JSON Schema, comparable rows share a key, a re-run does no work, and the regression gate
passes against the committed baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
from typer.testing import CliRunner

from dllm_bench.cli import app
from dllm_bench.recipes import packaged_recipes

from .conftest import REPO

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_packaged_recipe_validates_and_resolves(name):
    r = runner.invoke(app, ["run", name, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    steps = json.loads(r.stdout)
    assert any(s["step"] == "eval" for s in steps)
    for s in steps:
        if s["step"] == "train":
            assert s["config"]["model"], s  # ${id} references were resolved


@pytest.mark.parametrize("name", ["trado-eval", "llada-dream-eval", "qwen25-ar-baseline"])
def test_gpu_recipes_keep_one_label_per_system(name):
    """A system evaluated on several tasks keeps one label, so the leaderboard shows it as
    one row with a cell per task; its evaluations get one directory per task."""
    from dllm_bench.recipes import eval_dirname, load_recipe

    rec, _ = load_recipe(name)
    by_label: dict[str, list] = {}
    for ev in rec.evaluations:
        by_label.setdefault(ev.label, []).append(ev)
    multi = [evs for evs in by_label.values() if len(evs) > 1]
    assert multi, "some system is evaluated on several tasks"
    for evs in multi:
        assert len({e.task for e in evs}) == len(evs)
        assert len({(e.model, e.sampler, json.dumps(e.sampler_args.get("confidence_threshold"))) for e in evs}) == 1
    dirs = [eval_dirname(rec, ev) for ev in rec.evaluations]
    assert len(set(dirs)) == len(dirs)


def test_run_list_names_recipes():
    r = runner.invoke(app, ["run", "--list", "--json"])
    assert r.exit_code == 0
    names = {x["name"] for x in json.loads(r.stdout)}
    assert {"default", "ci", "trado-eval", "trado-tracerl-math", "llada-dream-eval", "qwen25-ar-baseline"} <= names


def test_bad_recipe_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels:\n  - {id: a, spec: tiny-ar\n")
    r = runner.invoke(app, ["run", str(bad), "--dry-run"])
    assert r.exit_code == 2 and f"{bad}:" in r.output and "Traceback" not in r.output
    bad.write_text("name: x\nevaluations:\n  - {label: a, model: nope, task: gsm8k, sampler: ar}\n")
    r = runner.invoke(app, ["run", str(bad), "--dry-run"])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output
    bad.write_text("name: x\nmodels: [{id: m, spec: tiny-ar}]\nevaluations:\n"
                   "  - {label: a, model: m, task: gsm8k, sampler: ar, sampler_args: {temprature: 1}}\n")
    r = runner.invoke(app, ["run", str(bad), "--dry-run"])
    assert r.exit_code == 2 and "temprature" in r.output
    r = runner.invoke(app, ["run", "no-such-recipe"])
    assert r.exit_code == 2 and "packaged recipes" in r.output


def test_ci_recipe_cycle_entries(ci_run):
    out, proc, _ = ci_run
    schema = json.loads((REPO / "leaderboards" / "schema" / "entry.schema.json").read_text())
    entries = {}
    for f in sorted((out / "evals").glob("*/entry.json")):
        data = json.loads(f.read_text())
        jsonschema.validate(data, schema)
        assert data["status"]["state"] == "complete"
        assert data["status"]["n_done"] == data["status"]["n_expected"] == 48
        entries[data["label"]] = data
    assert set(entries) == {"dLLM SFT · static", "dLLM TraceRL · static", "dLLM TraceRL · dynamic",
                            "AR twin SFT · greedy"}
    sft, rl = entries["dLLM SFT · static"], entries["dLLM TraceRL · static"]
    assert sft["protocol_digest"] == rl["protocol_digest"]  # same task, scorer, budget: ranked together
    assert sft["system_digest"] != rl["system_digest"]  # another trainer chain: another system
    assert rl["repro"]["model"]["training"]["trainer"] == "tracerl"
    assert rl["reference"] == "dLLM SFT · static" and "reference" not in rl["repro"]["model"]["training"]
    from dllm_bench.schema import Entry

    for e in entries.values():  # nothing is written into an entry after its id was made
        ent = Entry.model_validate(e)
        assert Entry.make_id(ent.protocol, ent.system, ent.repro.model, ent.repro.seeds) == ent.entry_id
    assert entries["dLLM TraceRL · dynamic"]["protocol_digest"] == rl["protocol_digest"]
    assert entries["dLLM TraceRL · dynamic"]["system_digest"] != rl["system_digest"]  # another sampler
    assert entries["AR twin SFT · greedy"]["repro"]["model"]["family"] == "ar"
    for e in entries.values():
        assert e["cost"]["nfe"] > 0 and e["cost"]["tokens_per_s"] > 0
    # the final table is on stdout, logs on stderr
    assert "dLLM TraceRL · static" in proc.stdout and "Δ accuracy" in proc.stdout
    assert (out / "leaderboard" / "README.md").exists() and (out / "leaderboard" / "index.html").exists()


def test_ci_recipe_resume_does_no_work(ci_run):
    out, _, _ = ci_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in {".jsonl", ".safetensors"}}
    p = subprocess.run([sys.executable, "-m", "dllm_bench", "run", "ci", "--output", str(out), "--json"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "CI": "true"})
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == [] and len(summary["skipped"]) == 7  # 3 stages + 4 evaluations
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before, "a finished run was recomputed"
    json.loads(p.stdout)  # --json: the leaderboard as JSON on stdout


def test_ci_recipe_passes_the_gate_against_the_committed_baseline(ci_run):
    out, _, _ = ci_run
    baseline = REPO / "leaderboards" / "baselines" / "ci"
    if not any(baseline.rglob("entry.json")):
        pytest.skip("no committed CI baseline (leaderboards/baselines/ci)")
    r = runner.invoke(app, ["gate", "--baseline", str(baseline), "--candidate", str(out / "evals"),
                            "--max-drop", "0.05", "--json"])
    assert r.exit_code == 0, r.output


def test_ci_recipe_reproduces_the_committed_baseline_bit_for_bit(ci_run):
    """Deterministic mode (the default for CPU recipes) pins every native code path, so the CI
    run on any x86-64 machine trains the committed baseline's weights exactly and samples
    exactly its completions."""
    out, _, _ = ci_run
    baseline = REPO / "leaderboards" / "baselines" / "ci"
    base = {e["label"]: (p, e) for p, e in _entries(baseline)}
    cand = {e["label"]: (p, e) for p, e in _entries(out / "evals")}
    assert base and set(base) == set(cand)
    for label, (bp, be) in base.items():
        cp, ce = cand[label]
        assert ce["repro"]["determinism"]["pinned"] is True, ce["repro"]["determinism"]
        assert be["repro"]["determinism"]["pinned"] is True, f"baseline {label} was not made in deterministic mode"
        assert ce["repro"]["model"]["weights_sha256"] == be["repro"]["model"]["weights_sha256"], label
        assert _completions(cp) == _completions(bp), label
        assert ce["metrics"]["accuracy"]["value"] == be["metrics"]["accuracy"]["value"], label


def _entries(root):
    return [(p.parent, json.loads(p.read_text())) for p in sorted(root.rglob("entry.json"))]


def _completions(entry_dir):
    rows = [json.loads(x) for x in (entry_dir / "samples.jsonl").read_text().splitlines() if x.strip()]
    return sorted((r["doc_id"], r["sample_index"], r["completion"], r["correct"]) for r in rows)
