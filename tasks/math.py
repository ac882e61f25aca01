"""Math tasks scored with math-verify: ``math500``, ``gsm8k``, ``math_train``, ``gsm8k_train``.

Prompt (TraDo / SDAR / dLLM-RL math prompt, `sample/trado_sample.py`): the user message::

    <problem>
    Please reason step by step, and put your final answer within \\boxed{}.

rendered through the tokenizer's chat template (``add_generation_prompt=True``) when it has
one, else the bare message. ``num_fewshot`` worked examples from the training split (MATH
train for MATH tasks, GSM8K train for GSM8K tasks; first rows in file order, never the
document itself) come first as earlier user/assistant turns; without a chat template the
turns are joined by a blank line.

Answer checking (huggingface/Math-Verify, ``math_verify.parse`` then ``math_verify.verify``):

* gold: ``\\boxed{<answer>}`` parsed **first**; MATH ``answer`` field, GSM8K the number
  after ``####`` (thousands commas are handled by math-verify). Hub rows of MATH train
  without an ``answer`` field use the ``solution`` (math-verify takes its last ``\\boxed{}``).
* prediction: the completion parsed **second**, with the same extraction targets
  ``[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]``: the
  rightmost ``\\boxed{}`` first, else math-verify's other anchors / last expression.
* ``verify(gold, prediction)`` (not symmetric: gold first).

There is no hand-written normaliser; on the shipped data math-verify alone judges all 500
MATH-500 reference solutions and all 1319 GSM8K ``\\boxed{N}`` golds correct (tests).

Timeouts: math-verify's ``parsing_timeout`` / ``timeout_seconds`` use ``signal.alarm`` and so
work only in the main thread of the main interpreter. :func:`judge` passes
``Config.timeout_s`` there and ``None`` (no timeout) in any other thread, so scoring from a
worker thread (an RL rollout thread, a web server) works instead of raising. Batch scoring
(:meth:`MathTask.score_batch`, used by ``dllm-bench score``) runs in a pool of worker
*processes*, whose main threads do have timeouts. Note that the alarm replaces any SIGALRM
timer of the caller (e.g. pytest-timeout's signal method) while it runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from importlib import metadata
from typing import Any, ClassVar

from pydantic import Field

from dllm_bench.errors import BadInputError
from dllm_bench.plugins import Doc, Verdict
from dllm_bench.schema import ScorerKey
from dllm_bench.tasks.base import (
    BaseTask,
    DataSpec,
    HubSpec,
    LoadedData,
    Message,
    TaskConfig,
    load_split,
    require_fields,
)

log = logging.getLogger("dllm_bench.tasks.math")

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
USER_TEMPLATE = "{problem}\n" + MATH_INSTRUCTION
MIN_PARALLEL = 64
"""Batches smaller than this are scored in-process (pool start + warm-up cost ~0.5 s)."""


# ------------------------------------------------------------------------- the scorer
LOG_MESSAGE_CHARS = 300
"""math-verify log lines longer than this are cut (a parse timeout logs the whole completion)."""


class _DropTimeoutDisabled(logging.Filter):
    """math-verify warns once when a timeout is None; here that is the documented
    behaviour off the main thread, so the warning is dropped (timeouts that fire still log).
    A timeout that fires logs ``Timeout during parsing: <the whole completion>`` (megabytes
    for a runaway generation): the message is cut to :data:`LOG_MESSAGE_CHARS` characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Timeout is disabled"):
            return False
        if len(msg) > LOG_MESSAGE_CHARS:
            record.msg = f"{msg[:LOG_MESSAGE_CHARS]}... ({len(msg) - LOG_MESSAGE_CHARS} more characters)"
            record.args = None
        return True


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabled())


@lru_cache(maxsize=1)
def _extraction() -> tuple[Any, ...]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def math_verify_version() -> str:
    """Installed math-verify version (part of every math entry's key)."""
    try:
        return metadata.version("math-verify")
    except metadata.PackageNotFoundError:  # pragma: no cover - a core dependency
        return "unknown"


def in_main_thread() -> bool:
    """True in the main thread of the main interpreter (where signal-based timeouts work)."""
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=4096)
def _parse_gold(gold_text: str, timeout: int | None) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(gold_text, list(_extraction()), parsing_timeout=timeout))


