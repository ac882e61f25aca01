"""Code tasks scored by running the program in a sandbox: ``humaneval``, ``mbpp``,
``livecodebench``, ``leetcode_contest``.

Every completion is executed in a sandbox backend (:mod:`dllm_bench.sandboxes`; task
option ``sandbox`` = ``process`` | ``docker``, default: the best available, recorded in the
entry's key with its limits). Nothing generated ever runs in the harness process.

Code extraction (:func:`extract_code`): the last fenced block (```` ```python ```` or any
fence; an unterminated last fence counts, for generations cut at the token limit), else the
whole completion.

Scoring (scorer ``sandboxed-exec``):

* function / assert tests (HumanEval, MBPP, LeetCode-contest, LiveCodeBench functional):
  one program = benchmark import preamble + the solution + a test harness that runs each
  test in turn (:func:`dllm_bench.sandboxes.base.build_test_program`). A sample is correct
  only when the run exits 0 **and** the runner printed the per-run success marker after
  the harness finished: ``SystemExit``/``exit()``/``os._exit(0)`` in the solution or in a
  test, a killed or timed-out program and a test that did not run never count
  (TraceRL's executor, dLLM-RL ``reward/rl_execute.py`` at 10b4fd1, counted ``SystemExit`` as a pass).
* stdin/stdout tests (LiveCodeBench AtCoder problems): one sandbox run per test with the
  test's input on the program's real stdin; a test passes when the run exits 0 within its
  limits and the output matches (LiveCodeBench ``grade_stdio``: stripped lines, exact or
  element-wise ``Decimal`` equal); the first failing test stops the sample (as LCB).
* ``Verdict.score`` (the RL reward) = fraction of tests passed, read from per-test lines
  authenticated with a per-run key; below 1 whenever the sample is not correct.
  ``Verdict.details["tests"]`` keeps every per-test outcome.

HumanEval / MBPP completions may be a body that continues the prompt or a whole program
in a fenced block: when the extracted code defines the entry point it is a whole program
(appended after the prompt, so the prompt's imports and helper functions stay defined),
otherwise it is a body continuing the prompt, cut at the Codex stop sequences.

Data: the shipped files in ``dllm_bench/tasks/data/`` (see each folder's PROVENANCE.md).
"""

from __future__ import annotations

import ast
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal

from pydantic import Field

from dllm_bench.errors import BadInputError
from dllm_bench.metrics import standard_metrics
from dllm_bench.plugins import Doc, Verdict
from dllm_bench.sandboxes.base import Limits, Sandbox, build_test_program, new_marker, parse_test_lines
from dllm_bench.schema import ScorerKey
from dllm_bench.tasks.base import (
    BaseTask,
    DataSpec,
    HubSpec,
    LoadedData,
    Message,
    TaskConfig,
    load_split,
    render_chat,
    require_fields,
    sample_ks,
)

SCORER = ScorerKey(name="sandboxed-exec", version="1")

# ------------------------------------------------------------------------ extraction
_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n", re.MULTILINE)
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)
CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""HumanEval stop sequences (Chen et al. 2021) for body continuations."""


def fenced_blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks of ``text`` in order; a last fence without its
    closing line runs to the end of the text (a generation cut at the token limit)."""
    blocks: list[str] = []
    pos = 0
    while True:
        m = _FENCE.search(text, pos)
        if m is None:
            return blocks
        close = _CLOSE.search(text, m.end())
        if close is None:
            blocks.append(text[m.end():])
            return blocks
        blocks.append(text[m.end():close.start()])
        pos = close.end()


def extract_code(completion: str) -> tuple[str, bool]:
    """``(code, fenced)``: the last fenced block, or the whole completion when there is none."""
    blocks = fenced_blocks(completion or "")
    if blocks:
        return blocks[-1], True
    return completion or "", False


