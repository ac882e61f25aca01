"""CLI contract (exit codes, stdout vs stderr), schema freshness, metrics and the sample store."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from dllm_bench.cli import app
from dllm_bench.errors import BadInputError
from dllm_bench.metrics import mean_stderr, pass_at_k, standard_metrics
from dllm_bench.results import SampleStore
from dllm_bench.schema import Entry, ModelInfo, ProtocolKey, SampleRecord, describe_differences, schemas, split_keys

from .conftest import REPO

runner = CliRunner()


def test_every_command_exists_with_help():
    for cmd in ("list", "eval", "score", "train", "run", "leaderboard", "gate", "env", "schema", "sandbox"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
    r = runner.invoke(app, ["eval", "--help"])
    for opt in ("--model", "--task", "--sampler", "--sampler-arg", "--limit", "--output"):
        assert opt in r.output


def test_usage_error_exit_2_no_traceback():
    r = runner.invoke(app, ["eval", "--model", "x"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["nonsense"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_env_json_on_stdout_only():
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    for k in ("python", "libraries", "git_sha", "docker_engine", "bubblewrap", "gpu"):
        assert k in info
    for lib in ("torch", "transformers", "lm-eval", "math-verify", "docker"):
        assert lib in info["libraries"]


def test_schema_file_is_current():
    committed = json.loads((REPO / "leaderboards" / "schema" / "entry.schema.json").read_text())
    assert committed == json.loads(json.dumps(schemas()["entry"], sort_keys=True)), \
        "run: dllm-bench schema --output leaderboards/schema"


def test_schema_unknown_name_exit_2():
    r = runner.invoke(app, ["schema", "--name", "nope"])
    assert r.exit_code == 2 and "unknown schema" in r.output


def _parts(**over):
    task = {"name": "t", "version": "1", "dataset": {"source": "packaged", "split": "test", "sha256": "a",
                                                     "n_original": 3, "n_effective": 3},
            "prompt": {"template_sha256": "p", "chat_template_sha256": "c"},
            "scorer": {"name": "math-verify", "version": "0.9.0"}}
    sampler = {"name": "block-static", "version": "1",
               "config": {"block_size": 4, "confidence_threshold": 0.9, "max_new_tokens": 64, "stop": []}}
    model = ModelInfo(id="m", family="block-diffusion", weights_sha256="w" * 64, dtype="bfloat16", num_parameters=1)
    parts = json.loads(json.dumps({"task": task, "sampler": sampler}))
    for path, v in over.items():
        d = parts
        *head, last = path.split("__")
        for h in head:
            d = d[h]
        d[last] = v
    return split_keys(parts["task"], 1, parts["sampler"], None, model)


def test_protocol_and_system_split_and_diff_in_words():
    p, s = _parts()
    # the generation budget is protocol, the chat template and every other knob system
    assert p.generation.max_new_tokens == 64 and "max_new_tokens" not in s.sampler.config
    assert s.chat_template_sha256 == "c" and "chat_template_sha256" not in p.task.prompt.model_dump()
    p2, s2 = _parts(sampler__config__confidence_threshold=0.7, task__scorer__version="0.8.0")
    assert p.diff(p2) == ["task.scorer.version"] and s.diff(s2) == ["sampler.config.confidence_threshold"]
    assert describe_differences(p, p2) == ["scorer version: 0.9.0 vs 0.8.0"]
    assert describe_differences(s, s2) == ["confidence threshold: 0.9 vs 0.7"]
    p3, s3 = _parts(sampler__config__max_new_tokens=128, task__prompt__chat_template_sha256="d")
    assert describe_differences(p, p3) == ["max new tokens: 64 vs 128"] and s.diff(s3) == ["chat_template_sha256"]
    assert p.digest() != p2.digest() and p.digest() == _parts()[0].digest()
    with pytest.raises(ValidationError):
        ProtocolKey.model_validate({**p.model_dump(mode="json"), "unexpected": 1})


def test_version_1_entry_is_read_as_version_2():
    v1 = Path(__file__).parent / "fixtures" / "v1" / "dllm-sft-static" / "entry.json"
    raw = json.loads(v1.read_text())
    assert raw["schema_version"] == "1" and "key" in raw
    e = Entry.load(v1)
    assert e.schema_version == "2" and e.entry_id == raw["entry_id"]
    assert e.protocol.generation.max_new_tokens == raw["key"]["sampler"]["config"]["max_new_tokens"]
    assert e.protocol.task.dataset == e.protocol.task.dataset.model_validate(raw["key"]["task"]["dataset"])
    assert e.system.model.id == "tiny-block-dlm+sft" and e.system.model.trainers == ["sft@1"]
    assert e.system.model.weights_sha256 is None  # a model trained here: its weights are in repro
    assert e.repro.model.weights_sha256 == raw["repro"]["model"]["weights_sha256"]
    # an edited key no longer matches its digest: refused
    bad = e.model_dump(mode="json")
    bad["protocol"]["samples_per_problem"] = 9
    with pytest.raises(Exception, match="digest"):
        Entry.model_validate(bad)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one correct in a uniformly random k-subset), by enumeration."""
    items = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (7, 6, 4), (4, 4, 4), (10, 3, 5)])
def test_pass_at_k_unbiased(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_standard_metrics_values():
    per = {"a": [("1", True), ("2", False), ("1", True)],
           "b": [("3", False), ("3", False), ("4", True)],
           "c": [("5", False), ("5", False), ("5", False)]}
    m = standard_metrics(per, ks=(1, 3))
    acc = [2 / 3, 1 / 3, 0.0]
    mean = sum(acc) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in acc) / 2 / 3)
    assert m["accuracy"]["value"] == pytest.approx(mean) and m["accuracy"]["stderr"] == pytest.approx(se)
    assert m["pass@3"]["value"] == pytest.approx(2 / 3)
    assert m["maj@3"]["value"] == pytest.approx(1 / 3)  # a: '1' majority correct; b: '3' wrong; c wrong
    assert mean_stderr([]) == (pytest.approx(float("nan"), nan_ok=True), None)


