"""The leaderboard entry: one model x task x sampler evaluation (pydantic v2, schema "2").

An entry has five parts:

* ``protocol`` — **what must be equal for two systems to be ranked on a task**
  (:class:`ProtocolKey`): task + version, dataset (source, split, sha256, documents
  evaluated), prompt template sha256, few-shot count and seed, scorer + version, samples per
  problem, the generation budget (max new tokens, stop strings) and the sandbox + limits.
* ``system`` — **what is being ranked** (:class:`SystemKey`): the model (id, weights sha256,
  dtype; for a model trained here, its base model and trainer chain), the chat template
  sha256, and the sampler name with every knob (block size, denoising steps, remasking,
  confidence threshold, temperature, top-k/p, cache mode, attention backend, block
  alignment).
* ``repro`` — what is needed to reproduce it (weights sha256 of what was evaluated, seeds,
  harness version + git sha + dirty flag, library versions, device).
* ``metrics`` / ``cost`` / ``status`` — results, each metric with stderr and n.
* ``samples`` — the path + sha256 of the per-sample JSONL (:class:`SampleRecord` lines).

Which side a field is on, and why (the rule: a field is protocol when changing it changes
the *question* — what a correct answer is, how much room an answer gets, how it is judged —
and system when it changes *who answers*):

* the **generation budget** is protocol: a longer budget lets any system write longer
  reasoning and so changes the attainable score; systems ranked under different budgets
  answered different questions. Samples per problem is protocol for the same reason (it
  changes what mean@k / pass@k estimate).
* the **chat template** is system: it is part of the model's packaging (two checkpoints of
  one task differ in it), while the task's own prompt template is protocol.
* every **sampler knob** is system (including temperature: it is how the system decodes,
  and an AR baseline at T=0 and a dLLM at T=1 still answer the same question).

Ranking happens only within one protocol; ``gate`` (the same system across commits)
requires both digests equal and names the differing fields in words
(:func:`describe_differences`). Version-1 entries (one ``key``) are read and upgraded on
load (:func:`upgrade_entry_dict`); ``dllm-bench leaderboard migrate`` rewrites them.

``leaderboards/schema/entry.schema.json`` is generated from :class:`Entry` by
``dllm-bench schema`` (a test checks it is current).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, model_serializer, model_validator

from .plugins import StrictModel

SCHEMA_VERSION: Final = "2"
READABLE_SCHEMA_VERSIONS = ("1", "2")

# Sampler config fields that are the generation budget (protocol side, see the module docstring).
GENERATION_FIELDS = ("max_new_tokens", "stop")


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
    chat_template_sha256: str | None = Field(description="sha256 of the tokenizer chat template; null when none is "
                                                         "used")
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
    """What a task plugin reports about itself (``Task.key(tokenizer)``); :func:`split_keys`
    puts the chat template on the system side and the rest in the protocol."""

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
                                   "threshold, temperature, top-k, top-p, cache mode, attention backend, block "
                                   "alignment (the generation budget is in the protocol)")


class SandboxKey(StrictModel):
    name: str
    version: str
    isolation: str = Field(description="e.g. 'bubblewrap+rlimits' or 'docker'")
    limits: dict[str, Any] = Field(description="Wall/CPU time (s), memory (MiB), processes, file size, output bytes")


# ------------------------------------------------------------------ protocol / system
class _Key(StrictModel):
    def digest(self) -> str:
        """sha256 of the canonical JSON of the key (hex)."""
        return sha256_text(canonical_json(self.model_dump(mode="json")))

    def diff(self, other: _Key) -> list[str]:
        """Dotted paths of the fields whose values differ between two keys of one kind."""
        return _diff(self.model_dump(mode="json"), other.model_dump(mode="json"), "")


class PromptProtocol(StrictModel):
    template_sha256: str = Field(description="sha256 of the task's prompt template text")
    num_fewshot: int = Field(0, description="Few-shot examples in the prompt")
    fewshot_seed: int | None = Field(None, description="Seed that chose the few-shot examples (lm-eval tasks with "
                                                       "num_fewshot > 0); omitted when none")

    @model_serializer(mode="wrap")
    def _omit_unset_fewshot_seed(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("fewshot_seed") is None:
            data.pop("fewshot_seed", None)
        return data


class TaskProtocol(StrictModel):
    name: str
    version: str
    dataset: DatasetKey
    prompt: PromptProtocol
    scorer: ScorerKey
    notes: str | None = Field(None, description="Comparability notes, e.g. 'public tests only'")


class GenerationBudget(StrictModel):
    max_new_tokens: int | None = Field(description="Most tokens a sample may generate (null: the sampler's own cap)")
    stop: list[str] = Field(default_factory=list, description="Stop strings that end a sample")


class ProtocolKey(_Key):
    """What must be equal for two systems to be ranked on a task (see the module docstring)."""

    task: TaskProtocol
    samples_per_problem: int = Field(ge=1, description="Samples drawn per problem (k of mean@k)")
    generation: GenerationBudget
    sandbox: SandboxKey | None = Field(None, description="Code tasks only")


class SystemModel(StrictModel):
    id: str = Field(description="Hub id, local path or built-in spec of the evaluated checkpoint; for a model "
                    "trained here, '<base model>+<trainer>+...' (its path is in repro.model.id)")
    family: Literal["block-diffusion", "full-diffusion", "ar"]
    dtype: str
    weights_sha256: str | None = Field(None, description="sha256 over the weight files of a released or local "
                                       "checkpoint; null for a model trained here (then see trainers)")
    config_sha256: str | None = Field(None, description="sha256 of the config of a model built from a config")
    trainers: list[str] = Field(default_factory=list, description="Trainer chain of a model trained here, base "
                                "first, as '<trainer>@<version>'; its weights sha256 is in repro, so a retrained "
                                "model is the same system to `gate`")


class SystemKey(_Key):
    """What is being ranked: model, chat template, sampler with every knob."""

    model: SystemModel
    chat_template_sha256: str | None = Field(description="sha256 of the tokenizer chat template; null when none is "
                                             "used")
    sampler: SamplerKey


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix or "(root)"]


# Plain words for key fields (dotted path -> name); unknown paths fall back to the last parts.
FIELD_WORDS: dict[str, str] = {
    "task.name": "task", "task.version": "task version", "task.dataset.source": "dataset source",
    "task.dataset.split": "dataset split", "task.dataset.sha256": "dataset file (sha256)",
    "task.dataset.n_original": "documents in the dataset", "task.dataset.n_effective": "documents evaluated",
    "task.prompt.template_sha256": "prompt template (sha256)", "task.prompt.num_fewshot": "few-shot examples",
    "task.prompt.fewshot_seed": "few-shot seed", "task.scorer.name": "scorer", "task.scorer.version": "scorer version",
    "task.notes": "task notes", "samples_per_problem": "samples per problem",
    "generation.max_new_tokens": "max new tokens", "generation.stop": "stop strings",
    "sandbox.name": "sandbox", "sandbox.version": "sandbox version", "sandbox.isolation": "sandbox isolation",
    "model.id": "model", "model.family": "model family", "model.dtype": "dtype",
    "model.weights_sha256": "model weights (sha256)", "model.config_sha256": "model config (sha256)",
    "model.trainers": "trainer chain", "chat_template_sha256": "chat template (sha256)",
    "sampler.name": "sampler", "sampler.version": "sampler version",
}


def field_words(path: str) -> str:
    """Plain words for a dotted key field, e.g. ``sampler.config.confidence_threshold`` ->
    ``confidence threshold``, ``generation.max_new_tokens`` -> ``max new tokens``."""
    if path in FIELD_WORDS:
        return FIELD_WORDS[path]
    for prefix in ("sampler.config.", "sandbox.limits."):
        if path.startswith(prefix):
            rest = path[len(prefix):].replace("_", " ")
            return rest if prefix == "sampler.config." else f"sandbox limit {rest}"
    return path.replace("_", " ")


def value_words(v: Any) -> str:
    """A key field's value in words: ``none`` for null, a sha256 shortened to 10 hex digits,
    JSON for the rest, cut at 40 characters."""
    if v is None:
        return "none"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:10]
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= 40 else s[:37] + "..."


def describe_differences(a: _Key, b: _Key, *, names: tuple[str, str] | None = None) -> list[str]:
    """The fields in which two keys of one kind differ, in words: ``"max new tokens: 8 vs 16"``
    (with ``names``: ``"max new tokens: 8 (A) vs 16 (B)"``); named fields (task, model,
    sampler, ...) first, then sampler knobs alphabetically. Empty when the keys are equal."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    order = list(FIELD_WORDS)
    out = []
    for path in sorted(a.diff(b), key=lambda f: (order.index(f) if f in order else len(order), f)):
        va, vb = get_path(da, path), get_path(db, path)
        if names:
            out.append(f"{field_words(path)}: {value_words(va)} ({names[0]}) vs {value_words(vb)} ({names[1]})")
        else:
            out.append(f"{field_words(path)}: {value_words(va)} vs {value_words(vb)}")
    return out