def defines(code: str, name: str) -> bool:
    """True if ``code`` has a top-level ``def name(`` (or ``async def``)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def cut_at_stops(body: str, stops: Sequence[str] = CODEX_STOPS) -> str:
    """``body`` up to the first stop sequence."""
    cut = len(body)
    for s in stops:
        i = body.find(s)
        if i != -1:
            cut = min(cut, i)
    return body[:cut]


# --------------------------------------------------------------------- LCB comparison
def lcb_stdio_equal(prediction: str, expected: str) -> bool:
    """LiveCodeBench ``grade_stdio``: same number of stripped lines; each line equal, or
    element-wise equal as ``Decimal`` numbers (``lcb_runner/evaluation/testing_util.py``)."""
    p = [ln.strip() for ln in prediction.strip().split("\n")]
    g = [ln.strip() for ln in expected.strip().split("\n")]
    if len(p) != len(g):
        return False
    for a, b in zip(p, g):
        if a == b:
            continue
        try:
            if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


LCB_IMPORTS = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\n"
    "import math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n"
)
"""The import preamble LiveCodeBench prepends to every solution (``testing_util.import_string``)."""

DEEPSEEK_IMPORTS = ("import math\nimport re\nimport sys\nimport copy\nimport datetime\nimport itertools\n"
                    "import collections\nimport heapq\nimport functools\nimport hashlib\nimport string\n"
                    "from typing import *\nfrom collections import *\nfrom functools import *\n")
"""DeepSeek-Coder's LeetCode ``IMPORT_HELPER["python"]`` without its two numpy lines (the
sandboxes ship the standard library only)."""


# ---------------------------------------------------------------------------- config
class CodeConfig(TaskConfig):
    """Options of every code task (``--task-arg key=value``)."""

    sandbox: Literal["process", "docker"] | str | None = Field(
        None, description="Sandbox backend: process | docker; default: the best available (recorded in the entry)")
    unsafe_no_isolation: bool = Field(False, description="DANGEROUS: process backend without bubblewrap "
                                                         "(rlimits only). Never a default.")
    workers: int = Field(2, ge=1, le=64, description="Samples executed at once (threads; docker: warm containers)")
    timeout_s: float | None = Field(None, gt=0, description="Wall/CPU seconds per test program (per test for "
                                                            "livecodebench); default: the task's own")
    memory_mb: int = Field(1024, ge=128, description="MiB of memory per sandboxed process")


class CodeTask(BaseTask):
    """Shared machinery: sandbox, program assembly hooks, parallel scoring, metrics."""

    Config: ClassVar[type[CodeConfig]] = CodeConfig
    DEFAULT_TIMEOUT_S: ClassVar[float] = 10.0
    NOTES: ClassVar[str | None] = None
    config: CodeConfig

    def __init__(self, config: CodeConfig | None = None):
        super().__init__(config)
        if self.config.unsafe_no_isolation and self.config.sandbox not in (None, "process"):
            raise BadInputError("unsafe_no_isolation applies to the process sandbox only")
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = threading.Lock()

    # ------------------------------------------------------------------ sandbox
    @property
    def limits(self) -> Limits:
        """Limits of one run: ``timeout_s`` of CPU time per process, and a wall-clock backstop
        of ``2 * timeout_s + 2`` s (CPU time is the fair budget on a loaded machine; the wall
        limit catches sleeping or blocked programs)."""
        return self._limits(self.config.timeout_s or self.DEFAULT_TIMEOUT_S)

    def _limits(self, cpu_s: float) -> Limits:
        return Limits(wall_time_s=2 * cpu_s + 2, cpu_time_s=cpu_s, memory_mb=self.config.memory_mb)

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox instance (opened on first use, shared per process and config)."""
        with self._sandbox_lock:
            if self._sandbox is None or self._sandbox.closed:
                from dllm_bench.sandboxes.backends import open_sandbox

                name = self.config.sandbox
                cfg: dict[str, Any]
                if self.config.unsafe_no_isolation:
                    name, cfg = "process", {"unsafe_no_isolation": True}
                else:
                    if name is None:
                        from dllm_bench.sandboxes.backends import best_available

                        name, _ = best_available()
                    cfg = {"pool_size": self.config.workers} if name == "docker" else {}
                self._sandbox = open_sandbox(name, cfg)
            return self._sandbox

    def use_sandbox(self, sandbox: Sandbox) -> None:
        """Run on an already opened sandbox instance (e.g. one shared with an RL trainer)."""
        with self._sandbox_lock:
            self._sandbox = sandbox

    def sandbox_key(self) -> dict[str, Any]:
        """The entry's ``sandbox`` key: backend, version, isolation and limits."""
        from dllm_bench.sandboxes.base import sandbox_key

        return sandbox_key(self.sandbox, self.limits)

    def close(self) -> None:
        with self._sandbox_lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    # ------------------------------------------------------------------ hooks
    def solution(self, doc: Doc, completion: str) -> tuple[str, dict[str, Any]]:
        """``(solution source, details)`` from a completion (default: :func:`extract_code`)."""
        code, fenced = extract_code(completion)
        return code, {"fenced": fenced}

    def tests(self, doc: Doc) -> list[tuple[str, str]]:
        """``(name, source)`` assert-style tests for function tasks."""
        raise NotImplementedError

    def preamble(self, doc: Doc) -> str:
        """Code run before the solution (benchmark-standard imports)."""
        return ""

    def epilogue(self, doc: Doc) -> str:
        """Code run after the solution, before the tests (e.g. ``my_solution = Solution()``)."""
        return ""

    def stop_on_first_failure(self) -> bool:
        """Stop a sample at its first failing test (default: run every test)."""
        return False

    # ------------------------------------------------------------------ scoring
    def score(self, doc: Doc, completion: str) -> Verdict:
        """Run the solution's tests in the sandbox; garbage is simply wrong."""
        solution, details = self.solution(doc, completion)
        return self._run_function_tests(doc, solution, details)

    def _run_function_tests(self, doc: Doc, solution: str, details: dict[str, Any],
                            limits: Limits | None = None) -> Verdict:
        tests = self.tests(doc)
        key = secrets.token_hex(8)
        epilogue = self.epilogue(doc)
        program = build_test_program(solution + ("\n" + epilogue if epilogue else ""), tests,
                                     preamble=self.preamble(doc), line_key=key,
                                     stop_on_failure=self.stop_on_first_failure())
        out = self.sandbox.run(program, limits=limits or self.limits, success_marker=new_marker())
        records, _ = parse_test_lines(out.stdout, key)
        by_index: dict[Any, dict[str, Any]] = {}
        for record in records:
            by_index.setdefault(record.get("i"), record)
        per_test = []
        for i, (name, _) in enumerate(tests):
            r = by_index.get(i)
            rec = {"name": name, "status": r["status"] if r else "not-run"}
            if r and r.get("msg"):
                rec["msg"] = r["msg"]
            per_test.append(rec)
        return _verdict(out.passed, per_test, solution, details, out)

    def score_batch(self, items: Sequence[tuple[Doc, str]]) -> list[Verdict]:
        """Verdicts in order; ``workers`` samples run at once (threads around the sandbox)."""
        items = list(items)
        if not items:
            return []
        _ = self.sandbox  # open once, before the threads start
        if self.config.workers <= 1 or len(items) == 1:
            return [self.score(d, c) for d, c in items]
        with ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="code-score") as pool:
            return list(pool.map(lambda dc: self.score(*dc), items))

    def scorer(self) -> ScorerKey:
        return SCORER

    def key_notes(self) -> str | None:
        return self.NOTES

    def aggregate(self, verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, dict[str, Any]]:
        """accuracy (= mean@n) and unbiased pass@k (k in ``sample_ks``), stderr across problems."""
        per_problem = {d: [(v.extracted, v.correct) for v in vs] for d, vs in verdicts.items()}
        n_min = min((len(v) for v in per_problem.values() if v), default=1)
        return standard_metrics(per_problem, sample_ks(n_min), maj=False)


