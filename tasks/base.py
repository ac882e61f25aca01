"""Shared task machinery: configs, data loading (packaged / hub / local file), dataset and
template hashes, chat-template rendering, the comparability key and metric aggregation.

:class:`Task` is the contract every task plugin implements (what the harness calls, with
defaults for the optional methods). Every built-in task (math, code, gsm8k_calc) subclasses
:class:`BaseTask`, its common implementation; a plugin from another distribution subclasses
either. A :class:`BaseTask` subclass sets the class attributes ``name``,
``version``, ``description``, ``Config`` (a :class:`TaskConfig` subclass), ``DATA`` (a
:class:`DataSpec`) and ``PROMPT_SPEC``, and implements :meth:`BaseTask.make_docs`,
:meth:`BaseTask.messages` (or overrides :meth:`BaseTask.prompt`), :meth:`BaseTask.score` and
:meth:`BaseTask.scorer`.

Data sources (``Config.data_source``):

``packaged`` (default)
    the JSON/JSONL file shipped in ``dllm_bench/tasks/data/`` (byte-for-byte copies of the
    public files named in each folder's ``PROVENANCE.md``); ``data_path`` replaces it with a
    local file of the same format. The dataset sha256 is the sha256 of the file bytes.
``hub``
    ``datasets.load_dataset(path, name, split=..., data_files=..., revision=...)`` on the
    task's real hub id (e.g. ``HuggingFaceH4/MATH-500``); ``Config.hub`` overrides the
    location, e.g. ``{"path": "json", "data_files": "rows.jsonl", "split": "train"}`` loads
    local files through the very same function. The dataset sha256 is the sha256 of the
    canonical JSON of the loaded rows (:func:`rows_sha256`).

Nothing here imports torch or transformers; ``datasets`` is imported only for ``hub``.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from dllm_bench.errors import BadInputError
from dllm_bench.jsonl import iter_jsonl_objects
from dllm_bench.metrics import standard_metrics
from dllm_bench.plugins import Doc, StrictModel, Verdict
from dllm_bench.schema import DatasetKey, PromptKey, ScorerKey, TaskKey, canonical_json, sha256_text

Message = dict[str, str]
"""One chat turn: ``{"role": "user" | "assistant" | "system", "content": str}``."""


# ----------------------------------------------------------------------------- configs
class HubSpec(StrictModel):
    """Where ``datasets.load_dataset`` reads a split from (the ``hub`` data source)."""

    path: str = Field(description="Hub dataset id (e.g. 'openai/gsm8k') or a datasets builder name "
                                  "such as 'json' for local files")
    name: str | None = Field(None, description="Dataset config name (e.g. 'main' for openai/gsm8k)")
    split: str = Field(description="Split to load, e.g. 'test'")
    data_files: str | list[str] | None = Field(None, description="Files for builder paths such as 'json'")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")

    def label(self) -> str:
        """``hub:<path>[/<name>]`` as written into the entry's ``dataset.source``."""
        return f"hub:{self.path}" + (f"/{self.name}" if self.name else "")


class TaskConfig(StrictModel):
    """Options every built-in task accepts (``--task-arg key=value``)."""

    num_fewshot: int = Field(0, ge=0, description="Worked examples placed before the problem as earlier "
                                                  "chat turns (taken from the task's training split)")
    data_source: Literal["packaged", "hub"] = Field(
        "packaged", description="'packaged': the data shipped inside dllm-bench (sha256 recorded); "
                                "'hub': datasets.load_dataset on the task's hub id")
    data_path: str | None = Field(None, description="A local JSON/JSONL file with the packaged file's fields, "
                                                    "used instead of the packaged file (data_source='packaged')")
    hub: HubSpec | None = Field(None, description="Override the hub location (data_source='hub'); "
                                                  "default: the task's real hub id")
    limit: int | None = Field(None, ge=1, description="Keep only the first N documents (stable order)")

    @model_validator(mode="after")
    def _source_options_match(self) -> TaskConfig:
        if self.data_source == "hub" and self.data_path is not None:
            raise ValueError("data_path is for data_source='packaged'; for hub files use hub.data_files")
        if self.data_source == "packaged" and self.hub is not None:
            raise ValueError("hub is only used with data_source='hub'")
        return self


