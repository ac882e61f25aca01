"""``dllm-bench serve`` and the ``openai`` sampler, end to end on 127.0.0.1: real server processes
(the CLI, serving tiny built-in models saved to a temporary directory), the real ``openai`` SDK,
real eval processes, lm-eval's own ``local-completions`` model. No test double."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
openai = pytest.importorskip("openai", reason="the [openai] extra is not installed")

from dllm_bench import registry  # noqa: E402
from dllm_bench.errors import BadInputError  # noqa: E402
from dllm_bench.evaluate import run_eval  # noqa: E402
from dllm_bench.models import load_model  # noqa: E402
from dllm_bench.parallel import free_port as _free_port  # noqa: E402
from dllm_bench.serve import get_json as _get  # noqa: E402
from dllm_bench.serve import start_process  # noqa: E402

from .conftest import REPO, VENV_BIN, read_records, sigkill_after_samples  # noqa: E402

TASK = "gsm8k"
BATCH = 3  # eval's batch size = the servers' --max-batch-size
ENV = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class Served:
    """A ``dllm-bench serve`` process on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, sampler: str, *args: str):
        self.model_dir = model_dir
        self.proc, self.root = start_process(str(model_dir), sampler, "--max-batch-size", str(BATCH), *args, env=ENV)
        self.port = int(self.root.rsplit(":", 1)[1])
        self.base_url = self.root + "/v1"

    def rows_per_call(self) -> list[int]:
        return _get(self.root + "/stats")["rows_per_call"]

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.proc.stderr.read().decode()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("served")
    return {spec: load_model(spec).save(d / spec) for spec in ("tiny-block-dlm", "tiny-ar")}


@pytest.fixture(scope="module")
def block_server(ckpts):
    s = Served(ckpts["tiny-block-dlm"], "block-dynamic", "--batch-window", "1.0")
    yield s
    code, err = s.stop()
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]


@pytest.fixture(scope="module")
def ar_server(ckpts):
    s = Served(ckpts["tiny-ar"], "ar", "--batch-window", "0.3")
    yield s
    s.stop()


def _outcomes(path: Path) -> dict:
    return {(r.doc_id, r.sample_index): (r.completion, r.seed, r.correct, r.cost["nfe"], r.cost["generated_tokens"],
                                         r.details["finish_reason"]) for r in read_records(path)}


def _openai_args(server: Served, **kw) -> dict:
    return {"base_url": server.base_url, "concurrency": BATCH, "max_retries": 1, **kw}


# ------------------------------------------------------------------------ parity with in-process
@pytest.mark.parametrize("family,sampler,knobs", [
    ("tiny-block-dlm", "block-dynamic", {"max_new_tokens": 16}),
    ("tiny-block-dlm", "block-dynamic", {"max_new_tokens": 16, "temperature": 1.0, "top_k": 50}),
    ("tiny-ar", "ar", {"max_new_tokens": 12}),
], ids=["block-dynamic-greedy", "block-dynamic-sampled", "ar-greedy"])
def test_openai_sampler_through_serve_equals_in_process(request, ckpts, tmp_path, family, sampler, knobs):
    """GSM8K through `dllm-bench serve` gives the same completions, seeds, verdicts, NFE and
    finish reasons as the in-process sampler; the protocol is the same. With `batch_requests` each
    eval batch is one request, so the server decodes exactly eval's batches whatever the timing
    (the comparison does not lean on batch invariance; the concurrent path is tested below)."""
    server = request.getfixturevalue("block_server" if family == "tiny-block-dlm" else "ar_server")
    before = len(server.rows_per_call())
    common = dict(task=TASK, limit=6, batch_size=BATCH, seed=5)
    remote = run_eval(model=str(ckpts[family]), model_args={"weights": False}, sampler="openai",
                      sampler_args=_openai_args(server, batch_requests=True, **knobs), output=tmp_path / "remote",
                      **common)
    assert server.rows_per_call()[before:] == [BATCH, BATCH]
    local = run_eval(model=str(ckpts[family]), sampler=sampler, sampler_args=knobs, output=tmp_path / "local",
                     **common)
    assert remote.status.state == local.status.state == "complete"
    assert _outcomes(tmp_path / "remote" / "samples.jsonl") == _outcomes(tmp_path / "local" / "samples.jsonl")
    assert remote.metrics == local.metrics and remote.protocol_digest == local.protocol_digest
    assert remote.cost.nfe == local.cost.nfe > 0
    assert remote.repro.model == local.repro.model  # weights=false: same identity, no weights loaded
    cfg = remote.system.sampler.config
    assert remote.system.sampler.name == "openai" and "base_url" not in cfg and "concurrency" not in cfg
    reported = cfg["reported"]
    assert reported["version"]["server"] == "dllm-bench serve"
    assert reported["sampler"]["name"] == sampler and reported["version"]["model"]["weights_sha256"] == \
        local.repro.model.weights_sha256
    assert {k: reported["sampler"]["config"][k] for k in knobs} == knobs  # the server's effective config


