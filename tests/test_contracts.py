"""Plugin contracts (``dllm_bench.<kind>.base``): a plugin that implements only the required
methods of its kind's contract gets every feature through the defaults, the harness calls the
contract without probing, and ``dllm-bench list --check`` names a plugin that falls short."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from dllm_bench import registry
from dllm_bench.cli import app
from dllm_bench.errors import BadInputError, PluginError
from dllm_bench.plugins import Doc, StrictModel, Verdict, check_plugin, conform
from dllm_bench.samplers.base import Sampler
from dllm_bench.sandboxes.base import Sandbox
from dllm_bench.scoring import Prediction, score_samples
from dllm_bench.tasks.base import Task
from dllm_bench.trainers.base import Trainer

CONTRACTS = {"tasks": Task, "samplers": Sampler, "trainers": Trainer, "sandboxes": Sandbox}


class EchoConfig(StrictModel):
    n_docs: int = 3


class MinimalTask(Task):
    """What a third-party task writes: the class attributes and the five required methods."""

    name = "minimal-echo"
    version = "0"
    description = "the answer is the question"
    Config = EchoConfig

    def __init__(self, config: EchoConfig | None = None):
        self.config = config or EchoConfig()
        self.scored: list[str] = []

    def docs(self):
        return [Doc(id=f"echo/{i}", question=str(i), target=str(i)) for i in range(self.config.n_docs)]

    def prompt(self, doc, tokenizer=None):
        return doc.question

    def score(self, doc, completion):
        self.scored.append(doc.id)
        ok = completion.strip() == doc.target
        return Verdict(correct=ok, score=float(ok), extracted=completion.strip())

    def key(self, tokenizer=None):
        return {}

    def aggregate(self, verdicts):
        vs = [v for group in verdicts.values() for v in group]
        return {"accuracy": {"value": sum(v.correct for v in vs) / len(vs), "stderr": None, "n": len(verdicts)}}


def test_contracts_fit_on_one_screen_and_say_what_is_required():
    for kind, contract in CONTRACTS.items():
        lines, _ = inspect.getsourcelines(contract)
        assert len(lines) <= 70, f"{kind} contract is {len(lines)} lines"
        assert contract.__module__ == f"dllm_bench.{kind}.base"
        assert contract.__abstractmethods__, kind
        assert inspect.getdoc(contract)
    assert sorted(Task.__abstractmethods__) == ["aggregate", "docs", "key", "prompt", "score"]
    assert sorted(Sandbox.__abstractmethods__) == ["available", "describe", "run"]


def test_a_task_with_only_the_required_methods_gets_every_feature():
    assert check_plugin(Task, MinimalTask) is None
    task = MinimalTask(EchoConfig(n_docs=2))
    d0, d1 = task.docs()
    # scoring: score_batch defaults to score on each pair, in order (eval, score, RL all call it)
    vs = task.score_batch([(d1, "1"), (d0, "7")])
    assert [v.correct for v in vs] == [True, False] and task.scored == ["echo/1", "echo/0"]
    preds = [Prediction(d0, "0", 0, 1), Prediction(d1, "x", 0, 2)]
    assert [v.score for v in score_samples(task, preds)] == [1.0, 0.0]
    assert task.reward(d0, "0") == 1.0 and task.reward(d0, "1") == 0.0
    # optional capabilities answer plainly
    assert task.scorer() is None and task.sandbox_key() is None
    task.close()
    task.close()
    with pytest.raises(BadInputError, match="minimal-echo.*has no sft_pairs"):
        task.sft_pairs(None)


def test_a_plugin_missing_a_required_method_cannot_be_built_or_checked():
    class NoAggregate(Task):
        name, version, description, Config = "no-aggregate", "0", "", EchoConfig

        def docs(self):
            return []

        def prompt(self, doc, tokenizer=None):
            return ""

        def score(self, doc, completion):
            return Verdict(False, 0.0)

        def key(self, tokenizer=None):
            return {}

    assert check_plugin(Task, NoAggregate) == "missing aggregate"
    with pytest.raises(TypeError):
        NoAggregate()


def test_a_duck_typed_plugin_is_conformed_to_the_contract():
    """A class that does not subclass the contract but has every required method is accepted;
    the registry hands out a subclass of both, so the defaults reach it."""

    class Duck:
        name, version, description, Config = "duck", "0", "", EchoConfig

        def __init__(self, config=None):
            self.config = config or EchoConfig()

        docs = MinimalTask.docs
        prompt = MinimalTask.prompt
        key = MinimalTask.key
        aggregate = MinimalTask.aggregate

        def score(self, doc, completion):
            return Verdict(completion == doc.target, float(completion == doc.target))

    assert check_plugin(Task, Duck) is None
    cls = conform(Task, Duck)
    assert cls is conform(Task, Duck) and issubclass(cls, Duck) and issubclass(cls, Task)
    assert cls.__name__ == "Duck" and conform(Task, MinimalTask) is MinimalTask
    t = cls(EchoConfig(n_docs=1))
    assert [v.correct for v in t.score_batch([(t.docs()[0], "0")])] == [True]
    assert t.sandbox_key() is None and t.close() is None
    del Duck.aggregate
    assert check_plugin(Task, Duck) == "missing aggregate"


def test_every_builtin_plugin_implements_its_contract():
    for kind, contract in CONTRACTS.items():
        assert registry.contract(kind) is contract
        for name in registry.names(kind):
            assert registry.try_import(kind, name) is None, (kind, name)
            assert issubclass(registry.load(kind, name), contract), (kind, name)


@pytest.fixture()
def fake_task_plugins(tmp_path, monkeypatch):
    """Three task plugins declared as entry points of no distribution: complete (subclass),
    complete (duck-typed) and one without ``aggregate``."""
    mod = tmp_path / "contract_fixture_plugins.py"
    mod.write_text(textwrap.dedent('''
        from dllm_bench.plugins import Doc, StrictModel, Verdict
        from dllm_bench.tasks.base import Task

        class Cfg(StrictModel):
            pass

        class Duck:
            name, version, description, Config = "duck", "0", "", Cfg
            def __init__(self, config=None): self.config = config
            def docs(self): return [Doc(id="a", question="q", target="t")]
            def prompt(self, doc, tokenizer=None): return doc.question
            def score(self, doc, completion): return Verdict(completion == doc.target, 1.0)
            def key(self, tokenizer=None): return {}
            def aggregate(self, verdicts): return {}

        class Sub(Duck, Task):
            name = "sub"

        class NoAggregate:
            name, version, description, Config = "no-aggregate", "0", "", Cfg
            def docs(self): return []
            def prompt(self, doc, tokenizer=None): return ""
            def score(self, doc, completion): return Verdict(False, 0.0)
            def key(self, tokenizer=None): return {}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = registry.entry_points
    fakes = [EntryPoint(n, f"contract_fixture_plugins:{obj}", "dllm_bench.tasks")
             for n, obj in (("fx-duck", "Duck"), ("fx-sub", "Sub"), ("fx-no-aggregate", "NoAggregate"))]

    def entry_points(*, group):
        return list(real(group=group)) + (fakes if group == "dllm_bench.tasks" else [])

    monkeypatch.setattr(registry, "entry_points", entry_points)
    yield
    sys.modules.pop("contract_fixture_plugins", None)


def test_list_check_reports_one_line_per_plugin_that_misses_its_contract(fake_task_plugins):
    r = CliRunner().invoke(app, ["list", "tasks", "--check", "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["fx-duck"]["status"] == "ok" and rows["fx-sub"]["status"] == "ok"
    assert rows["math500"]["status"] == "ok"
    bad = rows["fx-no-aggregate"]
    assert bad["status"] == "broken"
    assert "does not implement the task contract (dllm_bench.tasks.base.Task): missing aggregate" in bad["problem"]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'fx-no-aggregate'" in warnings[0] and "missing aggregate" in warnings[0]
    # without --check nothing is imported, so nothing is reported
    r = CliRunner().invoke(app, ["list", "tasks", "--json"])
    assert {x["name"]: x for x in json.loads(r.stdout)}["fx-no-aggregate"]["status"] == "ok"
    # selecting it fails with the same line; the duck-typed one gets the defaults
    with pytest.raises(PluginError, match="missing aggregate"):
        registry.create("tasks", "fx-no-aggregate", {})
    duck = registry.create("tasks", "fx-duck", {})
    assert isinstance(duck, Task) and duck.sandbox_key() is None
    assert [v.correct for v in duck.score_batch([(duck.docs()[0], "t")])] == [True]
