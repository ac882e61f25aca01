"""``dllm-bench eval`` end to end on CPU: entry + per-sample records, resume after SIGKILL,
run pinning, CLI exit codes. Real task (gsm8k_calc, shipped GSM8K data), real tiny models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from dllm_bench.errors import BadInputError
from dllm_bench.evaluate import print_entry, run_eval
from dllm_bench.models import load_model
from dllm_bench.schema import Entry, sha256_file

from .conftest import read_records, sigkill_after_samples

VENV_BIN = Path(sys.executable).parent
TASK = "gsm8k_calc"



def test_eval_writes_entry_andread_records(tmp_path, capsys):
    out = tmp_path / "run"
    entry = run_eval(model="tiny-block-dlm", task=TASK, sampler="block-dynamic",
                     sampler_args={"max_new_tokens": 8, "temperature": 0.7}, limit=3, samples=2, batch_size=4,
                     seed=1, output=out, record_trajectory=True, label="tiny (test)")
    assert entry.status.state == "complete" and entry.status.n_expected == entry.status.n_done == 6
    assert entry.system.sampler.name == "block-dynamic" and entry.system.sampler.config["block_size"] == 4  # resolved
    assert entry.protocol.samples_per_problem == 2 and entry.protocol.task.dataset.n_effective == 3
    assert entry.protocol.generation.max_new_tokens == 8 and "max_new_tokens" not in entry.system.sampler.config
    assert entry.repro.model.family == "block-diffusion" and entry.repro.model.config_sha256
    assert set(entry.metrics) >= {"accuracy", "pass@1", "pass@2"} and entry.metrics["accuracy"].n == 3
    recs = read_records(out / "samples.jsonl")
    assert len(recs) == entry.samples.n_records == 6
    assert entry.samples.sha256 == sha256_file(out / "samples.jsonl")
    assert entry.cost.nfe == sum(int(r.cost["nfe"]) for r in recs) > 0
    assert entry.cost.generated_tokens == sum(int(r.cost["generated_tokens"]) for r in recs)
    for r in recs:
        assert len(r.trajectory["step_map"]) % 4 == 0 and r.details["finish_reason"] in ("eos", "stop", "length")
    assert len({r.seed for r in recs}) == 6
    assert Entry.load(out / "entry.json") == entry
    print_entry(entry)
    shown = capsys.readouterr().out
    assert "tiny (test)" in shown and "accuracy" in shown and "NFE" in shown


def test_eval_other_families_and_saved_checkpoints(tmp_path):
    e = run_eval(model="tiny-full-dlm", task=TASK, sampler="full-diffusion",
                 sampler_args={"max_new_tokens": 8, "block_size": 4, "cache_mode": "dual"}, limit=2,
                 output=tmp_path / "full")
    assert e.status.state == "complete" and e.system.sampler.config["cache_mode"] == "dual"
    e = run_eval(model="tiny-ar", task=TASK, sampler="ar", sampler_args={"max_new_tokens": 4}, limit=2,
                 output=tmp_path / "ar")
    assert e.repro.model.is_baseline and e.cost.nfe == e.cost.generated_tokens
    ckpt = load_model("tiny-block-dlm", dtype="float32", block_size=8).save(tmp_path / "ckpt",
                                                                             training={"trainer": "sft"})
    e = run_eval(model=str(ckpt), task=TASK, sampler="block-static", sampler_args={"max_new_tokens": 8}, limit=2,
                 output=tmp_path / "ckpt-eval")
    assert e.system.sampler.config["block_size"] == 8 and e.repro.model.weights_sha256
    assert e.repro.model.training == {"trainer": "sft"}


def test_rerun_with_a_different_config_is_bad_input(tmp_path):
    kw = dict(model="tiny-block-dlm", task=TASK, sampler="block-static", limit=2, output=tmp_path / "r")
    run_eval(sampler_args={"max_new_tokens": 4}, **kw)
    again = run_eval(sampler_args={"max_new_tokens": 4}, **kw)  # same run: resumes, nothing to do
    assert again.status.n_done == 2
    with pytest.raises(BadInputError, match="different protocol_digest"):
        run_eval(sampler_args={"max_new_tokens": 8}, **kw)


def test_killed_run_resumes_without_recomputing(tmp_path):
    """SIGKILL a CLI run midway; re-running keeps the finished samples byte for byte,
    computes only the rest, and ends with the same samples and metrics as an uninterrupted run."""
    args = dict(model="tiny-block-dlm", task=TASK, sampler="block-dynamic",
                sampler_args={"max_new_tokens": 8, "temperature": 1.0, "top_k": 50}, limit=24, samples=2,
                batch_size=2, seed=3)
    out = tmp_path / "killed"
    cmd = [str(VENV_BIN / "dllm-bench"), "--no-progress", "eval", "--model", args["model"], "--task", TASK,
           "--sampler", args["sampler"], "--sampler-arg", "max_new_tokens=8", "--sampler-arg", "temperature=1.0",
           "--sampler-arg", "top_k=50", "--limit", "24", "--samples", "2", "--batch-size", "2", "--seed", "3",
           "--output", str(out)]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    samples = out / "samples.jsonl"
    done_lines = sigkill_after_samples(cmd, samples, 6, env)
    assert 6 <= len(done_lines) < 48
    assert not (out / "entry.json").exists()

    resumed = run_eval(output=out, **args)
    after = samples.read_bytes().splitlines()
    assert after[: len(done_lines)] == done_lines  # finished samples kept byte for byte
    assert len(after) == 48  # ... and not recomputed (no duplicate records)
    ref = run_eval(output=tmp_path / "ref", **args)
    key = lambda r: (r.doc_id, r.sample_index)  # noqa: E731
    got = {key(r): (r.completion, r.seed, r.correct, r.cost["nfe"]) for r in read_records(samples)}
    want = {key(r): (r.completion, r.seed, r.correct, r.cost["nfe"])
            for r in read_records(tmp_path / "ref" / "samples.jsonl")}
    assert got == want
    assert resumed.metrics == ref.metrics and resumed.pair_digest == ref.pair_digest
    assert resumed.status.state == "complete" and resumed.cost.nfe == ref.cost.nfe


def test_cli_eval_bad_input_exit_code(tmp_path):
    from typer.testing import CliRunner

    from dllm_bench.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", "tiny-block-dlm", "--task", TASK, "--sampler", "ar",
                                   "--limit", "1", "--output", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "needs a ar model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-block-dlm", "--task", TASK, "--sampler", "block-static",
                                   "--sampler-arg", "block_size=0", "--output", str(tmp_path / "y")])
    assert res.exit_code == 2 and "block_size" in res.output
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-block-dlm", "--task", TASK, "--sampler", "block-static",
                                   "--limit", "2", "--sampler-arg", "max_new_tokens=4", "--json",
                                   "--output", str(tmp_path / "z")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"]["state"] == "complete"