def _verdict(correct: bool, per_test: list[dict[str, Any]], solution: str, details: dict[str, Any],
             out: Any) -> Verdict:
    n = len(per_test)
    n_pass = sum(1 for t in per_test if t["status"] == "passed")
    frac = n_pass / n if n else 0.0
    score = 1.0 if correct else min(frac, (n - 1) / n if n else 0.0)
    return Verdict(correct=bool(correct), score=score, extracted=solution, details={
        **details, "status": out.status, "n_tests": n, "n_passed": n_pass, "tests": per_test,
        "run": out.brief(600),
    })


# -------------------------------------------------------------------------- HumanEval
class HumanEvalConfig(CodeConfig):
    style: Literal["completion", "instruct"] = Field(
        "completion", description="completion: the raw HumanEval prompt, the model continues the function "
                                  "(no chat template); instruct: a chat turn asking for a fenced program")


HUMANEVAL_INSTRUCT = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:\n```\n{prompt}\n```\n")
"""evalplus's instruction prompt (``codegen`` ``--force-base-prompt`` off), used by ``style=instruct``."""


class HumanEval(CodeTask):
    """HumanEval (Chen et al. 2021): 164 hand-written function problems, ``check(candidate)`` tests."""

    name: ClassVar[str] = "humaneval"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "HumanEval (164 Python functions), pass@k by sandboxed execution of check()"
    Config: ClassVar[type[HumanEvalConfig]] = HumanEvalConfig
    DATA: ClassVar[DataSpec] = DataSpec("humaneval/HumanEval.jsonl", "test",
                                        HubSpec(path="openai/openai_humaneval", split="test"))
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {
        "completion": "the dataset prompt verbatim (signature + docstring); body continuation",
        "instruct": HUMANEVAL_INSTRUCT,
        "stops": list(CODEX_STOPS),
    }
    config: HumanEvalConfig

    def make_docs(self, data: LoadedData) -> list[Doc]:
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("task_id", "prompt", "entry_point", "test"), data.source, i)
            docs.append(Doc(id=row["task_id"], question=row["prompt"], target=row["test"],
                            meta={"entry_point": row["entry_point"],
                                  "canonical_solution": row.get("canonical_solution", "")}))
        return docs

    def uses_chat_template(self) -> bool:
        return self.config.style == "instruct"

    def messages(self, doc: Doc) -> list[Message]:
        return [{"role": "user", "content": HUMANEVAL_INSTRUCT.format(prompt=doc.question.strip())}]

    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        if self.config.style == "completion":
            return doc.question
        return render_chat(self.messages(doc), tokenizer)

    def solution(self, doc: Doc, completion: str) -> tuple[str, dict[str, Any]]:
        """Whole program (defines the entry point) -> prompt + program; else prompt + body."""
        return _body_or_program(doc.question, doc.meta["entry_point"], completion)

    def tests(self, doc: Doc) -> list[tuple[str, str]]:
        return [("check", f"{doc.target}\ncheck({doc.meta['entry_point']})\n")]