@dataclass(frozen=True)
class DataSpec:
    """Where a task's rows come from.

    Attributes:
        packaged: path below ``dllm_bench/tasks/data/`` (e.g. ``"gsm8k/test.jsonl"``).
        split: split name written into the key (``"test"``, ``"train"``).
        hub: the real hub location of the same split.
    """

    packaged: str
    split: str
    hub: HubSpec


@dataclass(frozen=True)
class LoadedData:
    """Rows of one split and what identifies them.

    Attributes:
        rows: the records, in file order.
        split: the split name (``DataSpec.split``).
        source: ``"packaged"``, ``"hub:<id>"`` or the local path.
        sha256: hex digest of the file bytes (files) or of the canonical rows JSON (hub).
    """

    rows: tuple[dict[str, Any], ...]
    split: str
    source: str
    sha256: str


# --------------------------------------------------------------------------- data I/O
def packaged_path(relative: str) -> Path:
    """Absolute path of a file under ``dllm_bench/tasks/data/``."""
    return Path(str(resources.files("dllm_bench.tasks") / "data" / relative))


def parse_records(raw: bytes, path: str | Path) -> list[dict[str, Any]]:
    """Records from JSONL bytes (one object per line) or a JSON list.

    Raises:
        BadInputError: not UTF-8 or invalid JSON (naming the file and 1-based line), or a
            record that is not an object.
    """
    from dllm_bench.jsonl import decode_utf8

    text = decode_utf8(raw, path, "data file")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
        rows = list(data)
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise BadInputError(f"record {i} is not a JSON object", path=path)
        return rows
    return [obj for _, obj in iter_jsonl_objects(text, path)]


def _read_file(path: str) -> LoadedData:
    """Read + hash a data file; cached per (path, mtime, size) so a rewritten file is re-read."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise BadInputError(f"cannot read data file: {exc.strerror or exc}", path=path) from None
    return _read_file_cached(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _read_file_cached(path: str, mtime_ns: int, size: int) -> LoadedData:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read data file: {exc.strerror or exc}", path=path) from None
    return LoadedData(tuple(parse_records(raw, path)), "", path, hashlib.sha256(raw).hexdigest())


def rows_sha256(rows: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact) of ``rows`` as a list."""
    return sha256_text(canonical_json(list(rows)))


def load_hub_rows(spec: HubSpec) -> list[dict[str, Any]]:
    """``datasets.load_dataset(spec.path, spec.name, split=spec.split, ...)`` as a list of dicts.

    The same function serves the real hub (``openai/gsm8k``) and local files
    (``path="json", data_files=...``), so the hub path can be tested offline.

    Raises:
        BadInputError: ``datasets`` is missing, or the dataset cannot be loaded.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise BadInputError("--data-source hub needs the 'datasets' package (pip install datasets)") from None
    kwargs: dict[str, Any] = {"split": spec.split}
    if spec.data_files is not None:
        kwargs["data_files"] = spec.data_files
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    try:
        ds = datasets.load_dataset(spec.path, spec.name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, missing dataset, bad files: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load dataset {spec.label()} split {spec.split!r}: {first}") from None
    return [dict(r) for r in ds]


def load_split(spec: DataSpec, cfg: TaskConfig) -> LoadedData:
    """Load one split per ``cfg.data_source`` / ``cfg.data_path`` / ``cfg.hub`` (see module doc)."""
    if cfg.data_source == "hub":
        hub = cfg.hub or spec.hub
        rows = load_hub_rows(hub)
        return LoadedData(tuple(rows), spec.split, hub.label(), rows_sha256(rows))
    if cfg.data_path is not None:
        loaded = _read_file(str(Path(cfg.data_path).expanduser().resolve()))
        return LoadedData(loaded.rows, spec.split, loaded.source, loaded.sha256)
    loaded = _read_file(str(packaged_path(spec.packaged)))
    return LoadedData(loaded.rows, spec.split, "packaged", loaded.sha256)


def require_fields(row: Mapping[str, Any], fields: Sequence[str], source: str, index: int) -> None:
    """Raise :class:`BadInputError` naming the row when one of ``fields`` is missing."""
    missing = [f for f in fields if f not in row]
    if missing:
        raise BadInputError(f"row {index} lacks field(s) {', '.join(map(repr, missing))}", path=source)


# ----------------------------------------------------------------------- chat rendering
def chat_template_text(tokenizer: Any | None) -> str | None:
    """The tokenizer's chat template as text (canonical JSON for named templates), or None."""
    if tokenizer is None:
        return None
    tpl = getattr(tokenizer, "chat_template", None)
    if not tpl:
        return None
    return tpl if isinstance(tpl, str) else canonical_json(tpl)


