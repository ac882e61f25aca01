"""Data-parallel evaluation on CPU (gloo): real processes of the real CLI (``dllm-bench eval
--num-processes N``, ``accelerate launch -m dllm_bench eval``), the tiny built-in block-diffusion
model and the shipped gsm8k_calc task. A run shared by several processes must give, record for
record, the run of one process; a killed one must resume, with any number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from dllm_bench.evaluate import run_eval
from dllm_bench.parallel import free_port
from dllm_bench.schema import Entry, SampleRecord, sha256_file

from .conftest import read_records

VENV_BIN = Path(sys.executable).parent
TASK = "gsm8k_calc"
SAMPLER_ARGS = {"max_new_tokens": 16, "temperature": 1.0, "top_k": 50}
ARGS = dict(model="tiny-block-dlm", task=TASK, sampler="block-dynamic", sampler_args=SAMPLER_ARGS, limit=30,
            samples=2, batch_size=2, seed=3)


def _env() -> dict[str, str]:
    env = dict(os.environ, CI="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _eval_argv(out: Path, *extra: str) -> list[str]:
    argv = ["--no-progress", "eval", "--model", ARGS["model"], "--task", TASK, "--sampler", ARGS["sampler"],
            "--limit", str(ARGS["limit"]), "--samples", str(ARGS["samples"]), "--batch-size",
            str(ARGS["batch_size"]), "--seed", str(ARGS["seed"]), "--output", str(out)]
    for k, v in SAMPLER_ARGS.items():
        argv += ["--sampler-arg", f"{k}={v}"]
    return [*argv, *extra]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "dllm-bench"), *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _outcome(r: SampleRecord) -> tuple:
    """What a sample is, wall time aside: identity, completion, seed, verdict, score, NFE and tokens."""
    return (r.doc_id, r.sample_index, r.prompt_sha256, r.completion, r.extracted, r.seed, r.correct, r.score,
            r.cost["nfe"], r.cost["generated_tokens"], r.details)


def _assert_same_run(entry: Entry, out: Path, ref: Entry, ref_out: Path) -> None:
    """``out`` holds the run of ``ref_out``: the same records in the same order (wall time aside),
    the same entry key digests, entry id, metrics, NFE and status; no rank file left."""
    assert [_outcome(r) for r in read_records(out / "samples.jsonl")] == \
        [_outcome(r) for r in read_records(ref_out / "samples.jsonl")]
    assert (entry.protocol_digest, entry.system_digest, entry.entry_id) == \
        (ref.protocol_digest, ref.system_digest, ref.entry_id)
    assert entry.metrics == ref.metrics
    assert (entry.cost.nfe, entry.cost.generated_tokens) == (ref.cost.nfe, ref.cost.generated_tokens)
    assert entry.status == ref.status and entry.status.state == "complete"
    assert entry.samples.sha256 == sha256_file(out / "samples.jsonl")
    assert not list(out.glob("samples.rank*.jsonl"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Entry, Path]:
    """The one-process run, in this process."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return run_eval(output=out, **ARGS), out