def _body_or_program(prompt: str, entry_point: str, completion: str) -> tuple[str, dict[str, Any]]:
    code, fenced = extract_code(completion)
    if defines(code, entry_point):
        return prompt + "\n" + code, {"fenced": fenced, "mode": "program"}
    body = code if fenced else cut_at_stops(completion or "")
    return prompt + body, {"fenced": fenced, "mode": "body"}


# ------------------------------------------------------------------------------- MBPP
class MbppConfig(CodeConfig):
    subset: Literal["sanitized", "full"] = Field(
        "sanitized", description="sanitized: 427 hand-verified problems (default); full: all 974 rows of mbpp.jsonl")
    num_fewshot: int = Field(3, ge=0, le=3, description="Worked examples (tasks 2, 3, 4 of the prompt split, as in "
                                                        "Austin et al. 2021 / lm-eval `mbpp`)")
    include_challenge_tests: bool = Field(False, description="full subset: also run challenge_test_list")


MBPP_TEMPLATE = ("You are an expert Python programmer, and here is your task: {text} "
                 "Your code should pass these tests:\n\n{tests}\n")
"""Austin et al. 2021 prompt (lm-eval ``mbpp`` ``doc_to_text`` without ``[BEGIN]``)."""
MBPP_FEWSHOT_IDS = (2, 3, 4, 1, 5, 6, 7, 8, 9, 10)
_MBPP_FULL = DataSpec("mbpp/mbpp.jsonl", "all", HubSpec(path="google-research-datasets/mbpp", name="full",
                                                        split="prompt+test+validation+train"))
_MBPP_SANITIZED = DataSpec("mbpp/sanitized-mbpp.json", "all",
                           HubSpec(path="google-research-datasets/mbpp", name="sanitized",
                                   split="prompt+test+validation+train"))