def describe_protocol(p: ProtocolKey) -> str:
    """A protocol in words, e.g. ``"gsm8k_calc v1 · dataset packaged/test, 267 of 1319
    documents evaluated (sha256 1a2b3c4d5e) · prompt 0-shot (template 9f8e7d6c5b) · scorer
    math-verify 0.9.0 · 4 samples per problem · max new tokens 8 · no sandbox"``."""
    t = p.task
    ds = t.dataset
    seed = "" if t.prompt.fewshot_seed is None else f" (seed {t.prompt.fewshot_seed})"
    parts = [f"{t.name} v{t.version}",
             (f"dataset {ds.source}/{ds.split}, {ds.n_effective} of {ds.n_original} documents evaluated "
              f"(sha256 {value_words(ds.sha256)})"),
             f"prompt {t.prompt.num_fewshot}-shot{seed} (template {value_words(t.prompt.template_sha256)})",
             f"scorer {t.scorer.name} {t.scorer.version}",
             f"{p.samples_per_problem} sample{'s' if p.samples_per_problem != 1 else ''} per problem",
             f"max new tokens {value_words(p.generation.max_new_tokens)}"]
    if p.generation.stop:
        parts.append(f"stop strings {value_words(p.generation.stop)}")
    if p.sandbox is None:
        parts.append("no sandbox")
    else:
        limits = ", ".join(f"{k} {value_words(v)}" for k, v in sorted(p.sandbox.limits.items()))
        parts.append(f"sandbox {p.sandbox.name} {p.sandbox.version} ({p.sandbox.isolation}; {limits})")
    if t.notes:
        parts.append(t.notes)
    return " · ".join(parts)


