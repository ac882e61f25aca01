"""Generate the fixture leaderboard entries in ``tests/fixtures/entries/`` (do not hand-edit them).

    .venv/bin/python tests/make_fixture_entries.py            # rewrite the committed fixtures

Every entry is a real :class:`dllm_bench.schema.Entry` built from per-sample records over
the first ``N_DOCS`` GSM8K test problems of the packaged ``tasks/data/gsm8k/test.jsonl`` (ids
``gsm8k/test/<row>``; the gold answer follows ``####``). Outcomes follow fixed patterns
over the row index so the gate tests can compute every difference by hand from the
JSONL. Metrics come from :func:`dllm_bench.metrics.standard_metrics` over the records.

Rows. Six entries share one protocol (gsm8k, the first 40 problems, 1 sample, max new
tokens 64): the leaderboard's main systems × tasks table. The system (model + trainer
chain, sampler + knobs) tells the rows apart:

* block-dynamic, threshold 0.9: ``tiny-block-dlm (SFT)`` correct on ``i % 5 in {0, 1}``;
  ``tiny-block-dlm (TraceRL)`` = SFT + ``i % 5 == 2`` for ``i < 20`` (its training record
  names SFT as its reference row); ``tiny-block-dlm (SFT, seed 1)`` = SFT with rows 0 and 5
  wrong and row 2 right (a within-noise change, same system as SFT); ``tiny-block-dlm
  (regressed)`` correct only on ``i % 5 == 0`` (same system as SFT).
* block-dynamic, threshold 0.7: ``tiny-block-dlm (SFT)`` again (same label, another system).
* ar sampler: ``tiny-ar``, an AR baseline.

One entry has another protocol (the first 10 problems, k = 4 samples each): block-static
``tiny-block-dlm (SFT)`` with pass@4 and maj@4 — a separate table whose heading names the
difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dllm_bench.metrics import standard_metrics
from dllm_bench.schema import (
    Cost,
    DatasetKey,
    Entry,
    HarnessInfo,
    Metric,
    ModelInfo,
    PromptKey,
    Repro,
    SampleRecord,
    SamplerKey,
    SamplesRef,
    ScorerKey,
    Status,
    TaskKey,
    canonical_json,
    sha256_file,
    sha256_text,
    split_keys,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "entries"
GSM8K = HERE.parent / "tasks" / "data" / "gsm8k" / "test.jsonl"  # the packaged GSM8K test split (see its PROVENANCE.md)
N_DOCS = 40
CREATED = "2026-01-01T00:00:00+00:00"


def gsm8k_docs(n: int = N_DOCS) -> list[dict]:
    """The first ``n`` GSM8K test rows as ``{id, question, gold}``."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    return [{"id": f"gsm8k/test/{i}", "question": r["question"], "gold": r["answer"].split("####")[-1].strip()}
            for i, r in enumerate(rows)]


def _key(task: str, sampler: str, config: dict, k: int = 1, n: int = N_DOCS) -> dict:
    """The parts :func:`dllm_bench.schema.split_keys` turns into protocol + system."""
    return dict(
        task=TaskKey(name=task, version="1",
                     dataset=DatasetKey(source="packaged", split="test", sha256=sha256_file(GSM8K),
                                        n_original=1319, n_effective=n),
                     prompt=PromptKey(template_sha256=sha256_text("Question: {question}\nAnswer:"),
                                      chat_template_sha256=None, num_fewshot=0),
                     scorer=ScorerKey(name="math-verify", version="0.9.0")),
        samples_per_problem=k,
        sampler=SamplerKey(name=sampler, version="1", config=config))


def _block(threshold: float, strategy: str = "dynamic") -> dict:
    return {"block_size": 4, "denoising_steps": 4, "remasking": "low_confidence_" + strategy,
            "threshold": threshold, "temperature": 0.0, "top_k": None, "top_p": None, "max_new_tokens": 64,
            "cache_mode": "prefix", "attention_backend": "sdpa"}


AR_CONFIG = {"temperature": 0.0, "top_k": None, "top_p": None, "max_new_tokens": 64, "cache_mode": "kv",
             "attention_backend": "sdpa"}


def _records(docs: list[dict], correct: list[list[bool]], nfe_per_sample: int) -> list[SampleRecord]:
    recs = []
    for doc, oks in zip(docs, correct):
        for j, ok in enumerate(oks):
            ans = doc["gold"] if ok else str(int(doc["gold"].replace(",", "")) + 1 + j)
            recs.append(SampleRecord(doc_id=doc["id"], sample_index=j, prompt_sha256=sha256_text(doc["question"]),
                                     completion=f"The answer is {ans}.", extracted=ans, correct=ok,
                                     score=float(ok), cost={"nfe": float(nfe_per_sample), "generated_tokens": 16.0},
                                     seed=j))
    return recs