def test_two_processes_give_the_one_process_run(tmp_path, reference):
    out = tmp_path / "two"
    r = _cli(*_eval_argv(out, "--json", "--num-processes", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    entry = Entry.model_validate(json.loads(r.stdout))  # one JSON document: only rank 0 prints
    assert Entry.load(out / "entry.json") == entry
    _assert_same_run(entry, out, *reference)
    assert "Traceback" not in r.stderr
    assert r.stderr.count("shared by 2 processes: batch b of 30 runs on rank b mod 2\n") == 1, r.stderr
    again = _cli(*_eval_argv(out, "--json", "--num-processes", "2"))  # finished: nothing to do, same entry
    assert again.returncode == 0, again.stderr[-3000:]
    assert Entry.model_validate(json.loads(again.stdout)).entry_id == entry.entry_id
    assert "resuming: 60 of 60 samples" in again.stderr


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive")


@contextmanager
def _two_process_run(out: Path, records: int) -> Iterator[subprocess.Popen]:
    """A 2-process eval into ``out`` in its own process group, yielded once ``records`` records
    are written; the whole group is killed on exit if still there."""
    proc = subprocess.Popen([str(VENV_BIN / "dllm-bench"), *_eval_argv(out, "--num-processes", "2")], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if sum(p.read_bytes().count(b"\n") for p in out.glob("samples.rank*.jsonl")) >= records:
                break
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("resume", ["3 processes", "1 process"])
def test_killed_two_process_run_resumes(tmp_path, reference, resume):
    """SIGKILL every process of a 2-process run once some records exist; the re-run (3 processes,
    or one) keeps every finished record byte for byte, computes only the rest, and ends with the
    one-process run."""
    out = tmp_path / "killed"
    with _two_process_run(out, 6) as proc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    _wait_group_gone(proc.pid)  # the ranks die with their process group
    done = [line for p in sorted(out.glob("samples.rank*.jsonl")) for line in p.read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")]
    assert 6 <= len(done) < 60 and not (out / "entry.json").exists()

    if resume == "1 process":
        entry = run_eval(output=out, **ARGS)
    else:
        r = _cli(*_eval_argv(out, "--json", "--num-processes", "3"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"resuming: {len(done)} of 60 samples" in r.stderr
        entry = Entry.model_validate(json.loads(r.stdout))
    merged = (out / "samples.jsonl").read_bytes().splitlines(keepends=True)
    assert set(done) <= set(merged)  # finished records kept byte for byte (their wall time too): not recomputed
    assert len(merged) == 60  # each sample once
    _assert_same_run(entry, out, *reference)


def test_a_rank_killed_midway_is_one_line_exit_1(tmp_path):
    """SIGKILL rank 1 alone: rank 0 stops too (it lost its peer), the launch exits 1 naming the
    killed rank, with no traceback; the finished records stay for a re-run."""
    import psutil

    out = tmp_path / "rank-killed"
    with _two_process_run(out, 4) as proc:
        rank1 = [c for c in psutil.Process(proc.pid).children() if c.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        rank1[0].kill()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert "rank 1 of 2 was killed by SIGKILL" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "entry.json").exists() and list(out.glob("samples.rank*.jsonl"))


def test_accelerate_launch_and_busy_directory(tmp_path, reference):
    """``accelerate launch --multi_gpu --num_processes 2 -m dllm_bench eval`` on a machine without
    CUDA (accelerate's torchrun launcher; the ranks join over gloo) gives the one-process run, and
    really as two ranks (rank 0 says so; accelerate's ``--cpu`` would start one process); a
    second writer of its directory, started while it runs, is refused with one line (exit 2)."""
    out = tmp_path / "accel"
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "dllm_bench", *_eval_argv(out, "--json")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".dllm-bench.lock"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    busy = _cli(*_eval_argv(out)) if proc.poll() is None else None
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    if busy is not None and busy.returncode != 0:  # it may have come after the end: then it found the run done
        lines = [x for x in busy.stderr.splitlines() if x.strip()]
        assert busy.returncode == 2 and len(lines) == 1 and "in use by process" in lines[0], busy.stderr
    assert "shared by 2 processes" in stderr, stderr[-3000:]
    entry = Entry.model_validate(json.loads(stdout[stdout.index("{"):]))
    _assert_same_run(entry, out, *reference)


@pytest.mark.parametrize("value,needle", [("0", ">= 1"), ("-2", ">= 1"), ("two", "whole number"),
                                          ("1.5", "whole number")])
def test_bad_num_processes_is_one_line_exit_2(tmp_path, value, needle):
    r = _cli(*_eval_argv(tmp_path / "bad", "--num-processes", value), timeout=120)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "--num-processes" in lines[0], r.stderr
    assert not (tmp_path / "bad").exists()


def test_lm_eval_task_under_two_processes_is_refused(tmp_path):
    r = _cli("--no-progress", "eval", "--model", "tiny-block-dlm", "--task", "lm-eval:gsm8k", "--sampler",
             "block-dynamic", "--output", str(tmp_path / "lm"), "--num-processes", "2")
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "lm-eval" in errors[0] and "one process" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_recipe_evaluation_under_two_processes(tmp_path):
    """A recipe (a model built from its spec, one evaluation) run as 2 processes writes the entry
    of the same recipe run in one: rank 0 builds the model, both share the evaluation."""
    recipe = {"name": "dp", "seed": 1, "torch_threads": 1,
              "models": [{"id": "m", "spec": "tiny-block-dlm",
                          "args": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                                   "intermediate_size": 64}}],
              "evaluations": [{"label": "tiny", "model": "m", "task": TASK, "sampler": "block-dynamic",
                               "limit": 6, "samples": 2, "batch_size": 2,
                               "sampler_args": {"temperature": 1.0, "max_new_tokens": 8}}]}
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runs = {}
    for n in ("1", "2"):
        out = tmp_path / "run"  # one path: the model's id is its path under the run directory
        r = _cli("--no-progress", "run", str(path), "--output", str(out), "--num-processes", n, "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = out.rename(tmp_path / f"run{n}")
    one, two = (Entry.load(runs[n] / "evals" / "tiny" / "entry.json") for n in ("1", "2"))
    _assert_same_run(two, runs["2"] / "evals" / "tiny", one, runs["1"] / "evals" / "tiny")
    assert (runs["2"] / "leaderboard").is_dir() and (runs["2"] / "summary.json").is_file()


def test_recipe_training_stage_under_two_processes_is_train_under_a_two_rank_launch(tmp_path):
    """A recipe's training stage run with ``--num-processes 2`` trains as ``dllm-bench train``
    does under a 2-rank launch (``torchrun``, the trainers' CPU group through
    ``ACCELERATE_USE_CPU``): bit-identical final weights (both in deterministic mode). The
    recipe's evaluation of the trained model is shared as usual."""
    sft = {"model": "tiny-block-dlm", "model_args": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                     "num_kv_heads": 1, "intermediate_size": 64, "block_size": 4,
                                                     "max_position_embeddings": 64},
           "task": "gsm8k_calc_train", "max_steps": 4, "lr": 3.0e-3, "batch_size": 8, "micro_batch_size": 4,
           "max_response_tokens": 8, "tensorboard": False}
    recipe = {"name": "dptrain", "seed": 0, "torch_threads": 1,
              "stages": [{"name": "sft", "trainer": "sft", "produces": "m", "config": sft}],
              "evaluations": [{"label": "t", "model": "${m}", "task": TASK, "sampler": "block-dynamic", "limit": 4,
                               "samples": 1, "batch_size": 2,
                               "sampler_args": {"temperature": 1.0, "max_new_tokens": 8}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = _cli("--no-progress", "run", str(path), "--output", str(tmp_path / "run"), "--num-processes", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shared by 2 processes" in r.stderr
    stage = tmp_path / "run" / "stages" / "sft"
    cfg = json.loads((stage / "config.json").read_text())["config"]
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(_env(), ACCELERATE_USE_CPU="true", MASTER_PORT=str(free_port()))
    t = subprocess.run([str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", env["MASTER_PORT"],
                        "-m", "dllm_bench", "--no-progress", "train", "--deterministic", "--trainer", "sft",
                        "--config", str(tmp_path / "sft.yaml"), "--output", str(tmp_path / "train")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    assert sha256_file(stage / "final" / "model.safetensors") == \
        sha256_file(tmp_path / "train" / "final" / "model.safetensors")


def test_sweep_under_two_processes(tmp_path):
    """``eval --sweep`` as 2 processes: every point is the point of the one-process sweep."""
    from dllm_bench.sweep import run_sweep

    kw = dict(model="tiny-block-dlm", task=TASK, sampler="block-dynamic", limit=4, batch_size=2, seed=2)
    sargs = {"max_new_tokens": 8, "temperature": 1.0}
    ref = run_sweep(knob="confidence_threshold", values=[0.5, 0.9], sampler_args=sargs, output=tmp_path / "one",
                    **kw)
    r = _cli("--no-progress", "eval", "--model", kw["model"], "--task", TASK, "--sampler", kw["sampler"], "--limit",
             "4", "--batch-size", "2", "--seed", "2", "--sampler-arg", "max_new_tokens=8", "--sampler-arg",
             "temperature=1.0", "--sweep", "confidence_threshold=0.5,0.9", "--output", str(tmp_path / "two"),
             "--json", "--num-processes", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    got = [Entry.model_validate(e) for e in json.loads(r.stdout)]
    assert len(got) == 2
    for p, e in zip(ref, got):
        _assert_same_run(e, tmp_path / "two" / p.directory.name, p.entry, p.directory)
    assert json.loads((tmp_path / "two" / "sweep.json").read_text()) == \
        json.loads((tmp_path / "one" / "sweep.json").read_text())
