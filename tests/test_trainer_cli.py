"""The trainers through the CLI (``dllm-bench train``, ``accelerate launch -m dllm_bench``),
under DeepSpeed ZeRO-3 on CPU, and one RL step of every other trainer / model family."""

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
from dllm_bench.trainers.cli import build_trainer

VENV_BIN = Path(sys.executable).parent
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}



def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CI="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "dllm-bench"), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


SFT_CFG = {"model": "tiny-block-dlm", "model_args": TINY, "task": "gsm8k_calc_train", "task_args": {"limit": 64},
           "max_steps": 50, "batch_size": 8, "micro_batch_size": 8, "lr": 1e-3}


def test_cli_train_json_and_resume_noop(tmp_path):
    cfg = _write(tmp_path / "sft.yaml", SFT_CFG)
    r = _cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"),
             "--set", "max_steps=3", "--set", "save_every=2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["trainer"] == "sft" and res["steps"] == 3
    assert load_model(res["final_dir"]).block_size == 4
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    again = _cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"),
                 "--set", "max_steps=3", "--set", "save_every=2", "--json", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout) == res


@pytest.mark.parametrize("content,needle", [
    ({**SFT_CFG, "learning_rate": 1.0}, "learning_rate"),
    ({**SFT_CFG, "max_steps": 0}, "max_steps"),
    ({k: v for k, v in SFT_CFG.items() if k != "model"}, "model"),
])
def test_cli_bad_config_is_one_line_exit_2(tmp_path, content, needle):
    cfg = _write(tmp_path / "bad.yaml", content)
    r = _cli("train", "--trainer", "sft", "--config", str(cfg), "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0] and "bad.yaml" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_yaml_error_and_unknown_trainer(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: tiny-ar\nlr: [1,\n")
    r = _cli("train", "--trainer", "sft", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "broken.yaml:" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--trainer", "tracer", "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "tracerl" in r.stderr  # did-you-mean


def test_accelerate_launch_block_adapt(tmp_path):
    cfg = _write(tmp_path / "ba.yaml", {
        "model": "tiny-block-dlm", "model_args": TINY, "task": "gsm8k_calc_train", "task_args": {"limit": 32},
        "max_steps": 2, "switch_step": 1, "rollout_block_size": 4, "block_size": 8, "lr": 1e-4,
        "sampler_args": {"temperature": 1.0, "max_new_tokens": 8}, "prompts_per_step": 2, "samples_per_prompt": 2,
        "group_filter": "none"})
    r = subprocess.run([str(VENV_BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "dllm_bench", "train", "--trainer", "block-adapt", "--config", str(cfg),
                        "--output", str(tmp_path / "run"), "--json"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert load_model(res["final_dir"]).block_size == 8
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]


DS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_trainer_train import DigitTask, rl_config
from dllm_bench.trainers.tracerl import TraceRL
cfg = json.loads(sys.argv[1])
res = TraceRL(cfg, task=DigitTask()).train(sys.argv[2])
print(json.dumps(res.to_dict()))
"""


@pytest.mark.slow
def test_deepspeed_zero3_tracerl_with_value_matches_plain(tmp_path):
    """The one DeepSpeed test: TraceRL + value model (two DeepSpeed engines, ZeRO-3 gathers the
    policy for rollouts) on CPU (gloo) gives the same metrics as plain accelerate. The first
    DeepSpeed run on a machine JIT-compiles a communication op (~45 s)."""
    pytest.importorskip("deepspeed")
    from dllm_bench.trainers.tracerl import TraceRL

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_trainer_train import DigitTask, rl_config
    finally:
        sys.path.pop(0)

    cfg = rl_config("tiny-block-dlm", max_steps=2, lr=1e-2, rows_per_update=16, micro_batch_size=6,
                    value={"lr": 1e-3})
    TraceRL(cfg, task=DigitTask()).train(tmp_path / "plain")
    script = tmp_path / "ds.py"
    script.write_text(DS_SCRIPT.format(tests=str(Path(__file__).parent)))
    r = subprocess.run([sys.executable, str(script), json.dumps({**cfg, "deepspeed": "zero3"}), str(tmp_path / "z3")],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    z3 = [json.loads(x) for x in (tmp_path / "z3" / "metrics.jsonl").read_text().splitlines()]
    assert len(z3) == 2
    for a, b in zip(plain, z3):
        for k in ("reward_mean", "loss", "grad_norm", "value_loss", "value_grad_norm", "kl", "clip_frac"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    assert load_model(res["final_dir"]).training["value_model"] is True
    assert (Path(res["extra_dirs"]["value"]) / "value_head.pt").is_file()


@pytest.mark.parametrize("trainer,model,extra", [
    ("value", "tiny-block-dlm", {}),
    ("random-mask-rl", "tiny-block-dlm", {"mask_copies": 2}),
    ("random-mask-rl", "tiny-full-dlm", {"masking": "full"}),
    ("tracerl", "tiny-full-dlm", {"shrink": 2}),
    ("tracerl", "tiny-ar", {}),
    ("dipo", "tiny-block-dlm", {"kl_beta": 0.1}),
])
def test_every_trainer_runs_a_step(tmp_path, trainer, model, extra):
    args = dict(TINY, block_size=4) if model != "tiny-ar" else dict(TINY)
    cfg = {"model": model, "model_args": args, "task": "gsm8k_calc_train", "task_args": {"limit": 16},
           "max_steps": 1, "sampler_args": {"temperature": 1.0, "max_new_tokens": 8}, "prompts_per_step": 2,
           "samples_per_prompt": 3, "group_filter": "none", "micro_batch_size": 6, **extra}
    res = build_trainer(trainer, cfg).train(tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["kept_frac"] == 1.0 and m["trainable_tokens" if trainer != "value" else "value_loss"] >= 0
    if trainer == "value":
        assert (res.final_dir / "value_head.pt").is_file()
        # a trained value model initialises tracerl's value model
        rl = build_trainer("tracerl", {**cfg, "value": {"model": str(res.final_dir)}}).train(tmp_path / "rl")
        assert (Path(rl.extra_dirs["value"]) / "dllm_bench_value.json").is_file()
    else:
        ad = load_model(str(res.final_dir))
        assert ad.training["trainer"] == trainer
        if trainer == "dipo":
            assert ad.training["kl_anchor"] == "reference"
    shutil.rmtree(tmp_path / "run")
