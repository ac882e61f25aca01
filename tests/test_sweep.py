"""``dllm-bench eval --sweep``: one complete entry directory per knob value, resumable, and bad
knobs refused before anything is written (tiny-block-dlm, gsm8k_calc, real CLI in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dllm_bench.cli import app, parse_sweep
from dllm_bench.errors import BadInputError
from dllm_bench.outdir import release_all
from dllm_bench.schema import Entry
from dllm_bench.sweep import point_dirname

BASE = ["eval", "--model", "tiny-block-dlm", "--task", "gsm8k_calc", "--sampler", "block-dynamic", "--limit", "4",
        "--batch-size", "4", "--sampler-arg", "max_new_tokens=8"]


@pytest.fixture(autouse=True)
def _release():
    yield
    release_all()


def test_sweep_two_thresholds_resumes_and_locks(tmp_path):
    out = tmp_path / "sweep"
    cmd = BASE + ["--sweep", "confidence_threshold=0.5,0.9", "--label", "tiny", "--output", str(out), "--json"]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [e["system"]["sampler"]["config"]["confidence_threshold"] for e in listed] == [0.5, 0.9]
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["confidence_threshold=0.5", "confidence_threshold=0.9"]
    before = {}
    for d, thr in zip(dirs, (0.5, 0.9)):
        e = Entry.load(out / d / "entry.json")
        assert e.status.state == "complete" and e.status.n_done == 4
        assert e.system.sampler.config["confidence_threshold"] == thr and e.label == f"tiny confidence_threshold={thr}"
        before[d] = (out / d / "samples.jsonl").read_bytes()
        assert len(before[d].splitlines()) == 4
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest == {"knob": "confidence_threshold",
                        "points": [{"value": 0.5, "dir": dirs[0]}, {"value": 0.9, "dir": dirs[1]}]}

    # each point directory is locked by this process: a plain eval pointed at it is refused
    env = {**os.environ, "CI": "true"}
    other = subprocess.run([sys.executable, "-m", "dllm_bench", "eval", *BASE[1:], "--output", str(out / dirs[0])],
                           capture_output=True, text=True, env=env, timeout=120)
    assert other.returncode == 2 and "in use by process" in other.stderr

    # a re-run generates nothing new
    res = CliRunner().invoke(app, cmd[:-1])  # table output this time
    assert res.exit_code == 0, res.output
    assert "resuming: 4 of 4" in res.output and "confidence_threshold" in res.stdout
    for d in dirs:
        assert (out / d / "samples.jsonl").read_bytes() == before[d]

    # a partial point resumes: drop two records, re-run, the point is complete again
    p = out / dirs[1] / "samples.jsonl"
    p.write_bytes(b"".join(before[dirs[1]].splitlines(keepends=True)[:2]))
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert "resuming: 2 of 4" in res.output
    assert Entry.load(out / dirs[1] / "entry.json").status.state == "complete"
    assert len(p.read_bytes().splitlines()) == 4


@pytest.mark.parametrize("extra, needle", [
    (["--sweep", "no_such_knob=1,2"], "has no knob 'no_such_knob'"),
    (["--sweep", "confidence_threshold=0.5,-1"], "confidence_threshold"),
    (["--sweep", "confidence_threshold=0.5", "--sweep", "top_k=1,2"], "one knob at a time"),
    (["--sweep", "confidence_threshold=0.5,0.5"], "given twice"),
    (["--sweep", "confidence_threshold=0.5", "--sampler-arg", "confidence_threshold=0.7"], "also given"),
])
def test_bad_sweep_is_exit_2_and_writes_nothing(tmp_path, extra, needle):
    out = tmp_path / "bad"
    res = CliRunner().invoke(app, BASE + extra + ["--output", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_sweep_into_another_knobs_sweep_is_refused(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"knob": "top_k", "points": []}))
    res = CliRunner().invoke(app, BASE + ["--sweep", "confidence_threshold=0.5", "--output", str(out)])
    assert res.exit_code == 2 and "sweep of 'top_k'" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


def test_parse_and_dirnames():
    assert parse_sweep(["confidence_threshold=0.5, 0.7,0.9"]) == ("confidence_threshold", [0.5, 0.7, 0.9])
    assert parse_sweep(["remasking=random,low_confidence"]) == ("remasking", ["random", "low_confidence"])
    with pytest.raises(BadInputError):
        parse_sweep(["confidence_threshold"])
    with pytest.raises(BadInputError):
        parse_sweep(["confidence_threshold=0.5,"])
    assert point_dirname("confidence_threshold", 0.5) == "confidence_threshold=0.5"
    assert point_dirname("skip_commit_forward", True) == "skip_commit_forward=true"
    assert point_dirname("attention_backend", "a/b c") == "attention_backend=a_b_c"


def test_model_that_fails_to_load_leaves_no_directories(tmp_path):
    # the sweep and point directories are claimed before the model loads; at exit the empty
    # ones are removed, points first, so the sweep directory goes too (real process: atexit)
    out = tmp_path / "s"
    env = {**os.environ, "CI": "true"}
    p = subprocess.run([sys.executable, "-m", "dllm_bench", "eval", "--model", str(tmp_path / "no-such-model"),
                        "--task", "gsm8k_calc", "--sampler", "block-dynamic",
                        "--sweep", "confidence_threshold=0.5,0.9", "--output", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "unknown model" in p.stderr
    assert not out.exists()
