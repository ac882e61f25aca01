"""What every plugin shares, whatever its kind: the light data types tasks exchange
(:class:`Doc`, :class:`Verdict`), the config base (:class:`StrictModel`), config validation
and the structural check of a plugin class against its kind's contract. Importing this module
imports neither torch nor transformers.

Each kind's contract (the methods the harness calls, with defaults for the optional ones)
lives next to its folder: :class:`dllm_bench.tasks.base.Task`,
:class:`dllm_bench.samplers.base.Sampler`, :class:`dllm_bench.trainers.base.Trainer`,
:class:`dllm_bench.sandboxes.base.Sandbox`.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import BadInputError, LocatedValueError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


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


def validate_config(model: type[ConfigT], data: dict[str, Any], *, what: str, source: str | None = None,
                    line: int | Callable[[tuple], int | None] | None = None) -> ConfigT:
    """Validate ``data`` against pydantic ``model``.

    ``line`` is the 1-based line of ``data`` in ``source``, or a function from the failing
    field's location (a tuple of keys / indices) to its line.

    Raises:
        BadInputError: one line naming ``source`` (and the line), the field and the problem.
    """
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        msg = err["msg"]
        if not where and isinstance(cause, LocatedValueError):  # a model validator naming its field
            where, msg = cause.loc, str(cause)
        loc = ".".join(str(p) for p in where) or "(root)"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        at = line(where) if callable(line) else line
        raise BadInputError(f"{what}: field {loc!r}: {msg}{more}", path=source, line=at) from None


# ----------------------------------------------------------------- contract checks
CLASS_ATTRS = ("name", "version", "Config")


def required_methods(contract: type) -> list[str]:
    """The abstract methods of a kind's contract class (what a plugin must implement)."""
    return sorted(getattr(contract, "__abstractmethods__", ()))


def check_plugin(contract: type, obj: Any) -> str | None:
    """Does plugin class ``obj`` implement ``contract`` (a ``<kind>.base`` contract class)?

    It does when it is a class with ``name``, ``version`` and a pydantic ``Config``, and either
    subclasses ``contract`` with no abstract method left, or (duck-typed) has every abstract
    method of ``contract``. Returns the problem in one line, or None.
    """
    from pydantic import BaseModel

    if not isinstance(obj, type):
        return f"expected a class, got {type(obj).__name__}"
    missing = [a for a in CLASS_ATTRS if not hasattr(obj, a)]
    if issubclass(obj, contract):
        missing += sorted(getattr(obj, "__abstractmethods__", ()))
    else:
        missing += [m for m in required_methods(contract) if not callable(getattr(obj, m, None))]
    if missing:
        return "missing " + ", ".join(missing)
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return "Config is not a pydantic model"
    return None


def conform(contract: type, obj: type) -> type:
    """``obj`` itself when it subclasses ``contract``; else a subclass of both (``obj`` first),
    so a duck-typed plugin (every abstract method present, see :func:`check_plugin`) inherits
    the contract's defaults for the optional methods and the harness calls them plainly."""
    if issubclass(obj, contract):
        return obj
    return _conformed(contract, obj)  # type: ignore[arg-type]  # classes hash; mypy checks type[...] against Hashable


@cache
def _conformed(contract: type, obj: type) -> type:
    return type(obj.__name__, (obj, contract), {"__module__": obj.__module__, "__qualname__": obj.__qualname__})
