"""Code tasks on the real shipped data, executed in real sandboxes.

Gold self-checks under both backends: every HumanEval canonical solution and every MBPP
reference solution passes (the known exceptions, with reasons, are listed below: none on
the shipped files); wrong programs, early exits and forged passes fail. LiveCodeBench and
LeetCode-contest ship no reference solutions, so hand-written solutions of real problems
check the stdin/stdout and functional paths. Backends that cannot run here skip with the
reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dllm_bench.plugins import Verdict
from dllm_bench.sandboxes.cli import try_open
from dllm_bench.tasks.code import (
    CodeConfig,
    HumanEval,
    HumanEvalConfig,
    LcbConfig,
    LeetCodeContest,
    LiveCodeBench,
    Mbpp,
    MbppConfig,
    cut_at_stops,
    extract_code,
    fenced_blocks,
    lcb_stdio_equal,
)

MBPP_KNOWN_FAILURES: dict[str, str] = {}
"""Reference solutions that fail their own tests, with the reason (none on the shipped
sanitized and full files once test_setup_code runs after the solution)."""


@pytest.fixture(scope="module", params=["process", "docker"])
def backend(request):
    sb, why = try_open(request.param, build_missing_image=True,
                       **({"pool_size": 2} if request.param == "docker" else {}))
    if sb is None:
        pytest.skip(why)
    yield sb
    sb.close()


def _task(cls, cfg, sandbox):
    t = cls(cfg)
    t.use_sandbox(sandbox)
    return t


# ------------------------------------------------------------------------ extraction
def test_extract_last_fenced_block_or_whole_completion():
    text = "intro\n```python\nx = 1\n```\nmore\n```\ny = 2\n```\nbye"
    assert fenced_blocks(text) == ["x = 1\n", "y = 2\n"]
    assert extract_code(text) == ("y = 2\n", True)
    assert extract_code("def f():\n    return 1\n") == ("def f():\n    return 1\n", False)
    # a generation cut at the token limit: the unterminated last fence runs to the end
    assert extract_code("```python\ndef f():\n    return 1") == ("def f():\n    return 1", True)
    assert cut_at_stops("    return 1\n\ndef g():\n    pass\n") == "    return 1\n"


def test_lcb_stdio_comparison():
    assert lcb_stdio_equal("3\n", "3")
    assert lcb_stdio_equal(" 1 2 \n3\n\n", "1 2\n3")
    assert lcb_stdio_equal("0.50000 2", "0.5 2.0")
    assert not lcb_stdio_equal("1 2", "1 2 3")
    assert not lcb_stdio_equal("Yes", "No")
    assert not lcb_stdio_equal("1\n2", "1")


# ------------------------------------------------------------------------ HumanEval
def test_humaneval_canonical_solutions_all_pass(backend):
    t = _task(HumanEval, HumanEvalConfig(workers=2), backend)
    docs = t.docs()
    assert len(docs) == 164 and docs[0].id == "HumanEval/0"
    verdicts = t.score_batch([(d, d.meta["canonical_solution"]) for d in docs])
    failed = [(d.id, v.details["status"]) for d, v in zip(docs, verdicts) if not v.correct]
    assert failed == []
    assert all(v.score == 1.0 and v.details["tests"] == [{"name": "check", "status": "passed"}] for v in verdicts)


def test_humaneval_body_program_and_wrong_programs(backend):
    t = _task(HumanEval, HumanEvalConfig(workers=2), backend)
    d0, d1 = t.docs()[0], t.docs()[1]
    body = d0.meta["canonical_solution"]
    whole = d0.question + body
    cases = [
        (body, True, "body"),
        (body + "\n\ndef unrelated():\n    return 'cut at the stop sequence'\n", True, "body"),
        ("Sure!\n```python\n" + whole + "```\nThis works.", True, "program"),
        ("```python\nfrom typing import List\n\n"
         "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
         "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```", True,
         "program"),
        (d1.meta["canonical_solution"], False, "body"),  # another problem's solution
        ("    return None\n", False, "body"),
        ("    raise SystemExit(0)\n", False, "body"),
        ("    import os\n    os._exit(0)\n", False, "body"),
        ("garbage ``` not code", False, "body"),
        ("", False, "body"),
    ]
    verdicts = t.score_batch([(d0, c) for c, _, _ in cases])
    for (c, expect, mode), v in zip(cases, verdicts):
        assert isinstance(v, Verdict)
        assert v.correct is expect, (c[:60], v.details["status"], v.details["run"]["stderr_tail"][-300:])
        assert v.details["mode"] == mode
        assert (v.score == 1.0) is expect


def test_humaneval_prompt_styles():
    t = HumanEval(HumanEvalConfig())
    d = t.docs()[0]
    assert t.prompt(d, None) == d.question  # completion style: the raw prompt, no chat template
    assert not t.uses_chat_template()
    ti = HumanEval(HumanEvalConfig(style="instruct"))
    assert ti.uses_chat_template()
    assert "markdown code block" in ti.prompt(d, None) and d.question.strip() in ti.prompt(d, None)


# ----------------------------------------------------------------------------- MBPP
def test_mbpp_sanitized_reference_solutions_pass(backend):
    t = _task(Mbpp, MbppConfig(workers=2), backend)
    docs = t.docs()
    assert len(docs) == 427
    verdicts = t.score_batch([(d, d.meta["code"]) for d in docs])
    failed = {d.id: v.details["status"] for d, v in zip(docs, verdicts) if not v.correct}
    assert set(failed) == set(MBPP_KNOWN_FAILURES), failed
    v = verdicts[0]
    assert v.details["n_tests"] == len(docs[0].target) and v.details["n_passed"] == v.details["n_tests"]


def test_mbpp_full_reference_solutions_pass():
    sb, why = try_open("process")
    if sb is None:
        pytest.skip(why)
    t = _task(Mbpp, MbppConfig(subset="full", workers=2), sb)
    docs = t.docs()
    assert len(docs) == 974
    verdicts = t.score_batch([(d, d.meta["code"]) for d in docs])
    failed = {d.id: v.details["status"] for d, v in zip(docs, verdicts) if not v.correct}
    assert set(failed) == set(MBPP_KNOWN_FAILURES), failed
    assert t.key()["dataset"]["n_original"] == 974


def test_mbpp_prompt_extraction_and_wrong_program(backend):
    t = _task(Mbpp, MbppConfig(workers=1), backend)
    d = next(x for x in t.docs() if x.id == "mbpp/17")
    prompt = t.prompt(d, None)
    assert prompt.startswith("You are an expert Python programmer") and prompt.endswith("[BEGIN]\n")
    assert prompt.count("[DONE]") == 3 and d.target[0] in prompt
    assert t.score(d, d.meta["code"] + "\n[DONE]\nextra prose").correct
    assert t.score(d, "```python\n" + d.meta["code"] + "\n```").correct
    wrong = t.score(d, "def square_perimeter(a):\n    return 4 * a + 1\n")
    assert not wrong.correct and wrong.details["n_passed"] == 0
    assert [x["status"] for x in wrong.details["tests"]] == ["failed"] * 3


# -------------------------------------------------------------------- LiveCodeBench
ABC365_B = "```python\nn = int(input())\na = list(map(int, input().split()))\nprint(a.index(sorted(a)[-2]) + 1)\n```"
LC_3517 = '''```python
from collections import deque
class Solution:
    def shortestDistanceAfterQueries(self, n: int, queries: List[List[int]]) -> List[int]:
        adj = [[i + 1] for i in range(n - 1)] + [[]]
        out = []
        for u, v in queries:
            adj[u].append(v)
            dist = [-1] * n
            dist[0] = 0
            q = deque([0])
            while q:
                x = q.popleft()
                for y in adj[x]:
                    if dist[y] < 0:
                        dist[y] = dist[x] + 1
                        q.append(y)
            out.append(dist[n - 1])
        return out
```'''


def test_livecodebench_public_tests_stdin_and_functional(backend):
    t = _task(LiveCodeBench, LcbConfig(workers=2), backend)
    assert len(t.docs()) == 279
    assert "PUBLIC tests only" in t.description and "public tests only" in t.key()["notes"]
    stdin_doc = t.doc_by_id("abc365_b")
    func_doc = t.doc_by_id("3517")
    cases = [
        (stdin_doc, ABC365_B, True),
        (stdin_doc, ABC365_B.replace("[-2]", "[-1]"), False),
        (stdin_doc, "```python\nimport sys\nsys.exit(0)\n```", False),
        (func_doc, LC_3517, True),
        (func_doc, LC_3517.replace("out.append(dist[n - 1])", "out.append(dist[n - 1] + 1)"), False),
        (func_doc, "```python\nclass Solution:\n    def shortestDistanceAfterQueries(self, n, q):\n"
                   "        raise SystemExit(0)\n```", False),
    ]
    verdicts = t.score_batch([(d, c) for d, c, _ in cases])
    for (d, _, expect), v in zip(cases, verdicts):
        assert v.correct is expect, (d.id, v.details["tests"], v.details["run"])
    assert [x["status"] for x in verdicts[1].details["tests"]] == ["wrong-answer", "not-run"]
    assert verdicts[3].details["tests"] == [{"name": "public_0", "status": "passed"},
                                            {"name": "public_1", "status": "passed"}]


def test_livecodebench_prompt_format():
    t = LiveCodeBench(LcbConfig())
    msgs = t.messages(t.doc_by_id("abc365_b"))
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You are an expert Python programmer")
    assert msgs[1]["content"].startswith("### Question:\n") and "# YOUR CODE HERE" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("### Answer: (use the provided format with backticks)\n\n")
    fmsg = t.messages(t.doc_by_id("3517"))[1]["content"]
    assert "class Solution:" in fmsg and "starter code" in fmsg


# ------------------------------------------------------------------ LeetCode contest
def test_leetcode_contest_hidden_tests(backend):
    t = _task(LeetCodeContest, CodeConfig(workers=2), backend)
    docs = t.docs()
    assert len(docs) == 180 and all(len(d.target) == 100 for d in docs)
    d = docs[0]
    good = "```python\nclass Solution:\n    def minimumPushes(self, word: str) -> int:\n" \
           "        return sum(i // 8 + 1 for i in range(len(word)))\n```"
    v_good, v_bad = t.score_batch([(d, good), (d, good.replace("i // 8", "i // 7"))])
    assert v_good.correct and v_good.details["n_passed"] == 100 and v_good.score == 1.0
    assert not v_bad.correct and 0 < v_bad.details["n_passed"] < 100
    assert v_bad.score == v_bad.details["n_passed"] / 100  # partial credit = fraction of tests passed
    assert t.prompt(d, None) == d.question and "```python" in d.question


# -------------------------------------------------------------------- metrics / CLI
def test_aggregate_pass_at_k_without_majority():
    t = HumanEval(HumanEvalConfig())
    v = lambda ok: Verdict(correct=ok, score=float(ok), extracted="x")  # noqa: E731
    m = t.aggregate({"a": [v(True), v(False), v(False), v(False)], "b": [v(False)] * 4})
    assert m["pass@1"]["value"] == pytest.approx(0.125)
    assert m["pass@4"]["value"] == pytest.approx(0.5)
    assert not any(k.startswith("maj@") for k in m)


def test_score_cli_on_humaneval(tmp_path):
    sb, why = try_open("process")
    if sb is None:
        pytest.skip(why)
    t = HumanEval(HumanEvalConfig())
    preds = tmp_path / "preds.jsonl"
    rows = []
    for d in t.docs()[:3]:
        rows.append({"id": d.id, "completion": d.meta["canonical_solution"]})
        rows.append({"id": d.id, "completion": "    import sys\n    sys.exit(0)\n"})
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exe = Path(sys.executable).parent / "dllm-bench"
    res = subprocess.run([str(exe), "score", "--task", "humaneval", "--predictions", str(preds), "--sandbox",
                          "process", "--json", "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["metrics"]["pass@1"] == pytest.approx(0.5) and out["metrics"]["pass@2"] == pytest.approx(1.0)
    recs = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in recs] == [True, False] * 3
    assert recs[1]["details"]["status"] == "failed" and recs[1]["details"]["tests"][0]["status"] == "error"
    assert recs[1]["details"]["tests"][0]["msg"].startswith("SystemExit")