def get_path(d: Any, dotted: str) -> Any:
    """``d['a']['b']`` for ``'a.b'``; None where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def system_model(model: ModelInfo) -> SystemModel:
    """The system-side identity of an evaluated model (:class:`SystemModel`).

    A model trained here (``model.training`` set) is named by its base model and trainer
    chain, walking ``training.parent`` to the first base (``tiny-block-dlm+sft+tracerl``);
    its weights sha256 stays in ``repro`` so the same recipe retrained on another commit is
    the same system. Any other model is its id, weights sha256 and config sha256.
    """
    if not model.training:
        return SystemModel(id=model.id, family=model.family, dtype=model.dtype,
                           weights_sha256=model.weights_sha256, config_sha256=model.config_sha256)
    chain: list[str] = []
    node: dict[str, Any] | None = model.training
    base = model.id
    while isinstance(node, dict):
        chain.append(f"{node.get('trainer', '?')}@{node.get('trainer_version', '?')}")
        base = str(node.get("base_model", base))
        node = node.get("parent")
    chain.reverse()
    name = "+".join([base, *(c.split("@")[0] for c in chain)])
    return SystemModel(id=name, family=model.family, dtype=model.dtype, trainers=chain)


def split_keys(task: TaskKey | dict[str, Any], samples_per_problem: int, sampler: SamplerKey | dict[str, Any],
               sandbox: SandboxKey | dict[str, Any] | None, model: ModelInfo) -> tuple[ProtocolKey, SystemKey]:
    """The protocol and system keys of one evaluation, from what the task, sampler, sandbox
    and model report: the chat template goes to the system, the generation budget
    (:data:`GENERATION_FIELDS` of the sampler config) to the protocol.

    Raises:
        pydantic.ValidationError: a part does not have its documented fields.
    """
    t = task if isinstance(task, TaskKey) else TaskKey.model_validate(task)
    s = sampler if isinstance(sampler, SamplerKey) else SamplerKey.model_validate(sampler)
    cfg = dict(s.config)
    budget = GenerationBudget(max_new_tokens=cfg.pop("max_new_tokens", None), stop=list(cfg.pop("stop", None) or []))
    td = t.model_dump(mode="json")
    chat = td["prompt"].pop("chat_template_sha256", None)
    protocol = ProtocolKey(task=TaskProtocol.model_validate(td), samples_per_problem=samples_per_problem,
                           generation=budget, sandbox=sandbox)
    system = SystemKey(model=system_model(model), chat_template_sha256=chat,
                       sampler=SamplerKey(name=s.name, version=s.version, config=cfg))
    return protocol, system


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


RunState = Literal["complete", "partial", "failed"]


class Status(StrictModel):
    state: RunState
    n_expected: int = Field(description="Samples expected: problems x samples per problem")
    n_done: int
    n_failed: int = 0
    errors: list[str] = Field(default_factory=list)


class SamplesRef(StrictModel):
    path: str = Field(description="Per-sample JSONL, relative to the entry file")
    sha256: str
    n_records: int


def upgrade_entry_dict(data: dict[str, Any]) -> dict[str, Any]:
    """An entry dict of any readable schema version as schema :data:`SCHEMA_VERSION`.

    Version 1 held one comparability ``key`` (task, samples per problem, sampler, sandbox)
    with the model only in ``repro``: it is split by :func:`split_keys` (chat template to
    the system, max new tokens and stop strings to the protocol, the model from
    ``repro.model``); ``entry_id`` is kept. Other versions are returned unchanged (the model
    then reports what is wrong).

    Raises:
        pydantic.ValidationError / KeyError / TypeError: a version-1 entry without a valid
            ``key`` or ``repro.model``.
    """
    if data.get("schema_version") != "1" or "key" not in data:
        return data
    out = {k: v for k, v in data.items() if k not in ("key", "key_digest")}
    key = data["key"]
    protocol, system = split_keys(key["task"], key["samples_per_problem"], key["sampler"], key.get("sandbox"),
                                  ModelInfo.model_validate(data["repro"]["model"]))
    out.update(schema_version=SCHEMA_VERSION, protocol=protocol.model_dump(mode="json"),
               protocol_digest=protocol.digest(), system=system.model_dump(mode="json"),
               system_digest=system.digest())
    return out


class Entry(StrictModel):
    schema_version: Literal["2"] = SCHEMA_VERSION
    entry_id: str = Field(description="sha256 prefix of protocol + system digests + model + seeds")
    created_at: str
    label: str | None = Field(None, description="Row label shown in tables, e.g. 'tiny-block-dlm (TraceRL)'")
    reference: str | None = Field(None, description="Label of the row this one is compared against (a Δ ± stderr "
                                  "column in leaderboard tables), e.g. the SFT row of a TraceRL row")
    protocol: ProtocolKey
    protocol_digest: str
    system: SystemKey
    system_digest: str
    repro: Repro
    metrics: dict[str, Metric]
    cost: Cost
    status: Status
    samples: SamplesRef

    @model_validator(mode="before")
    @classmethod
    def _read_older_schemas(cls, data: Any) -> Any:
        return upgrade_entry_dict(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _reference_is_first_class(self) -> Entry:
        """Entries written before ``reference`` was a field kept it in
        ``repro.model.training["reference"]``: read there, it moves to :attr:`reference`."""
        training = self.repro.model.training
        if isinstance(training, dict) and "reference" in training:
            moved = training.pop("reference")
            if self.reference is None:
                self.reference = moved
        return self

    @model_validator(mode="after")
    def _digests_match(self) -> Entry:
        if self.protocol_digest != self.protocol.digest() or self.system_digest != self.system.digest():
            raise ValueError("protocol_digest / system_digest do not match the keys (the entry was edited)")
        return self

    @classmethod
    def create(cls, *, protocol: ProtocolKey, system: SystemKey, repro: Repro, label: str | None,
               metrics: dict[str, Metric], cost: Cost, status: Status, samples: SamplesRef,
               reference: str | None = None) -> Entry:
        """A new entry with its digests, id and creation time filled in."""
        return cls(entry_id=cls.make_id(protocol, system, repro.model, repro.seeds), created_at=cls.now(),
                   label=label, reference=reference, protocol=protocol, protocol_digest=protocol.digest(),
                   system=system,
                   system_digest=system.digest(), repro=repro, metrics=metrics, cost=cost, status=status,
                   samples=samples)

    @staticmethod
    def make_id(protocol: ProtocolKey, system: SystemKey, model: ModelInfo, seeds: dict[str, int]) -> str:
        blob = canonical_json({"protocol": protocol.digest(), "system": system.digest(),
                               "model": model.model_dump(mode="json"), "seeds": seeds})
        return sha256_text(blob)[:16]

    @property
    def task(self) -> str:
        """The task name (``protocol.task.name``)."""
        return self.protocol.task.name

    @property
    def pair_digest(self) -> str:
        """sha256 over both digests: equal iff protocol and system are both equal."""
        return sha256_text(self.protocol_digest + self.system_digest)

    @staticmethod
    def now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="seconds")

    @classmethod
    def load(cls, path: str | Path) -> Entry:
        from .errors import BadInputError
        from .plugins import validate_config

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
    """JSON Schemas of the formats this module owns, entries and per-sample records (name ->
    schema); ``dllm-bench schema`` adds the recipe and published-figures schemas from their
    own modules."""
    return {"entry": Entry.model_json_schema(), "sample": SampleRecord.model_json_schema()}