def test_key_does_not_depend_on_the_address(block_server, ckpts):
    """The same server reached as 127.0.0.1 and as localhost (another base URL, another
    concurrency) is the same system; request fields change the key."""
    model = load_model(str(ckpts["tiny-block-dlm"]), weights=False)

    def key(**kw):
        s = registry.create("samplers", "openai", kw)
        s.check_model(model)
        return s.key()

    a = key(base_url=block_server.base_url)
    b = key(base_url=f"http://localhost:{block_server.port}/v1/", concurrency=1, timeout=30)
    assert a == b and a["config"]["model"] == str(ckpts["tiny-block-dlm"])
    c = key(base_url=block_server.base_url, request_fields={"confidence_threshold": 0.5})
    assert c != a and c["config"]["reported"]["sampler"]["config"]["confidence_threshold"] == 0.5


# ------------------------------------------------------------------------------ resume
def test_killed_client_resumes_with_the_sameread_records(block_server, ckpts, tmp_path):
    """SIGKILL an eval process that decodes through the server; re-running resumes: the finished
    records are kept byte for byte, the rest computed, and the result equals an uninterrupted
    in-process run."""
    out = tmp_path / "killed"
    knobs = ["max_new_tokens=8", "temperature=1.0"]
    cmd = [str(VENV_BIN / "dllm-bench"), "--no-progress", "eval", "--model", str(ckpts["tiny-block-dlm"]),
           "--model-arg", "weights=false", "--task", TASK, "--sampler", "openai",
           "--sampler-arg", f"base_url={block_server.base_url}", "--sampler-arg", f"concurrency={BATCH}",
           *[a for k in knobs for a in ("--sampler-arg", k)], "--limit", "12", "--samples", "2",
           "--batch-size", str(BATCH), "--seed", "3", "--output", str(out)]
    samples = out / "samples.jsonl"
    done = sigkill_after_samples(cmd, samples, 2 * BATCH, ENV)
    assert 2 * BATCH <= len(done) < 24 and not (out / "entry.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming:" in again.stderr
    after = samples.read_bytes().splitlines()
    assert after[: len(done)] == done and len(after) == 24
    ref = run_eval(model=str(ckpts["tiny-block-dlm"]), task=TASK, sampler="block-dynamic",
                   sampler_args={"max_new_tokens": 8, "temperature": 1.0}, limit=12, samples=2, batch_size=BATCH,
                   seed=3, output=tmp_path / "ref")
    assert _outcomes(samples) == _outcomes(tmp_path / "ref" / "samples.jsonl")
    assert json.loads((out / "entry.json").read_text())["metrics"] == ref.model_dump(mode="json")["metrics"]


# ------------------------------------------------------------------------------ errors
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "dllm-bench"), "--no-progress", *args], capture_output=True, text=True,
                          timeout=600, env=ENV)