def plain_render(messages: Sequence[Message]) -> str:
    """Messages without a chat template: the contents joined by a blank line.

    With zero few-shot examples this is exactly the user message.
    """
    return "\n\n".join(m["content"] for m in messages)


def render_chat(messages: Sequence[Message], tokenizer: Any | None) -> str:
    """Render ``messages`` for generation.

    With a tokenizer that has a chat template: ``tokenizer.apply_chat_template(messages,
    tokenize=False, add_generation_prompt=True)`` (the text ends with the assistant-turn
    opening). Otherwise :func:`plain_render`.
    """
    if tokenizer is None or chat_template_text(tokenizer) is None:
        return plain_render(messages)
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def sample_ks(n: int) -> list[int]:
    """The k values reported for n samples per problem: 1, powers of two below n, and n."""
    ks = {1, n} if n >= 1 else {1}
    p = 2
    while p < n:
        ks.add(p)
        p *= 2
    return sorted(ks)


# ---------------------------------------------------------------------- the contract
class Task(ABC):
    """The task contract: what the harness calls on a task plugin (entry-point group
    ``dllm_bench.tasks``). Class attributes ``name``, ``version`` (bump when a verdict could
    change), ``description`` and ``Config`` (pydantic); instances are built as ``cls(config)``.

    Evaluation (``dllm-bench eval``): :meth:`docs` once; per batch :meth:`prompt` then
    :meth:`score_batch`; :meth:`aggregate` over all verdicts; :meth:`key`, :meth:`sandbox_key`
    for the entry's comparability key; :meth:`close` at the end. Scoring a predictions file
    (``dllm-bench score``) adds :meth:`scorer`. RL trainers call :meth:`docs`, :meth:`prompt`
    and :meth:`score_batch` (rewards are ``Verdict.score``); SFT calls :meth:`sft_pairs`.
    A plugin implements the abstract methods; the others have working defaults.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[StrictModel]]

    @abstractmethod
    def docs(self) -> Sequence[Doc]:
        """All documents in their stable order (``Doc.id`` unique)."""

    @abstractmethod
    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        """The prompt text; rendered with ``tokenizer``'s chat template when it has one."""

    @abstractmethod
    def score(self, doc: Doc, completion: str) -> Verdict:
        """Judge one completion; never raises on garbage (it is simply wrong)."""

    @abstractmethod
    def key(self, tokenizer: Any | None = None) -> dict[str, Any]:
        """The task part of the comparability key (a valid :class:`dllm_bench.schema.TaskKey`)."""

    @abstractmethod
    def aggregate(self, verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, Any]:
        """Metrics ``{name: {"value", "stderr", "n", "k"}}`` from verdicts per document id."""

    def reward(self, doc: Doc, completion: str) -> float:
        """RL reward in [0, 1]: ``score(doc, completion).score``."""
        return self.score(doc, completion).score

    def score_batch(self, items: Sequence[tuple[Doc, str]]) -> list[Verdict]:
        """Verdicts for ``(doc, completion)`` pairs, in order: :meth:`score` on each (override to parallelise)."""
        return [self.score(d, c) for d, c in items]

    def scorer(self) -> ScorerKey | None:
        """Scorer name and version (recorded by ``dllm-bench score``); None: not stated."""
        return None

    def sandbox_key(self) -> dict[str, Any] | None:
        """The sandbox part of the key (:class:`dllm_bench.schema.SandboxKey`) for tasks that run code."""
        return None

    def sft_pairs(self, tokenizer: Any | None = None) -> list[tuple[str, str]]:
        """``(prompt, response)`` pairs for SFT (prompts rendered with ``tokenizer``); default: BadInputError."""
        raise BadInputError(f"task {self.name!r} has no sft_pairs(); use data_file")

    def close(self) -> None:
        """Release resources (worker pools, sandboxes); safe to call twice. Default: nothing."""
        return None


