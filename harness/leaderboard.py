"""Leaderboard tables from entries (``dllm-bench leaderboard build|show``).

Entries are grouped by comparability key (:meth:`ComparabilityKey.digest`): rows whose
keys differ in any field never share a table. Each group's heading names the key fields
in which it differs from the other groups, with this group's values
(:meth:`ComparabilityKey.diff`), so two tables that look alike say why they are apart.

Columns: row label, model id, family (AR baselines marked), sampler and its key settings
(block size, denoising steps, confidence threshold, top-k, temperature), every metric as
``value ± stderr (n)``, NFE per sample (model forward calls per generated sample),
tokens/s, status, and — when a row names a reference row — ``Δ <metric> vs <reference>
± stderr`` computed by :func:`dllm_bench.gate.compare` (paired per-problem differences
when both rows have per-sample records, else ``sqrt(se_a² + se_b²)``).

A row's reference is the ``reference`` argument (a row label, applied in every group that
has a row with that label) or, per row, ``repro.model.training["reference"]`` (the label
of the row it was trained from, e.g. the TraceRL row names its SFT row).

Outputs (:func:`build`): ``README.md`` (Markdown tables via pytablewriter, README-ready),
``leaderboard.csv``, ``leaderboard.json``, ``index.html`` (self-contained: sortable
tables with an inline JS sorter, every row's full sampler config, AR baselines marked,
and matplotlib plots of the primary metric vs tokens/s and vs NFE inlined as SVG) and
``plot-<task>.svg``.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .gate import LoadedEntry, compare, load_entries, results_console
from .schema import ProtocolKey, get_path

log = logging.getLogger(__name__)

LEADERBOARD_FORMAT = "dllm-bench-leaderboard/1"

# Displayed sampler settings: column name -> config keys that may hold it (first present wins).
SETTINGS: dict[str, tuple[str, ...]] = {
    "block size": ("block_size", "block_length"),
    "steps": ("denoising_steps", "steps", "steps_per_block"),
    "threshold": ("threshold", "confidence_threshold"),
    "top-k": ("top_k",),
    "temperature": ("temperature",),
}


# ------------------------------------------------------------------------ grouping
@dataclass
class Group:
    """Rows sharing one comparability key.

    Attributes:
        index: 1-based position in the output.
        key: the shared key.
        rows: the entries, best primary metric first.
        differs: ``{dotted key field: this group's value}`` for every field in which this
            group's key differs from the key of another group of the same task (empty when
            the task has one group; groups of other tasks differ in the task itself).
        primary: the metric the rows are ordered by and the deltas are computed on.
    """

    index: int
    key: ProtocolKey
    rows: list[LoadedEntry]
    differs: dict[str, Any]
    primary: str
    metrics: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.key.digest()

    @property
    def heading(self) -> str:
        t = self.key.task
        base = f"{t.name} v{t.version} · protocol {self.digest[:10]}"
        if not self.differs:
            return base
        return base + " — differs in: " + ", ".join(f"{k}={_short(v)}" for k, v in self.differs.items())


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= 24 else s[:21] + "..."


def group_entries(entries: Sequence[LoadedEntry]) -> list[Group]:
    """Group by comparability key; groups ordered by task, sampler, then key digest."""
    by: dict[str, list[LoadedEntry]] = {}
    for e in entries:
        by.setdefault(e.entry.protocol_digest, []).append(e)
    keys = {d: rows[0].entry.protocol for d, rows in by.items()}
    order = sorted(by, key=lambda d: (keys[d].task.name, d))
    groups = []
    for i, d in enumerate(order, start=1):
        fields: list[str] = []
        for other in order:
            if other != d and keys[other].task.name == keys[d].task.name:
                fields += [f for f in keys[d].diff(keys[other]) if f not in fields]
        dump = keys[d].model_dump(mode="json")
        differs = {f: get_path(dump, f) for f in sorted(fields)}
        rows = by[d]
        metrics = _metric_order(rows)
        primary = metrics[0] if metrics else "accuracy"
        rows.sort(key=lambda e: (-_value(e, primary), e.name))
        groups.append(Group(i, keys[d], rows, differs, primary, metrics))
    return groups


def _metric_order(rows: Sequence[LoadedEntry]) -> list[str]:
    """Metric columns, accuracy first; pass@1 is dropped when it equals accuracy in every row
    (the unbiased pass@1 is c/n, i.e. mean@n accuracy; the entries keep both)."""
    names: list[str] = []
    for e in rows:
        names += [m for m in e.entry.metrics if m not in names]
    ms = [e.entry.metrics for e in rows]
    if all("accuracy" in m and "pass@1" in m and abs(m["accuracy"].value - m["pass@1"].value) < 1e-12 for m in ms):
        names.remove("pass@1")
    return sorted(names, key=lambda m: (m != "accuracy", m))


def _value(e: LoadedEntry, metric: str) -> float:
    m = e.entry.metrics.get(metric)
    return m.value if m is not None and not math.isnan(m.value) else -math.inf


# ----------------------------------------------------------------------- row data
def _reference_of(e: LoadedEntry, reference: str | None, group: Group) -> LoadedEntry | None:
    training = e.entry.repro.model.training or {}
    ref_label = training.get("reference") or reference
    if not ref_label or ref_label == e.name:
        return None
    matches = [r for r in group.rows if r.name == ref_label]
    if not matches:
        if training.get("reference"):
            log.warning("row %r names reference %r, which is not in its group %d", e.name, ref_label, group.index)
        return None
    return matches[0]


def row_data(e: LoadedEntry, group: Group, reference: str | None = None) -> dict[str, Any]:
    """Raw (unformatted) values of one row; the JSON output is a list of these."""
    en = e.entry
    cfg = {**en.system.sampler.config, "max_new_tokens": en.protocol.generation.max_new_tokens}
    st = en.status
    model = en.repro.model
    out: dict[str, Any] = {
        "label": e.name, "model": model.id, "family": model.family,
        "ar_baseline": bool(model.is_baseline or model.family == "ar"),
        "sampler": en.system.sampler.name,
        "settings": {col: next((cfg[k] for k in keys if k in cfg), None) for col, keys in SETTINGS.items()},
        "sampler_config": cfg,
        "metrics": {m: en.metrics[m].model_dump(mode="json") for m in group.metrics if m in en.metrics},
        "nfe_total": en.cost.nfe,
        "nfe_per_sample": en.cost.nfe / st.n_done if st.n_done else None,
        "tokens_per_forward": en.cost.tokens_per_forward,
        "generated_tokens": en.cost.generated_tokens,
        "tokens_per_s": en.cost.tokens_per_s,
        "wall_s": en.cost.wall_s,
        "status": st.state, "n_done": st.n_done, "n_expected": st.n_expected, "n_failed": st.n_failed,
        "entry_id": en.entry_id, "path": None if e.path is None else str(e.path),
        "delta": None,
    }
    ref = _reference_of(e, reference, group)
    if ref is not None and group.primary in en.metrics and group.primary in ref.entry.metrics:
        c = compare(ref, e, group.primary)
        out["delta"] = {"reference": ref.name, "metric": group.primary, "diff": c["diff"],
                        "stderr": c["stderr"], "n": c["n"], "mode": c["mode"]}
    elif any(_reference_of(r, reference, group) is e for r in group.rows):
        out["delta"] = {"reference": None, "metric": group.primary, "is_reference": True}
    return out


def leaderboard_data(entries: Sequence[LoadedEntry], reference: str | None = None) -> dict[str, Any]:
    """The whole leaderboard as JSON-ready data (what ``leaderboard.json`` holds)."""
    groups = group_entries(entries)
    return {
        "format": LEADERBOARD_FORMAT,
        "n_entries": len(entries),
        "groups": [{"index": g.index, "heading": g.heading, "task": g.key.task.name, "key_digest": g.digest,
                    "differs": g.differs, "primary_metric": g.primary, "metrics": g.metrics,
                    "key": g.key.model_dump(mode="json"),
                    "rows": [row_data(e, g, reference) for e in g.rows]} for g in groups],
    }


# ------------------------------------------------------------------ text formatting
def _num(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def fmt_metric(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    se = "" if m.get("stderr") is None else f" ± {m['stderr']:.3f}"
    return f"{m['value']:.3f}{se} (n={m['n']})"


def fmt_delta(d: dict[str, Any] | None, show_ref: bool) -> str:
    if not d:
        return ""
    if d.get("is_reference"):
        return "reference"
    se = "" if d.get("stderr") is None else f" ± {d['stderr']:.3f}"
    ref = f" vs {d['reference']}" if show_ref else ""
    return f"{d['diff']:+.3f}{se}{ref} ({d['mode']}, n={d['n']})"


def _setting(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def table_columns(group: dict[str, Any]) -> tuple[list[str], str | None]:
    """Column names of a group's table and the delta column name (None when no row has a delta)."""
    deltas = [r["delta"] for r in group["rows"] if r["delta"] and not r["delta"].get("is_reference")]
    refs = {d["reference"] for d in deltas}
    delta_col = None
    if deltas:
        delta_col = f"Δ {group['primary_metric']} vs " + (next(iter(refs)) if len(refs) == 1 else "reference")
    cols = ["row", "model", "family", "sampler", *SETTINGS, *group["metrics"], "NFE/sample", "tokens/s", "status"]
    return cols + ([delta_col] if delta_col else []), delta_col