def _entry(out: Path, key: dict, label: str, family: str, recs: list[SampleRecord], *,
           wall_s: float, ks=(1,), baseline: bool = False, training: dict | None = None,
           model_id: str | None = None) -> Path:
    mid = model_id or label.split(" (")[0]
    model = ModelInfo(id=mid, family=family, config_sha256=sha256_text(mid),
                      dtype="float32", num_parameters=1_234_567, tokenizer="gpt2-bpe-fixture", is_baseline=baseline,
                      training=training)
    seeds = {"python": 0, "numpy": 0, "torch": 0, "sampler": 0 if "seed 1" not in label else 1}
    protocol, system = split_keys(key["task"], key["samples_per_problem"], key["sampler"], None, model)
    entry_id = Entry.make_id(protocol, system, model, seeds)
    per_problem: dict[str, list] = {}
    for r in recs:
        per_problem.setdefault(r.doc_id, []).append((r.extracted, r.correct))
    metrics = {name: Metric(**m) for name, m in standard_metrics(per_problem, ks).items()}
    samples = out / protocol.task.name / "samples" / f"{entry_id}.jsonl"
    samples.parent.mkdir(parents=True, exist_ok=True)
    samples.write_text("".join(r.model_dump_json() + "\n" for r in recs))
    nfe = int(sum(r.cost["nfe"] for r in recs))
    tokens = int(sum(r.cost["generated_tokens"] for r in recs))
    entry = Entry(entry_id=entry_id, created_at=CREATED, label=label, protocol=protocol,
                  protocol_digest=protocol.digest(), system=system, system_digest=system.digest(),
                  repro=Repro(model=model, seeds=seeds,
                              harness=HarnessInfo(version="0.1.0", git_sha="0" * 40, git_dirty=False),
                              libraries={"torch": "2.13.0", "transformers": "fixture"}, device="cpu",
                              platform="linux-fixture"),
                  metrics=metrics,
                  cost=Cost(nfe=nfe, generated_tokens=tokens, tokens_per_forward=tokens / nfe, wall_s=wall_s,
                            tokens_per_s=tokens / wall_s, peak_memory_mb=512.0),
                  status=Status(state="complete", n_expected=len(recs), n_done=len(recs)),
                  samples=SamplesRef(path=f"samples/{entry_id}.jsonl", sha256=sha256_file(samples),
                                     n_records=len(recs)))
    path = out / protocol.task.name / f"{entry_id}.json"
    entry.write(path)
    return path


def build(out: Path = OUT) -> list[Path]:
    """Write every fixture entry + per-sample JSONL under ``out``; returns the entry paths."""
    docs = gsm8k_docs()
    n = len(docs)
    sft = [[i % 5 in (0, 1)] for i in range(n)]
    tracerl = [[i % 5 in (0, 1) or (i % 5 == 2 and i < 20)] for i in range(n)]
    noise = [[(i % 5 in (0, 1) and i not in (0, 5)) or i == 2] for i in range(n)]
    regressed = [[i % 5 == 0] for i in range(n)]
    key_a = _key("gsm8k", "block-dynamic", _block(0.9))
    sft_label = "tiny-block-dlm (SFT)"
    paths = [
        _entry(out, key_a, sft_label, "block-diffusion", _records(docs, sft, 8), wall_s=4.0,
               training={"trainer": "sft", "steps": 50}),
        _entry(out, key_a, "tiny-block-dlm (TraceRL)", "block-diffusion", _records(docs, tracerl, 7), wall_s=3.8,
               training={"trainer": "tracerl", "steps": 20, "reference": sft_label}),
        _entry(out, key_a, "tiny-block-dlm (SFT, seed 1)", "block-diffusion", _records(docs, noise, 8), wall_s=4.1,
               training={"trainer": "sft", "steps": 50}),
        _entry(out, key_a, "tiny-block-dlm (regressed)", "block-diffusion", _records(docs, regressed, 12),
               wall_s=8.0, training={"trainer": "sft", "steps": 5}),
        _entry(out, _key("gsm8k", "block-dynamic", _block(0.7)), sft_label, "block-diffusion",
               _records(docs, [[i % 4 == 0] for i in range(n)], 5), wall_s=2.5,
               training={"trainer": "sft", "steps": 50}),
        _entry(out, _key("gsm8k", "ar", AR_CONFIG), "tiny-ar", "ar",
               _records(docs, [[i % 3 == 0] for i in range(n)], 16), wall_s=5.0, baseline=True),
        _entry(out, _key("gsm8k", "block-static", _block(1.0, "static"), k=4, n=10), sft_label, "block-diffusion",
               _records(docs[:10], [[(i + j) % 3 == 0 for j in range(4)] for i in range(10)], 16), wall_s=6.0,
               ks=(1, 4), training={"trainer": "sft", "steps": 50}),
    ]
    return paths


def main(build_fn=None, default_out: Path = OUT) -> None:
    """Command line of the fixture generators: ``[TARGET]`` (default: the committed directory)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else default_out
    for p in (build_fn or build)(target):
        print(p)
    print(canonical_json({"written": len(list(target.rglob("*.json")))}))


if __name__ == "__main__":
    main()
