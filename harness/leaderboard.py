"""Leaderboard tables from entries: systems × tasks (``dllm-bench leaderboard build|show|migrate``).

**Rows are systems, columns are tasks.** A row is one system (:class:`~dllm_bench.schema.SystemKey`
digest) under one label; the entries of that system on several tasks form one row. Its name
is the entry label when given, else ``model · sampler · the knobs that differ from the
table's common settings``; two rows that would read alike get the system fields in which
they differ appended (``tiny-block-dlm (SFT) · threshold 0.7``). AR baselines (family
``ar`` or ``repro.model.is_baseline``) sit in the same table, marked.

**A column is a task under one protocol** (:class:`~dllm_bench.schema.ProtocolKey`): the
protocol of the reference row's cell (``--reference``) when it has one, else the most
common protocol among the column's cells (ties: more documents evaluated, then digest). A
cell whose protocol differs from its column's goes to a separate table, one per (task,
protocol), whose heading says in words what differs
(:func:`~dllm_bench.schema.describe_differences`, e.g. ``gsm8k — documents evaluated: 10 vs
40; samples per problem: 4 vs 1``). Under every table: each column's protocol in words
(:func:`~dllm_bench.schema.describe_protocol`) and the sampler settings common to its rows.

Rows are ordered by the first column's primary metric (best first; rows without a cell
there after, by the next column), unverified rows last. Each cell: the column's primary
metric (``accuracy`` when every cell has it) as ``value ± stderr (n=problems)``, and on a
second column ``TPF / NFE``: tokens per forward (generated tokens / NFE, the
device-independent parallelism measure) and NFE per sample.

**Δ vs reference.** A row's reference is, per entry, :attr:`Entry.reference <dllm_bench.schema.Entry.reference>`
(the label of the row it was trained from: the TraceRL row names its SFT row), else the
``reference`` argument (a label). Among the rows of the same table with that label and a
cell in the same column, the one whose system differs from this row's in the fewest fields
is used. ``Δ = row − reference`` with its standard error comes from
:func:`dllm_bench.gate.compare` (paired per-problem differences when both cells have their
per-sample records, else ``sqrt(se_a² + se_b²)``); both cells share the column's protocol.

**Verified entries only.** Every entry is verified first (:func:`dllm_bench.entries.verified`:
samples sha256, record count, metrics recomputed from the records). One that fails is
refused (:class:`~dllm_bench.errors.BadInputError`, exit 2) unless ``allow_unverified``:
then it is listed, marked ``unverified``, and takes part in no Δ (neither as reference nor
as the row compared).

Outputs (:func:`build`): ``README.md`` (pytablewriter Markdown), ``leaderboard.csv`` (long
format: one line per system × task × metric), ``leaderboard.json`` (format
:data:`LEADERBOARD_FORMAT`), ``index.html`` (self-contained: sortable tables, protocol in
words, matplotlib plots of the primary metric vs tokens per forward and vs NFE per sample,
one named series per system) and ``plot-<task>.svg``. Further views (published vs
reproduced, accuracy vs parallelism) are appended by :func:`extra_sections`.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .console import results_console
from .entries import LoadedEntry, load_entries, verified
from .errors import BadInputError
from .gate import compare
from .schema import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    Entry,
    ProtocolKey,
    describe_differences,
    describe_protocol,
    field_words,
    get_path,
    value_words,
)

log = logging.getLogger(__name__)

LEADERBOARD_FORMAT = "dllm-bench-leaderboard/2"
NO_CELL = "–"


# ----------------------------------------------------------------------- layout
@dataclass
class Row:
    """One system under one label in one table.

    Attributes:
        label: the entry label, else None (then the name is built from model, sampler, knobs).
        system_digest: the :class:`~dllm_bench.schema.SystemKey` digest shared by its cells.
        cells: ``{task: entry}`` — this row's entries in the table's columns.
        name: the display name (set by :func:`_name_rows`).
        knobs: ``{knob: value}`` — the sampler settings of this row that are not common to
            the table (set by :func:`_common_settings`).
    """

    label: str | None
    system_digest: str
    cells: dict[str, LoadedEntry]
    name: str = ""
    knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def any(self) -> LoadedEntry:
        return next(iter(self.cells.values()))

    @property
    def base_label(self) -> str:
        """The label the reference of other rows is matched on (label, else model id)."""
        return self.any.name

    @property
    def ar_baseline(self) -> bool:
        m = self.any.entry.repro.model
        return bool(m.is_baseline or m.family == "ar")

    @property
    def verified(self) -> bool:
        return all(e.verified is not False for e in self.cells.values())


@dataclass
class Column:
    """A task under one protocol, with the metric its cells are ranked on."""

    task: str
    protocol: ProtocolKey
    primary: str


@dataclass
class Table:
    """Systems × tasks: the main table (every task under its column protocol) or a table of
    the cells of one task under another protocol (``differences`` say how, in words)."""

    index: int
    kind: str  # "main" | "protocol-differs"
    columns: list[Column]
    rows: list[Row]
    differences: list[str] = field(default_factory=list)
    common: list[tuple[tuple[str, ...] | None, str, Any]] = field(default_factory=list)

    @property
    def heading(self) -> str:
        if self.kind == "main":
            return "Systems × tasks: " + ", ".join(c.task for c in self.columns)
        return f"{self.columns[0].task} — " + "; ".join(self.differences)


def _protocol_rank(entries: list[LoadedEntry]) -> tuple:
    p = entries[0].entry.protocol
    return (len(entries), p.task.dataset.n_effective, entries[0].entry.protocol_digest)


def layout(entries: Sequence[LoadedEntry], reference: str | None = None) -> list[Table]:
    """The tables: first the main systems × tasks table, then one per off-protocol (task, protocol).

    Entries of one (label, system) with the same protocol twice (reruns) become separate
    rows (named apart by entry id).
    """
    # rows: (label-or-model, system digest, occurrence) -> {protocol digest: entry}
    rows: dict[tuple[str, str, int], dict[str, LoadedEntry]] = {}
    for e in sorted(entries, key=lambda e: (e.entry.created_at, str(e.path))):
        occ = 0
        while e.entry.protocol_digest in rows.get((e.name, e.entry.system_digest, occ), {}):
            occ += 1
        rows.setdefault((e.name, e.entry.system_digest, occ), {})[e.entry.protocol_digest] = e
    by_task: dict[str, dict[str, list[LoadedEntry]]] = {}
    for cells in rows.values():
        for d, e in cells.items():
            by_task.setdefault(e.entry.task, {}).setdefault(d, []).append(e)
    columns: list[Column] = []
    for task, by_protocol in by_task.items():
        ref_cells = [e for es in by_protocol.values() for e in es
                     if reference and e.name == reference and e.verified is not False]
        chosen = ref_cells[0].entry.protocol_digest if ref_cells else \
            max(by_protocol, key=lambda d: _protocol_rank(by_protocol[d]))
        chosen_entries = by_protocol[chosen]
        columns.append(Column(task, chosen_entries[0].entry.protocol, _primary(chosen_entries)))
    columns.sort(key=lambda c: (-len(by_task[c.task][c.protocol.digest()]), c.task))
    tables: list[Table] = []
    main_rows = [_row(key, [cells.get(c.protocol.digest()) for c in columns], columns)
                 for key, cells in rows.items()]
    main_rows = [r for r in main_rows if r.cells]
    if main_rows:
        tables.append(Table(1, "main", columns, main_rows))
    for c in columns:
        col_digest = c.protocol.digest()
        for d, es in sorted(by_task[c.task].items(), key=lambda kv: (-len(kv[1]), kv[0])):
            if d == col_digest:
                continue
            p = es[0].entry.protocol
            col = Column(c.task, p, _primary(es))
            trows = [_row(key, [cells.get(d)], [col]) for key, cells in rows.items()]
            tables.append(Table(len(tables) + 1, "protocol-differs", [col], [r for r in trows if r.cells],
                                differences=describe_differences(p, c.protocol)))
    for t in tables:
        _common_settings(t)
        _name_rows(t)
        t.rows.sort(key=lambda r: (not r.verified, *(_sort_value(r, c) for c in t.columns), r.name))
    return tables


def _row(key: tuple[str, str, int], cells: list[LoadedEntry | None], columns: list[Column]) -> Row:
    got = {c.task: e for c, e in zip(columns, cells) if e is not None}
    label = next((e.entry.label for e in got.values()), None)
    return Row(label, key[1], got)


def _sort_value(r: Row, c: Column) -> float:
    e = r.cells.get(c.task)
    m = None if e is None else e.entry.metrics.get(c.primary)
    if m is None or math.isnan(m.value):
        return math.inf
    return -m.value if m.higher_is_better else m.value


def _primary(cells: Sequence[LoadedEntry]) -> str:
    return _metric_order(cells)[0] if cells and _metric_order(cells) else "accuracy"


def _metric_order(cells: Sequence[LoadedEntry]) -> list[str]:
    """Metrics every cell has, accuracy first."""
    common = set(cells[0].entry.metrics)
    for e in cells[1:]:
        common &= set(e.entry.metrics)
    return sorted(common, key=lambda m: (m != "accuracy", m))


def _common_settings(t: Table) -> None:
    """Sampler knobs with one value in every row that has them go to ``t.common`` (with the
    samplers that have them, None when every row has them); the rest to each row's ``knobs``."""
    cfgs = {id(r): r.any.entry.system.sampler.config for r in t.rows}
    samplers = {id(r): r.any.entry.system.sampler.name for r in t.rows}
    keys = sorted({k for c in cfgs.values() for k in c})
    for k in keys:
        having = [r for r in t.rows if k in cfgs[id(r)]]
        values = {json.dumps(cfgs[id(r)][k], sort_keys=True) for r in having}
        if len(values) == 1:
            names = None if len(having) == len(t.rows) else tuple(dict.fromkeys(samplers[id(r)] for r in having))
            t.common.append((names, k, cfgs[id(having[0])][k]))
        else:
            for r in having:
                r.knobs[k] = cfgs[id(r)][k]