class Mbpp(CodeTask):
    """MBPP (Austin et al. 2021): crowd-sourced Python problems with 3 assert tests each.

    Prompt: the paper's ``You are an expert Python programmer...`` text with the tests; with
    ``num_fewshot`` (default 3) the prompt-split tasks 2, 3, 4 come first as solved turns
    (``[BEGIN]\\n<code>\\n[DONE]``). Without a chat template the text is the lm-eval format
    ``<shot>[BEGIN]\\n<code>\\n[DONE]\\n\\n ... <problem>[BEGIN]\\n``. Extraction: a fenced
    block, else the text between ``[BEGIN]`` and ``[DONE]``, else the whole completion.
    """

    name: ClassVar[str] = "mbpp"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("MBPP (sanitized 427 by default, full 974 selectable), pass@k by sandboxed "
                                  "execution of the assert tests")
    Config: ClassVar[type[MbppConfig]] = MbppConfig
    DATA: ClassVar[DataSpec] = _MBPP_SANITIZED
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {"user": MBPP_TEMPLATE, "answer": "[BEGIN]\n{code}\n[DONE]",
                                             "fewshot_ids": list(MBPP_FEWSHOT_IDS[:3])}
    config: MbppConfig

    def __init__(self, config: MbppConfig | None = None):
        super().__init__(config)
        self.DATA = _MBPP_FULL if self.config.subset == "full" else _MBPP_SANITIZED  # type: ignore[misc]
        self._shots: dict[int, Doc] | None = None

    def make_docs(self, data: LoadedData) -> list[Doc]:
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("task_id", "code", "test_list"), data.source, i)
            text = row.get("text", row.get("prompt"))
            if text is None:
                raise BadInputError(f"row {i} has neither 'text' nor 'prompt'", path=data.source)
            imports = "\n".join(row.get("test_imports") or [])
            tests = list(row["test_list"])
            if self.config.include_challenge_tests:
                tests += list(row.get("challenge_test_list") or [])
            docs.append(Doc(id=f"mbpp/{row['task_id']}", question=text, target=tests,
                            meta={"task_id": row["task_id"], "code": row["code"], "imports": imports,
                                  "setup": row.get("test_setup_code") or ""}))
        return docs

    def _fewshot(self, doc: Doc) -> list[Doc]:
        k = self.config.num_fewshot
        if not k:
            return []
        if self._shots is None:
            full = Mbpp(MbppConfig(subset="full", num_fewshot=0))
            self._shots = {int(d.meta["task_id"]): d for d in full.make_docs(load_split(_MBPP_FULL, MbppConfig()))}
        return [self._shots[i] for i in MBPP_FEWSHOT_IDS if f"mbpp/{i}" != doc.id][:k]

    @staticmethod
    def user_message(doc: Doc) -> str:
        return MBPP_TEMPLATE.format(text=doc.question, tests="\n".join(doc.target))

    def messages(self, doc: Doc) -> list[Message]:
        msgs: list[Message] = []
        for s in self._fewshot(doc):
            msgs.append({"role": "user", "content": self.user_message(s)})
            msgs.append({"role": "assistant", "content": f"[BEGIN]\n{s.meta['code']}\n[DONE]"})
        msgs.append({"role": "user", "content": self.user_message(doc)})
        return msgs

    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        from dllm_bench.tasks.base import chat_template_text

        if chat_template_text(tokenizer) is not None:
            return render_chat(self.messages(doc), tokenizer)
        shots = "".join(f"{self.user_message(s)}[BEGIN]\n{s.meta['code']}\n[DONE]\n\n" for s in self._fewshot(doc))
        return shots + self.user_message(doc) + "[BEGIN]\n"

    def solution(self, doc: Doc, completion: str) -> tuple[str, dict[str, Any]]:
        code, fenced = extract_code(completion)
        if not fenced:
            text = completion or ""
            if "[BEGIN]" in text:
                text = text.split("[BEGIN]", 1)[1]
            code = text.split("[DONE]", 1)[0]
        return code, {"fenced": fenced}

    def preamble(self, doc: Doc) -> str:
        return doc.meta["imports"]  # sanitized: test_imports

    def epilogue(self, doc: Doc) -> str:
        return doc.meta["setup"]  # full: test_setup_code (may use the solution's classes)

    def tests(self, doc: Doc) -> list[tuple[str, str]]:
        return [(f"test_{i}", t) for i, t in enumerate(doc.target)]


# ---------------------------------------------------------------------- LiveCodeBench
LCB_SYSTEM = ("You are an expert Python programmer. You will be given a question (problem specification) and "
              "will generate a correct Python program that matches the specification and passes all tests.")
LCB_FORMAT_STARTER = ("You will use the following starter code to write the solution to the problem and "
                      "enclose your code within delimiters.")
LCB_FORMAT_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not "
                    "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure "
                    "that when the python program runs, it reads the inputs, runs the algorithm and writes output "
                    "to STDOUT.")


