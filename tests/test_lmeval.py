"""lm-eval integration, both directions, offline: a local YAML task (tests/fixtures/lmeval,
the first GSM8K test rows, lm-eval's own exact_match scoring) and the tiny block-diffusion
model built from a config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval (the [lmeval] extra) is not installed")

from dllm_bench import registry  # noqa: E402
from dllm_bench.errors import BadInputError  # noqa: E402
from dllm_bench.gate import compare  # noqa: E402
from dllm_bench.lmeval import DllmBenchLM, install_hook, run_lmeval_task, split_args  # noqa: E402
from dllm_bench.schema import Entry  # noqa: E402

from .conftest import REPO  # noqa: E402

TASKS = REPO / "tests" / "fixtures" / "lmeval"
MODEL_ARGS = "model=tiny-block-dlm,sampler=block-dynamic,threshold=0.9"



def _task_manager():
    from dllm_bench.lmeval import _task_manager as cached

    return cached(str(TASKS.resolve()))


def test_registered_in_lm_eval_registry_on_import():
    from lm_eval.api.registry import get_model

    assert get_model("dllm-bench") is DllmBenchLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's built-ins are still there


def test_model_args_routing():
    cls = registry.load("samplers", "block-dynamic")
    # steps is LLaDA's total over all blocks: 16 steps over 32 / 4 = 8 blocks = 2 per block
    s, m = split_args(cls, {"threshold": 0.8, "steps": 16, "block_length": 4, "dtype": "float32",
                            "model_block_size": 8, "gen_length": 32})
    assert s == {"confidence_threshold": 0.8, "denoising_steps": 2, "block_size": 4, "max_new_tokens": 32}
    assert split_args(cls, {"denoising_steps": 2, "block_size": 4})[0] == {"denoising_steps": 2, "block_size": 4}
    with pytest.raises(BadInputError, match="multiple of the number of blocks"):
        split_args(cls, {"steps": 2, "block_length": 4, "gen_length": 32})
    with pytest.raises(BadInputError, match="total over all blocks"):
        split_args(cls, {"steps": 16})
    assert m == {"dtype": "float32", "block_size": 8}
    with pytest.raises(BadInputError, match="unknown dllm-bench model_args key 'bogus'"):
        split_args(cls, {"bogus": 1})


def test_loglikelihood_is_refused_with_the_reason():
    lm = DllmBenchLM(model="tiny-block-dlm", sampler="block-dynamic")
    with pytest.raises(NotImplementedError, match="ELBO"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="likelihood"):
        lm.loglikelihood_rolling([])


def test_simple_evaluate_by_name_matches_our_sampler():
    """lm-eval -> dllm-bench: every response lm-eval logged is what the sampler itself
    generates for that prompt, with the task's generation kwargs and the derived seed."""
    r = lm_eval.simple_evaluate(model="dllm-bench", model_args=MODEL_ARGS, tasks=["gsm8k_local"],
                                task_manager=_task_manager(), limit=3, batch_size=2, bootstrap_iters=0)
    res = r["results"]["gsm8k_local"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res)
    assert r["n-samples"]["gsm8k_local"]["effective"] == 3
    samples = [s for s in r["samples"]["gsm8k_local"] if s["filter"] == "strict-match"]
    assert len(samples) == 3
    lm = DllmBenchLM(model="tiny-block-dlm", sampler="block-dynamic", threshold=0.9)
    cfg = {**lm.base_sampler.config.model_dump(), "max_new_tokens": 16, "temperature": 0.0,
           "stop": ["Question:", "<|im_end|>"]}
    sampler = registry.create("samplers", "block-dynamic", cfg)
    for s in samples:
        context, gen_kwargs = s["arguments"][0]
        assert gen_kwargs["max_gen_toks"] == 16
        seed = lm._seed(("gsm8k_local", s["doc_id"], 0))
        g = sampler.generate(lm.adapter, [lm.adapter.encode(context)], seed=[seed])[0]
        assert s["resps"][0][0] == g.text
    # lm-eval's aggregate is the mean of its per-document verdicts
    assert res["exact_match,strict-match"] == pytest.approx(sum(s["exact_match"] for s in samples) / 3)