def knob_words(knob: str, value: Any) -> str:
    """A sampler knob and its value in words: ``confidence threshold 0.9``."""
    return f"{field_words('sampler.config.' + knob)} {value_words(value)}"


def _name_rows(t: Table) -> None:
    for r in t.rows:
        if r.label:
            r.name = r.label
        else:
            e = r.any.entry
            r.name = " · ".join([e.system.model.id, e.system.sampler.name,
                                 *([_knobs_words(r.knobs)] if r.knobs else [])])
    by_name: dict[str, list[Row]] = {}
    for r in t.rows:
        by_name.setdefault(r.name, []).append(r)
    for same in by_name.values():
        if len(same) < 2:
            continue
        for r in same:
            mine = r.any.entry.system.model_dump(mode="json")
            paths: list[str] = []
            for o in same:
                if o is not r:
                    paths += [p for p in r.any.entry.system.diff(o.any.entry.system) if p not in paths]
            words = [f"{field_words(p)} {value_words(get_path(mine, p))}" for p in paths]
            r.name += " · " + (", ".join(words) if words else f"entry {r.any.entry.entry_id[:8]}")


# ----------------------------------------------------------------------- row data
def _reference_row(r: Row, c: Column, t: Table, reference: str | None) -> Row | None:
    e = r.cells[c.task]
    ref_label = e.entry.reference or reference
    if not ref_label or ref_label == r.base_label:
        return None
    cands = [o for o in t.rows if o is not r and o.base_label == ref_label and c.task in o.cells]
    if not cands:
        if e.entry.reference:
            log.warning("row %r names reference %r, which has no %s cell in table %d", r.name, ref_label,
                        c.task, t.index)
        return None
    return min(cands, key=lambda o: len(e.entry.system.diff(o.cells[c.task].entry.system)))