# ---------------------------------------------------------------------------- the base
class BaseTask(Task):
    """Common implementation of :class:`Task` for the built-in tasks.

    Args:
        config: the validated ``Config`` (``None`` -> defaults).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    DATA: ClassVar[DataSpec]
    PROMPT_SPEC: ClassVar[Mapping[str, Any]]
    """Everything that shapes the prompt text besides the document (templates, few-shot
    format); its canonical-JSON sha256 is ``key()["prompt"]["template_sha256"]``."""

    def __init__(self, config: TaskConfig | None = None):
        self.config = config if config is not None else self.Config()
        self._data: LoadedData | None = None
        self._all_docs: list[Doc] | None = None
        self._by_id: dict[str, Doc] | None = None

    # ------------------------------------------------------------------ documents
    def make_docs(self, data: LoadedData) -> list[Doc]:
        """Build every document from the loaded rows (stable order, unique ids)."""
        raise NotImplementedError

    def _ensure(self) -> None:
        if self._all_docs is None:
            self._data = load_split(self.DATA, self.config)
            docs = self.make_docs(self._data)
            seen: set[str] = set()
            for d in docs:
                if d.id in seen:
                    raise BadInputError(f"duplicate document id {d.id!r}", path=self._data.source)
                seen.add(d.id)
            self._all_docs = docs

    @property
    def data(self) -> LoadedData:
        """The loaded split (rows, source, sha256)."""
        self._ensure()
        assert self._data is not None
        return self._data

    def docs(self) -> list[Doc]:
        """All documents in their stable order, cut to ``config.limit``."""
        self._ensure()
        assert self._all_docs is not None
        return self._all_docs[: self.config.limit] if self.config.limit else list(self._all_docs)

    def n_original(self) -> int:
        """Documents before ``limit``."""
        self._ensure()
        assert self._all_docs is not None
        return len(self._all_docs)

    def doc_by_id(self, doc_id: str) -> Doc | None:
        """The document with id ``doc_id`` among :meth:`docs`, or None."""
        if self._by_id is None:
            self._by_id = {d.id: d for d in self.docs()}
        return self._by_id.get(doc_id)

    # -------------------------------------------------------------------- prompts
    def messages(self, doc: Doc) -> list[Message]:
        """Chat turns for ``doc``: few-shot pairs then the user message."""
        raise NotImplementedError

    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        """The prompt text: :meth:`messages` through the tokenizer's chat template when it
        has one (generation prompt appended), else :func:`plain_render`."""
        return render_chat(self.messages(doc), tokenizer)

    def uses_chat_template(self) -> bool:
        """False for tasks whose prompt never goes through a chat template."""
        return True

    # -------------------------------------------------------------------- scoring
    def rewards(self, items: Sequence[tuple[Doc, str]]) -> list[float]:
        """Rewards for many pairs (``score_batch`` scores): the batched RL reward."""
        return [v.score for v in self.score_batch(items)]

    def scorer(self) -> ScorerKey:
        """Scorer name and version for the key."""
        raise NotImplementedError

    def key_notes(self) -> str | None:
        """Comparability notes for the key (e.g. filters applied)."""
        return None

    def key(self, tokenizer: Any | None = None) -> dict[str, Any]:
        """The task part of the comparability key (validated :class:`~dllm_bench.schema.TaskKey`)."""
        tpl = chat_template_text(tokenizer) if self.uses_chat_template() else None
        key = TaskKey(
            name=self.name,
            version=self.version,
            dataset=DatasetKey(source=self.data.source, split=self.DATA.split, sha256=self.data.sha256,
                               n_original=self.n_original(), n_effective=len(self.docs())),
            prompt=PromptKey(template_sha256=sha256_text(canonical_json(dict(self.PROMPT_SPEC))),
                             chat_template_sha256=sha256_text(tpl) if tpl is not None else None,
                             num_fewshot=self.config.num_fewshot),
            scorer=self.scorer(),
            notes=self.key_notes(),
        )
        return key.model_dump(mode="json")

    def aggregate(self, verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, dict[str, Any]]:
        """accuracy (mean@n), pass@k and maj@k (k in :func:`sample_ks` of the smallest sample
        count) with standard errors across problems; see :mod:`dllm_bench.metrics`.

        Returns ``{name: {"value", "stderr", "n", "k"}}`` (valid :class:`dllm_bench.schema.Metric`).
        """
        per_problem = {doc_id: [(v.extracted, v.correct) for v in vs] for doc_id, vs in verdicts.items()}
        n_min = min((len(v) for v in per_problem.values() if v), default=1)
        return standard_metrics(per_problem, sample_ks(n_min))