def test_lm_eval_cli_through_wrapper(tmp_path):
    """`dllm-bench-lm-eval` is lm-eval's own CLI with the model registered."""
    exe = Path(sys.executable).parent / "dllm-bench-lm-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dllm_bench.lmeval"]
    p = subprocess.run([*cmd, "--model", "dllm-bench", "--model_args", MODEL_ARGS, "--tasks", "gsm8k_local",
                        "--include_path", str(TASKS), "--limit", "2", "--batch_size", "2",
                        "--output_path", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env={**_env(), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    files = list(tmp_path.rglob("results_*.json"))
    assert files, p.stderr[-2000:]
    out = json.loads(files[0].read_text())
    assert out["config"]["model"] == "dllm-bench"
    assert out["n-samples"]["gsm8k_local"]["effective"] == 2


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_import_hook_registers_lazily(tmp_path):
    """The opt-in .pth: plain lm-eval code finds 'dllm-bench' with nothing imported first."""
    pth = install_hook(tmp_path)
    assert pth.name == "dllm_bench_lmeval.pth"
    code = ("import site, sys; site.addsitedir(sys.argv[1])\n"
            "assert 'lm_eval' not in sys.modules and 'dllm_bench.lmeval' not in sys.modules\n"
            "from lm_eval.api.registry import get_model, model_registry\n"
            "assert 'dllm_bench.lmeval' not in sys.modules, 'registered lazily'\n"
            "assert 'hf' in model_registry\n"
            "cls = get_model('dllm-bench')\n"
            "print(cls.__module__ + ':' + cls.__name__)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=_env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "dllm_bench.lmeval:DllmBenchLM"


# ---------------------------------------------------------------- lm-eval task -> entry
@pytest.fixture(scope="module")
def lm_entry(tmp_path_factory) -> tuple[Entry, Path]:
    out = tmp_path_factory.mktemp("lmeval_eval")
    e = run_lmeval_task(model="tiny-block-dlm", task="lm-eval:gsm8k_local", sampler="block-dynamic",
                        sampler_args={"confidence_threshold": 0.9}, task_args={"include_path": str(TASKS)},
                        limit=4, batch_size=2, seed=0, output=out, label="tiny-block-dlm (lm-eval)")
    return e, out


def test_run_lmeval_task_writes_a_normal_entry(lm_entry):
    e, out = lm_entry
    assert Entry.load(out / "entry.json") == e
    assert e.protocol.task.name == "lm-eval:gsm8k_local" and e.protocol.task.scorer.name == "lm-eval"
    assert e.protocol.task.dataset.n_effective == 4 and e.protocol.task.dataset.n_original == 6
    cfg = e.system.sampler.config
    gen = e.protocol.generation
    assert gen.max_new_tokens == 16 and gen.stop == ["Question:", "<|im_end|>"]
    assert cfg["confidence_threshold"] == 0.9 and cfg["block_size"] == 4
    assert list(e.metrics)[0] == "exact_match,strict-match"
    raw = json.loads((out / "lmeval_results.json").read_text())["results"]["gsm8k_local"]
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == e.samples.n_records == e.status.n_done == 4 and e.status.state == "complete"
    for name, m in e.metrics.items():
        assert m.value == raw[name] and m.n == 4  # lm-eval's own scoring
        assert m.stderr is not None and m.stderr == raw[name.replace(",", "_stderr,")]
        assert m.value == pytest.approx(sum(r["details"]["metrics"][name] for r in recs) / 4)
    # cost: the sum of the per-sample costs our sampler reported
    assert e.cost.nfe == sum(int(r["cost"]["nfe"]) for r in recs) > 0
    assert e.cost.generated_tokens == sum(int(r["cost"]["generated_tokens"]) for r in recs)


def test_lmeval_entry_gates_paired_against_itself(lm_entry, tmp_path):
    e, out = lm_entry
    c = compare(out / "entry.json", out / "entry.json", "exact_match,strict-match")
    assert (c["diff"], c["n"], c["mode"]) == (0.0, 4, "paired")


def test_rerun_resumes_from_saved_generations(lm_entry):
    e, out = lm_entry
    cache = out / "lmeval_generations.jsonl"
    before = cache.read_text()
    assert len(before.splitlines()) == 4
    again = run_lmeval_task(model="tiny-block-dlm", task="gsm8k_local", sampler="block-dynamic",
                            sampler_args={"confidence_threshold": 0.9}, task_args={"include_path": str(TASKS)},
                            limit=4, batch_size=2, seed=0, output=out, label="tiny-block-dlm (lm-eval)")
    assert cache.read_text() == before  # nothing regenerated
    assert again.metrics == e.metrics and again.samples.sha256 == e.samples.sha256
    assert again.pair_digest == e.pair_digest
    lines = before.splitlines(keepends=True)
    cache.write_text("".join(lines[:3]) + lines[3][:20])  # killed while writing the last generation
    torn = run_lmeval_task(model="tiny-block-dlm", task="gsm8k_local", sampler="block-dynamic",
                           sampler_args={"confidence_threshold": 0.9}, task_args={"include_path": str(TASKS)},
                           limit=4, batch_size=2, seed=0, output=out, label="tiny-block-dlm (lm-eval)")
    after = cache.read_text().splitlines(keepends=True)
    assert after[:3] == lines[:3] and len(after) == 4  # the torn line cut, only its generation redone
    assert json.loads(after[3])["hash"] == json.loads(lines[3])["hash"]
    assert torn.metrics == e.metrics and torn.pair_digest == e.pair_digest  # same generations (own wall times)
    assert json.loads(after[3])["text"] == json.loads(lines[3])["text"]


def test_bad_inputs(tmp_path):
    common = dict(model="tiny-block-dlm", sampler="block-dynamic", output=tmp_path,
                  task_args={"include_path": str(TASKS)})
    with pytest.raises(BadInputError, match="unknown lm-eval task 'gsm8k_locl'.*gsm8k_local"):
        run_lmeval_task(task="lm-eval:gsm8k_locl", **common)
    with pytest.raises(BadInputError, match="repeats=1"):
        run_lmeval_task(task="lm-eval:gsm8k_local", samples=2, **common)
    with pytest.raises(BadInputError, match="unknown lm-eval task arg"):
        run_lmeval_task(task="lm-eval:gsm8k_local", **{**common, "task_args": {"nope": 1}})
