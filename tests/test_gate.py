"""Regression gate and compare(): paired and stderr modes checked against hand arithmetic on
the fixture entries' per-sample JSONL (tests/make_fixture_entries.py), plus incomparable keys,
directory matching, cost gates and the CLI contract (exit 0 / 1 / 2, --json on stdout)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_bench.cli import app
from dllm_bench.entries import load_entries
from dllm_bench.errors import BadInputError
from dllm_bench.gate import compare, gate
from dllm_bench.schema import Entry

from .conftest import REPO

FIX = REPO / "tests" / "fixtures" / "entries"
runner = CliRunner()


def entry_path(label: str, threshold: float | None = 0.9, sampler: str = "block-dynamic") -> Path:
    """The fixture entry file with this label, sampler and (when given) threshold."""
    found = []
    for p in sorted(FIX.rglob("*.json")):
        e = json.loads(p.read_text())
        cfg = e["system"]["sampler"]["config"]
        if e["label"] == label and e["system"]["sampler"]["name"] == sampler and \
                (threshold is None or cfg.get("threshold") == threshold):
            found.append(p)
    assert len(found) == 1, (label, found)
    return found[0]


def outcomes(entry_file: Path) -> dict[str, float]:
    """Per-problem accuracy read straight from the JSONL (independent of dllm_bench.gate)."""
    e = json.loads(entry_file.read_text())
    per: dict[str, list[bool]] = {}
    for line in (entry_file.parent / e["samples"]["path"]).read_text().splitlines():
        r = json.loads(line)
        per.setdefault(r["doc_id"], []).append(r["correct"])
    return {d: sum(v) / len(v) for d, v in per.items()}


def mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


SFT = "tiny-block-dlm (SFT)"


def gate_json(*args: str) -> tuple[int, dict | None, str]:
    r = runner.invoke(app, ["gate", *args, "--json"])
    try:
        return r.exit_code, json.loads(r.stdout), r.output
    except json.JSONDecodeError:
        return r.exit_code, None, r.output


# ------------------------------------------------------------------- paired mode
def test_clear_regression_paired_by_hand():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (regressed)")
    a, b = outcomes(base), outcomes(cand)
    d = [b[k] - a[k] for k in sorted(a)]
    # by construction: 8 problems (i % 5 == 1) flip from right to wrong, nothing else changes
    assert sorted(d).count(-1.0) == 8 and sorted(d).count(0.0) == 32
    m, se = mean_se(d)
    assert m == pytest.approx(-8 / 40)
    assert se == pytest.approx(math.sqrt((8 * (1 - 0.2) ** 2 + 32 * 0.2 ** 2) / 39 / 40))
    c = compare(base, cand, "accuracy")
    assert c["mode"] == "paired" and c["n"] == 40
    assert c["diff"] == pytest.approx(m) and c["stderr"] == pytest.approx(se)
    bound = m + 1.645 * se  # -0.0946: the optimistic end is still below 0
    assert bound < 0
    code, out, text = gate_json("--baseline", str(base), "--candidate", str(cand))
    assert code == 1, text
    chk = out["checks"][0]
    assert chk["verdict"] == "REGRESSION" and chk["mode"] == "paired"
    assert chk["bound"] == pytest.approx(bound)
    # allowing a 10-point drop, the bound (-0.0946) is within it
    code, out, _ = gate_json("--baseline", str(base), "--candidate", str(cand), "--max-drop", "0.1")
    assert code == 0 and out["checks"][0]["verdict"] == "ok"


def test_within_noise_change_passes_both_modes():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (SFT, seed 1)")
    a, b = outcomes(base), outcomes(cand)
    d = [b[k] - a[k] for k in sorted(a)]
    assert d.count(-1.0) == 2 and d.count(1.0) == 1  # two lost, one gained
    m, se = mean_se(d)
    assert m == pytest.approx(-1 / 40)
    assert m + 1.645 * se > 0  # -0.025 + 1.645 * 0.0437 = +0.047
    code, out, text = gate_json("--baseline", str(base), "--candidate", str(cand), "--mode", "paired")
    assert code == 0, text
    assert out["checks"][0]["diff"] == pytest.approx(m) and out["checks"][0]["stderr"] == pytest.approx(se)
    # unpaired: accuracies 16/40 and 15/40, se of a proportion with ddof=1: sqrt(p(1-p)/(n-1))
    pa, pb = 16 / 40, 15 / 40
    se_u = math.sqrt(pa * (1 - pa) / 39 + pb * (1 - pb) / 39)
    code, out, _ = gate_json("--baseline", str(base), "--candidate", str(cand), "--mode", "stderr")
    assert code == 0
    chk = out["checks"][0]
    assert chk["mode"] == "stderr" and chk["diff"] == pytest.approx(pb - pa) and chk["stderr"] == pytest.approx(se_u)
    assert se < se_u  # pairing removes the shared per-problem variance


def test_stderr_mode_regression_by_hand():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (regressed)")
    pa, pb = 16 / 40, 8 / 40
    se_u = math.sqrt(pa * (1 - pa) / 39 + pb * (1 - pb) / 39)
    assert (pb - pa) + 1.645 * se_u < 0  # -0.2 + 0.1655
    code, out, _ = gate_json("--baseline", str(base), "--candidate", str(cand), "--mode", "stderr")
    assert code == 1
    assert out["checks"][0]["stderr"] == pytest.approx(se_u)
    # with --z 2.0 the unpaired interval reaches 0 (-0.2 + 0.2012 > 0): not a regression
    assert (pb - pa) + 2.0 * se_u > 0
    code, _, _ = gate_json("--baseline", str(base), "--candidate", str(cand), "--mode", "stderr", "--z", "2.0")
    assert code == 0


def test_improvement_delta_traceRL_minus_sft():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (TraceRL)")
    a, b = outcomes(base), outcomes(cand)
    d = [b[k] - a[k] for k in sorted(a)]
    m, se = mean_se(d)
    assert m == pytest.approx(4 / 40)  # i % 5 == 2 and i < 20: rows 2, 7, 12, 17
    c = compare(Entry.load(base), load_entries(cand)[0], "accuracy")
    # an in-memory Entry has no file to resolve its per-sample path against: unpaired
    assert c["mode"] == "stderr" and "no per-sample records" in c["note"]
    c = compare(base, cand, "accuracy")
    assert (c["diff"], c["stderr"], c["n"], c["mode"]) == (pytest.approx(m), pytest.approx(se), 40, "paired")


# ----------------------------------------------------------- fallbacks and errors
def test_entry_without_its_samples_is_refused_by_gate_compare_falls_back(tmp_path):
    base = entry_path(SFT)
    cand = tmp_path / "cand.json"
    shutil.copy(entry_path("tiny-block-dlm (regressed)"), cand)  # entry without its samples/ file
    # the gate never trusts a stored metric it cannot recompute
    code, out, text = gate_json("--baseline", str(base), "--candidate", str(cand))
    assert code == 2 and out is None and "does not verify" in text and "missing" in text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    # compare() (a Δ for a table) still falls back to the unpaired bound
    c = compare(base, cand, "accuracy")
    assert c["mode"] == "stderr" and "no per-sample records" in c["note"]
    with pytest.raises(BadInputError, match="paired comparison impossible"):
        compare(base, cand, "accuracy", mode="paired")


@pytest.mark.parametrize("tamper", ["metric", "truncate", "edit", "delete", "duplicate"])
def test_tampered_entries_are_refused_by_gate(tmp_path, tamper):
    """A regression cannot be turned into a pass by editing the evidence."""
    base, src = entry_path(SFT), entry_path("tiny-block-dlm (regressed)")
    e = json.loads(src.read_text())
    cand = _copy_entry(src, tmp_path, label=SFT)
    samples = tmp_path / e["samples"]["path"]
    lines = samples.read_text().splitlines(keepends=True)
    if tamper == "metric":  # accuracy edited up, samples untouched
        e2 = json.loads(cand.read_text())
        e2["metrics"]["accuracy"]["value"] = 0.9
        cand.write_text(json.dumps(e2))
        why = "metric accuracy: stored value 0.9000"
    elif tamper == "truncate":
        samples.write_text("".join(lines[:-5]))
        why = "sha256"
    elif tamper == "edit":
        samples.write_text("".join(lines).replace('"correct":false', '"correct":true'))
        why = "sha256"
    elif tamper == "delete":
        samples.unlink()
        why = "missing"
    else:  # records duplicated and the recorded sha256 / count made to match: caught by the count
        from dllm_bench.schema import sha256_file

        samples.write_text("".join(lines + lines[:3]))
        e2 = json.loads(cand.read_text())
        e2["samples"]["sha256"] = sha256_file(samples)
        cand.write_text(json.dumps(e2))
        why = "43 records"
    code, out, text = gate_json("--baseline", str(base), "--candidate", str(cand))
    assert code == 2 and "does not verify" in text and why in text, text
    assert "Traceback" not in text


def test_incomparable_pair_exit_2_names_fields():
    base, cand = entry_path(SFT, 0.9), entry_path(SFT, 0.7)
    r = runner.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand)])
    assert r.exit_code == 2
    assert "not comparable" in r.output and "system differs in threshold: 0.9 vs 0.7" in r.output
    assert "Traceback" not in r.output
    # an AR baseline under the same protocol is ranked against the dLLM (a Δ) ...
    ar = entry_path("tiny-ar", None, "ar")
    assert compare(base, ar)["mode"] == "paired"
    # ... but it is not the same system, so the gate refuses to treat one as the other
    with pytest.raises(BadInputError) as ei:
        gate(base, ar)
    assert "sampler: block-dynamic vs ar" in str(ei.value) and "block size: 4 vs none" in str(ei.value)
    # another protocol (k = 4 samples, 10 problems): not even a Δ
    k4 = entry_path(SFT, None, "block-static")
    with pytest.raises(BadInputError, match="protocol differs in .*samples per problem: 1 vs 4"):
        compare(base, k4)


def test_tampered_samples_file_is_bad_input(tmp_path):
    src = entry_path("tiny-block-dlm (regressed)")
    cand = tmp_path / src.name
    shutil.copy(src, cand)
    e = json.loads(src.read_text())
    (tmp_path / "samples").mkdir()
    lines = (src.parent / e["samples"]["path"]).read_text().splitlines()
    lines[1] = lines[1].replace('"correct":false', '"correct":true')
    (tmp_path / e["samples"]["path"]).write_text("\n".join(lines) + "\n")
    code, _, text = gate_json("--baseline", str(entry_path(SFT)), "--candidate", str(cand))
    assert code == 2 and "sha256" in text


def test_unknown_mode_and_metric(tmp_path):
    base = str(entry_path(SFT))
    code, _, text = gate_json("--baseline", base, "--candidate", base, "--mode", "wilson")
    assert code == 2 and "unknown --mode" in text
    code, _, text = gate_json("--baseline", base, "--candidate", base, "--metric", "pass@4")
    assert code == 2 and "pass@4" in text
    code, _, text = gate_json("--baseline", str(tmp_path / "nope.json"), "--candidate", base)
    assert code == 2


# ------------------------------------------------------------------- cost gates
def test_cost_gates_by_hand():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (regressed)")
    ca, cb = (json.loads(p.read_text())["cost"] for p in (base, cand))
    tps_ratio = cb["tokens_per_s"] / ca["tokens_per_s"]  # 80 / 160 = 0.5
    npt_ratio = (cb["nfe"] / cb["generated_tokens"]) / (ca["nfe"] / ca["generated_tokens"])  # 12/16 / (8/16)
    assert tps_ratio == pytest.approx(0.5) and npt_ratio == pytest.approx(1.5)
    rep = gate(base, cand, max_drop=0.5, max_tps_drop=0.4, max_nfe_increase=0.6)
    by = {c.check: c for c in rep.checks}
    assert not by["accuracy"].regression  # accuracy allowed to drop 0.5 here
    assert by["tokens/s"].regression and by["tokens/s"].bound == pytest.approx(tps_ratio)  # 0.5 < 0.6
    assert not by["NFE/token"].regression and by["NFE/token"].bound == pytest.approx(npt_ratio)  # 1.5 <= 1.6
    assert not rep.ok
    rep = gate(base, cand, max_drop=0.5, max_tps_drop=0.55, max_nfe_increase=0.4)
    by = {c.check: c for c in rep.checks}
    assert not by["tokens/s"].regression and by["NFE/token"].regression


# ----------------------------------------------------------- directory matching
def _copy_entry(src: Path, dst_dir: Path, **changes) -> Path:
    """Copy an entry and its samples into dst_dir, optionally changing top-level fields."""
    e = json.loads(src.read_text())
    e.update(changes)
    (dst_dir / "samples").mkdir(parents=True, exist_ok=True)
    shutil.copy(src.parent / e["samples"]["path"], dst_dir / e["samples"]["path"])
    out = dst_dir / src.name
    out.write_text(json.dumps(e, indent=2))
    return out


def test_directories_matched_by_key_and_label(tmp_path):
    bdir, cdir = tmp_path / "base", tmp_path / "cand"
    _copy_entry(entry_path(SFT), bdir)
    _copy_entry(entry_path("tiny-ar", None, "ar"), bdir)
    _copy_entry(entry_path("tiny-ar", None, "ar"), cdir)
    # the candidate run of the SFT row got worse: same key, same label, the regressed outcomes
    _copy_entry(entry_path("tiny-block-dlm (regressed)"), cdir, label=SFT)
    code, out, text = gate_json("--baseline", str(bdir), "--candidate", str(cdir))
    assert code == 1, text
    verdicts = {c["row"]: c["verdict"] for c in out["checks"]}
    assert verdicts == {SFT: "REGRESSION", "tiny-ar": "ok"}
    ar = next(c for c in out["checks"] if c["row"] == "tiny-ar")
    assert ar["diff"] == 0.0 and ar["mode"] == "paired"
    # the same label under another key (threshold 0.7) is refused, naming the field
    shutil.rmtree(cdir)
    _copy_entry(entry_path("tiny-ar", None, "ar"), cdir)
    _copy_entry(entry_path(SFT, 0.7), cdir)
    code, _, text = gate_json("--baseline", str(bdir), "--candidate", str(cdir))
    assert code == 2 and "threshold: 0.9 vs 0.7" in text


def test_partial_candidate_fails_status(tmp_path):
    from dllm_bench.metrics import standard_metrics
    from dllm_bench.schema import sha256_file

    src = entry_path(SFT)
    e = json.loads(src.read_text())
    cand = _copy_entry(src, tmp_path)
    samples = tmp_path / e["samples"]["path"]  # a run stopped after 30 of 40 problems: 30 records
    lines = samples.read_text().splitlines(keepends=True)[:30]
    samples.write_text("".join(lines))
    recs = [json.loads(x) for x in lines]
    metrics = standard_metrics({r["doc_id"]: [(r["extracted"], r["correct"])] for r in recs}, (1,))
    e.update(status={**e["status"], "state": "partial", "n_done": 30}, metrics=metrics,
             samples={**e["samples"], "sha256": sha256_file(samples), "n_records": 30})
    cand.write_text(json.dumps(e))
    code, out, _ = gate_json("--baseline", str(src), "--candidate", str(cand))
    assert code == 1
    assert [c["check"] for c in out["checks"]] == ["status", "accuracy"]
    assert out["checks"][0]["verdict"] == "REGRESSION" and out["checks"][1]["verdict"] == "ok"


def test_table_output_lists_every_check():
    base, cand = entry_path(SFT), entry_path("tiny-block-dlm (regressed)")
    r = runner.invoke(app, ["gate", "--baseline", str(base), "--candidate", str(cand), "--max-tps-drop", "0.1"])
    assert r.exit_code == 1
    for word in ("accuracy", "tokens/s", "REGRESSION", "paired", "tiny-block-dlm (regressed)"):
        assert word in r.stdout


def test_tokens_per_s_not_compared_across_devices(tmp_path):
    src = entry_path(SFT)
    e = json.loads(src.read_text())
    cand = _copy_entry(entry_path("tiny-block-dlm (regressed)"), tmp_path, label=SFT,
                       repro={**e["repro"], "device": "cuda:NVIDIA H100"})
    rep = gate(src, cand, max_drop=0.5, max_tps_drop=0.1, max_nfe_increase=0.6)
    by = {c.check: c for c in rep.checks}
    assert by["tokens/s"].mode == "skipped" and not by["tokens/s"].regression
    assert "across devices" in by["tokens/s"].note
    assert not by["NFE/token"].regression and rep.ok  # NFE per token does not depend on the device


def test_gpu_workflow_gates_against_baselines():
    """The GPU workflow is valid YAML, targets a self-hosted GPU runner, and every shell step parses."""
    import subprocess

    import yaml

    wf = yaml.safe_load((REPO / ".github" / "workflows" / "gpu-regression.yml").read_text())
    job = wf["jobs"]["gate"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any("dllm-bench gate --baseline" in r and "leaderboards/baselines" in r for r in runs)
    assert any("dllm-bench --no-progress run" in r for r in runs)
    for r in runs:
        p = subprocess.run(["bash", "-n"], input=r, capture_output=True, text=True)
        assert p.returncode == 0, (r, p.stderr)