def _rec(i: int) -> SampleRecord:
    return SampleRecord(doc_id=f"d{i}", sample_index=0, prompt_sha256="x", completion=str(i), extracted=str(i),
                        correct=i % 2 == 0, score=float(i % 2 == 0))


def test_sample_store_drops_partial_last_line(tmp_path: Path):
    p = tmp_path / "samples.jsonl"
    with SampleStore(p) as s:
        s.extend(_rec(i) for i in range(3))
    with open(p, "a") as f:  # a run killed mid-write
        f.write('{"doc_id": "d3", "sample_in')
    with SampleStore(p) as s:
        assert len(s) == 3 and ("d2", 0) in s and ("d3", 0) not in s
        s.append(_rec(3))
    lines = p.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x) for x in lines)


def test_sample_store_keeps_completions_with_unicode_line_separators(tmp_path: Path):
    """JSON writers leave U+0085 / U+2028 / U+2029 / \\x1c-\\x1e unescaped inside strings (a
    random byte-level model emits them: bytes C2 85 decode to U+0085); str.splitlines() would
    cut the record there and the run could not be re-read or resumed."""
    from dllm_bench.jsonl import iter_jsonl_objects

    odd = ["a\x85b", "c\u2028d", "e\u2029f", "g\x1ch\x1di\x1ej", "k\x0bl\x0cm"]
    p = tmp_path / "samples.jsonl"
    with SampleStore(p) as s:
        for i, text in enumerate(odd):
            s.append(_rec(i).model_copy(update={"completion": text}))
    assert p.read_bytes().count(b"\n") == len(odd)
    with SampleStore(p) as s:
        assert [s.records[(f"d{i}", 0)].completion for i in range(len(odd))] == odd
        s.append(_rec(len(odd)))  # resuming appends after them
    assert [obj["completion"] for _, obj in iter_jsonl_objects(p.read_text(encoding="utf-8"), p)] == [*odd, "5"]


def test_sample_store_bad_line_names_file_and_line(tmp_path: Path):
    p = tmp_path / "samples.jsonl"
    p.write_text(_rec(0).model_dump_json() + "\n" + '{"doc_id": 1}\n')
    with pytest.raises(BadInputError) as e:
        SampleStore(p)
    assert str(e.value).startswith(f"{p}:2: invalid sample record")


def test_jsonl_store_keyed_torn_line_retain_and_lenient(tmp_path: Path):
    """The one resumable JSONL store (samples, lm-eval's generation cache, a trainer's metrics log)."""
    from dllm_bench.jsonl import JsonlStore

    p = tmp_path / "log.jsonl"
    with JsonlStore(p, key=lambda r: r["k"]) as s:
        s.extend({"k": k, "v": i} for i, k in enumerate("abc"))
        s.append({"k": "a", "v": 9})  # a later record with the same key replaces the earlier one
    with open(p, "a") as f:
        f.write('{"k": "d", "v"')  # killed mid-write
    s = JsonlStore(p, key=lambda r: r["k"])
    assert len(s) == 3 and s.get("a") == {"k": "a", "v": 9} and "d" not in s
    assert p.read_text().endswith('"v"')  # reading writes nothing
    s.append({"k": "d", "v": 4})
    s.close()
    assert [json.loads(x)["k"] for x in p.read_text().splitlines()] == ["a", "b", "c", "a", "d"]
    s.retain(lambda r: r["v"] < 3)
    assert p.read_text().splitlines() == ['{"k": "a", "v": 0}', '{"k": "b", "v": 1}', '{"k": "c", "v": 2}']
    assert sorted(s.records) == ["a", "b", "c"]
    p.write_text('{"k": "a"}\n[1]\n')
    with pytest.raises(BadInputError) as e:
        JsonlStore(p)
    assert str(e.value) == f"{p}:2: expected a JSON object, got list"
    assert list(JsonlStore(p, lenient=True)) == [{"k": "a"}]


def test_run_guard_pins_and_names_the_differing_fields(tmp_path: Path):
    """The one "this directory holds a different run" guard (eval's run.json, a trainer's config.json)."""
    from dllm_bench.outdir import check_run, pin_run

    p = tmp_path / "run.json"
    ident = {"model": "m", "seed": 0, "config": {"lr": 1, "steps": 2}}
    assert check_run(p, ident, conflict="x") is False
    pin_run(p, ident)
    assert p.read_text() == json.dumps(ident, indent=2, sort_keys=True) + "\n"
    assert check_run(p, ident, conflict="x") is True
    with pytest.raises(BadInputError) as e:
        check_run(p, {**ident, "seed": 1, "model": "n"}, conflict="holds a run with a different {fields}")
    assert str(e.value) == f"{p}: holds a run with a different model, seed"
    with pytest.raises(BadInputError) as e:
        check_run(p, {**ident, "config": {"lr": 2, "steps": 2}}, conflict="different config (fields: {fields})",
                  under="config", located=False)
    assert str(e.value) == "different config (fields: lr)"
    with pytest.raises(BadInputError, match="fields: model"):  # nothing differs under config: the top level
        check_run(p, {**ident, "model": "n"}, conflict="fields: {fields}", under="config")
    p.write_text("{torn")
    assert check_run(p, ident, conflict="x", lenient=True) is False
    with pytest.raises(BadInputError, match="invalid run file"):
        check_run(p, ident, conflict="x")