def lcb_user_message(question: str, starter_code: str) -> str:
    """LiveCodeBench ``get_generic_question_template_answer`` (lcb_runner/prompts/code_generation.py)."""
    msg = f"### Question:\n{question}\n\n"
    if starter_code:
        msg += f"### Format: {LCB_FORMAT_STARTER}\n```python\n{starter_code}\n```\n\n"
    else:
        msg += f"### Format: {LCB_FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
    return msg + "### Answer: (use the provided format with backticks)\n\n"


class LcbConfig(CodeConfig):
    stop_on_first_failure: bool = Field(True, description="Stop a sample at its first failing test (as LCB)")


class LiveCodeBench(CodeTask):
    """LiveCodeBench code generation, the v5 window (2024-08 .. 2025-02): 279 problems.

    PUBLIC TESTS ONLY (about 2.6 per problem; the hidden tests were not available), so
    scores are not comparable with official LiveCodeBench numbers. Prompt: the official
    generic chat format (system message + ``### Question / ### Format / ### Answer``),
    stdin/stdout variant for AtCoder, starter-code variant for LeetCode. ``timeout_s`` is
    per test (default 6 s, as LCB).
    """

    name: ClassVar[str] = "livecodebench"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("LiveCodeBench v5 window (279 problems, 2024-08..2025-02), PUBLIC tests only "
                                  "-- not comparable with official hidden-test scores")
    NOTES: ClassVar[str] = ("public tests only (about 2.6 per problem): not comparable with official "
                            "LiveCodeBench scores, which use hidden tests")
    Config: ClassVar[type[LcbConfig]] = LcbConfig
    DEFAULT_TIMEOUT_S: ClassVar[float] = 6.0
    DATA: ClassVar[DataSpec] = DataSpec("livecodebench/lcb_v5_2408_2502_public.jsonl", "test",
                                        HubSpec(path="livecodebench/code_generation_lite", split="test"))
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {"system": LCB_SYSTEM, "starter": LCB_FORMAT_STARTER,
                                             "stdin": LCB_FORMAT_STDIN, "template": lcb_user_message("{q}", "{s}")}
    config: LcbConfig

    def stop_on_first_failure(self) -> bool:
        """``stop_on_first_failure`` of the config (default True, as LiveCodeBench)."""
        return self.config.stop_on_first_failure

    def make_docs(self, data: LoadedData) -> list[Doc]:
        if data.source.startswith("hub:"):
            raise BadInputError("livecodebench: --data-source hub is not supported (the hub dataset stores its "
                                "private tests as pickles, which dllm-bench does not load); use the packaged data")
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("question_id", "question_content", "starter_code", "public_test_cases"),
                           data.source, i)
            docs.append(Doc(id=str(row["question_id"]), question=row["question_content"],
                            target=list(row["public_test_cases"]),
                            meta={"starter_code": row["starter_code"] or "", "func_name": row.get("func_name"),
                                  "platform": row.get("platform"), "contest_date": row.get("contest_date")}))
        return docs

    def messages(self, doc: Doc) -> list[Message]:
        return [{"role": "system", "content": LCB_SYSTEM},
                {"role": "user", "content": lcb_user_message(doc.question, doc.meta["starter_code"])}]

    def limits_for(self, n_tests: int) -> Limits:
        """Limits of one functional program running ``n_tests`` tests (``timeout_s`` each)."""
        return self._limits((self.config.timeout_s or self.DEFAULT_TIMEOUT_S) * max(1, n_tests))

    def preamble(self, doc: Doc) -> str:
        return LCB_IMPORTS

    def epilogue(self, doc: Doc) -> str:
        return "__dllm_target = Solution() if 'Solution' in globals() else None\n"

    def tests(self, doc: Doc) -> list[tuple[str, str]]:
        fn = doc.meta["func_name"]
        out = []
        for i, t in enumerate(doc.target):
            src = (f"__dllm_args = [__import__('json').loads(x) for x in {t['input']!r}.split('\\n')]\n"
                   f"__dllm_fn = getattr(__dllm_target, {fn!r}) if __dllm_target is not None else {fn}\n"
                   "__dllm_got = __dllm_fn(*__dllm_args)\n"
                   "if isinstance(__dllm_got, tuple):\n    __dllm_got = list(__dllm_got)\n"
                   f"__dllm_want = __import__('json').loads({t['output']!r})\n"
                   "assert __dllm_got == __dllm_want, 'got %r' % (__dllm_got,)\n")
            out.append((f"public_{i}", src))
        return out

    def score(self, doc: Doc, completion: str) -> Verdict:
        code, details = self.solution(doc, completion)
        if doc.meta["func_name"]:
            return self._run_function_tests(doc, code, details, self.limits_for(len(doc.target)))
        return self._run_stdio_tests(doc, code, details)

    def _run_stdio_tests(self, doc: Doc, code: str, details: dict[str, Any]) -> Verdict:
        program = LCB_IMPORTS + "\n" + code
        per_test: list[dict[str, Any]] = []
        last = None
        for i, t in enumerate(doc.target):
            if per_test and per_test[-1]["status"] != "passed" and self.config.stop_on_first_failure:
                per_test.append({"name": f"public_{i}", "status": "not-run"})
                continue
            out = self.sandbox.run(program, stdin=t["input"], limits=self.limits)
            last = out
            if out.status != "passed":
                rec = {"name": f"public_{i}", "status": out.status, "msg": out.details[:300]}
            elif lcb_stdio_equal(out.stdout, t["output"]):
                rec = {"name": f"public_{i}", "status": "passed"}
            else:
                rec = {"name": f"public_{i}", "status": "wrong-answer",
                       "msg": f"got {out.stdout[:150]!r}, expected {t['output'][:150]!r}"}
            per_test.append(rec)
        correct = bool(per_test) and all(r["status"] == "passed" for r in per_test)
        return _verdict(correct, per_test, code, details, last)