def _answer_str(parsed: Sequence[Any], timeout: int | None) -> tuple[str | None, str | None]:
    """(canonical answer, matched text): ``str`` of the first parsed object (SymPy's printer,
    so that equal answers compare equal for maj@k) and the raw matched string."""
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as mv_timeout

    if not parsed:
        return None, None
    text = next((p for p in reversed(parsed) if isinstance(p, str)), None)
    first = parsed[0]
    if isinstance(first, str):
        return first, text
    try:
        return mv_timeout(timeout)(str)(first), text
    except (TimeoutException, Exception):  # noqa: BLE001 - printing a huge expression timed out/failed
        return text, text


def judge(gold_text: str, completion: str, timeout_s: int | None = 5) -> tuple[bool, str | None, dict[str, Any]]:
    """Judge one completion against a gold answer with math-verify.

    Args:
        gold_text: the gold answer as LaTeX, e.g. ``"\\\\boxed{\\\\frac{1}{2}}"``; parsed first.
        completion: the model output; parsed second (rightmost ``\\boxed{}`` first).
        timeout_s: seconds for each math-verify parse / comparison; used only in the main
            thread (signal-based timeouts), ``None`` elsewhere. ``0``/``None`` disables.

    Returns:
        ``(correct, extracted, details)``: ``extracted`` is the canonical answer string or
        None when nothing was extracted; ``details`` holds ``answer_text`` (the matched text)
        and ``error`` when the gold could not be parsed. Never raises on garbage input.
    """
    from math_verify import parse, verify

    timeout = timeout_s if (timeout_s and in_main_thread()) else None
    gold = _parse_gold(gold_text, timeout)
    if not gold:
        return False, None, {"error": "gold answer could not be parsed"}
    pred = parse(completion or "", list(_extraction()), parsing_timeout=timeout)
    if not pred:
        return False, None, {}
    ok = bool(verify(list(gold), pred, timeout_seconds=timeout))
    extracted, text = _answer_str(pred, timeout)
    return ok, extracted, {"answer_text": text}


@lru_cache(maxsize=1)
def _warm_up() -> None:
    """Build math-verify's regexes and the ANTLR LaTeX parser (~0.4 s) in this process."""
    judge("\\boxed{\\frac{1}{2}}", "$x = \\frac{1}{2}$, so \\boxed{0.5}", 5)


def _judge_chunk(pairs: list[tuple[str, str]], timeout_s: int | None) -> list[tuple[bool, str | None, dict]]:
    return [judge(g, c, timeout_s) for g, c in pairs]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (as PyTorch's DataLoader): workers start warm, inherit the parsed
    golds and never re-import the caller's ``__main__`` (forkserver/spawn re-run the top level
    of a script without an ``if __name__ == "__main__"`` guard). The children only run
    math-verify and never touch torch, rich or the parent's threads. ``spawn`` elsewhere."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")  # pragma: no cover


