"""The leaderboard entry: one model x task x sampler evaluation (pydantic v2, schema "1").

An entry has four parts:

* ``key`` — the **comparability key**: two entries are ranked against each other only
  when their keys are equal (task + version, dataset sha256, prompt/chat template sha256,
  scorer + version, samples per problem, the full sampler config, sandbox + limits).
* ``repro`` — what is needed to reproduce it (model weights sha256, dtype, seeds,
  harness version + git sha + dirty flag, library versions, device).
* ``metrics`` / ``cost`` / ``status`` — results, each metric with stderr and n.
* ``samples`` — the path + sha256 of the per-sample JSONL (:class:`SampleRecord` lines).

``leaderboards/schema/entry.schema.json`` is generated from :class:`Entry` by
``dllm-bench schema`` (a test checks it is current).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_serializer

from .plugins import StrictModel

SCHEMA_VERSION = "1"


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON used for every hash in an entry."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------- comparability key
class DatasetKey(StrictModel):
    source: str = Field(description="Where the rows came from: 'packaged', 'hub:<repo>' or a local path")
    split: str = Field(description="Dataset split, e.g. 'test'")
    sha256: str = Field(description="sha256 of the dataset file(s) as loaded (hex)")
    n_original: int = Field(description="Documents in the dataset")
    n_effective: int = Field(description="Documents evaluated (after --limit)")


class PromptKey(StrictModel):
    template_sha256: str = Field(description="sha256 of the task's prompt template text")
    chat_template_sha256: str | None = Field(description="sha256 of the tokenizer chat template; null when none is used")
    num_fewshot: int = Field(0, description="Few-shot examples in the prompt")
    fewshot_seed: int | None = Field(None, description="Seed that chose the few-shot examples (lm-eval tasks with "
                                                       "num_fewshot > 0); omitted when none")

    @model_serializer(mode="wrap")
    def _omit_unset_fewshot_seed(self, handler: Any) -> Any:
        """An unset ``fewshot_seed`` is left out, so keys (and digests) of entries without
        sampled few-shot examples are what they were before the field existed."""
        data = handler(self)
        if isinstance(data, dict) and data.get("fewshot_seed") is None:
            data.pop("fewshot_seed", None)
        return data


class ScorerKey(StrictModel):
    name: str = Field(description="Scorer name, e.g. 'math-verify'")
    version: str = Field(description="Scorer version, e.g. '0.9.0'")


class TaskKey(StrictModel):
    name: str
    version: str
    dataset: DatasetKey
    prompt: PromptKey
    scorer: ScorerKey
    notes: str | None = Field(None, description="Comparability notes, e.g. 'public tests only'")


class SamplerKey(StrictModel):
    name: str
    version: str
    config: dict[str, Any] = Field(description="Every sampler knob: block size, denoising steps, remasking, "
                                   "threshold, temperature, top-k, top-p, max new tokens, cache mode, attention backend")


class SandboxKey(StrictModel):
    name: str
    version: str
    isolation: str = Field(description="e.g. 'bubblewrap+rlimits' or 'docker'")
    limits: dict[str, Any] = Field(description="Wall/CPU time (s), memory (MiB), processes, file size, output bytes")


class ComparabilityKey(StrictModel):
    task: TaskKey
    samples_per_problem: int = Field(ge=1, description="Samples drawn per problem (k of mean@k)")
    sampler: SamplerKey
    sandbox: SandboxKey | None = Field(None, description="Code tasks only")

    def digest(self) -> str:
        """sha256 of the canonical JSON of the key, with ``n_effective`` included."""
        return sha256_text(canonical_json(self.model_dump(mode="json")))

    def diff(self, other: "ComparabilityKey") -> list[str]:
        """Dotted paths of the fields whose values differ between two keys."""
        return _diff(self.model_dump(mode="json"), other.model_dump(mode="json"), "")


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix or "(root)"]


# -------------------------------------------------------------------- reproducibility
class ModelInfo(StrictModel):
    id: str = Field(description="Model id: hub id, local path or built-in spec name")
    family: Literal["block-diffusion", "full-diffusion", "ar"]
    weights_sha256: str | None = Field(None, description="sha256 over the weight files (real checkpoints)")
    config_sha256: str | None = Field(None, description="sha256 of the config (models built from configs)")
    dtype: str
    num_parameters: int
    tokenizer: str | None = None
    is_baseline: bool = Field(False, description="An AR baseline row")
    training: dict[str, Any] | None = Field(None, description="Trainer, config hash, base model, steps")


class HarnessInfo(StrictModel):
    name: str = "dllm-bench"
    version: str
    git_sha: str | None
    git_dirty: bool | None


class Repro(StrictModel):
    model: ModelInfo
    seeds: dict[str, int]
    harness: HarnessInfo
    libraries: dict[str, str | None]
    device: str
    platform: str
    device_info: dict[str, Any] | None = Field(None, description="The device precisely (dllm_bench.envinfo."
                                               "device_info): CPU model, ISA flags, torch's CPU capability, thread "
                                               "counts; GPU name / count / driver / CUDA / cuDNN / compute "
                                               "capability; NCCL when distributed")
    determinism: dict[str, Any] | None = Field(None, description="Deterministic-mode report (dllm_bench."
                                               "determinism.report): mode, pins in effect, MKL CNR branch, "
                                               "deterministic algorithms")


# ----------------------------------------------------------------------- results
class Metric(StrictModel):
    value: float
    stderr: float | None = Field(description="Standard error across problems")
    n: int = Field(description="Problems the metric is averaged over")
    higher_is_better: bool = True
    k: int | None = Field(None, description="k for pass@k / maj@k / mean@k")


class Cost(StrictModel):
    nfe: int = Field(description="Number of function evaluations: per sample, the forwards that denoised that "
                     "sample (a batched forward counts for a row only while the row's current block has masks), "
                     "summed over samples")
    forward_calls: float | None = Field(None, description="Model forward calls actually run (prefill, commit and "
                                        "denoise forwards of every batch), summed over generate calls; None when "
                                        "the sampler does not count them")
    generated_tokens: int
    tokens_per_forward: float = Field(description="generated_tokens / nfe (per sequence)")
    wall_s: float = Field(description="Wall-clock seconds of generation")
    tokens_per_s: float = Field(description="generated_tokens / wall_s")
    peak_memory_mb: float | None = Field(None, description="Peak accelerator (or RSS) memory, MiB")


class Status(StrictModel):
    state: Literal["complete", "partial", "failed"]
    n_expected: int = Field(description="Samples expected: problems x samples per problem")
    n_done: int
    n_failed: int = 0
    errors: list[str] = Field(default_factory=list)


class SamplesRef(StrictModel):
    path: str = Field(description="Per-sample JSONL, relative to the entry file")
    sha256: str
    n_records: int


class Entry(StrictModel):
    schema_version: Literal["1"] = SCHEMA_VERSION
    entry_id: str = Field(description="sha256 prefix of key digest + model + seeds")
    created_at: str
    label: str | None = Field(None, description="Row label shown in tables, e.g. 'tiny-block-dlm (TraceRL)'")
    key: ComparabilityKey
    key_digest: str
    repro: Repro
    metrics: dict[str, Metric]
    cost: Cost
    status: Status
    samples: SamplesRef

    @staticmethod
    def make_id(key: ComparabilityKey, model: ModelInfo, seeds: dict[str, int]) -> str:
        blob = canonical_json({"key": key.digest(), "model": model.model_dump(mode="json"), "seeds": seeds})
        return sha256_text(blob)[:16]

    @staticmethod
    def now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")

    @classmethod
    def load(cls, path: str | Path) -> "Entry":
        from .errors import BadInputError
        from .registry import validate_config

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInputError(f"cannot read entry: {exc}", path=path) from None
        return validate_config(cls, data, what="entry", source=str(path))

    def write(self, path: str | Path) -> None:
        """Write the entry atomically (:func:`dllm_bench.outdir.write_atomic`).

        Raises:
            OSError: the write failed; ``path`` keeps its former content and no ``.tmp`` is left.
        """
        from .outdir import write_atomic

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.model_dump_json(indent=2) + "\n")


class SampleRecord(StrictModel):
    """One line of the per-sample JSONL."""

    doc_id: str
    sample_index: int = Field(description="0..k-1 within the problem")
    prompt_sha256: str
    completion: str
    extracted: str | None
    correct: bool
    score: float
    details: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, float] = Field(default_factory=dict, description="nfe, generated_tokens, wall_s of this sample")
    seed: int | None = None
    trajectory: dict[str, Any] | None = Field(None, description="step map and per-step commits, when recorded")


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every file format dllm-bench reads or writes (name -> schema)."""
    out = {"entry": Entry.model_json_schema(), "sample": SampleRecord.model_json_schema()}
    try:  # recipe schema arrives with the cycle issue
        from .recipes import Recipe

        out["recipe"] = Recipe.model_json_schema()
    except ImportError:
        pass
    return out