# ------------------------------------------------------------------- LeetCode contest
class LeetCodeContest(CodeTask):
    """DeepSeek-Coder's LeetCode contest benchmark: 180 problems (2023-07 .. 2024-01), 100
    hidden assert tests each. Prompt: the instruction prompt ``prompt_sft`` as one user turn
    (DeepSeek-Coder ``vllm_inference.py``); program: DeepSeek's import helper (stdlib part)
    + the extracted solution + ``my_solution = Solution()`` + each test."""

    name: ClassVar[str] = "leetcode_contest"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "LeetCode contests 2023-07..2024-01 (180 problems, 100 hidden tests each), pass@k"
    DEFAULT_TIMEOUT_S: ClassVar[float] = 20.0
    DATA: ClassVar[DataSpec] = DataSpec("leetcode_contest/20240121-Jul.jsonl", "test",
                                        HubSpec(path="deepseek-ai/DeepSeek-Coder", split="test"))
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {"user": "prompt_sft field verbatim (DeepSeek-Coder LeetCode eval)",
                                             "imports": DEEPSEEK_IMPORTS}

    def make_docs(self, data: LoadedData) -> list[Doc]:
        if data.source.startswith("hub:"):
            raise BadInputError("leetcode_contest has no hub dataset; use the packaged data")
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("task_id", "prompt_sft", "test"), data.source, i)
            setup, tests = split_leetcode_tests(row["test"])
            docs.append(Doc(id=row["task_id"], question=row["prompt_sft"], target=tests,
                            meta={"setup": setup, "difficulty": (row.get("meta") or {}).get("difficulty"),
                                  "title": row.get("title")}))
        return docs

    def messages(self, doc: Doc) -> list[Message]:
        return [{"role": "user", "content": doc.question}]

    def preamble(self, doc: Doc) -> str:
        return DEEPSEEK_IMPORTS

    def epilogue(self, doc: Doc) -> str:
        return doc.meta["setup"]

    def tests(self, doc: Doc) -> list[tuple[str, str]]:
        return [(f"hidden_{i}", t) for i, t in enumerate(doc.target)]


def split_leetcode_tests(test: str) -> tuple[str, list[str]]:
    """``(setup, tests)`` from a DeepSeek LeetCode ``test`` field: blank-line separated
    chunks; chunks without ``assert`` (``my_solution = Solution()``) are setup."""
    setup: list[str] = []
    tests: list[str] = []
    for chunk in re.split(r"\n\s*\n", test.strip()):
        if not chunk.strip():
            continue
        try:
            has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(chunk)))
        except SyntaxError:
            has_assert = "assert" in chunk
        (tests if has_assert else setup).append(chunk)
    return "\n".join(setup), tests