def judge_many(pairs: Sequence[tuple[str, str]], timeout_s: int | None = 5,
               workers: int = 1) -> list[tuple[bool, str | None, dict[str, Any]]]:
    """:func:`judge` over ``(gold_text, completion)`` pairs, in order.

    With ``workers > 1`` and at least :data:`MIN_PARALLEL` pairs, contiguous chunks go to a
    process pool (the worker processes' main threads keep math-verify's timeouts; samples of
    one problem stay together so each gold is parsed once per worker). A broken pool falls
    back to in-process scoring.
    """
    pairs = list(pairs)
    if workers <= 1 or len(pairs) < MIN_PARALLEL or multiprocessing.current_process().daemon:
        return _judge_chunk(pairs, timeout_s)  # (daemonic processes may not have children)
    _warm_up()  # once per process: the forked workers inherit math-verify's warmed parsers
    n_chunks = workers * 4
    size = -(-len(pairs) // n_chunks)
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            results = list(pool.map(_judge_chunk, chunks, [timeout_s] * len(chunks)))
    except (BrokenProcessPool, OSError) as exc:
        log.warning("math-verify worker pool failed (%s); scoring in-process", exc)
        return _judge_chunk(pairs, timeout_s)
    return [r for chunk in results for r in chunk]


def default_workers() -> int:
    """Scoring processes: ``DLLM_BENCH_SCORE_WORKERS`` or min(4, CPU count)."""
    env = os.environ.get("DLLM_BENCH_SCORE_WORKERS", "").strip()
    if env:
        if not env.isdigit():
            raise BadInputError(f"DLLM_BENCH_SCORE_WORKERS must be a positive integer, got {env!r}")
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


# -------------------------------------------------------------------------- the tasks
class MathConfig(TaskConfig):
    """Math task options (``--task-arg key=value``)."""

    timeout_s: int = Field(5, ge=0, description="math-verify timeout per parse / comparison, seconds "
                                                "(signal-based: main thread only; 0 disables)")
    score_workers: int | None = Field(None, ge=1, description="Processes for batch scoring; default "
                                                              "DLLM_BENCH_SCORE_WORKERS or min(4, CPUs); 1 = "
                                                              "in-process")


class MathTask(BaseTask):
    """Shared implementation of the math tasks (see the module docstring)."""

    Config: ClassVar[type[MathConfig]] = MathConfig
    FEWSHOT: ClassVar[DataSpec]
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {
        "user": USER_TEMPLATE,
        "fewshot": "earlier user/assistant turns from the training split; plain: joined by a blank line",
    }
    config: MathConfig

    def __init__(self, config: MathConfig | None = None):
        super().__init__(config)
        self._fewshot_docs: list[Doc] | None = None

    # ---- per-dataset hooks
    def gold_text(self, doc: Doc) -> str:
        """The LaTeX math-verify parses as gold: ``\\boxed{<target>}``."""
        return "\\boxed{" + str(doc.target) + "}"

    def worked_solution(self, doc: Doc) -> str:
        """The assistant turn of a few-shot example / SFT pair for ``doc``."""
        raise NotImplementedError

    # ---- prompts
    def user_message(self, doc: Doc) -> str:
        return doc.question + "\n" + MATH_INSTRUCTION

    def fewshot_pool(self) -> list[Doc]:
        """Documents of the training split few-shot examples are taken from (packaged data)."""
        if self._fewshot_docs is None:
            self._fewshot_docs = self.make_docs(load_split(self.FEWSHOT, type(self.config)()))
        return self._fewshot_docs

    def messages(self, doc: Doc) -> list[Message]:
        msgs: list[Message] = []
        k = self.config.num_fewshot
        if k:
            shots = [d for d in self.fewshot_pool()[: k + 1] if d.id != doc.id][:k]
            for s in shots:
                msgs.append({"role": "user", "content": self.user_message(s)})
                msgs.append({"role": "assistant", "content": self.worked_solution(s)})
        msgs.append({"role": "user", "content": self.user_message(doc)})
        return msgs

    def sft_pairs(self, tokenizer: Any | None = None) -> list[tuple[str, str]]:
        """``(prompt, response)`` for SFT: the rendered prompt and the worked solution
        (ending in ``\\boxed{answer}``); the trainer appends EOS."""
        return [(self.prompt(d, tokenizer), self.worked_solution(d)) for d in self.docs()]

    # ---- scoring
    def _verdict(self, doc: Doc, result: tuple[bool, str | None, dict[str, Any]]) -> Verdict:
        ok, extracted, details = result
        return Verdict(correct=ok, score=1.0 if ok else 0.0, extracted=extracted,
                       details={"gold": doc.target, **details})

    def score(self, doc: Doc, completion: str) -> Verdict:
        """math-verify verdict (see :func:`judge`); garbage is simply wrong."""
        return self._verdict(doc, judge(self.gold_text(doc), completion, self.config.timeout_s))

    def score_batch(self, items: Sequence[tuple[Doc, str]]) -> list[Verdict]:
        """Verdicts for many pairs, in order, in a process pool when large (:func:`judge_many`)."""
        workers = self.config.score_workers or default_workers()
        results = judge_many([(self.gold_text(d), c) for d, c in items], self.config.timeout_s, workers)
        return [self._verdict(d, r) for (d, _), r in zip(items, results)]

    def scorer(self) -> ScorerKey:
        return ScorerKey(name="math-verify", version=math_verify_version())


# ---------------------------------------------------------------------------- MATH
_MATH_TRAIN = DataSpec("math_train/train.jsonl", "train",
                       HubSpec(path="DigitalLearningGmbH/MATH-lighteval", name="default", split="train"))


class _MathDataset(MathTask):
    FEWSHOT: ClassVar[DataSpec] = _MATH_TRAIN

    def make_docs(self, data: LoadedData) -> list[Doc]:
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("problem", "solution"), data.source, i)
            doc_id = row.get("unique_id") or f"{self.name}/{i}"
            meta = {k: v for k, v in row.items() if k not in ("problem", "answer", "unique_id")}
            docs.append(Doc(id=str(doc_id), question=row["problem"], target=row.get("answer"), meta=meta))
        return docs

    def gold_text(self, doc: Doc) -> str:
        if doc.target is None:  # hub rows without an answer field: math-verify reads the solution's last box
            return str(doc.meta.get("solution", ""))
        return super().gold_text(doc)

    def worked_solution(self, doc: Doc) -> str:
        return str(doc.meta["solution"])