def _error_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]


def test_server_errors_are_one_line_with_the_right_exit_code(block_server, ckpts, tmp_path):
    model = str(ckpts["tiny-block-dlm"])
    base = ["eval", "--model", model, "--model-arg", "weights=false", "--task", TASK, "--limit", "2",
            "--sampler", "openai", "--sampler-arg", "max_retries=0"]
    # a bad dLLM field: the server's 400, before any sample (exit 2)
    p = _cli(*base, "--sampler-arg", f"base_url={block_server.base_url}",
             "--sampler-arg", "request_fields={block_size: 0}", "--output", str(tmp_path / "bad"))
    line = _error_line(p)
    assert p.returncode == 2 and "HTTP 400" in line and "block_size" in line, line
    # server down: nothing listens on the port (exit 1)
    p = _cli(*base, "--sampler-arg", f"base_url=http://127.0.0.1:{_free_port()}/v1",
             "--output", str(tmp_path / "down"))
    line = _error_line(p)
    assert p.returncode == 1 and "cannot reach the server" in line and "no sample was generated" in line, line
    # the server serves another model than --model (exit 2)
    p = _cli("eval", "--model", str(ckpts["tiny-ar"]), "--model-arg", "weights=false", "--model-arg",
             "family=block-diffusion", "--task", TASK, "--limit", "1", "--sampler", "openai",
             "--sampler-arg", f"base_url={block_server.base_url}", "--output", str(tmp_path / "other"))
    line = _error_line(p)
    assert p.returncode == 2 and "serves another model" in line, line
    # in-process samplers refuse a model loaded without weights (exit 2)
    p = _cli("eval", "--model", model, "--model-arg", "weights=false", "--task", TASK, "--limit", "1",
             "--sampler", "block-dynamic", "--output", str(tmp_path / "noweights"))
    assert p.returncode == 2 and "weights=false" in _error_line(p)


