"""gsm8k_calc / gsm8k_calc_train: documents derived from GSM8K's real calculator annotations,
the filter, held-out split, prompts without a chat template, exact-integer scoring, SFT pairs."""

from __future__ import annotations

import operator
import re

import pytest

from dllm_bench import registry
from dllm_bench.errors import BadInputError
from dllm_bench.plugins import check_plugin
from dllm_bench.schema import TaskKey
from dllm_bench.tasks.base import HubSpec, Task, packaged_path
from dllm_bench.tasks.gsm8k_calc import Gsm8kCalc, Gsm8kCalcTrain, leading_number

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
ID = re.compile(r"gsm8k_calc/(train|test)/(\d+)/(\d+)")


@pytest.fixture(scope="module")
def train() -> Gsm8kCalcTrain:
    return Gsm8kCalcTrain()


@pytest.fixture(scope="module")
def test_split() -> Gsm8kCalc:
    return Gsm8kCalc()


def _check(doc, max_operand=99, max_result=999, ops="+-*/"):
    a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)", doc.question).groups()
    a, b = int(a), int(b)
    assert op in ops and a <= max_operand and b <= max_operand
    if op == "/":
        assert b != 0 and a % b == 0
    value = OPS[op](a, b)
    assert doc.target == str(value) and 0 <= value <= max_result


def test_counts_after_filtering(train, test_split):
    """Counts on the shipped GSM8K files with the default filter (also in the README)."""
    assert len(train.docs()) == 2979
    assert train.stats() == {"annotations": 23716, "not_binary": 5052, "out_of_range": 5293,
                             "inexact_division": 119, "wrong_annotation": 243, "duplicates": 10030, "kept": 2979}
    assert len(test_split.docs()) == 264
    s = test_split.stats()
    assert (s["annotations"], s["train_overlap"], s["kept"]) == (4282, 911, 264)
    assert len(Gsm8kCalc(Gsm8kCalc.Config(exclude_train_overlap=False)).docs()) == 1175
    for t in (train, test_split):
        s = t.stats()
        rejected = sum(v for k, v in s.items() if k not in ("annotations", "kept"))
        assert rejected + s["kept"] == s["annotations"]


def test_every_doc_is_a_real_annotation_and_passes_the_filter(train, test_split):
    for task in (train, test_split):
        for d in task.docs():
            _check(d)
            split, line, k = ID.fullmatch(d.id).groups()
            assert split == task.DATA.split and (int(line), int(k)) == (d.meta["line"], d.meta["k"])
        assert len({d.question for d in task.docs()}) == len(task.docs())  # deduplicated
    # ids point at the annotation in the GSM8K file
    lines = packaged_path("gsm8k/train.jsonl").read_text().splitlines()
    for d in train.docs()[::300]:
        ann = re.findall(r"<<([^<>]*)>>", lines[d.meta["line"]])[d.meta["k"]]
        assert ann.replace(" ", "") == f"{d.question}={d.target}"


def test_first_document_is_the_natalia_example(train):
    d = train.docs()[0]
    assert (d.id, d.question, d.target) == ("gsm8k_calc/train/0/0", "48/2", "24")
    assert train.prompt(d) == "48/2="
    assert train.sft_pairs()[0] == ("48/2=", "24")


def test_test_split_is_held_out(train, test_split):
    seen = {d.question for d in train.docs()}
    assert not any(d.question in seen for d in test_split.docs())


@pytest.mark.parametrize("kw", [{"operators": "+"}, {"max_operand": 9, "max_result": 20}, {"operators": "*/"}])
def test_filter_knobs(kw):
    task = Gsm8kCalcTrain(Gsm8kCalcTrain.Config(**kw))
    docs = task.docs()
    assert docs
    for d in docs:
        _check(d, kw.get("max_operand", 99), kw.get("max_result", 999), kw.get("operators", "+-*/"))
    assert "operands <= " + str(kw.get("max_operand", 99)) in task.key()["notes"]


@pytest.mark.parametrize("completion,ok", [
    ("24", True), (" 24", True), ("24\n", True), ("24<|im_end|>", True), ("24 apples", True), ("024", True),
    ("240", False), ("2 4", False), ("", False), ("= 24", False), ("-24", False), ("twenty-four", False),
    ("23", False), ("24.0", False), ("24.5", False), ("24.", True), ("24,", True),
])
def test_exact_integer_scoring(train, completion, ok):
    doc = train.docs()[0]  # 48/2 = 24
    v = train.score(doc, completion)
    assert v.correct is ok and v.score == float(ok)
    assert train.reward(doc, completion) == float(ok)
    assert v.extracted == leading_number(completion)


def test_prompt_ignores_chat_templates(test_split):
    from dllm_bench.models import build_byte_tokenizer

    tok = build_byte_tokenizer()
    assert tok.chat_template  # the tiny models' tokenizer has one; this task does not use it
    doc = test_split.docs()[0]
    assert test_split.prompt(doc, tok) == f"{doc.question}="
    key = TaskKey.model_validate(test_split.key(tok))
    assert key.prompt.chat_template_sha256 is None
    assert key.scorer.name == "exact-int" and "train overlap removed" in key.notes
    assert key.dataset.n_original == 264


def test_fewshot_lines(test_split):
    task = Gsm8kCalc(Gsm8kCalc.Config(num_fewshot=2))
    doc = task.docs()[0]
    assert task.prompt(doc) == f"48/2=24\n48+24=72\n{doc.question}="
    tr = Gsm8kCalcTrain(Gsm8kCalcTrain.Config(num_fewshot=1))
    assert tr.prompt(tr.docs()[0]) == "48+24=72\n48/2="  # never its own example


def test_sft_pairs_cover_the_train_docs(train):
    pairs = train.sft_pairs()
    assert len(pairs) == len(train.docs())
    assert all(p.endswith("=") and r.isdigit() for p, r in pairs)
    assert all(train.score(d, r).correct for d, (_, r) in zip(train.docs(), pairs))


@pytest.mark.parametrize("name,cls", [("gsm8k_calc", Gsm8kCalc), ("gsm8k_calc_train", Gsm8kCalcTrain)])
def test_entry_points(name, cls):
    assert registry.load("tasks", name) is cls and check_plugin(Task, cls) is None
    task = registry.create("tasks", name, {"limit": 5})
    assert isinstance(task, Task) and len(task.docs()) == 5
    with pytest.raises(BadInputError, match="operators"):
        registry.create("tasks", name, {"operators": "^"})


def test_hub_loader_on_local_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    f = tmp_path / "gsm8k_test.jsonl"
    f.write_text("".join(packaged_path("gsm8k/test.jsonl").read_text().splitlines(True)[:200]))
    task = Gsm8kCalc(Gsm8kCalc.Config(data_source="hub", hub=HubSpec(path="json", data_files=str(f), split="train")))
    expected = [d for d in Gsm8kCalc().docs() if d.meta["line"] < 200]
    # dedup is per loaded file, so the first 200 lines give the same docs as the full file's
    assert [d.id for d in task.docs()] == [d.id for d in expected]
    assert task.key()["dataset"]["source"] == "hub:json"
