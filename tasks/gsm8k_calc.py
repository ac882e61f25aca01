"""``gsm8k_calc`` / ``gsm8k_calc_train``: the arithmetic inside GSM8K's calculator annotations.

GSM8K reference answers carry calculator annotations such as ``<<48/2=24>>``. Each kept
annotation becomes one document: question ``"48/2"``, target ``"24"``. The test split is
for evaluation, the train split for SFT / RL (``sft_pairs()``, ``reward()``). This is the
real-data task of the CPU default recipe: a model of a few million parameters learns it in
minutes.

Filter (defaults; all are ``Config`` fields, and the applied filter is in the entry key):

* exactly one binary operator ``+ - * /`` between two non-negative integer literals
  (spaces removed), operator in ``operators``;
* both operands ``<= max_operand`` (99) and the exact result ``0 <= r <= max_result`` (999);
  ``/`` only when exact (no remainder, divisor not 0);
* the annotation's own result must equal the computed one (a handful are wrong or rounded);
* deduplicated by canonical expression text (first occurrence kept);
* test split only, ``exclude_train_overlap`` (default on): expressions that also occur in
  the (filtered) train split are removed, so the evaluation measures arithmetic that was
  not seen in training. The train reference (also the source of few-shot lines) is always
  the shipped train file, whatever ``data_source`` says.

Counts on the shipped data with the defaults (see :meth:`Gsm8kCalcTask.stats`): train
23716 annotations -> 2979 documents; test 4282 annotations -> 1175 unique, 264 after
removing the 911 that occur in train.

Ids: ``gsm8k_calc/<split>/<line>/<k>``, the k-th (0-based, counting every annotation of
the line) annotation of the 0-based line of the GSM8K file; stable under filter changes.

Prompt: the raw expression followed by ``=`` (``"48/2="``). No chat template and no
instruction: the tiny from-scratch models of the default recipe have none, and the
tokenizer argument of :meth:`prompt` is ignored. ``num_fewshot`` > 0 prepends that many
``expr=result`` lines from the train split (newline-separated).

Scoring (scorer ``exact-int`` v1): the completion, after leading whitespace, must start
with the integer result: the leading number ``-?[0-9]+(.[0-9]+)?`` must be an integer equal
to the target (``"24"``, ``" 24\\n"``, ``"24."`` and ``"24<eos>..."`` are right; ``"240"``,
``"24.5"``, ``"24.0"``, ``"2 4"``, ``""`` and ``"= 24"`` are wrong). Why not math-verify:
the answer format is fixed by the task, the rule cannot be gamed by emitting many numbers
(math-verify takes the *last* expression), and it costs microseconds per RL rollout. ``reward`` uses the same function.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field

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

ANNOTATION = re.compile(r"<<([^<>]*)>>")
BINARY = re.compile(r"(\d+)([-+*/])(\d+)")
LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)")
INTEGER = re.compile(r"-?\d+")

_TRAIN = DataSpec("gsm8k/train.jsonl", "train", HubSpec(path="openai/gsm8k", name="main", split="train"))
_TEST = DataSpec("gsm8k/test.jsonl", "test", HubSpec(path="openai/gsm8k", name="main", split="test"))


class CalcConfig(TaskConfig):
    """gsm8k_calc options (``--task-arg key=value``)."""

    max_operand: int = Field(99, ge=0, description="Largest operand kept")
    max_result: int = Field(999, ge=0, description="Largest exact result kept (results are >= 0)")
    operators: str = Field("+-*/", pattern=r"^[-+*/]+$", description="Operators kept, subset of '+-*/'")
    exclude_train_overlap: bool = Field(True, description="Test split: drop expressions that also occur "
                                                          "in the filtered train split")


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b:
        return None
    return a // b


def extract_calc_docs(data: LoadedData, cfg: CalcConfig) -> tuple[list[Doc], dict[str, int]]:
    """Documents and filter counts from GSM8K rows (see the module docstring).

    Returns:
        ``(docs, counts)`` with counts ``annotations``, ``not_binary`` (not ``a op b`` with
        integer literals / operator not kept), ``out_of_range``, ``inexact_division``,
        ``wrong_annotation`` (stated result differs), ``duplicates``, ``kept``.
    """
    counts = dict.fromkeys(("annotations", "not_binary", "out_of_range", "inexact_division",
                            "wrong_annotation", "duplicates", "kept"), 0)
    docs: list[Doc] = []
    seen: set[str] = set()
    for line, row in enumerate(data.rows):
        require_fields(row, ("answer",), data.source, line)
        for k, m in enumerate(ANNOTATION.finditer(row["answer"])):
            counts["annotations"] += 1
            body = m.group(1).replace(" ", "")
            if body.count("=") != 1:
                counts["not_binary"] += 1
                continue
            expr, stated = body.split("=")
            bm = BINARY.fullmatch(expr)
            if not bm or bm.group(2) not in cfg.operators:
                counts["not_binary"] += 1
                continue
            a, op, b = int(bm.group(1)), bm.group(2), int(bm.group(3))
            value = _apply(a, op, b)
            if value is None:
                counts["inexact_division"] += 1
                continue
            if a > cfg.max_operand or b > cfg.max_operand or not 0 <= value <= cfg.max_result:
                counts["out_of_range"] += 1
                continue
            if not re.fullmatch(r"-?\d+", stated) or int(stated) != value:
                counts["wrong_annotation"] += 1
                continue
            question = f"{a}{op}{b}"
            if question in seen:
                counts["duplicates"] += 1
                continue
            seen.add(question)
            docs.append(Doc(id=f"gsm8k_calc/{data.split}/{line}/{k}", question=question, target=str(value),
                            meta={"line": line, "k": k, "op": op}))
    counts["kept"] = len(docs)
    return docs, counts


def leading_number(completion: str) -> str | None:
    """The number the completion starts with (after whitespace; ``-?[0-9]+(.[0-9]+)?``), or None."""
    m = LEADING_NUMBER.match(completion or "")
    return m.group(1) if m else None


class Gsm8kCalcTask(BaseTask):
    """Shared implementation of ``gsm8k_calc`` and ``gsm8k_calc_train``."""

    Config: ClassVar[type[CalcConfig]] = CalcConfig
    PROMPT_SPEC: ClassVar[dict[str, Any]] = {"user": "{expression}=", "fewshot": "'{expression}={result}\\n' lines",
                                             "chat_template": None}
    config: CalcConfig

    def __init__(self, config: CalcConfig | None = None):
        super().__init__(config)
        self._counts: dict[str, int] = {}
        self._train_docs: list[Doc] | None = None

    def _train(self) -> list[Doc]:
        """Filtered train-split documents (for overlap removal and few-shot lines)."""
        if self._train_docs is None:
            if self.DATA.split == "train":
                self._train_docs = self.docs_unlimited()
            else:
                packaged = CalcConfig()  # the shipped train file (= openai/gsm8k main train)
                self._train_docs, _ = extract_calc_docs(load_split(_TRAIN, packaged), self.config)
        return self._train_docs

    def make_docs(self, data: LoadedData) -> list[Doc]:
        docs, counts = extract_calc_docs(data, self.config)
        if data.split == "test" and self.config.exclude_train_overlap:
            train = {d.question for d in self._train()}
            kept = [d for d in docs if d.question not in train]
            counts["train_overlap"] = len(docs) - len(kept)
            counts["kept"] = len(kept)
            docs = kept
        self._counts = counts
        return docs

    def docs_unlimited(self) -> list[Doc]:
        self._ensure()
        assert self._all_docs is not None
        return list(self._all_docs)

    def stats(self) -> dict[str, int]:
        """Filter counts of the loaded split (annotations seen, rejected by reason, kept)."""
        self._ensure()
        return dict(self._counts)

    def key_notes(self) -> str:
        c = self.config
        overlap = ", train overlap removed" if (self.DATA.split == "test" and c.exclude_train_overlap) else ""
        return (f"GSM8K calculator annotations: a op b, ops '{c.operators}', operands <= {c.max_operand}, "
                f"0 <= result <= {c.max_result}, exact division, deduplicated{overlap}")

    # ---- prompts
    def uses_chat_template(self) -> bool:
        return False

    def messages(self, doc: Doc) -> list[Message]:
        return [{"role": "user", "content": self.prompt(doc)}]

    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        """``"<expression>="``, after ``num_fewshot`` ``"expr=result\\n"`` lines; no chat template."""
        shots = ""
        if self.config.num_fewshot:
            pool = [d for d in self._train()[: self.config.num_fewshot + 1] if d.id != doc.id]
            shots = "".join(f"{d.question}={d.target}\n" for d in pool[: self.config.num_fewshot])
        return f"{shots}{doc.question}="

    def sft_pairs(self, tokenizer: Any | None = None) -> list[tuple[str, str]]:
        """``(prompt, response)`` pairs: ``("48/2=", "24")``; the trainer appends EOS. The prompt
        never goes through a chat template, so ``tokenizer`` is not used."""
        return [(self.prompt(d), str(d.target)) for d in self.docs()]

    # ---- scoring
    def score(self, doc: Doc, completion: str) -> Verdict:
        """Exact integer match of the completion's leading integer (see the module docstring)."""
        got = leading_number(completion)
        ok = got is not None and INTEGER.fullmatch(got) is not None and int(got) == int(doc.target)
        return Verdict(correct=ok, score=1.0 if ok else 0.0, extracted=got, details={"gold": doc.target})

    def scorer(self) -> ScorerKey:
        return ScorerKey(name="exact-int", version="1")


class Gsm8kCalc(Gsm8kCalcTask):
    """Held-out evaluation split: annotations of the GSM8K test set."""

    name: ClassVar[str] = "gsm8k_calc"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("Arithmetic from GSM8K test calculator annotations (e.g. 48/2=24), "
                                  "train overlap removed; exact integer match")
    DATA: ClassVar[DataSpec] = _TEST


class Gsm8kCalcTrain(Gsm8kCalcTask):
    """Training split: annotations of the GSM8K train set (SFT pairs and RL prompts)."""

    name: ClassVar[str] = "gsm8k_calc_train"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "Arithmetic from GSM8K train calculator annotations; SFT/RL split"
    DATA: ClassVar[DataSpec] = _TRAIN
