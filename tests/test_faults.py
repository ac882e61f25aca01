"""Reliability under faults, through the real CLI (``python -m dllm_bench``) on the tiny models:
one writer per output directory, SIGKILL / SIGTERM / SIGINT then resume, a full disk (tmpfs),
a read-only output, an output that is (or lies under) a file, and error text that is never
parsed as markup. Every case checks the exit code, one ``error:`` line and no traceback,
and that earlier data is intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

EVAL = ["eval", "--model", "tiny-block-dlm", "--task", "gsm8k_calc", "--sampler", "block-static"]
LOCK = ".dllm-bench.lock"
IS_ROOT = os.geteuid() == 0


def _env() -> dict[str, str]:
    env = dict(os.environ, CI="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllm_bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dllm_bench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _one_error_line(stderr: str, *needles: str) -> str:
    """The single ``error:`` line of ``stderr`` (asserting no traceback) holding every needle."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _keys(path: Path) -> list[tuple[str, int]]:
    return [(r["doc_id"], r["sample_index"]) for r in _records(path)]


def _wait_for(cond, what: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the writer exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _locked_by(directory: Path, pid: int) -> bool:
    try:
        return (directory / LOCK).read_text().split() == [str(pid)]
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ one writer per directory
def test_second_eval_into_the_same_directory_exits_2_naming_the_pid(tmp_path):
    out = tmp_path / "eval"
    first = _start(*EVAL, "--limit", "24", "--batch-size", "2", "--output", str(out))
    try:
        _wait_for(lambda: _locked_by(out, first.pid), "the first writer's lock", proc=first)
        second = _cli(*EVAL, "--limit", "24", "--batch-size", "2", "--output", str(out))
        assert first.poll() is None, "the first writer must still be running for this test to mean anything"
        assert second.returncode == 2, second.stderr
        _one_error_line(second.stderr, str(out), f"process {first.pid}", "in use")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    keys = _keys(out / "samples.jsonl")
    assert len(keys) == len(set(keys)) == 24  # every record once
    assert json.loads((out / "entry.json").read_text())["status"]["state"] == "complete"


HOLDER = """
import sys, time
from dllm_bench.outdir import claim_output
claim_output(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held_dir(tmp_path):
    """A directory whose lock another live process holds (a real claim_output in a subprocess)."""
    d = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        yield d, holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", [
    ["leaderboard", "build", "--entries", "tests/fixtures/entries"],
    ["run", "ci"],
    ["train", "--trainer", "sft", "--config", "no-such-config.yaml"],
    EVAL + ["--limit", "1"],
], ids=["leaderboard-build", "run", "train", "eval"])
def test_every_writing_command_refuses_a_held_directory(held_dir, command):
    d, pid = held_dir
    before = sorted(p.name for p in d.iterdir())
    t0 = time.time()
    r = _cli(*command, "--output", str(d))
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, str(d), f"process {pid}")
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written
    assert time.time() - t0 < 60  # refused up front, not after training / generation


def test_claims_are_reentrant_for_the_same_process(tmp_path):
    """A recipe's inner stage / eval directories lie under the claimed run directory."""
    script = ("import sys; from pathlib import Path; from dllm_bench.outdir import claim_output, claimed\n"
              "d = Path(sys.argv[1]); claim_output(d); claim_output(d); claim_output(d / 'evals' / 'x')\n"
              "print(len(claimed()))")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


# --------------------------------------------------------------------- kill, then resume
def test_sigkill_then_rerun_resumes_without_manual_unlock(tmp_path):
    out = tmp_path / "eval"
    writer = _start(*EVAL, "--limit", "16", "--batch-size", "2", "--output", str(out))
    try:
        _wait_for(lambda: _n_lines(out / "samples.jsonl") >= 2, "two finished samples", proc=writer)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert _locked_by(out, writer.pid)  # the dead writer's lock file is left as it was
    saved = (out / "samples.jsonl").read_bytes()
    kept = saved[: saved.rfind(b"\n") + 1]
    r = _cli(*EVAL, "--limit", "16", "--batch-size", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "Traceback" not in r.stderr
    now = (out / "samples.jsonl").read_bytes()
    assert now.startswith(kept)  # earlier records intact, not recomputed
    keys = _keys(out / "samples.jsonl")
    assert len(keys) == len(set(keys)) == 16


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_eval_says_samples_are_saved_then_resumes(tmp_path, sig, code):
    out = tmp_path / "eval"
    writer = _start(*EVAL, "--limit", "16", "--batch-size", "2", "--output", str(out))
    try:
        _wait_for(lambda: _n_lines(out / "samples.jsonl") >= 2, "two finished samples", proc=writer)
        writer.send_signal(sig)
        assert writer.wait(timeout=120) == code
    finally:
        if writer.poll() is None:
            writer.kill()
    err = writer.stderr.read()
    assert "Traceback" not in err, err
    assert "interrupted: finished samples are saved; re-run the same command to resume" in err.splitlines()
    saved = (out / "samples.jsonl").read_bytes()
    assert saved.endswith(b"\n")
    r = _cli(*EVAL, "--limit", "16", "--batch-size", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "samples.jsonl").read_bytes().startswith(saved)
    keys = _keys(out / "samples.jsonl")
    assert len(keys) == len(set(keys)) == 16


SFT_CFG = {"model": "tiny-block-dlm", "model_args": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                                     "num_kv_heads": 1, "intermediate_size": 64},
           "task": "gsm8k_calc_train", "task_args": {"limit": 64}, "max_steps": 60, "batch_size": 8,
           "micro_batch_size": 8, "lr": 1e-3, "save_every": 2}


def test_sigterm_during_train_says_checkpoints_are_saved_then_resumes(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(SFT_CFG))
    out = tmp_path / "run"
    args = ["train", "--trainer", "sft", "--config", str(cfg), "--output", str(out), "--json"]
    writer = _start(*args)
    try:
        _wait_for(lambda: any((out / "checkpoints").glob("step-*/COMPLETE")), "a checkpoint", proc=writer)
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=120) == 143
    finally:
        if writer.poll() is None:
            writer.kill()
    err = writer.stderr.read()
    assert "Traceback" not in err and "samples" not in err, err
    assert any(ln.startswith("interrupted: checkpoints written so far are saved") and "re-run the same command"
               in ln for ln in err.splitlines()), err
    assert not (out / "result.json").exists()
    metrics = (out / "metrics.jsonl").read_text()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["steps"] == SFT_CFG["max_steps"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice
    assert metrics.splitlines()[0] == (out / "metrics.jsonl").read_text().splitlines()[0]


# ------------------------------------------------ SIGKILL at random points, invariants
RESULT_FIELDS = ("prompt_sha256", "completion", "extracted", "correct", "score", "seed", "details")


def assert_eval_invariants(out: Path, ref: Path) -> None:
    """What a killed-and-resumed eval in ``out`` must share with the uninterrupted run in ``ref``:
    every (doc_id, sample_index) exactly once and nothing else, each sample's result identical
    (prompt, completion, verdict, seed; costs such as wall time may differ), the same
    run identity and final metrics, a complete entry whose samples digest is the file's, whole
    lines only, no ``.tmp`` file left and a lock file holding one PID (the last writer's)."""
    from dllm_bench.schema import sha256_file

    raw = (out / "samples.jsonl").read_bytes()
    assert raw.endswith(b"\n"), "a partial last line was left"
    got, want = _records(out / "samples.jsonl"), _records(ref / "samples.jsonl")
    keys = [(r["doc_id"], r["sample_index"]) for r in got]
    assert len(keys) == len(set(keys)), "a sample was recorded twice"
    want_by_key = {(r["doc_id"], r["sample_index"]): r for r in want}
    assert set(keys) == set(want_by_key), "samples lost or foreign samples recorded"
    for r in got:
        w = want_by_key[(r["doc_id"], r["sample_index"])]
        for f in RESULT_FIELDS:
            assert r[f] == w[f], (r["doc_id"], r["sample_index"], f, r[f], w[f])
    assert json.loads((out / "run.json").read_text()) == json.loads((ref / "run.json").read_text())
    entry, ref_entry = json.loads((out / "entry.json").read_text()), json.loads((ref / "entry.json").read_text())
    assert entry["status"]["state"] == "complete" and entry["status"]["n_done"] == len(want)
    assert entry["metrics"] == ref_entry["metrics"]
    assert entry["protocol_digest"] == ref_entry["protocol_digest"] and entry["entry_id"] == ref_entry["entry_id"]
    assert entry["system_digest"] == ref_entry["system_digest"]
    assert entry["samples"]["sha256"] == sha256_file(out / "samples.jsonl")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert (out / LOCK).read_text().split()[0].isdigit()


def _newest_checkpoint_step(out: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*/COMPLETE")]
    return max(steps, default=0)


def _kill_at(args: list[str], out: Path, *, lines: int | None = None, delay: float | None = None,
             step: int | None = None) -> int:
    """Start the CLI with ``args``, SIGKILL it once ``out/samples.jsonl`` has ``lines`` lines, or
    ``out`` has a complete checkpoint of step ``step`` or later, or after ``delay`` seconds;
    returns its exit status (``-9``, or 0 when it finished first)."""
    proc = _start(*args)
    try:
        if delay is not None:
            t0 = time.time()
            while time.time() - t0 < delay and proc.poll() is None:
                time.sleep(0.01)
        elif lines is not None:
            _wait_for(lambda: _n_lines(out / "samples.jsonl") >= lines or proc.poll() is not None,
                      f"{lines} sample lines")
        else:
            _wait_for(lambda: _newest_checkpoint_step(out) >= step or proc.poll() is not None,
                      f"the checkpoint of step {step}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_eval(tmp_path):
    """An eval SIGKILLed at points drawn from a seeded RNG (after N finished samples, or after a
    random delay: during start-up, model build or a batch), re-run after each kill, ends
    exactly like the uninterrupted run (:func:`assert_eval_invariants`); records saved before
    a kill are never rewritten (the file only grows by whole lines)."""
    import random

    args = [*EVAL, "--limit", "8", "--samples", "2", "--batch-size", "2"]
    ref = tmp_path / "ref"
    r = _cli(*args, "--output", str(ref))
    assert r.returncode == 0, r.stderr
    n = len(_records(ref / "samples.jsonl"))
    assert n == 16
    rng = random.Random(15)
    points = [{"delay": round(rng.uniform(0.3, 2.5), 2)}] + [{"lines": k} for k in sorted(rng.sample(range(1, n), 3))]
    out = tmp_path / "out"
    run = [*args, "--output", str(out)]
    kept = b""
    killed = 0
    for point in points:
        rc = _kill_at(run, out, **point)
        killed += rc == -signal.SIGKILL
        saved = (out / "samples.jsonl").read_bytes() if (out / "samples.jsonl").exists() else b""
        assert saved.startswith(kept), f"records written before an earlier kill changed ({point})"
        kept = saved[: saved.rfind(b"\n") + 1]
    assert killed >= 3, "the runs must really be killed midway for this test to mean anything"
    r = _cli(*run)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (out / "samples.jsonl").read_bytes().startswith(kept)
    assert_eval_invariants(out, ref)


def assert_train_invariants(out: Path, ref: Path) -> None:
    """What a killed-and-resumed training run in ``out`` must share with the uninterrupted run in
    ``ref`` (resume is exact, :mod:`dllm_bench.trainers.base`): bit-identical final weights,
    the same logged loss / grad norm / lr at every step, each step logged once, the same
    config, a result, no ``.tmp`` file and no checkpoint directory without its COMPLETE marker."""
    from safetensors.torch import load_file

    got, want = load_file(out / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].equal(want[k]), f"weight {k} differs from the uninterrupted run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows], "a step lost or logged twice"
    for r, w in zip(rows, ref_rows):
        for f in ("loss", "grad_norm", "lr", "target_tokens"):
            assert r[f] == w[f], (r["step"], f, r[f], w[f])
    assert json.loads((out / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    steps = [json.loads((d / "result.json").read_text())["steps"] for d in (out, ref)]
    assert steps[0] == steps[1]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert all((p / "COMPLETE").is_file() for p in (out / "checkpoints").glob("step-*"))


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_training(tmp_path):
    """SFT SIGKILLed at points drawn from a seeded RNG (once the checkpoint of a drawn step is
    complete, or after a random delay), re-run after each kill, ends bit-identical to the uninterrupted run
    (:func:`assert_train_invariants`)."""
    import random

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({**SFT_CFG, "max_steps": 16, "save_every": 2, "keep_checkpoints": 2}))
    ref = tmp_path / "ref"
    r = _cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(ref))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    run = ["train", "--trainer", "sft", "--config", str(cfg), "--output", str(out)]
    rng = random.Random(15)
    points = [{"step": 2 * k} for k in sorted(rng.sample(range(1, 7), 2))]
    points += [{"delay": round(rng.uniform(2.0, 4.0), 2)}]
    killed = sum(_kill_at(run, out, **point) == -signal.SIGKILL for point in points)
    assert killed >= 2, "the runs must really be killed midway for this test to mean anything"
    r = _cli(*run)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert_train_invariants(out, ref)


# ----------------------------------------------------------------------- unusable outputs
def test_output_that_is_a_file_or_under_a_file_exits_2_before_loading_a_model(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me\n")
    for out in (f, f / "sub"):
        # an unknown model proves the order: the output is checked before any model load
        r = _cli("eval", "--model", "no-such-model", "--task", "gsm8k_calc", "--sampler", "block-static",
                 "--output", str(out))
        assert r.returncode == 2, r.stderr
        _one_error_line(r.stderr, str(out), os.strerror(20))  # ENOTDIR
    r = _cli("leaderboard", "build", "--entries", "tests/fixtures/entries", "--output", str(f / "lb"))
    assert r.returncode == 2
    _one_error_line(r.stderr, str(f / "lb"), "Not a directory")
    assert f.read_text() == "keep me\n"


@pytest.fixture
def read_only(tmp_path):
    """Make a directory read-only: a read-only bind mount as root, chmod 555 otherwise."""
    mounts: list[Path] = []
    chmods: list[Path] = []

    def make(d: Path) -> Path:
        if IS_ROOT:
            ro = d.with_name(d.name + "-ro")
            ro.mkdir()
            subprocess.run(["mount", "--bind", "-o", "ro", str(d), str(ro)], check=True)
            mounts.append(ro)
            return ro
        d.chmod(0o555)
        chmods.append(d)
        return d

    yield make
    for m in mounts:
        subprocess.run(["umount", str(m)], check=False)
    for c in chmods:
        c.chmod(0o755)


def test_read_only_output(tmp_path, read_only):
    done = tmp_path / "done"
    r = _cli(*EVAL, "--limit", "4", "--output", str(done))
    assert r.returncode == 0, r.stderr
    entry_bytes = (done / "entry.json").read_bytes()
    samples_bytes = (done / "samples.jsonl").read_bytes()
    ro = read_only(done)
    # a finished eval re-run into its read-only directory reports the existing entry
    again = _cli(*EVAL, "--limit", "4", "--output", str(ro), "--json")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert json.loads(again.stdout) == json.loads(entry_bytes)
    # a new directory under it: one line, exit 2, before any model load (the model is unknown)
    reason = os.strerror(30) if IS_ROOT else os.strerror(13)  # EROFS / EACCES
    r = _cli("eval", "--model", "no-such-model", "--task", "gsm8k_calc", "--sampler", "block-static",
             "--output", str(ro / "new"))
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, str(ro / "new"), reason)
    r = _cli("leaderboard", "build", "--entries", "tests/fixtures/entries", "--output", str(ro / "lb"))
    assert r.returncode == 2
    _one_error_line(r.stderr, str(ro / "lb"), reason)
    assert (done / "entry.json").read_bytes() == entry_bytes
    assert (done / "samples.jsonl").read_bytes() == samples_bytes


def test_read_only_unfinished_eval_is_refused_before_the_model_loads(tmp_path, read_only):
    """A read-only directory whose entry is unfinished cannot be resumed there: exit 2, one
    line, before any model load (an unknown model proves the order: its error would come
    first otherwise), and the directory is left as it was."""
    part = tmp_path / "part"
    r = _cli(*EVAL, "--limit", "4", "--output", str(part))
    assert r.returncode == 0, r.stderr
    entry = json.loads((part / "entry.json").read_text())
    entry["status"].update(state="partial", n_done=2, n_failed=2)  # as a run with failed batches leaves it
    (part / "entry.json").write_text(json.dumps(entry))
    before = {p.name: p.read_bytes() for p in part.iterdir()}
    ro = read_only(part)
    reason = os.strerror(30) if IS_ROOT else os.strerror(13)  # EROFS / EACCES
    for model in ("no-such-model", "tiny-block-dlm"):
        r = _cli("eval", "--model", model, "--task", "gsm8k_calc", "--sampler", "block-static", "--limit", "4",
                 "--output", str(ro))
        assert r.returncode == 2, r.stderr
        _one_error_line(r.stderr, str(ro), reason, "unfinished run", "status partial, 2 of 4 samples")
    (part / "entry.json").write_text("{not json")
    before["entry.json"] = b"{not json"
    r = _cli(*EVAL, "--limit", "4", "--output", str(ro))
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, str(ro), reason, "entry.json cannot be read")
    assert {p.name: p.read_bytes() for p in part.iterdir()} == before


@pytest.fixture
def tiny_fs(tmp_path):
    """``mount(size)`` -> a fresh tmpfs of that size (a disk that fills up), ``resize(size)``
    frees space; unmounted afterwards. Root only."""
    if not IS_ROOT:
        pytest.skip("mounting a tiny tmpfs (to fill the disk) needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    class FS:
        path = mnt

        def mount(self, size: str) -> Path:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
            return mnt

        def resize(self, size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    yield FS()
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("size,failing", [("12k", "samples.jsonl"), ("16k", "entry.json")],
                         ids=["full-while-appending-samples", "full-while-writing-the-entry"])
def test_disk_full_midway_exits_1_keeps_samples_and_leaves_no_tmp_file(tiny_fs, size, failing):
    out = tiny_fs.mount(size) / "eval"
    r = _cli(*EVAL, "--limit", "8", "--batch-size", "2", "--output", str(out))
    assert r.returncode == 1, r.stderr
    line = _one_error_line(r.stderr, f"{out / failing}: {os.strerror(28)}", "re-run the same command to resume")
    assert f"finished samples are saved in {out}" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], list(out.iterdir())
    assert (out / "entry.json").exists() is False
    saved = (out / "samples.jsonl").read_bytes()
    kept = saved[: saved.rfind(b"\n") + 1]
    assert kept.count(b"\n") >= 1
    for line in kept.decode().splitlines():
        assert json.loads(line)["completion"] is not None  # whole, valid records
    tiny_fs.resize("4m")  # free space: the same command resumes and completes
    again = _cli(*EVAL, "--limit", "8", "--batch-size", "2", "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "samples.jsonl").read_bytes().startswith(kept)
    keys = _keys(out / "samples.jsonl")
    assert len(keys) == len(set(keys)) == 8
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# room for one checkpoint of the tiny model (~380 KiB): not for a second one, or not for the
# final weights after the last one
@pytest.mark.parametrize("size,overrides,failing", [
    ("600k", {"max_steps": 6}, "checkpoints/step-000004: cannot write the checkpoint"),
    ("450k", {"max_steps": 2, "save_every": 100}, "final: cannot write the final weights"),
], ids=["full-while-checkpointing", "full-while-writing-the-final-weights"])
def test_disk_full_during_training_exits_1_keeps_the_last_checkpoint_then_resumes(tmp_path, tiny_fs, size,
                                                                                   overrides, failing):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({**SFT_CFG, **overrides}))
    out = tiny_fs.mount(size) / "run"
    args = ["train", "--trainer", "sft", "--config", str(cfg), "--output", str(out), "--json"]
    r = _cli(*args)
    assert r.returncode == 1, r.stderr
    _one_error_line(r.stderr, f"{out}/{failing}: {os.strerror(28)}", "checkpoint step-000002 is kept",
                    "re-run the same command to resume")
    # the half-written checkpoint / final directory is removed, the complete checkpoint kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    assert not (out / "final").exists()
    tiny_fs.resize("8m")
    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stderr
    assert json.loads(again.stdout)["steps"] == overrides["max_steps"]


FULL_RECIPE = """name: full
models:
  - id: base
    spec: tiny-ar
    args: {hidden_size: 128, num_layers: 4, num_heads: 4, num_kv_heads: 2, intermediate_size: 512}
evaluations:
  - {label: a, model: base, task: gsm8k_calc, sampler: ar, limit: 2, sampler_args: {max_new_tokens: 8}}
"""


def test_disk_full_while_run_builds_its_model_exits_1_and_leaves_no_partial_file(tmp_path, tiny_fs):
    """``run``'s model-build step on a full disk (the ~4 MiB model does not fit a 2 MiB tmpfs):
    one line naming the weights file and ENOSPC, exit 1, no traceback, no half-written model
    directory or empty file; with space freed the same command completes."""
    rec = tmp_path / "full.yaml"
    rec.write_text(FULL_RECIPE)
    out = tiny_fs.mount("2m") / "run"
    r = _cli("run", str(rec), "--output", str(out))
    assert r.returncode == 1, r.stderr
    _one_error_line(r.stderr, f"{out / 'models' / 'base' / 'model.safetensors'}: {os.strerror(28)}",
                    f"saved in {out}", "re-run the same command to resume")
    assert not (out / "models" / "base").exists()
    left = [p for p in out.rglob("*") if p.is_file() and p.name != LOCK]
    assert [p.name for p in left] == ["recipe.yaml"] and left[0].stat().st_size > 0, left
    tiny_fs.resize("16m")
    again = _cli("run", str(rec), "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "models" / "base" / "DONE.json").is_file() and (out / "evals" / "a" / "entry.json").is_file()


def _fill(directory: Path) -> None:
    """Fill the file system of ``directory`` with one file, until it reports no space."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28
    finally:
        os.close(fd)


def test_disk_full_during_leaderboard_build_keeps_the_former_tables(tiny_fs):
    mnt = tiny_fs.mount("1m")
    out = mnt / "lb"
    build = ["leaderboard", "build", "--entries", "tests/fixtures/entries", "--output", str(out)]
    assert _cli(*build).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK}
    _fill(mnt)
    r = _cli(*build)
    assert r.returncode == 1, r.stderr
    _one_error_line(r.stderr, str(out), os.strerror(28))
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK}
    assert after == before  # no .tmp left, every former file whole
    fresh = mnt / "lb2"
    r = _cli(*build[:-1], str(fresh))
    assert r.returncode in (1, 2), r.stderr
    _one_error_line(r.stderr, str(fresh), os.strerror(28))
    assert not [p for p in fresh.iterdir() if p.name.endswith(".tmp") or p.stat().st_size == 0 and p.name != LOCK]


# ------------------------------------------------------------------------- no markup
@pytest.mark.parametrize("task", ["p[/x]", "p[bold]q", "lm-eval[/red]"])
def test_markup_in_a_task_name_is_printed_verbatim(tmp_path, task):
    r = _cli("eval", "--model", "tiny-block-dlm", "--task", task, "--sampler", "block-static",
             "--output", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, repr(task))


def test_markup_in_a_path_is_printed_verbatim(tmp_path):
    (tmp_path / "p[bold]q").write_text("a file\n")
    out = tmp_path / "p[bold]q" / "f.jsonl"
    r = _cli(*EVAL, "--output", str(out))
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, str(out))
    r = _cli("leaderboard", "build", "--entries", "tests/fixtures/entries", "--output", str(tmp_path / "lb[/x]"))
    assert r.returncode == 0, r.stderr
    assert f"wrote markdown: {tmp_path / 'lb[/x]' / 'README.md'}" in r.stderr



# ----------------------------------------------------------- Ctrl-C at any point of the CLI
def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (``SigCgt`` in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08, 0.15, 0.25, 0.4, 0.6])
def test_sigint_during_imports_or_argument_parsing_is_one_line_and_130(tmp_path, delay):
    """Ctrl-C while the CLI imports typer / torch / transformers, parses its arguments or
    builds the model: exit 130 and one ``interrupted`` line, never a KeyboardInterrupt
    traceback (or an error a library raised from the half-done import it swallowed) nor
    Click's ``Aborted!``. ``delay`` counts from the CLI's first statement (its SIGTERM
    handler shows in /proc): the interpreter's own start-up before it runs no code of ours."""
    proc = _start(*EVAL, "--limit", "24", "--batch-size", "2", "--output", str(tmp_path / "eval"))
    try:
        _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), "the CLI's first statement", timeout=30, proc=proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