def test_serve_refuses_an_address_in_use_before_loading_the_model(tmp_path):
    """The listening socket is bound before the model loads: a port another process holds is
    one line and exit 2 (not uvicorn's startup-failure exit 3), and no model is built."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        p = _cli("serve", "--model", str(tmp_path / "no-such-model"), "--sampler", "ar", "--port", str(port))
    line = _error_line(p)
    assert p.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line, line
    assert "no-such-model" not in p.stderr  # refused before the (missing) model was looked at


def test_rejected_request_is_bad_input_and_the_server_answers_openai_errors(block_server, ckpts):
    model = load_model(str(ckpts["tiny-block-dlm"]), weights=False)
    s = registry.create("samplers", "openai", {"base_url": block_server.base_url, "max_new_tokens": 4})
    with pytest.raises(BadInputError, match=r"HTTP 400: token id 100000 is outside the vocabulary"):
        s.generate(model, [[1, 2, 100000]])
    client = openai.OpenAI(base_url=block_server.base_url, api_key="EMPTY", max_retries=0)
    for extra, words in (({"remasking": "sideways"}, "remasking"), ({"fancy": 1}, "unknown request field 'fancy'"),
                         ({"stream": True}, "stream=True is not supported")):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="m", prompt="hi", max_tokens=4, extra_body=extra)
        assert words in err.value.body["message"] and "\n" not in err.value.body["message"]


# ------------------------------------------------------------------------------ batching
def test_concurrent_requests_are_batched_and_equal_one_at_a_time(block_server):
    """Concurrent requests with one config share generate() calls (the server reports their
    rows) and get the same greedy completions as one at a time; a multi-prompt request with
    n=2 and a chat request decode as their single-prompt equivalents."""
    client = openai.OpenAI(base_url=block_server.base_url, api_key="EMPTY", max_retries=0)
    prompts = [f"Question: what is {i} + {2 * i}?\nAnswer:" for i in range(6)]

    def ask(p):
        r = client.completions.create(model="m", prompt=p, max_tokens=8, temperature=0.0,
                                      extra_body={"return_token_ids": True})
        c = r.choices[0]
        return c.text, c.model_extra["token_ids"], c.model_extra["dllm_bench"], r.usage

    single = [ask(p) for p in prompts]
    assert all(x[2]["batch_rows"] == 1 for x in single)
    got: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, ask(prompts[i]))) for i in range(6)]
    before = len(block_server.rows_per_call())
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = block_server.rows_per_call()[before:]
    assert sum(rows) == 6 and max(rows) > 1
    assert max(got[i][2]["batch_rows"] for i in range(6)) > 1
    assert [got[i][:2] for i in range(6)] == [x[:2] for x in single]
    assert [got[i][2]["cost"]["nfe"] for i in range(6)] == [x[2]["cost"]["nfe"] for x in single]
    assert single[0][3].completion_tokens == len(single[0][1]) and single[0][3].prompt_tokens == len(prompts[0])

    r = client.completions.create(model="m", prompt=prompts[:2], n=2, max_tokens=8, temperature=0.0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [single[0][0], single[0][0], single[1][0], single[1][0]]
    assert r.choices[0].model_extra["dllm_bench"]["batch_rows"] == 4

    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    chat = client.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0.0)
    tok = load_model(str(block_server.model_dir), weights=False).tokenizer
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert chat.choices[0].message.content == ask(rendered)[0]
    info = _get(block_server.root + "/version")
    assert info["model"]["family"] == "block-diffusion" and info["sampler"]["name"] == "block-dynamic"
    assert info["batching"] == {"max_batch_size": BATCH, "batch_window_s": 1.0}
    assert _get(block_server.base_url + "/models")["data"][0]["id"] == str(block_server.model_dir)


# ------------------------------------------------------------------------------ lm-eval
def test_lm_eval_local_completions_against_serve(block_server):
    """lm-eval's own `local-completions` model evaluates against `dllm-bench serve` and gets the
    generations our in-process lm-eval model (same sampler config, greedy) gets."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval (the [lmeval] extra) is not installed")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (tenacity): "
                        "pip install 'dllm-bench[lmeval]'")
    from dllm_bench.lmeval import _task_manager

    tm = _task_manager(str((REPO / "tests" / "fixtures" / "lmeval").resolve()))
    remote = lm_eval.simple_evaluate(
        model="local-completions", tasks=["gsm8k_local"], task_manager=tm, limit=3, log_samples=True,
        model_args=f"model={block_server.model_dir},base_url={block_server.base_url}/completions,"
                   "tokenizer_backend=None,tokenized_requests=False,max_retries=1,num_concurrent=1")
    local = lm_eval.simple_evaluate(
        model="dllm-bench", tasks=["gsm8k_local"], task_manager=tm, limit=3, log_samples=True,
        model_args=f"model={block_server.model_dir},sampler=block-dynamic,threshold=0.9")
    assert remote["n-samples"]["gsm8k_local"]["effective"] == 3

    def resps(res):
        return [s["resps"] for s in sorted(res["samples"]["gsm8k_local"], key=lambda s: s["doc_id"])]

    assert resps(remote) == resps(local)
    assert remote["results"]["gsm8k_local"] == local["results"]["gsm8k_local"]


def test_weights_false_loads_identity_without_tensors(ckpts):
    for path in ckpts.values():
        full, light = load_model(str(path)), load_model(str(path), weights=False)
        assert light.model_info() == full.model_info() and light.weights_sha256
        assert light.device.type == "meta" and not light.weights_loaded
        assert (light.block_size, light.mask_token_id, light.eos_token_ids) == \
            (full.block_size, full.mask_token_id, full.eos_token_ids)
    tiny = load_model("tiny-block-dlm", weights=False)
    assert tiny.model_info() == load_model("tiny-block-dlm").model_info()
    with pytest.raises(BadInputError, match="needs the model's weights"):
        registry.create("samplers", "block-dynamic", {}).check_model(tiny)
