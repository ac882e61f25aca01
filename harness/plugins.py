"""Plugin contracts: one ``typing.Protocol`` per plugin kind, plus the light data types
they exchange. Importing this module imports neither torch nor transformers.

Every plugin *class* (the entry point's object) has class attributes:

``name`` (str)
    the registry name, e.g. ``"block-dynamic"``.
``version`` (str)
    bumped whenever the plugin's outputs for the same inputs could change; it is part of
    every entry's comparability key.
``Config`` (type[pydantic.BaseModel])
    its configuration (``extra="forbid"``; every field documented with its unit);
    instances are built as ``PluginClass(config)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for everything read from files: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Doc:
    """One problem of a task.

    Attributes:
        id: stable document id (e.g. MATH500 ``unique_id``, ``gsm8k/test/17``).
        question: the problem text the prompt is built from.
        target: the gold answer (math) or the test program / tests (code).
        meta: any other fields of the source row.
    """

    id: str
    question: str
    target: Any
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """The scorer's judgement of one completion.

    Attributes:
        correct: the sample counts as solved.
        score: the reward in [0, 1] (1.0/0.0 for math; fraction of tests passed for code).
        extracted: the extracted answer / program (None when nothing could be extracted).
        details: scorer-specific data (per-test outcomes, parse results), JSON-serialisable.
    """

    correct: bool
    score: float
    extracted: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """An evaluation task that also serves as an RL reward (nanochat-style).

    ``evaluate``/``score`` and ``reward`` share the same extraction and verification code.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]

    def docs(self) -> Sequence[Doc]:
        """All documents of the task in their stable order."""

    def prompt(self, doc: Doc, tokenizer: Any | None = None) -> str:
        """The prompt text for ``doc``; rendered with ``tokenizer``'s chat template when it has one."""

    def score(self, doc: Doc, completion: str) -> Verdict:
        """Judge one completion. Never raises on garbage: it is simply wrong."""

    def reward(self, doc: Doc, completion: str) -> float:
        """RL reward for one completion (same extraction/verification as :meth:`score`)."""

    def key(self, tokenizer: Any | None = None) -> dict[str, Any]:
        """The task part of the comparability key (see :class:`dllm_bench.schema.TaskKey`)."""

    def aggregate(self, verdicts: Mapping[str, Sequence[Verdict]]) -> dict[str, Any]:
        """Metrics (name -> :class:`dllm_bench.schema.Metric`) from per-document verdicts."""


# ------------------------------------------------------------------------- samplers
@runtime_checkable
class Sampler(Protocol):
    """A decoding strategy. See :mod:`dllm_bench.samplers.base` for the data types.

    ``generate(model, prompts, seed=..., record_trajectory=False)`` takes a model adapter
    (:class:`dllm_bench.models.ModelAdapter`) and a batch of prompt token-id lists, and
    returns one ``Generation`` per prompt (token ids, text, NFE share, trajectory).
    """

    name: ClassVar[str]
    version: ClassVar[str]

    def generate(self, model: Any, prompts: Sequence[Sequence[int]], *, seed: int,
                 record_trajectory: bool = False) -> Any:
        """Decode a batch; see the concrete sampler for shapes and cost accounting."""

    def key(self) -> dict[str, Any]:
        """The full sampler config (every knob) for the comparability key."""


# ------------------------------------------------------------------------- trainers
@runtime_checkable
class Trainer(Protocol):
    """A training method. ``train(run_dir)`` runs to completion (resuming when ``run_dir``
    holds a checkpoint) and returns a result with the final Hugging Face-format weights
    directory and a metrics log path."""

    name: ClassVar[str]
    version: ClassVar[str]

    def train(self, run_dir: Path) -> Any:
        """Train; returns :class:`dllm_bench.trainers.base.TrainResult`."""


# ------------------------------------------------------------------------ sandboxes
@runtime_checkable
class Sandbox(Protocol):
    """Runs an untrusted program with limits. See :mod:`dllm_bench.sandboxes.base`."""

    name: ClassVar[str]
    version: ClassVar[str]

    def available(self) -> tuple[bool, str]:
        """(usable, reason) without running anything expensive."""

    def run(self, program: str, **kwargs: Any) -> Any:
        """Run ``program``; returns an ``Outcome``."""

    def close(self) -> None:
        """Release resources (warm containers)."""


PROTOCOLS: dict[str, type] = {"tasks": Task, "samplers": Sampler, "trainers": Trainer,
                              "sandboxes": Sandbox}
CLASS_ATTRS = ("name", "version", "Config")


def check_plugin(kind: str, obj: Any) -> str | None:
    """Shallow structural check of a loaded plugin class; returns the problem or None."""
    if not isinstance(obj, type):
        return f"expected a class, got {type(obj).__name__}"
    missing = [a for a in CLASS_ATTRS if not hasattr(obj, a)]
    proto = PROTOCOLS[kind]
    methods = [m for m in dir(proto) if not m.startswith("_") and callable(getattr(proto, m, None))]
    missing += [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        return "missing " + ", ".join(missing)
    if not (isinstance(obj.Config, type) and issubclass(obj.Config, BaseModel)):
        return "Config is not a pydantic model"
    return None
