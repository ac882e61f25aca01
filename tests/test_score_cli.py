"""`dllm-bench score` through the real CLI app: exact metrics, stdout holds only the result,
bad input is one line with file:line and exit 2, and re-scoring a per-sample file
reproduces its metrics exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_bench.cli import app
from dllm_bench.schema import SampleRecord
from dllm_bench.scoring import RESULT_FILE, SAMPLES_FILE, flatten_metrics, score_predictions
from dllm_bench.tasks.gsm8k_calc import Gsm8kCalc
from dllm_bench.tasks.math import Gsm8k, Math500

runner = CliRunner()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def score_json(*args: str) -> tuple[int, dict | None, str]:
    r = runner.invoke(app, ["score", *args, "--json"])
    return r.exit_code, (json.loads(r.stdout) if r.exit_code == 0 else None), r.stderr


@pytest.fixture(scope="module")
def gsm_docs():
    return Gsm8k().docs()


def test_json_metrics_are_exact_and_stdout_is_only_the_result(tmp_path, gsm_docs):
    d0, d1, d2 = gsm_docs[:3]
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": d0.id, "completion": f"... so \\boxed{{{d0.target}}}"},
        {"id": d1.id, "completion": ""},
        {"id": d2.id, "completion": "\\boxed{-1}"},
        {"id": d0.id, "completion": "garbage }{"},
        {"id": d1.id, "completion": f"\\boxed{{{d1.target}}}", "extra": "ignored"},
        {"id": d2.id, "completion": "\\boxed{-2}"},
    ])
    code, out, err = score_json("--task", "gsm8k", "--predictions", str(preds))
    assert code == 0, err
    assert out["task"] == "gsm8k" and out["n"] == 3 and out["n_samples"] == 6 and out["n_docs"] == 1319
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["pass@1"] == pytest.approx(1 / 3)
    assert m["pass@2"] == pytest.approx(2 / 3)
    assert m["maj@2"] == pytest.approx(2 / 3)  # d0: [gold, None] and d1: [None, gold] -> right
    assert m["accuracy_stderr"] == pytest.approx(((1 / 36 * 2 + 1 / 9) / 2 / 3) ** 0.5)
    assert out["scorer"]["name"] == "math-verify"
    assert "scoring" in err  # the log line went to stderr


def test_table_output(tmp_path, gsm_docs):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": gsm_docs[0].id, "completion": "\\boxed{18}"}])
    r = runner.invoke(app, ["score", "--task", "gsm8k", "--predictions", str(preds)])
    assert r.exit_code == 0, r.stderr
    assert "accuracy" in r.stdout and "1.0000" in r.stdout and "scoring" not in r.stdout


def _bad_cases(doc_id: str) -> dict[str, tuple[list, int, str]]:
    ok = {"id": doc_id, "completion": "\\boxed{18}"}
    return {
        "malformed": ([ok, '{"id": "x", "completion": '], 2, "malformed JSON"),
        "unknown-id": ([ok, ok, {"id": "gsm8k/test/99999", "completion": "1"}], 3, "unknown id 'gsm8k/test/99999'"),
        "missing-completion": ([{"id": doc_id}], 1, "missing field 'completion'"),
        "missing-id": ([ok, {"completion": "x"}], 2, "missing field 'id'"),
        "non-string": ([{"id": doc_id, "completion": 18}], 1, "'completion' must be a string"),
        "not-object": ([ok, "[1, 2]"], 2, "expected a JSON object"),
        "bad-record": ([{"doc_id": doc_id, "completion": "x"}], 1, "invalid sample record"),
    }


@pytest.mark.parametrize("case", list(_bad_cases("gsm8k/test/0")))
def test_bad_input_is_one_line_with_file_and_line(tmp_path, case):
    rows, line, what = _bad_cases("gsm8k/test/0")[case]
    preds = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = runner.invoke(app, ["score", "--task", "gsm8k", "--predictions", str(preds), "--json"])
    assert r.exit_code == 2
    assert r.stdout == ""
    msg = r.stderr.strip().splitlines()
    assert len(msg) == 1 and "Traceback" not in r.stderr
    assert f"{preds}:{line}:" in msg[0] and what in msg[0]


def test_unknown_id_suggests_a_close_one(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "gsm8k/tset/5", "completion": ""}])
    code, _, err = score_json("--task", "gsm8k", "--predictions", str(preds))
    assert code == 2 and "did you mean 'gsm8k/test/5'" in err


@pytest.mark.parametrize("args,what", [
    (["--task", "nosuchtask"], "unknown task"),
    (["--task", "gsm8k", "--task-arg", "bogus=1"], "bogus"),
    (["--task", "gsm8k", "--sandbox", "docker"], "--sandbox does not apply"),
    (["--task", "gsm8k", "--data-source", "hub", "--task-arg", "data_source=packaged"], "conflicts"),
])
def test_bad_options_exit_2(tmp_path, args, what):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "gsm8k/test/0", "completion": ""}])
    r = runner.invoke(app, ["score", "--predictions", str(preds), *args])
    assert r.exit_code == 2 and what in r.stderr and r.stdout == ""


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, _, err = score_json("--task", "gsm8k", "--predictions", str(empty))
    assert code == 2 and "no predictions" in err
    code, _, err = score_json("--task", "gsm8k", "--predictions", str(tmp_path / "absent.jsonl"))
    assert code == 2 and "cannot read predictions" in err


def test_limit_restricts_the_known_ids(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "gsm8k/test/5", "completion": ""}])
    code, _, err = score_json("--task", "gsm8k", "--predictions", str(preds), "--task-arg", "limit=5")
    assert code == 2 and "unknown id 'gsm8k/test/5'" in err and "(5 documents)" in err


def test_rescoring_the_per_sample_file_reproduces_the_metrics_exactly(tmp_path):
    docs = Math500().docs()[:40]
    rows = []
    for i, d in enumerate(docs):  # 3 samples per problem: reference, a wrong box, garbage or a right box
        rows.append({"id": d.id, "completion": d.meta["solution"] if i % 4 else "no idea"})
        rows.append({"id": d.id, "completion": f"\\boxed{{{i}}}"})
        rows.append({"id": d.id, "completion": f"so \\boxed{{{d.target}}}" if i % 3 == 0 else ""})
    preds = write_jsonl(tmp_path / "preds.jsonl", rows)
    out_dir = tmp_path / "scored"
    code, first, err = score_json("--task", "math500", "--predictions", str(preds), "--output", str(out_dir))
    assert code == 0, err
    assert set(first["metrics"]) >= {"accuracy", "accuracy_stderr", "pass@1", "pass@2", "pass@3", "maj@3"}
    assert 0 < first["metrics"]["accuracy"] < 1

    lines = (out_dir / SAMPLES_FILE).read_text().splitlines()
    records = [SampleRecord.model_validate_json(x) for x in lines]
    assert len(records) == len(rows)
    assert [(r.doc_id, r.completion) for r in records] == [(x["id"], x["completion"]) for x in rows]
    assert [r.sample_index for r in records[:3]] == [0, 1, 2]
    assert json.loads((out_dir / RESULT_FILE).read_text())["metrics"] == first["metrics"]

    # 1) the per-sample file itself, fed back (records, shuffled line order)
    shuffled = write_jsonl(tmp_path / "records.jsonl", lines[1::2] + lines[::2])
    code, again, err = score_json("--task", "math500", "--predictions", str(shuffled))
    assert code == 0, err
    assert again["metrics"] == first["metrics"]
    # 2) its completions as plain {"id", "completion"} lines
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": r.doc_id, "completion": r.completion} for r in records])
    code, plain_res, err = score_json("--task", "math500", "--predictions", str(plain))
    assert code == 0 and plain_res["metrics"] == first["metrics"]


def test_rescoring_keeps_record_fields(tmp_path):
    doc = Gsm8k().docs()[0]
    rec = SampleRecord(doc_id=doc.id, sample_index=0, prompt_sha256="ab" * 32, completion="\\boxed{18}",
                       extracted=None, correct=False, score=0.0, cost={"nfe": 12.0}, seed=7,
                       trajectory={"step_map": [0, 1]})
    preds = write_jsonl(tmp_path / "r.jsonl", [rec.model_dump_json()])
    res = score_predictions(task="gsm8k", predictions=preds, output=tmp_path / "o")
    assert res["metrics"]["accuracy"] == 1.0
    out = SampleRecord.model_validate_json((tmp_path / "o" / SAMPLES_FILE).read_text())
    assert (out.correct, out.extracted, out.cost, out.seed, out.trajectory, out.prompt_sha256) == (
        True, "18", {"nfe": 12.0}, 7, {"step_map": [0, 1]}, "ab" * 32)
    dup = write_jsonl(tmp_path / "dup.jsonl", [rec.model_dump_json(), rec.model_dump_json()])
    code, _, err = score_json("--task", "gsm8k", "--predictions", str(dup))
    assert code == 2 and "already given on line 1" in err


def test_score_gsm8k_calc(tmp_path):
    docs = Gsm8kCalc().docs()[:4]
    preds = write_jsonl(tmp_path / "c.jsonl", [{"id": d.id, "completion": d.target} for d in docs[:3]]
                        + [{"id": docs[3].id, "completion": "9999"}])
    code, out, err = score_json("--task", "gsm8k_calc", "--predictions", str(preds))
    assert code == 0, err
    assert out["metrics"]["accuracy"] == 0.75 and out["scorer"]["name"] == "exact-int"


def test_flatten_metrics_order():
    flat = flatten_metrics({"accuracy": {"value": 0.5, "stderr": 0.1}, "pass@1": {"value": 0.5, "stderr": None}})
    assert list(flat) == ["accuracy", "accuracy_stderr", "pass@1", "pass@1_stderr"]