def table_rows(group: dict[str, Any]) -> list[list[str]]:
    """Formatted cells of a group's table (same order as :func:`table_columns`)."""
    _, delta_col = table_columns(group)
    refs = {r["delta"]["reference"] for r in group["rows"] if r["delta"] and not r["delta"].get("is_reference")}
    out = []
    for r in group["rows"]:
        family = r["family"] + (" (AR baseline)" if r["ar_baseline"] else "")
        status = r["status"] if r["status"] == "complete" else f"{r['status']} ({r['n_done']}/{r['n_expected']})"
        cells = [r["label"], r["model"], family, r["sampler"], *(_setting(v) for v in r["settings"].values()),
                 *(fmt_metric(r["metrics"].get(m)) for m in group["metrics"]),
                 _num(r["nfe_per_sample"], 1), _num(r["tokens_per_s"], 1), status]
        if delta_col:
            cells.append(fmt_delta(r["delta"], show_ref=len(refs) > 1))
        out.append(cells)
    return out


# ------------------------------------------------------------------------ outputs
def to_markdown(data: dict[str, Any], *, title: str = "dllm-bench leaderboard", plots: Sequence[str] = ()) -> str:
    """README-ready Markdown: one table per comparability group (pytablewriter)."""
    import pytablewriter as ptw

    parts = [f"# {title}", "",
             "Generated by `dllm-bench leaderboard build`; do not edit by hand. Rows are ranked only "
             "against rows with the same comparability key: each table's heading names the key fields "
             "in which its group differs from the others. Metrics: value ± standard error across "
             "problems (n problems). NFE/sample: model forward calls per generated sample.", ""]
    if not data["groups"]:
        parts += ["No entries yet.", ""]
    for p in plots:
        parts += [f"![{p}]({p})", ""]
    for g in data["groups"]:
        cols, _ = table_columns(g)
        w = ptw.MarkdownTableWriter(headers=cols, value_matrix=table_rows(g), margin=1)
        w.type_hints = [ptw.String] * len(cols)
        parts += [f"## {g['index']}. {_md_escape(g['heading'])}", "", w.dumps().rstrip(), ""]
    return "\n".join(parts)