def _cell_data(e: LoadedEntry) -> dict[str, Any]:
    en = e.entry
    st = en.status
    return {
        "entry_id": en.entry_id, "path": None if e.path is None else str(e.path),
        "protocol_digest": en.protocol_digest, "verified": e.verified is not False, "problems": list(e.problems),
        "metrics": {m: v.model_dump(mode="json") for m, v in en.metrics.items()},
        "tokens_per_forward": en.cost.tokens_per_forward,
        "nfe_per_sample": en.cost.nfe / st.n_done if st.n_done else None,
        "nfe_total": en.cost.nfe, "generated_tokens": en.cost.generated_tokens,
        "tokens_per_s": en.cost.tokens_per_s, "wall_s": en.cost.wall_s,
        "status": st.state, "n_done": st.n_done, "n_expected": st.n_expected, "n_failed": st.n_failed,
        "delta": None,
    }


def table_data(t: Table, reference: str | None = None) -> dict[str, Any]:
    """JSON-ready data of one table (rows with their cells and Δs; see :func:`leaderboard_data`)."""
    rows = []
    refs_used: dict[tuple[int, str], bool] = {}
    for r in t.rows:
        cells = {}
        for c in t.columns:
            e = r.cells.get(c.task)
            if e is None:
                continue
            cd = _cell_data(e)
            ref = _reference_row(r, c, t, reference)
            if ref is not None:
                re_ = ref.cells[c.task]
                if e.verified is False or re_.verified is False:
                    cd["delta"] = {"reference": ref.name, "metric": c.primary, "skipped":
                                   "unverified " + ("reference" if re_.verified is False else "row")}
                elif c.primary in e.entry.metrics and c.primary in re_.entry.metrics:
                    cmp = compare(re_, e, c.primary)
                    cd["delta"] = {"reference": ref.name, "metric": c.primary, "diff": cmp["diff"],
                                   "stderr": cmp["stderr"], "n": cmp["n"], "mode": cmp["mode"], "note": cmp["note"]}
                    refs_used[(id(ref), c.task)] = True
            cells[c.task] = cd
        rows.append((r, cells))
    out_rows = []
    for r, cells in rows:
        for task, cd in cells.items():
            if cd["delta"] is None and refs_used.get((id(r), task)):
                cd["delta"] = {"reference": None, "is_reference": True}
        en = r.any.entry
        out_rows.append({
            "name": r.name, "label": r.label, "model": en.system.model.id, "model_path": en.repro.model.id,
            "family": en.system.model.family, "ar_baseline": r.ar_baseline, "verified": r.verified,
            "sampler": en.system.sampler.name, "knobs": r.knobs,
            "sampler_config": en.system.sampler.config, "system_digest": r.system_digest,
            "system": en.system.model_dump(mode="json"), "cells": cells,
        })
    return {
        "index": t.index, "kind": t.kind, "heading": t.heading, "differences": t.differences,
        "columns": [{"task": c.task, "primary_metric": c.primary, "protocol_digest": c.protocol.digest(),
                     "protocol": c.protocol.model_dump(mode="json"), "protocol_words": describe_protocol(c.protocol)}
                    for c in t.columns],
        "common_settings": [{"samplers": None if s is None else list(s), "knob": k, "value": v}
                            for s, k, v in t.common],
        "rows": out_rows,
    }


def leaderboard_data(entries: Sequence[LoadedEntry], reference: str | None = None, *,
                     allow_unverified: bool = False) -> dict[str, Any]:
    """The whole leaderboard as JSON-ready data (what ``leaderboard.json`` holds).

    Every entry is verified first (:func:`dllm_bench.entries.verified`).

    Returns:
        ``{"format", "n_entries", "reference", "tables": [...]}``; each table has ``heading``,
        ``kind``, ``differences`` (words), ``columns`` (task, primary metric, protocol +
        digest + words), ``common_settings`` and ``rows`` (name, label, model, family,
        ar_baseline, verified, sampler, knobs, system digest, and ``cells`` per task: entry
        id, protocol digest, metrics, tokens per forward, NFE per sample, tokens/s, status,
        Δ).

    Raises:
        BadInputError: an entry does not verify (unless ``allow_unverified``), or
            ``reference`` is no entry's label.
    """
    entries = verified(list(entries), allow_unverified=allow_unverified, what="entry")
    if reference and entries and not any(e.name == reference for e in entries):
        labels = ", ".join(sorted({repr(e.name) for e in entries}))
        raise BadInputError(f"--reference {reference!r} is no row's label (labels: {labels})")
    tables = layout(entries, reference)
    return {"format": LEADERBOARD_FORMAT, "n_entries": len(entries), "reference": reference,
            "n_unverified": sum(e.verified is False for e in entries),
            "tables": [table_data(t, reference) for t in tables]}


# ------------------------------------------------------------------ text formatting
def _num(x: Any, nd: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}"


def fmt_metric(m: dict[str, Any] | None) -> str:
    """``0.221 ± 0.015 (n=267)``; ``-`` when absent."""
    if m is None:
        return "-"
    se = "" if m.get("stderr") is None else f" ± {m['stderr']:.3f}"
    return f"{m['value']:.3f}{se} (n={m['n']})"


def fmt_delta(d: dict[str, Any] | None, show_ref: bool) -> str:
    """``+0.037 ± 0.009 (paired, n=267)``, ``reference``, or why no Δ was computed."""
    if not d:
        return ""
    if d.get("is_reference"):
        return "reference"
    ref = f" vs {d['reference']}" if show_ref else ""
    if "skipped" in d:
        return f"none{ref} ({d['skipped']})"
    se = "" if d.get("stderr") is None else f" ± {d['stderr']:.3f}"
    return f"{d['diff']:+.3f}{se}{ref} ({d['mode']}, n={d['n']})"


def _delta_refs(t: dict[str, Any], task: str) -> set[str]:
    return {r["cells"][task]["delta"]["reference"] for r in t["rows"]
            if task in r["cells"] and r["cells"][task]["delta"] and r["cells"][task]["delta"].get("reference")}


