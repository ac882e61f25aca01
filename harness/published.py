"""Published figures (``leaderboards/published/*.yaml``) and the published-vs-reproduced view.

Published figures
-----------------
One YAML file per source table, validated by :class:`PublishedFile` (JSON Schema:
``leaderboards/schema/published.schema.json``, written by :func:`write_schema`). A file holds:

- ``source``: paper title, arXiv id, table number, optional URL;
- ``metric`` and ``unit``: the metric's name (``accuracy``) and the unit of every value,
  always ``percent`` (0-100, exactly as printed; :attr:`PublishedFigure.value` is the
  fraction 0-1 that dllm-bench entries use);
- ``models``: the models as named in the paper, with the hub id when known and
  ``hub_id_verified`` saying whether that id was checked against a public listing;
- ``settings``: named groups of sampling settings as the source states them, with their
  ``basis`` (where they come from, e.g. "repo defaults, not stated in the table"); a setting
  the source does not state is ``"not stated"``, never a guess;
- ``tasks``: dllm-bench task name -> the column as named in the paper (``math500``,
  ``gsm8k``, ``livecodebench``; tasks dllm-bench does not have keep a name of their own:
  ``aime2024``, ``aime2025``, ``olympiadbench``, ``livebench``, ``average``);
- ``rows``: one per (model, sampling mode): the settings group and one value per task
  column, a number, ``null`` for a cell printed as "-", or ``{value, tokens_per_forward,
  avg_output_tokens}`` where the table prints those sub-cells.

:func:`load_published` flattens the files into :class:`PublishedFigure` objects.

Published vs reproduced
-----------------------
:func:`reproduction_rows` pairs measured results (:class:`Measured`, plain data: it does not
read entries) with published figures. A measured system x task has a published counterpart
when (1) the model matches: the measured model id equals the figure's hub id ignoring case,
or their last path components are equal ignoring case (a local ``/models/TraDo-8B-Instruct``
matches ``Gen-Verse/TraDo-8B-Instruct``); (2) the task names are equal; (3) the sampling
modes are equal (:func:`sampling_mode`); (4) the metric names are equal. Each match is one
:class:`ReproRow` (several sources -> several rows): published value, measured ± stderr,
Δ = measured − published, ``within_2se`` = |Δ| ≤ 2·stderr, and the settings that differ
between what the source states and what was measured, in words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, model_validator

from .errors import BadInputError
from .plugins import StrictModel

PUBLISHED_DIR = Path("leaderboards/published")
"""Directory of published-figure files, relative to the repository root."""
SCHEMA_NAME = "published"
"""Schema name: the file is ``<schema dir>/published.schema.json``."""

Mode = Literal["static", "dynamic", "ar"]
NotStated = Literal["not stated"]
NOT_STATED: Final = "not stated"


# ----------------------------------------------------------------------------- file format
class Source(StrictModel):
    """Where the figures are printed."""

    title: str = Field(description="Paper title")
    arxiv_id: str = Field(pattern=r"^\d{4}\.\d{4,5}$", description="arXiv identifier, e.g. 2509.06949")
    table: str = Field(description="Table as numbered in the paper, e.g. 'Table 2'")
    url: str | None = Field(None, description="Link to the paper")

    def cite(self) -> str:
        """``arXiv <id>, <table>``."""
        return f"arXiv {self.arxiv_id}, {self.table}"


class PublishedModel(StrictModel):
    """A model as the paper names it."""

    name: str = Field(description="Name as printed in the table")
    hub_id: str | None = Field(None, description="Hugging Face hub id, when known")
    hub_id_verified: bool = Field(False, description="True when hub_id was checked against a public listing; "
                                  "false marks an id that is a best guess")
    kind: Literal["dllm", "ar"] = Field(description="Diffusion LM or autoregressive baseline")


class StatedSettings(StrictModel):
    """Sampling settings of a group of rows as the source states them ("not stated" otherwise)."""

    basis: str = Field(description="Where these values come from, in words (e.g. 'stated in the paper', "
                       "'repo defaults, not stated in the table')")
    repo_defaults: bool = Field(False, description="The values are the released code's defaults, not stated "
                                "with the table")
    block_size: int | NotStated = Field(NOT_STATED, description="Block size B (tokens)")
    denoising_steps: int | NotStated = Field(NOT_STATED, description="Denoising steps per block")
    confidence_threshold: float | NotStated = Field(NOT_STATED, description="Dynamic decoding threshold "
                                                    "(probability)")
    temperature: float | NotStated = Field(NOT_STATED, description="Softmax temperature")
    top_k: int | NotStated = Field(NOT_STATED, description="Top-k filter (tokens; 0 = off)")
    top_p: float | NotStated = Field(NOT_STATED, description="Nucleus mass (1 = off)")
    samples_per_problem: int | NotStated = Field(NOT_STATED, description="Samples per problem")
    max_new_tokens: int | NotStated = Field(NOT_STATED, description="Generation budget (tokens)")


class Cell(StrictModel):
    """A table cell with sub-cells."""

    value: float | None = Field(description="Metric value in percent (0-100); null = not reported")
    tokens_per_forward: float | None = Field(None, gt=0, description="Average tokens decoded per forward "
                                             "(per decode step), as printed")
    avg_output_tokens: float | None = Field(None, gt=0, description="Average output length (tokens), as printed")


class Row(StrictModel):
    """One table row: a model under one sampling mode, one value per task column."""

    model: str = Field(description="Key into the file's models")
    mode: Mode = Field(description="Sampling mode: static / dynamic (block or semi-AR diffusion) or ar")
    settings: str = Field(description="Key into the file's settings")
    values: list[float | None | Cell] = Field(description="One per task column, in the order of tasks: "
                                                   "percent, null ('-' in the table) or a cell with sub-cells")
    notes: str | None = None


class PublishedFile(StrictModel):
    """One ``leaderboards/published/*.yaml`` file (one source table)."""

    schema_version: Literal[1] = 1
    source: Source
    metric: str = Field("accuracy", description="Metric name (dllm-bench's name for it)")
    unit: Literal["percent"] = Field("percent", description="Unit of every value: percent, 0-100")
    notes: str | None = None
    models: dict[str, PublishedModel]
    settings: dict[str, StatedSettings]
    tasks: dict[str, str] = Field(description="dllm-bench task name -> column name in the paper, in column order")
    rows: list[Row]

    @model_validator(mode="after")
    def _references(self):
        for i, r in enumerate(self.rows):
            if r.model not in self.models:
                raise ValueError(f"rows[{i}]: unknown model {r.model!r}")
            if r.settings not in self.settings:
                raise ValueError(f"rows[{i}]: unknown settings {r.settings!r}")
            if len(r.values) != len(self.tasks):
                raise ValueError(f"rows[{i}]: {len(r.values)} values for {len(self.tasks)} task columns")
            for v in r.values:
                pct = v.value if isinstance(v, Cell) else v
                if pct is not None and not 0.0 <= pct <= 100.0:
                    raise ValueError(f"rows[{i}]: value {pct} is not a percent in [0, 100]")
        return self


@dataclass(frozen=True)
class PublishedFigure:
    """One published number, flattened from a :class:`PublishedFile`.

    Attributes:
        source: the paper and table.
        model: the model as the paper names it (+ hub id).
        task: dllm-bench task name; ``task_as_named``: the paper's column name.
        mode: ``static`` / ``dynamic`` / ``ar``.
        settings: the stated sampling settings.
        metric: metric name (``accuracy``).
        value_percent: the printed value, percent (0-100).
        tokens_per_forward / avg_output_tokens: sub-cells where printed, else None.
        notes: the row's notes.
        path: the file it came from.
    """

    source: Source
    model: PublishedModel
    task: str
    task_as_named: str
    mode: str
    settings: StatedSettings
    metric: str
    value_percent: float
    tokens_per_forward: float | None = None
    avg_output_tokens: float | None = None
    notes: str | None = None
    path: str | None = None

    @property
    def value(self) -> float:
        """The value as a fraction (0-1), the unit of dllm-bench entries."""
        return self.value_percent / 100.0


def _line_of(text: str, loc: tuple) -> int | None:
    """Best-effort 1-based line of a top-level key in YAML ``text`` (for error lines)."""
    if not loc:
        return None
    key = str(loc[0])
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return i
    return None


def load_file(path: str | Path) -> PublishedFile:
    """Read and validate one published-figures YAML file.

    Raises:
        BadInputError: unreadable file, invalid YAML, or a field that does not validate (one
            line naming the file and the field).
    """
    import yaml

    from .registry import validate_config

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read published figures: {exc.strerror or exc}", path=p) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", path=p,
                            line=mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, dict):
        raise BadInputError("published figures must be a YAML mapping", path=p)
    return validate_config(PublishedFile, data, what="published figures", source=str(p),
                           line=lambda loc: _line_of(text, loc))


def figures_of(pf: PublishedFile, path: str | None = None) -> list[PublishedFigure]:
    """Flatten a file into one :class:`PublishedFigure` per reported cell ("-" cells are left out)."""
    out = []
    tasks = list(pf.tasks.items())
    for r in pf.rows:
        for (task, named), v in zip(tasks, r.values):
            cell = v if isinstance(v, Cell) else Cell(value=v)
            if cell.value is None:
                continue
            out.append(PublishedFigure(source=pf.source, model=pf.models[r.model], task=task, task_as_named=named,
                                       mode=r.mode, settings=pf.settings[r.settings], metric=pf.metric,
                                       value_percent=cell.value, tokens_per_forward=cell.tokens_per_forward,
                                       avg_output_tokens=cell.avg_output_tokens, notes=r.notes, path=path))
    return out


def default_published_dir() -> Path:
    """``leaderboards/published`` under the working directory when it exists, else under the
    checkout this package runs from (an editable install run from elsewhere)."""
    if PUBLISHED_DIR.is_dir():
        return PUBLISHED_DIR
    return Path(__file__).resolve().parent.parent / PUBLISHED_DIR


def load_published(directory: str | Path | None = None) -> list[PublishedFigure]:
    """Every figure of every ``*.yaml`` / ``*.yml`` file in ``directory`` (default:
    :func:`default_published_dir`), files sorted by name.

    Raises:
        BadInputError: ``directory`` is not a directory, or a file is invalid (:func:`load_file`).
    """
    d = Path(directory) if directory is not None else default_published_dir()
    if not d.is_dir():
        raise BadInputError("published-figures directory not found", path=d)
    out: list[PublishedFigure] = []
    for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        out += figures_of(load_file(p), str(p))
    return out


def published_schema() -> dict[str, Any]:
    """JSON Schema of :class:`PublishedFile`."""
    return PublishedFile.model_json_schema()


def schema_text() -> str:
    """The schema file's exact text (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(published_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(directory: str | Path) -> Path:
    """Write ``<directory>/published.schema.json``; returns its path.

    Raises:
        OSError: the file cannot be written.
    """
    from .outdir import write_atomic

    path = Path(directory) / f"{SCHEMA_NAME}.schema.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, schema_text())
    return path


# ----------------------------------------------------------------------------- matching
@dataclass
class Measured:
    """One measured system x task result, as plain data (built from an entry by the caller).

    Attributes:
        system: readable system name (row label).
        model_id: model id as evaluated: a hub id or a local path.
        task: dllm-bench task name.
        value: metric value as a fraction (0-1).
        stderr: standard error of ``value`` (fraction), None when unknown.
        n: problems the metric averages over, None when unknown.
        metric: metric name (default ``accuracy``).
        sampler: sampler plugin name (``block-static``, ``block-dynamic``, ``full-diffusion``,
            ``ar``, ``ar-vllm``); used to derive the mode when ``sampling_mode`` is None.
        sampler_config: the sampler's resolved config (knob -> value).
        sampling_mode: ``static`` / ``dynamic`` / ``ar``, overriding the derived mode.
        samples_per_problem: samples per problem, None when unknown.
        max_new_tokens: generation budget (tokens); None = ``sampler_config['max_new_tokens']``.
        tokens_per_forward: measured generated tokens / forward, None when unknown.
        documents: (documents evaluated, documents in the dataset), None when unknown; a
            subset is named as a mismatch (published figures are over the whole test set).
    """

    system: str
    model_id: str
    task: str
    value: float
    stderr: float | None = None
    n: int | None = None
    metric: str = "accuracy"
    sampler: str | None = None
    sampler_config: dict[str, Any] = field(default_factory=dict)
    sampling_mode: str | None = None
    samples_per_problem: int | None = None
    max_new_tokens: int | None = None
    tokens_per_forward: float | None = None
    documents: tuple[int, int] | None = None


def measured_from_entry(entry: Any, *, name: str | None = None, metric: str = "accuracy") -> Measured | None:
    """The :class:`Measured` view of a leaderboard entry (anything
    :func:`dllm_bench.entries.as_loaded` accepts: an Entry, a LoadedEntry, a path); None when
    the entry has no ``metric``.

    ``system`` is ``name`` (a table's row name), else the entry's label, else the model id.
    """
    from .entries import as_loaded

    e = as_loaded(entry).entry
    m = e.metrics.get(metric)
    if m is None:
        return None
    return Measured(system=name or e.label or e.repro.model.id, model_id=e.repro.model.id, task=e.protocol.task.name,
                    value=m.value, stderr=m.stderr, n=m.n, metric=metric, sampler=e.system.sampler.name,
                    sampler_config=dict(e.system.sampler.config), samples_per_problem=e.protocol.samples_per_problem,
                    max_new_tokens=e.protocol.generation.max_new_tokens,
                    tokens_per_forward=e.cost.tokens_per_forward or None,
                    documents=(e.protocol.task.dataset.n_effective, e.protocol.task.dataset.n_original))

_AR_SAMPLERS = {"ar", "ar-vllm"}


def sampling_mode(sampler: str | None, config: dict[str, Any] | None = None) -> str | None:
    """The published sampling mode a dllm-bench sampler run corresponds to.

    ``block-static`` -> static; ``block-dynamic`` -> dynamic, except with
    ``confidence_threshold`` >= 1, which its Config documents as static decoding;
    ``full-diffusion`` -> dynamic when ``confidence_threshold`` is set, else static;
    ``ar`` / ``ar-vllm`` -> ar. Any other sampler -> None (no published counterpart).
    """
    cfg = config or {}
    thr = cfg.get("confidence_threshold")
    if sampler == "block-static":
        return "static"
    if sampler == "block-dynamic":
        return "static" if isinstance(thr, (int, float)) and thr >= 1 else "dynamic"
    if sampler == "full-diffusion":
        return "static" if thr is None else "dynamic"
    if sampler in _AR_SAMPLERS:
        return "ar"
    return None


def _last(model_id: str) -> str:
    return model_id.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


def model_matches(measured_id: str, hub_id: str | None) -> bool:
    """True when ``measured_id`` names the model ``hub_id``: equal ignoring case, or equal last
    path components ignoring case (a local directory named like the hub repository). A figure
    without a hub id matches nothing."""
    if not hub_id or not measured_id:
        return False
    a, b = measured_id.strip().rstrip("/"), hub_id.strip().rstrip("/")
    return a.lower() == b.lower() or _last(a) == _last(b)


_SETTINGS = (  # (StatedSettings field, its name in words)
    ("samples_per_problem", "samples per problem"),
    ("max_new_tokens", "max new tokens"),
    ("block_size", "block size"),
    ("denoising_steps", "denoising steps per block"),
    ("confidence_threshold", "threshold"),
    ("temperature", "temperature"),
    ("top_k", "top_k"),
    ("top_p", "top_p"),
)


def _measured_setting(m: Measured, name: str) -> Any:
    cfg = m.sampler_config or {}
    if name == "samples_per_problem":
        return m.samples_per_problem
    if name == "max_new_tokens":
        return m.max_new_tokens if m.max_new_tokens is not None else cfg.get("max_new_tokens")
    if name == "denoising_steps":  # None = B steps (one token per step), as the diffusion Config says
        return cfg.get("denoising_steps") if cfg.get("denoising_steps") is not None else cfg.get("block_size")
    return cfg.get(name)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _fmt_setting(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def setting_mismatches(m: Measured, fig: PublishedFigure) -> list[str]:
    """Settings the source states that differ from what was measured, in words, e.g.
    ``"samples per problem: published 16, measured 3"``; ``"(repo default)"`` is appended
    when the published value is the released code's default rather than stated with the
    table; a stated setting the measurement does not record reads ``measured not recorded``.
    The dynamic threshold is compared only when both sides decode dynamically. A measurement
    on a subset of the documents is named first."""
    out = []
    if m.documents is not None and m.documents[0] < m.documents[1]:
        out.append(f"documents evaluated: published the whole test set, measured {m.documents[0]} of "
                   f"{m.documents[1]}")
    s = fig.settings
    for name, words in _SETTINGS:
        pub = getattr(s, name)
        if pub == NOT_STATED:
            continue
        if name == "confidence_threshold" and fig.mode != "dynamic":
            continue
        got = _measured_setting(m, name)
        if got is not None and _same(pub, got):
            continue
        shown = "not recorded" if got is None else _fmt_setting(got)
        out.append(f"{words}: published {_fmt_setting(pub)}{' (repo default)' if s.repo_defaults else ''}, "
                   f"measured {shown}")
    return out


@dataclass
class ReproRow:
    """One measured system x task against one published figure (fractions 0-1).

    Attributes:
        system / model_id / task / mode: the measured side (mode: static / dynamic / ar).
        source: ``"<paper title> (arXiv <id>, <table>)"``; ``arxiv_id``, ``table`` alone.
        published_model: the model as the paper names it.
        published: the published value (fraction).
        measured / stderr / n: the measured value, its stderr (None when unknown), problems.
        delta: measured − published (fraction).
        within_2se: |delta| <= 2·stderr; None when stderr is unknown.
        mismatches: stated settings that differ, in words (:func:`setting_mismatches`).
        settings_basis: where the published settings come from.
        published_tokens_per_forward / measured_tokens_per_forward: where known.
        metric: metric name.
    """

    system: str
    model_id: str
    task: str
    mode: str
    source: str
    arxiv_id: str
    table: str
    published_model: str
    published: float
    measured: float
    stderr: float | None
    n: int | None
    delta: float
    within_2se: bool | None
    mismatches: list[str]
    settings_basis: str
    published_tokens_per_forward: float | None = None
    measured_tokens_per_forward: float | None = None
    metric: str = "accuracy"


def reproduction_rows(measured: Iterable[Measured], published: Sequence[PublishedFigure]) -> list[ReproRow]:
    """Pair every measured system x task with each published figure it reproduces.

    Matching rule (module docstring): model (hub id, case-insensitive, or last path
    component), task, sampling mode (:func:`sampling_mode`, or ``Measured.sampling_mode``)
    and metric name. Rows come in the order of ``measured``, then of ``published``.

    Raises:
        BadInputError: a measured value outside [0, 1] or a negative stderr (the view
            compares fractions; a percent passed by mistake would give a meaningless Δ).
    """
    rows = []
    for m in measured:
        if not 0.0 <= m.value <= 1.0:
            raise BadInputError(f"measured {m.metric} of {m.system!r} on {m.task!r} must be a fraction in [0, 1], "
                                f"got {m.value}")
        if m.stderr is not None and m.stderr < 0:
            raise BadInputError(f"stderr of {m.system!r} on {m.task!r} must be >= 0, got {m.stderr}")
        mode = m.sampling_mode or sampling_mode(m.sampler, m.sampler_config)
        if mode is None:
            continue
        for fig in published:
            if (fig.task != m.task or fig.mode != mode or fig.metric != m.metric
                    or not model_matches(m.model_id, fig.model.hub_id)):
                continue
            delta = m.value - fig.value
            rows.append(ReproRow(
                system=m.system, model_id=m.model_id, task=m.task, mode=mode,
                source=f"{fig.source.title} ({fig.source.cite()})", arxiv_id=fig.source.arxiv_id,
                table=fig.source.table, published_model=fig.model.name, published=fig.value, measured=m.value,
                stderr=m.stderr, n=m.n, delta=delta,
                within_2se=None if m.stderr is None else abs(delta) <= 2.0 * m.stderr + 1e-12,
                mismatches=setting_mismatches(m, fig), settings_basis=fig.settings.basis,
                published_tokens_per_forward=fig.tokens_per_forward,
                measured_tokens_per_forward=m.tokens_per_forward, metric=m.metric))
    return rows


# ----------------------------------------------------------------------------- formatting
def to_dicts(rows: Sequence[ReproRow]) -> list[dict[str, Any]]:
    """Plain dicts (JSON / CSV / HTML): every :class:`ReproRow` field, fractions as stored;
    ``mismatches`` stays a list (join it for CSV)."""
    return [asdict(r) for r in rows]


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100.0 * x:.{digits}f}"


MARKDOWN_HEADERS = ["system", "task", "mode", "source", "published %", "measured % ± stderr", "Δ (points)",
                    "within 2 se", "tokens / forward (pub / meas)", "settings that differ"]


def markdown_cells(r: ReproRow) -> list[str]:
    """One Markdown row's cells (percent, 1 decimal), in the order of :data:`MARKDOWN_HEADERS`."""
    meas = _pct(r.measured) + ("" if r.stderr is None else f" ± {_pct(r.stderr)}")
    within = "-" if r.within_2se is None else ("yes" if r.within_2se else "no")

    def tpf(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    return [r.system, r.task, r.mode, f"{r.published_model}, arXiv {r.arxiv_id} {r.table}", _pct(r.published), meas,
            f"{100.0 * r.delta:+.1f}", within,
            f"{tpf(r.published_tokens_per_forward)} / {tpf(r.measured_tokens_per_forward)}",
            "; ".join(r.mismatches) or "none"]


def to_markdown(rows: Sequence[ReproRow], title: str | None = "Published vs reproduced") -> str:
    """A Markdown table (pytablewriter) of ``rows``: values in percent, Δ in points; an empty
    list gives a one-line note instead of an empty table."""
    import pytablewriter as ptw

    head = [f"## {title}", ""] if title else []
    if not rows:
        return "\n".join(head + ["No measured result has a published counterpart.", ""])
    w = ptw.MarkdownTableWriter(headers=MARKDOWN_HEADERS, value_matrix=[markdown_cells(r) for r in rows], margin=1)
    w.type_hints = [ptw.String] * len(MARKDOWN_HEADERS)
    return "\n".join(head + [w.dumps().rstrip(), ""])