class Math500(_MathDataset):
    """MATH-500: the 500-problem MATH test subset of PRM800K (Lightman et al. 2023)."""

    name: ClassVar[str] = "math500"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "MATH-500 (500 competition problems), math-verify, \\boxed{} answers"
    DATA: ClassVar[DataSpec] = DataSpec("math500/test.jsonl", "test",
                                        HubSpec(path="HuggingFaceH4/MATH-500", split="test"))


class MathTrain(_MathDataset):
    """MATH training split (Hendrycks et al. 2021), 7500 problems: RL / SFT prompt set.

    Two rows (``train/number_theory/7115.json``, ``7117.json``) have an empty ``\\boxed{}``
    in the original release: their gold cannot be parsed and every completion is wrong.
    """

    name: ClassVar[str] = "math_train"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "MATH train split (7500 problems), RL/SFT prompts, math-verify reward"
    DATA: ClassVar[DataSpec] = _MATH_TRAIN


# --------------------------------------------------------------------------- GSM8K
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
_GSM8K_TRAIN = DataSpec("gsm8k/train.jsonl", "train", HubSpec(path="openai/gsm8k", name="main", split="train"))


def gsm8k_final_answer(answer: str) -> str:
    """The gold of a GSM8K ``answer`` field: the text after the last ``####``, stripped."""
    return answer.rsplit("####", 1)[-1].strip()


class _Gsm8kDataset(MathTask):
    FEWSHOT: ClassVar[DataSpec] = _GSM8K_TRAIN

    def make_docs(self, data: LoadedData) -> list[Doc]:
        docs = []
        for i, row in enumerate(data.rows):
            require_fields(row, ("question", "answer"), data.source, i)
            docs.append(Doc(id=f"gsm8k/{data.split}/{i}", question=row["question"],
                            target=gsm8k_final_answer(row["answer"]), meta={"answer": row["answer"]}))
        return docs

    def worked_solution(self, doc: Doc) -> str:
        """The reference reasoning without calculator annotations, then ``\\boxed{N}``."""
        steps = _CALC_ANNOTATION.sub("", doc.meta["answer"].rsplit("####", 1)[0]).strip()
        return f"{steps}\nThe final answer is \\boxed{{{doc.target}}}."


class Gsm8k(_Gsm8kDataset):
    """GSM8K test split (Cobbe et al. 2021), 1319 grade-school word problems."""

    name: ClassVar[str] = "gsm8k"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "GSM8K test (1319 problems), math-verify on the number after ####"
    DATA: ClassVar[DataSpec] = DataSpec("gsm8k/test.jsonl", "test",
                                        HubSpec(path="openai/gsm8k", name="main", split="test"))


class Gsm8kTrain(_Gsm8kDataset):
    """GSM8K train split, 7473 problems: RL / SFT prompt set."""

    name: ClassVar[str] = "gsm8k_train"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "GSM8K train (7473 problems), RL/SFT prompts, math-verify reward"
    DATA: ClassVar[DataSpec] = _GSM8K_TRAIN