def table_columns(t: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns of a table as ``{"name", "lines", "kind", "task"}`` (kind: system, family,
    sampler, metric, cost, delta; ``lines``: the name in parts, one per line of a terminal
    header, e.g. ``["gsm8k_calc", "Δ accuracy", "vs dLLM SFT · static"]``); the same in
    Markdown, the terminal and HTML."""
    cols: list[dict[str, Any]] = [{"lines": ["system"], "kind": "system", "task": None},
                                  {"lines": ["family"], "kind": "family", "task": None},
                                  {"lines": ["sampler"], "kind": "sampler", "task": None}]
    for c in t["columns"]:
        task = c["task"]
        cols += [{"lines": [task, c["primary_metric"]], "kind": "metric", "task": task},
                 {"lines": [task, "TPF / NFE"], "kind": "cost", "task": task}]
        refs = _delta_refs(t, task)
        if refs:
            cols.append({"lines": [task, f"Δ {c['primary_metric']}", *([f"vs {next(iter(refs))}"] if len(refs) == 1
                                                                       else [])], "kind": "delta", "task": task})
    for col in cols:
        col["name"] = " ".join(col["lines"])
    return cols


def row_family(r: dict[str, Any]) -> str:
    """``block-diffusion``, or ``AR baseline`` for AR rows."""
    return "AR baseline" if r["ar_baseline"] else r["family"]


def row_sampler(r: dict[str, Any]) -> str:
    """The sampler name and the row's knobs that are not common to its table."""
    return " · ".join([r["sampler"], *([_knobs_words(r["knobs"])] if r["knobs"] else [])])


def _knobs_words(knobs: dict[str, Any]) -> str:
    return " · ".join(knob_words(k, v) for k, v in knobs.items())


def cell_text(r: dict[str, Any], col: dict[str, Any], t: dict[str, Any]) -> str:
    """The text of one cell (:func:`table_columns` order)."""
    kind, task = col["kind"], col["task"]
    if kind == "system":
        return r["name"] + ("" if r["verified"] else " (unverified)")
    if kind == "family":
        return row_family(r)
    if kind == "sampler":
        return row_sampler(r)
    c = r["cells"].get(task)
    if c is None:
        return NO_CELL if kind != "delta" else ""
    if kind == "metric":
        primary = next(x["primary_metric"] for x in t["columns"] if x["task"] == task)
        text = fmt_metric(c["metrics"].get(primary))
        if c["status"] != "complete":
            text += f" {c['status']} {c['n_done']}/{c['n_expected']}"
        return text
    if kind == "cost":
        return f"{_num(c['tokens_per_forward'], 2)} / {_num(c['nfe_per_sample'], 1)}"
    return fmt_delta(c["delta"], show_ref=len(_delta_refs(t, task)) > 1)


def sort_value(r: dict[str, Any], col: dict[str, Any], t: dict[str, Any]) -> float | None:
    """The number a column sorts by (metric value, tokens per forward, Δ); None for text."""
    c = r["cells"].get(col["task"]) if col["task"] else None
    if c is None:
        return None
    if col["kind"] == "metric":
        primary = next(x["primary_metric"] for x in t["columns"] if x["task"] == col["task"])
        m = c["metrics"].get(primary)
        return None if m is None else m["value"]
    if col["kind"] == "cost":
        return c["tokens_per_forward"]
    if col["kind"] == "delta" and c["delta"] and "diff" in c["delta"]:
        return c["delta"]["diff"]
    return None


def table_rows(t: dict[str, Any]) -> list[list[str]]:
    """Formatted cells of a table (same order as :func:`table_columns`)."""
    cols = table_columns(t)
    return [[cell_text(r, col, t) for col in cols] for r in t["rows"]]


def common_settings_words(t: dict[str, Any]) -> str:
    """The sampler settings common to a table, once: ``all: top-k 0, ...; block-dynamic: confidence threshold 0.9``."""
    groups: dict[str, list[str]] = {}
    for s in t["common_settings"]:
        who = "all rows" if s["samplers"] is None else ", ".join(s["samplers"])
        groups.setdefault(who, []).append(knob_words(s["knob"], s["value"]))
    return "; ".join(f"{who}: {', '.join(words)}" for who, words in groups.items()) or "none"


def notes_lines(t: dict[str, Any]) -> list[tuple[str, str]]:
    """What is said under a table: ``[(what, words)]`` — each column's protocol, then the
    common sampler settings."""
    out = [(f"protocol of {c['task']}", c["protocol_words"]) for c in t["columns"]]
    out.append(("common sampler settings", common_settings_words(t)))
    return out


# ------------------------------------------------------------------ extra sections
@dataclass
class Section:
    """A further view appended after the systems × tasks tables.

    Attributes:
        id: slug, unique in the page (HTML anchor ``section-<id>``; key in the JSON).
        title: heading text.
        markdown: the view as Markdown (without its heading).
        html: the view as an HTML fragment (without its heading); self-contained, no scripts
            that raise.
        data: JSON-ready data stored under ``leaderboard.json``'s ``sections[id]``.
    """

    id: str
    title: str
    markdown: str = ""
    html: str = ""
    data: Any = None


def extra_sections(data: dict[str, Any], entries: Sequence[LoadedEntry]) -> list[Section]:
    """The views after the tables, from the verified entries only:

    * ``published`` — published vs reproduced (:func:`published_section`), when a measured
      system × task has a published counterpart in ``leaderboards/published/``;
    * ``aup`` — accuracy vs parallelism (:func:`aup_section`), when some system was measured
      at two or more parallelism settings (a threshold or denoising-steps sweep).
    """
    good = [e for e in entries if e.verified is not False]
    return [s for s in (published_section(good), aup_section(good)) if s is not None]


def _simple_html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<table class="lb sortable" id="{e(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def published_section(entries: Sequence[LoadedEntry], published_dir: str | Path | None = None) -> Section | None:
    """Published vs reproduced: for every entry whose model, task and sampling mode have a
    published figure (:func:`dllm_bench.published.reproduction_rows`): published value,
    measured ± stderr, Δ, whether |Δ| ≤ 2 stderr, and the stated settings that differ.
    None when no entry has a counterpart."""
    from .published import (
        MARKDOWN_HEADERS,
        load_published,
        markdown_cells,
        measured_from_entry,
        reproduction_rows,
        to_dicts,
    )
    from .published import to_markdown as repro_markdown

    measured = [m for m in (measured_from_entry(e) for e in entries) if m is not None]
    rows = reproduction_rows(measured, load_published(published_dir)) if measured else []
    if not rows:
        return None
    note = ("Published figures with their source (leaderboards/published/); values in percent, Δ in points; "
            "'within 2 se': |Δ| ≤ 2 × the measured standard error. Settings the source states that differ "
            "from the measurement are named.")
    return Section(id="published", title="Published vs reproduced",
                   markdown=note + "\n\n" + repro_markdown(rows, title=None),
                   html=f'<p class="muted">{html.escape(note)}</p>'
                        + _simple_html_table(MARKDOWN_HEADERS, [markdown_cells(r) for r in rows], "table-published"),
                   data=to_dicts(rows))


def _curve_name(points: Sequence[tuple[float, float, LoadedEntry]]) -> str:
    """A curve's name: the words its points' names share (a sweep's labels differ only in the
    swept value), else ``model · sampler``."""
    names = [p[2].name for p in points]
    if len(set(names)) == 1:
        return names[0]
    common = os.path.commonprefix(names)
    if common in names:  # one point's label is the curve's name (e.g. "X · dynamic", "X · dynamic 0.7")
        return common.rstrip()
    cut = common.rsplit(" ", 1)[0].rstrip(" ·=-_(") if " " in common else ""
    if cut:
        return cut
    e = points[0][2].entry
    return f"{e.repro.model.id} · {e.system.sampler.name}"


def aup_section(entries: Sequence[LoadedEntry]) -> Section | None:
    """Accuracy vs parallelism: per task, every system's curve of (tokens per forward,
    primary metric) — the points of systems that differ only in the confidence threshold or
    the denoising steps (:func:`dllm_bench.aup.curve_points`) — with its AUP
    (:func:`dllm_bench.aup.aup_by_system`, d3LLM arXiv 2601.07568; y_max is the best accuracy
    under that protocol). None unless some curve has two or more points."""
    from .aup import aup_by_system, curve_points, kept_points

    curves = curve_points(entries)
    if not any(len(p) >= 2 for p in curves.values()):
        return None
    by_protocol: dict[str, dict[str, list]] = {}
    for (proto, _cid), pts in curves.items():
        by_protocol.setdefault(proto, {})[_curve_name(pts)] = pts
    headers = ["task", "system", "points (tokens/forward → accuracy %)", "points in AUP", "AUP"]
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    plots: list[str] = []
    for proto, named in sorted(by_protocol.items(), key=lambda kv: next(iter(kv[1].values()))[0][2].entry.task):
        task = next(iter(named.values()))[0][2].entry.task
        scores = aup_by_system({n: [(r, v) for r, v, _ in pts] for n, pts in named.items()})
        for name, pts in sorted(named.items(), key=lambda kv: -scores[kv[0]]):
            kept = kept_points([(r, v) for r, v, _ in pts])
            rows.append([task, name, ", ".join(f"{r:.2f} → {100 * v:.1f}" for r, v, _ in pts), str(len(kept)),
                         f"{scores[name]:.1f}"])
            data.append({"task": task, "protocol_digest": proto, "system": name, "aup": scores[name],
                         "points": [{"tokens_per_forward": r, "value": v, "entry_id": le.entry.entry_id}
                                    for r, v, le in pts]})
        plots.append(_aup_svg(task, named, scores))
    import pytablewriter as ptw

    w = ptw.MarkdownTableWriter(headers=headers, value_matrix=rows, margin=1)
    w.type_hints = [ptw.String] * len(headers)
    note = ("AUP (accuracy under parallelism; d3LLM, arXiv 2601.07568): AUP = ρ₁y₁ + ½ Σ (ρᵢ − ρᵢ₋₁)(yᵢW(yᵢ) + "
            "yᵢ₋₁W(yᵢ₋₁)) over the points sorted by tokens per forward ρ, accuracy y in percent, points more "
            "than 5 points below y₁ left out, W(y) = min(exp(−3(1 − y/y_max)), 1), y_max the best accuracy "
            "under the task's protocol. Units: tokens per forward × percent.")
    html_body = (f'<p class="muted">{html.escape(note)}</p>'
                 + "".join(f'<figure class="plot aup">{svg}</figure>' for svg in plots)
                 + _simple_html_table(headers, rows, "table-aup"))
    return Section(id="aup", title="Accuracy vs parallelism (AUP)", markdown=note + "\n\n" + w.dumps().rstrip(),
                   html=html_body, data=data)


def svg_text(fig: Any) -> str:
    """A matplotlib figure as an inline ``<svg>`` element: constrained layout, text kept as
    text, a fixed hash salt and no date, so the same data gives the same bytes (the
    committed plots are compared in tests); the XML prolog / doctype is dropped."""
    import matplotlib

    fig.set_layout_engine("constrained")
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dllm-bench"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _aup_svg(task: str, named: dict[str, list], scores: dict[str, float]) -> str:
    """Inline SVG: accuracy (%) vs tokens per forward, one named line per system curve, the
    legend (with each curve's AUP) below the axes."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8 + 0.25 * math.ceil(len(named) / 2)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if len(named) <= 10 else "tab20"]
    for i, (name, pts) in enumerate(sorted(named.items(), key=lambda kv: -scores[kv[0]])):
        xs = [r for r, _, _ in pts]
        ys = [100 * v for _, v, _ in pts]
        ax.plot(xs, ys, marker="o", color=cmap(i % cmap.N), label=f"{name} (AUP {scores[name]:.1f})")
    ax.set_xlabel("tokens per forward")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{task}: accuracy vs parallelism", fontsize=10)
    return svg_text(fig)


# ------------------------------------------------------------------------ outputs
INTRO = ("Rows are systems (model, chat template, sampler and every knob), columns are tasks. "
         "A column holds the cells that share its protocol (task, dataset and documents evaluated, "
         "prompt, few-shot, scorer, samples per problem, generation budget, sandbox), written out under "
         "each table; a cell under another protocol is in a separate table whose heading names the "
         "difference. Metric: value ± standard error across problems (n problems). TPF / NFE: tokens per "
         "forward (generated tokens / NFE) / NFE per sample (forwards that denoised a sample). "
         "Δ: difference to the reference row with its standard error (paired over per-problem outcomes "
         "when both cells have per-sample records). Every entry is verified (samples sha256, record count, "
         "metrics recomputed); rows marked unverified were listed with --allow-unverified and take part in no Δ.")


def to_markdown(data: dict[str, Any], *, title: str = "dllm-bench leaderboard",
                plots: dict[str, str] | None = None, sections: Sequence[Section] = ()) -> str:
    """README-ready Markdown (pytablewriter): each table, its protocol and common settings
    under it, the plots (``{task: file name}``) after the main table, then ``sections``."""
    parts = [f"# {title}", "", "Generated by `dllm-bench leaderboard build`; do not edit by hand. " + INTRO, ""]
    if not data["tables"]:
        parts += ["No entries yet.", ""]
    for t in data["tables"]:
        parts += [f"## {t['index']}. {_md_escape(t['heading'])}", "", markdown_table(t), ""]
        parts += [f"- **{what}**: {_md_escape(words)}" for what, words in notes_lines(t)] + [""]
        if t["kind"] == "main":
            parts += [f"![{task}: {t['columns'][0]['primary_metric']} vs tokens per forward and NFE]({p})"
                      for task, p in (plots or {}).items()] + [""]
    for s in sections:
        parts += [f"## {_md_escape(s.title)}", "", s.markdown.rstrip(), ""]
    return "\n".join(parts)


def markdown_table(t: dict[str, Any]) -> str:
    """One table as Markdown (pytablewriter), no heading."""
    import pytablewriter as ptw

    cols = [c["name"] for c in table_columns(t)]
    w = ptw.MarkdownTableWriter(headers=cols, value_matrix=table_rows(t), margin=1)
    w.type_hints = [ptw.String] * len(cols)
    return w.dumps().rstrip()


def _md_escape(s: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", s)


CSV_HEAD = ["table", "table_heading", "system", "label", "model", "family", "ar_baseline", "sampler", "knobs",
            "task", "metric", "value", "stderr", "n", "k", "primary", "tokens_per_forward", "nfe_per_sample",
            "nfe_total", "generated_tokens", "tokens_per_s", "wall_s", "status", "verified", "delta_reference",
            "delta", "delta_stderr", "delta_mode", "delta_n", "protocol_digest", "system_digest", "entry_id"]


def to_csv(data: dict[str, Any]) -> str:
    """Long-format CSV (pytablewriter): one line per system × task × metric."""
    import pytablewriter as ptw

    lines = []
    for t in data["tables"]:
        primaries = {c["task"]: c["primary_metric"] for c in t["columns"]}
        for r in t["rows"]:
            for task, c in r["cells"].items():
                d = c["delta"] if c["delta"] and "diff" in c["delta"] else {}
                for m, mv in c["metrics"].items():
                    dm = d if d.get("metric") == m else {}
                    lines.append([t["index"], t["heading"], r["name"], r["label"], r["model"], r["family"],
                                  r["ar_baseline"], r["sampler"], _knobs_words(r["knobs"]), task, m,
                                  mv["value"], mv["stderr"], mv["n"], mv.get("k"), m == primaries[task],
                                  c["tokens_per_forward"], c["nfe_per_sample"], c["nfe_total"],
                                  c["generated_tokens"], c["tokens_per_s"], c["wall_s"], c["status"], c["verified"],
                                  dm.get("reference"), dm.get("diff"), dm.get("stderr"), dm.get("mode"), dm.get("n"),
                                  c["protocol_digest"], r["system_digest"], c["entry_id"]])
    return ptw.CsvTableWriter(headers=CSV_HEAD, value_matrix=lines).dumps()


def plot_svg(t: dict[str, Any], task: str) -> str:
    """Inline SVG (matplotlib): one task of a table, primary metric vs tokens per forward and
    vs NFE per sample.

    One named series per system (the row name; colour by row, squares for AR baselines,
    hollow markers for unverified rows), error bars ± stderr, the legend below the axes
    (no per-point labels, so nothing overlaps).
    """
    import matplotlib
    from matplotlib.figure import Figure

    col = next(c for c in t["columns"] if c["task"] == task)
    metric = col["primary_metric"]
    rows = [r for r in t["rows"] if task in r["cells"] and metric in r["cells"][task]["metrics"]]
    fig = Figure(figsize=(10, 4.0 + 0.25 * math.ceil(len(rows) / 2)))
    ax_tpf, ax_nfe = fig.subplots(1, 2, sharey=True)
    cmap = matplotlib.colormaps["tab10" if len(t["rows"]) <= 10 else "tab20"]
    for i, r in enumerate(t["rows"]):
        if r not in rows:
            continue
        c = r["cells"][task]
        m = c["metrics"][metric]
        color = cmap(i % cmap.N)
        style = {"fmt": "s" if r["ar_baseline"] else "o", "color": color, "capsize": 3, "markersize": 7,
                 "markerfacecolor": color if r["verified"] else "none"}
        name = r["name"] + (" [AR baseline]" if r["ar_baseline"] else "") + ("" if r["verified"] else " [unverified]")
        for ax, x in ((ax_tpf, c["tokens_per_forward"]), (ax_nfe, c["nfe_per_sample"])):
            if x is not None:
                ax.errorbar([x], [m["value"]], yerr=[m["stderr"] or 0.0], label=name if ax is ax_tpf else None,
                            **style)
    ax_tpf.set_xlabel("tokens per forward (generated tokens / NFE)")
    ax_nfe.set_xlabel("NFE per sample")
    ax_tpf.set_ylabel(metric)
    for ax in (ax_tpf, ax_nfe):
        ax.grid(alpha=0.3)
    handles, labels = ax_tpf.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{task}: {metric} vs tokens per forward and NFE per sample (bars: ± stderr; squares: AR baselines)",
                 fontsize=10)
    return svg_text(fig)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;max-width:1500px}
h1{font-size:1.5em} h2{font-size:1.1em;margin-top:2em} .muted{color:#57606a;font-size:.9em}
table.lb{border-collapse:collapse;font-size:.85em;margin:.5em 0} table.lb th,table.lb td{border:1px solid #d0d7de;
padding:4px 8px;text-align:left;vertical-align:top} table.lb th{background:#f6f8fa;cursor:pointer;user-select:none;
white-space:nowrap} table.lb th.sorted-asc::after{content:" \\25B2"} table.lb th.sorted-desc::after{content:" \\25BC"}
tr.ar-baseline{background:#fff8c5} tr.unverified{background:#ffebe9} .badge{display:inline-block;background:#9a6700;
color:#fff;border-radius:8px;padding:0 6px;font-size:.8em;margin-left:4px} .badge.unverified{background:#cf222e}
table.lb td:first-child{white-space:nowrap} \
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.na{color:#8c959f;text-align:center}
ul.notes{font-size:.85em;color:#1b1f24} ul.notes li{margin:.2em 0} details{margin:.3em 0}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.8em} figure{margin:1em 0}
.cfg{font-family:ui-monospace,monospace;font-size:.8em;max-width:60em;word-break:break-word}
"""

_JS = r"""
(function(){
  function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
    var f=parseFloat(v);return isNaN(f)?{n:false,v:v.toLowerCase()}:{n:true,v:f};}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('sorted-asc');
        table.querySelectorAll('thead th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
        th.classList.add(asc?'sorted-asc':'sorted-desc');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
          if(x.n!==y.n)return x.n?-1:1;
          var c=x.n?(x.v-y.v):String(x.v).localeCompare(String(y.v));return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  // #sort=<table index>:<column index>:<asc|desc> pre-sorts a table (links, tests)
  var m=/^#sort=(\d+):(\d+):(asc|desc)$/.exec(location.hash);
  if(m){var t=document.getElementById('table-'+m[1]);
    if(t){var th=t.querySelectorAll('thead th')[+m[2]];if(th){th.click();if(m[3]==='desc')th.click();}}}
})();
"""


def to_html(data: dict[str, Any], *, title: str = "dllm-bench leaderboard", sections: Sequence[Section] = ()) -> str:
    """A self-contained static page: each table (sortable columns; AR baselines and
    unverified rows marked) with its protocol and common settings in words under it, the
    plots per task after the main table, every row's full sampler config, then ``sections``."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             (f'<p class="muted">{data["n_entries"]} entries. {e(INTRO)} Click a column heading to sort. '
              '<span class="badge">AR baseline</span> marks autoregressive baselines; '
              '<span class="badge unverified">unverified</span> marks rows whose evidence does not verify.</p>')]
    if not data["tables"]:
        parts.append("<p>No entries yet.</p>")
    for t in data["tables"]:
        parts.append(html_table(t))
        if t["kind"] == "main":
            for c in t["columns"]:
                task = c["task"]
                parts.append(f'<figure class="plot" id="plot-{e(_slug(task))}" data-task="{e(task)}">'
                             f'{plot_svg(t, task)}<figcaption class="muted">{e(task)}: {e(c["primary_metric"])} '
                             "(± stderr) vs tokens per forward and vs NFE per sample, one series per system, "
                             "cells under the column's protocol.</figcaption></figure>")
    for s in sections:
        parts.append(f'<section id="section-{e(_slug(s.id))}"><h2>{e(s.title)}</h2>{s.html}</section>')
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def html_table(t: dict[str, Any]) -> str:
    """One table as HTML: heading, sortable table (``id="table-<index>"``), notes, configs."""
    e = html.escape
    cols = table_columns(t)
    out = [f'<h2 id="heading-{t["index"]}">{t["index"]}. {e(t["heading"])}</h2>',
           f'<table class="lb sortable" id="table-{t["index"]}" data-kind="{e(t["kind"])}">'
           "<thead><tr>" + "".join(f'<th data-task="{e(c["task"] or "")}">{e(c["name"])}</th>' for c in cols) +
           "</tr></thead><tbody>"]
    for r in t["rows"]:
        tds = []
        for col in cols:
            text = cell_text(r, col, t)
            sv = sort_value(r, col, t)
            if col["kind"] == "system":
                body = e(r["name"]) + ('<span class="badge">AR baseline</span>' if r["ar_baseline"] else "") + \
                    ("" if r["verified"] else '<span class="badge unverified">unverified</span>')
                tds.append(f"<td>{body}</td>")
            elif col["task"] and col["task"] not in r["cells"]:
                tds.append(f'<td class="na">{e(text)}</td>')
            elif sv is not None:
                tds.append(f'<td class="num" data-sort="{sv!r}">{e(text)}</td>')
            else:
                tds.append(f"<td>{e(text)}</td>")
        cls = " ".join(c for c, on in (("ar-baseline", r["ar_baseline"]), ("unverified", not r["verified"])) if on)
        entries = " ".join(c["entry_id"] for c in r["cells"].values())
        out.append(f'<tr class="{cls}" data-system="{e(r["system_digest"])}" data-entries="{e(entries)}">'
                   f'{"".join(tds)}</tr>')
    out.append("</tbody></table>")
    out.append('<ul class="notes">' + "".join(f"<li><b>{e(what)}</b>: {e(words)}</li>"
                                              for what, words in notes_lines(t)) + "</ul>")
    cfg_rows = "".join(f'<tr><td>{e(r["name"])}</td><td class="cfg">'
                       f'{e(", ".join(f"{k}={v}" for k, v in sorted(r["sampler_config"].items())))}</td>'
                       f'<td class="cfg">{e(r["system_digest"][:16])}</td></tr>' for r in t["rows"])
    out.append(f'<details><summary>full sampler config of every row</summary><table class="lb">'
               f"<thead><tr><th>system</th><th>{e('sampler config')}</th><th>system digest</th></tr></thead>"
               f"<tbody>{cfg_rows}</tbody></table></details>")
    return "\n".join(out)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "task"


def build(entries: Sequence[LoadedEntry], output: str | Path, *, reference: str | None = None,
          title: str = "dllm-bench leaderboard", allow_unverified: bool = False,
          sections: Sequence[Section] = ()) -> dict[str, Path]:
    """Write README.md, leaderboard.csv, leaderboard.json, index.html and plot-<task>.svg.

    Every entry is verified first; ``sections`` (and :func:`extra_sections`) are appended to
    the Markdown, the HTML and the JSON (``sections``). Each file is written atomically (a
    failed write leaves the former file and no ``.tmp``).

    Returns:
        ``{"markdown", "csv", "json", "html", "plot:<task>"...}`` -> written path.

    Raises:
        BadInputError: an entry does not verify (unless ``allow_unverified``).
        OSError: a file could not be written (no space, read-only, ...).
    """
    from .outdir import write_atomic

    out = Path(output)
    data = leaderboard_data(entries, reference, allow_unverified=allow_unverified)
    sections = [*extra_sections(data, entries), *sections]
    if sections:
        data["sections"] = {s.id: s.data for s in sections}
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}
    main: dict[str, Any] = next((t for t in data["tables"] if t["kind"] == "main"), {})
    for c in main["columns"] if main else []:
        p = out / f"plot-{_slug(c['task'])}.svg"
        write_atomic(p, plot_svg(main, c["task"]))
        written[f"plot:{c['task']}"] = p
        plots[c["task"]] = p.name
    for name, fname, text in (("markdown", "README.md", to_markdown(data, title=title, plots=plots, sections=sections)),
                              ("csv", "leaderboard.csv", to_csv(data)),
                              ("json", "leaderboard.json", json.dumps(data, indent=2, sort_keys=True) + "\n"),
                              ("html", "index.html", to_html(data, title=title, sections=sections))):
        write_atomic(out / fname, text)
        written[name] = out / fname
    return written


def build_cli(entries: str | Path, output: str | Path, *, reference: str | None = None,
              allow_unverified: bool = False) -> dict[str, Path]:
    """``dllm-bench leaderboard build``: write every output; log the paths on stderr."""
    from .console import console

    written = build(load_entries(entries, allow_empty=True), output, reference=reference,
                    allow_unverified=allow_unverified)
    for name, p in written.items():
        console.print(f"wrote {name}: {p}", markup=False, highlight=False, soft_wrap=True)
    return written


def show_cli(entries: str | Path, *, as_json: bool = False, reference: str | None = None,
             allow_unverified: bool = False) -> None:
    """``dllm-bench leaderboard show``: the tables (rich) on stdout, each with its protocol and
    common settings in words under it, then the extra views (:func:`extra_sections`); or
    ``--json`` (with the views under ``sections``)."""
    import sys

    from rich.table import Table as RichTable

    loaded = load_entries(entries, allow_empty=True)
    data = leaderboard_data(loaded, reference, allow_unverified=allow_unverified)
    sections = extra_sections(data, loaded)
    if sections:
        data["sections"] = {s.id: s.data for s in sections}
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    con = results_console()
    if not data["tables"]:
        con.print("no entries")
    for t in data["tables"]:
        cols = table_columns(t)
        rt = RichTable(title=f"{t['index']}. {t['heading']}", title_justify="left")
        for c in cols:
            rt.add_column("\n".join(c["lines"]), overflow="fold", no_wrap=c["kind"] == "system",
                          justify="right" if c["kind"] in ("metric", "cost", "delta") else "left")
        for r, cells in zip(t["rows"], table_rows(t)):
            rt.add_row(*cells, style="red" if not r["verified"] else "yellow" if r["ar_baseline"] else None)
        con.print(rt)
        for what, words in notes_lines(t):
            con.print(f"{what}: {words}", markup=False, highlight=False, soft_wrap=True)
        con.print()
    for sec in sections:  # published vs reproduced, AUP: as in README.md
        con.print(sec.title, markup=False, highlight=False, style="bold")
        con.print(sec.markdown, markup=False, highlight=False, soft_wrap=True)
        con.print()


# ------------------------------------------------------------------------ migrate
def migrate(path: str | Path) -> list[tuple[Path, str]]:
    """Rewrite every older-schema entry JSON at ``path`` (a file, or every entry below a
    directory) as schema :data:`~dllm_bench.schema.SCHEMA_VERSION`, in place.

    The file is read with :meth:`Entry.load` (which upgrades it, keeping ``entry_id``) and
    written atomically (:meth:`Entry.write`); the per-sample file is not touched. Entries
    already at the current version are left alone, so running it twice changes nothing.

    Returns:
        ``[(path, "1 -> 2")]`` for every rewritten file.

    Raises:
        BadInputError: ``path`` does not exist, or an entry file cannot be read or upgraded.
        OSError: a write failed (the file keeps its former content).
    """
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*.json") if f.is_file())
    else:
        raise BadInputError("no such entry file or directory", path=p)
    done = []
    for f in files:
        try:
            version = json.loads(f.read_text(encoding="utf-8")).get("schema_version")
        except (OSError, ValueError, AttributeError) as exc:
            if p.is_file():
                raise BadInputError(f"cannot read entry: {exc}", path=f) from None
            continue  # not an entry (a directory may hold other JSON)
        if version == SCHEMA_VERSION or version not in READABLE_SCHEMA_VERSIONS:
            if version is not None and version != SCHEMA_VERSION:
                raise BadInputError(f"unknown entry schema version {version!r} (readable: "
                                    f"{', '.join(READABLE_SCHEMA_VERSIONS)})", path=f)
            continue
        Entry.load(f).write(f)
        done.append((f, f"{version} -> {SCHEMA_VERSION}"))
    return done


def migrate_cli(path: str | Path) -> list[tuple[Path, str]]:
    """``dllm-bench leaderboard migrate``: print each rewritten file (stdout) and a summary."""
    from .console import stdout_console

    done = migrate(path)
    for f, how in done:
        stdout_console.print(f"rewrote {f} (schema {how})", markup=False, highlight=False, soft_wrap=True)
    stdout_console.print(f"{len(done)} entr{'y' if len(done) == 1 else 'ies'} rewritten; every entry under "
                         f"{path} is schema {SCHEMA_VERSION}", markup=False, highlight=False, soft_wrap=True)
    return done
