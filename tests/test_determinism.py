"""Deterministic mode: the same bits whatever native code paths the machine would pick.

A different x86-64 machine looks to a process like a different choice of native code paths:
ATen's CPU capability, oneDNN's ISA, MKL's instruction set, glibc's libm variants. The
tests below ask for other choices through the variables those libraries read (as a caller
on another machine would get them) and check that deterministic mode gives identical
weights and completions, while native mode under the same variables does not (so the
comparison can fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dllm_bench import determinism

from .conftest import run_ci_recipe

# what an AVX2-only machine looks like to the process (this one offers AVX-512)
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "MKL_CBWR": "AVX2", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}


def _native_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _other_machine() -> dict[str, str]:
    """Variables that make this process dispatch differently from its native choice."""
    if _native_capability() == "AVX512":
        return AVX2_MACHINE
    return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}


def _weights(run_dir: Path) -> dict[str, str]:
    return {p.parent.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.glob("stages/*/final/model.safetensors"))}


def _completions(run_dir: Path) -> dict[str, list]:
    out = {}
    for f in sorted(run_dir.glob("evals/*/samples.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        out[f.parent.name] = sorted((r["doc_id"], r["sample_index"], r["completion"]) for r in rows)
    return out


def test_ci_recipe_gives_the_same_bits_whatever_isa_the_caller_asks_for(ci_run, tmp_path):
    out, _, _ = ci_run
    p = run_ci_recipe(tmp_path / "other", _other_machine())
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(_weights(out)) == 3
    assert _weights(tmp_path / "other") == _weights(out)
    assert _completions(tmp_path / "other") == _completions(out)
    rep = json.loads((tmp_path / "other" / "evals" / "dllm-sft-static" / "entry.json").read_text())["repro"]
    assert rep["determinism"]["pinned"] is True
    assert rep["determinism"]["aten_cpu_capability"] == "DEFAULT"
    assert rep["determinism"]["mkl_cbwr_branch"] == "COMPATIBLE"
    assert rep["determinism"]["deterministic_algorithms"] is True
    assert rep["device_info"]["torch_cpu_capability"] == "DEFAULT"
    assert rep["device_info"]["cpu"]["model"]


SFT = {"model": "tiny-block-dlm", "model_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                  "num_kv_heads": 1, "intermediate_size": 64, "block_size": 4,
                                                  "max_position_embeddings": 64},
       "task": "gsm8k_calc_train", "task_args": {"max_operand": 12, "max_result": 144}, "max_steps": 4,
       "lr": 3e-3, "batch_size": 32, "micro_batch_size": 32, "max_response_tokens": 8, "tensorboard": False}


def _train(tmp_path: Path, name: str, extra_env: dict[str, str], mode: str) -> str:
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(SFT))
    env = {**os.environ, "CI": "true", **extra_env}
    for k in determinism.pins():  # a clean caller: nothing pinned unless the mode pins it
        if k not in extra_env:
            env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "dllm_bench", "train", "--trainer", "sft", "--config", str(cfg),
                        "--output", str(tmp_path / name), mode, "--json"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return hashlib.sha256((tmp_path / name / "final" / "model.safetensors").read_bytes()).hexdigest()


def test_native_mode_follows_the_isa_and_deterministic_mode_does_not(tmp_path):
    other = _other_machine()
    native_here = _train(tmp_path, "n1", {}, "--native")
    native_other = _train(tmp_path, "n2", other, "--native")
    assert native_here != native_other, "the ISA variables changed nothing: this test could not fail"
    pinned_here = _train(tmp_path, "d1", {}, "--deterministic")
    pinned_other = _train(tmp_path, "d2", other, "--deterministic")
    assert pinned_here == pinned_other


def test_env_reports_the_pins_in_effect():
    env = {k: v for k, v in os.environ.items() if k not in determinism.pins()}
    env.update(AVX2_MACHINE)
    r = subprocess.run([sys.executable, "-m", "dllm_bench", "env", "--deterministic", "--json"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    det = info["determinism"]
    assert det["mode"] == "deterministic" and det["pinned"] is True and det["mismatches"] == []
    assert det["pins"]["ATEN_CPU_CAPABILITY"] == "default" and det["aten_cpu_capability"] == "DEFAULT"
    assert det["threads"] == {"intra_op": 1, "inter_op": 1}
    assert info["device"]["cpu"]["logical_cores"] >= 1
    r = subprocess.run([sys.executable, "-m", "dllm_bench", "env", "--json"], capture_output=True, text=True,
                       timeout=300, env=env)
    native = json.loads(r.stdout)["determinism"]
    assert native["mode"] == "native" and native["aten_cpu_capability"] == "AVX2"


def test_pins_keep_other_glibc_tunables_and_report_mismatches(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX512F")
    p = determinism.pins(3)
    assert p["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:glibc.cpu.hwcaps={determinism.HWCAPS_MASK}"
    assert p["OMP_NUM_THREADS"] == p["MKL_NUM_THREADS"] == p[determinism.MARKER] == "3"
    assert set(determinism.mismatches(3, {})) == set(p)
    assert determinism.mismatches(3, dict(p)) == []
    with pytest.raises(ValueError):
        determinism.pins(0)


def test_run_seed_overrides_the_recipe_seed_everywhere():
    from typer.testing import CliRunner

    from dllm_bench.cli import app

    r = CliRunner().invoke(app, ["run", "ci", "--seed", "7", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    steps = json.loads(r.stdout)
    train = [s for s in steps if s["step"] == "train"]
    assert train and all(s["config"]["seed"] == 7 for s in train)
    built = [s for s in train if s["config"]["model"].startswith("tiny-")]
    assert built and all(s["config"]["model_args"]["init_seed"] == 7 for s in built)