def _md_escape(s: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", s)


CSV_HEAD = ["group", "group_heading", "task", "key_digest", "row", "model", "family", "ar_baseline", "sampler",
            *SETTINGS, "metric", "value", "stderr", "n", "k", "nfe_total", "nfe_per_sample", "tokens_per_forward",
            "generated_tokens", "tokens_per_s", "wall_s", "status", "delta_reference", "delta", "delta_stderr",
            "delta_mode", "entry_id"]


def to_csv(data: dict[str, Any]) -> str:
    """Long-format CSV: one line per (row, metric)."""
    import pytablewriter as ptw

    lines = []
    for g in data["groups"]:
        for r in g["rows"]:
            d = r["delta"] if r["delta"] and not r["delta"].get("is_reference") else {}
            for m, mv in r["metrics"].items():
                dm = d if d.get("metric") == m else {}
                lines.append([g["index"], g["heading"], g["task"], g["key_digest"], r["label"], r["model"],
                              r["family"], r["ar_baseline"], r["sampler"], *r["settings"].values(), m, mv["value"],
                              mv["stderr"], mv["n"], mv.get("k"), r["nfe_total"], r["nfe_per_sample"],
                              r["tokens_per_forward"], r["generated_tokens"], r["tokens_per_s"], r["wall_s"],
                              r["status"], dm.get("reference"), dm.get("diff"), dm.get("stderr"), dm.get("mode"),
                              r["entry_id"]])
    w = ptw.CsvTableWriter(headers=CSV_HEAD, value_matrix=lines)
    return w.dumps()


def plot_svg(groups: Sequence[dict[str, Any]], task: str) -> str:
    """Inline SVG (matplotlib): primary metric vs tokens/s and vs NFE/sample for one task.

    One colour per comparability group; AR baselines are squares; error bars are ± stderr.
    """
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    ax_tps, ax_nfe = fig.subplots(1, 2, sharey=True)
    colors = matplotlib.colormaps["tab10"]
    metric = None
    for ci, g in enumerate(groups):
        metric = metric or g["primary_metric"]
        for r in g["rows"]:
            m = r["metrics"].get(g["primary_metric"])
            if m is None:
                continue
            for ax, x in ((ax_tps, r["tokens_per_s"]), (ax_nfe, r["nfe_per_sample"])):
                if x is None:
                    continue
                ax.errorbar([x], [m["value"]], yerr=[m["stderr"] or 0.0], fmt="s" if r["ar_baseline"] else "o",
                            color=colors(ci % 10), capsize=3, markersize=7,
                            label=f"group {g['index']}" if ax is ax_tps else None)
                ax.annotate(r["label"], (x, m["value"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax_tps.set_xlabel("tokens/s")
    ax_nfe.set_xlabel("NFE per sample (model forward calls)")
    ax_tps.set_ylabel(metric or "metric")
    for ax in (ax_tps, ax_nfe):
        ax.grid(alpha=0.3)
    handles, labels = ax_tps.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        ax_tps.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    fig.suptitle(f"{task}: {metric or 'metric'} vs speed (squares: AR baselines; bars: ± stderr)", fontsize=10)
    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dllm-bench"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog / doctype for inlining


def _tasks(data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for g in data["groups"]:
        if g["task"] not in out:
            out.append(g["task"])
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;max-width:1500px}
h1{font-size:1.5em} h2{font-size:1.1em;margin-top:2em} .muted{color:#57606a;font-size:.9em}
table.lb{border-collapse:collapse;font-size:.85em;margin:.5em 0} table.lb th,table.lb td{border:1px solid #d0d7de;
padding:4px 8px;text-align:left;vertical-align:top} table.lb th{background:#f6f8fa;cursor:pointer;user-select:none;
white-space:nowrap} table.lb th.sorted-asc::after{content:" \\25B2"} table.lb th.sorted-desc::after{content:" \\25BC"}
tr.ar-baseline{background:#fff8c5} .badge{display:inline-block;background:#9a6700;color:#fff;border-radius:8px;
padding:0 6px;font-size:.8em;margin-left:4px} td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.3em 0} pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.8em} figure{margin:1em 0}
.cfg{font-family:ui-monospace,monospace;font-size:.8em;min-width:16em;max-width:30em;word-break:break-word}
td.num,td.metric{white-space:nowrap}
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
          var c=(x.n&&y.n)?(x.v-y.v):String(x.v).localeCompare(String(y.v));return asc?c:-c;});
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


def to_html(data: dict[str, Any], *, title: str = "dllm-bench leaderboard") -> str:
    """A self-contained static page: sortable tables, sampler configs, AR baselines, inline SVG plots."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f'<p class="muted">{data["n_entries"]} entries in {len(data["groups"])} comparability group(s). '
             "Rows are ranked only against rows with the same comparability key; each heading names the key "
             "fields in which its group differs from the others. Metrics: value ± standard error across "
             "problems (n). Click a column heading to sort. "
             '<span class="badge">AR baseline</span> marks autoregressive baseline rows.</p>']
    if not data["groups"]:
        parts.append("<p>No entries yet.</p>")
    for task in _tasks(data):
        groups = [g for g in data["groups"] if g["task"] == task]
        parts.append(f'<figure class="plot" id="plot-{e(_slug(task))}" data-task="{e(task)}">{plot_svg(groups, task)}'
                     f"<figcaption class=\"muted\">{e(task)}: primary metric vs tokens/s and vs NFE per sample, "
                     "one colour per comparability group.</figcaption></figure>")
    for g in data["groups"]:
        cols, delta_col = table_columns(g)
        cells = table_rows(g)
        parts.append(f'<h2 id="group-{g["index"]}">{g["index"]}. {e(g["heading"])}</h2>')
        parts.append(f'<details><summary>comparability key {e(g["key_digest"][:16])}</summary><pre>'
                     f'{e(json.dumps(g["key"], indent=2, sort_keys=True))}</pre></details>')
        head = "".join(f"<th>{e(c)}</th>" for c in cols) + "<th>sampler config</th>"
        parts.append(f'<table class="lb sortable" id="table-{g["index"]}" data-group="{g["index"]}">'
                     f"<thead><tr>{head}</tr></thead><tbody>")
        for r, row_cells in zip(g["rows"], cells):
            tds = []
            for c, text in zip(cols, row_cells):
                sort = _sort_value(r, c, g, delta_col)
                attr = f' data-sort="{e(str(sort))}" class="num"' if sort is not None else ""
                body = e(text)
                if c == "row" and r["ar_baseline"]:
                    body += '<span class="badge">AR baseline</span>'
                tds.append(f"<td{attr}>{body}</td>")
            cfg = ", ".join(f"{k}={v}" for k, v in sorted(r["sampler_config"].items()))
            tds.append(f'<td class="cfg">{e(cfg)}</td>')
            cls = ' class="ar-baseline"' if r["ar_baseline"] else ""
            parts.append(f'<tr{cls} data-entry="{e(r["entry_id"])}">{"".join(tds)}</tr>')
        parts.append("</tbody></table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _sort_value(r: dict[str, Any], col: str, g: dict[str, Any], delta_col: str | None) -> float | None:
    if col in g["metrics"]:
        m = r["metrics"].get(col)
        return None if m is None else m["value"]
    if col == "NFE/sample":
        return r["nfe_per_sample"]
    if col == "tokens/s":
        return r["tokens_per_s"]
    if delta_col is not None and col == delta_col and r["delta"] and "diff" in r["delta"]:
        return r["delta"]["diff"]
    if col in SETTINGS and isinstance(r["settings"][col], (int, float)) and not isinstance(r["settings"][col], bool):
        return r["settings"][col]
    return None


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "task"


def build(entries: Sequence[LoadedEntry], output: str | Path, *, reference: str | None = None,
          title: str = "dllm-bench leaderboard") -> dict[str, Path]:
    """Write README.md, leaderboard.csv, leaderboard.json, index.html and plot-<task>.svg.

    Each file is written atomically (a failed write leaves the former file and no ``.tmp``).

    Returns:
        ``{"markdown", "csv", "json", "html", "plot:<task>"...}`` -> written path.

    Raises:
        OSError: a file could not be written (no space, read-only, ...).
    """
    from .outdir import write_atomic

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    data = leaderboard_data(entries, reference)
    written: dict[str, Path] = {}
    plots = []
    for task in _tasks(data):
        p = out / f"plot-{_slug(task)}.svg"
        write_atomic(p, plot_svg([g for g in data["groups"] if g["task"] == task], task))
        written[f"plot:{task}"] = p
        plots.append(p.name)
    for name, fname, text in (("markdown", "README.md", to_markdown(data, title=title, plots=plots)),
                              ("csv", "leaderboard.csv", to_csv(data)),
                              ("json", "leaderboard.json", json.dumps(data, indent=2, sort_keys=True) + "\n"),
                              ("html", "index.html", to_html(data, title=title))):
        write_atomic(out / fname, text)
        written[name] = out / fname
    return written


def _load(entries: str | Path) -> list[LoadedEntry]:
    return load_entries(entries, allow_empty=True)


def build_cli(entries: str | Path, output: str | Path, *, reference: str | None = None) -> dict[str, Path]:
    """``dllm-bench leaderboard build``: write every output; log the paths on stderr."""
    from .console import console

    loaded = _load(entries)
    written = build(loaded, output, reference=reference)
    for name, p in written.items():
        console.print(f"wrote {name}: {p}", markup=False, highlight=False, soft_wrap=True)
    return written


def show_cli(entries: str | Path, *, as_json: bool = False, reference: str | None = None) -> None:
    """``dllm-bench leaderboard show``: one rich table per group on stdout, or ``--json``."""
    import sys

    from rich.table import Table

    data = leaderboard_data(_load(entries), reference)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    con = results_console()
    if not data["groups"]:
        con.print("no entries")
    for g in data["groups"]:
        cols, _ = table_columns(g)
        rows = table_rows(g)
        # terminal view: drop the model column and settings that no row of the group has
        keep = [i for i, c in enumerate(cols) if c != "model" and not (c in SETTINGS and all(r[i] == "-" for r in rows))]
        t = Table(title=f"{g['index']}. {g['heading']}", title_justify="left")
        for i in keep:
            t.add_column(cols[i], overflow="fold", no_wrap=cols[i] == "row")
        for r, cells in zip(g["rows"], rows):
            t.add_row(*(cells[i] for i in keep), style="yellow" if r["ar_baseline"] else None)
        con.print(t)
