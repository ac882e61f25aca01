"""Leaderboard build/show/migrate: systems × tasks tables over the fixture entries (rows are
systems, columns are tasks under one protocol, off-protocol cells in a separate table whose
heading names the difference), the Δ-vs-reference column, verification of every entry
(tampered entries refused, ``--allow-unverified`` marks them), the committed default
entries (dLLM rows and both AR baselines in one table), Markdown/CSV/JSON outputs, and the
HTML page in a real headless Chromium (DOM dump, sorter, screenshot, no console errors)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_bench.cli import app
from dllm_bench.entries import load_entries
from dllm_bench.gate import compare
from dllm_bench.leaderboard import LEADERBOARD_FORMAT, Section, build, leaderboard_data, markdown_table, table_columns
from dllm_bench.schema import sha256_file

from .conftest import REPO, assert_same_tree
from .make_fixture_entries import GSM8K
from .make_fixture_entries import build as build_fixtures

FIX = REPO / "tests" / "fixtures" / "entries"
DEFAULT = REPO / "leaderboards" / "entries" / "default"
V1 = REPO / "tests" / "fixtures" / "v1"
CHROMIUM = Path("/usr/bin/chromium")
runner = CliRunner()
SFT9 = "tiny-block-dlm (SFT) · threshold 0.9"
SFT7 = "tiny-block-dlm (SFT) · threshold 0.7"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build(load_entries(FIX), tmp_path_factory.mktemp("lb"))


@pytest.fixture(scope="module")
def data() -> dict:
    return leaderboard_data(load_entries(FIX))


@pytest.fixture(scope="module")
def default_data() -> dict:
    return leaderboard_data(load_entries(DEFAULT))


def _rows(t: dict) -> dict[str, dict]:
    return {r["name"]: r for r in t["rows"]}


def test_fixtures_are_current(tmp_path):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} absent: cannot regenerate the fixture entries")
    build_fixtures(tmp_path)
    assert_same_tree(FIX, tmp_path, ".venv/bin/python tests/make_fixture_entries.py")


def test_rows_are_systems_and_columns_share_a_protocol(data):
    entries = load_entries(FIX)
    main, other = data["tables"]
    assert data["format"] == LEADERBOARD_FORMAT == "dllm-bench-leaderboard/2"
    assert main["kind"] == "main" and [c["task"] for c in main["columns"]] == ["gsm8k"]
    col = main["columns"][0]
    # six of the seven entries share the 40-problem, 1-sample protocol: one row each
    assert len(main["rows"]) == 6 and len(other["rows"]) == 1
    assert {r["cells"]["gsm8k"]["protocol_digest"] for r in main["rows"]} == {col["protocol_digest"]}
    by_id = {e.entry.entry_id: e for e in entries}
    for t in data["tables"]:
        for r in t["rows"]:
            for c in r["cells"].values():
                assert by_id[c["entry_id"]].entry.system_digest == r["system_digest"]
    # the two rows labelled "tiny-block-dlm (SFT)" are different systems: named apart by the knob
    assert set(_rows(main)) == {"tiny-block-dlm (TraceRL)", SFT9, SFT7, "tiny-block-dlm (SFT, seed 1)",
                                "tiny-block-dlm (regressed)", "tiny-ar"}
    vals = [r["cells"]["gsm8k"]["metrics"]["accuracy"]["value"] for r in main["rows"]]
    assert vals == sorted(vals, reverse=True)
    assert [r["name"] for r in main["rows"] if r["ar_baseline"]] == ["tiny-ar"]
    # knobs shared by every row are said once under the table; per-row differences in the row
    common = {s["knob"]: s for s in main["common_settings"]}
    assert common["temperature"]["value"] == 0.0 and common["temperature"]["samplers"] is None
    assert common["block_size"]["samplers"] == ["block-dynamic"]
    assert _rows(main)[SFT7]["knobs"] == {"cache_mode": "prefix", "threshold": 0.7}
    assert _rows(main)["tiny-ar"]["knobs"] == {"cache_mode": "kv"}


def test_cell_under_another_protocol_gets_a_table_named_by_the_difference(data):
    other = data["tables"][1]
    assert other["kind"] == "protocol-differs"
    assert other["heading"] == "gsm8k — documents evaluated: 10 vs 40; samples per problem: 4 vs 1"
    assert other["differences"] == ["documents evaluated: 10 vs 40", "samples per problem: 4 vs 1"]
    (row,) = other["rows"]
    assert row["name"] == "tiny-block-dlm (SFT)" and row["cells"]["gsm8k"]["metrics"]["pass@4"]["n"] == 10
    assert "4 samples per problem" in other["columns"][0]["protocol_words"]
    assert "10 of 1319 documents evaluated" in other["columns"][0]["protocol_words"]


def test_delta_column_is_compare_of_the_pair(data):
    rows = _rows(data["tables"][0])
    d = rows["tiny-block-dlm (TraceRL)"]["cells"]["gsm8k"]["delta"]
    # the TraceRL row names "tiny-block-dlm (SFT)": of the two SFT rows, the one with its knobs
    assert d["reference"] == SFT9 and d["mode"] == "paired"
    by_id = {e.entry.entry_id: e for e in load_entries(FIX)}
    c = compare(by_id[rows[SFT9]["cells"]["gsm8k"]["entry_id"]],
                by_id[rows["tiny-block-dlm (TraceRL)"]["cells"]["gsm8k"]["entry_id"]], "accuracy")
    assert (d["diff"], d["stderr"], d["n"]) == (c["diff"], c["stderr"], c["n"])
    # by hand: 4 of 40 problems (rows 2, 7, 12, 17) gained, none lost
    assert d["diff"] == pytest.approx(0.1)
    assert d["stderr"] == pytest.approx(math.sqrt((4 * 0.9 ** 2 + 36 * 0.1 ** 2) / 39 / 40))
    assert rows[SFT9]["cells"]["gsm8k"]["delta"] == {"reference": None, "is_reference": True}
    assert rows[SFT7]["cells"]["gsm8k"]["delta"] is None
    assert rows["tiny-block-dlm (regressed)"]["cells"]["gsm8k"]["delta"] is None  # names no reference


def test_reference_option_adds_deltas_everywhere():
    data = leaderboard_data(load_entries(FIX), reference="tiny-block-dlm (SFT)")
    main, other = data["tables"]
    deltas = {r["name"]: r["cells"]["gsm8k"]["delta"] for r in main["rows"]}
    assert deltas["tiny-block-dlm (regressed)"]["diff"] == pytest.approx(-0.2)
    assert deltas["tiny-block-dlm (SFT, seed 1)"]["diff"] == pytest.approx(-0.025)
    assert deltas["tiny-ar"]["reference"] == SFT9 and deltas["tiny-ar"]["diff"] == pytest.approx(-0.05)
    assert other["rows"][0]["cells"]["gsm8k"]["delta"] is None  # the reference row alone in its table
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(FIX), "--reference", "tiny-block-dlm (SFTT)"])
    assert r.exit_code == 2 and "'tiny-block-dlm (SFTT)' is no row's label" in r.output and "Traceback" not in r.output


def test_default_entries_one_table_with_dllm_rows_and_both_ar_baselines(default_data):
    (t,) = default_data["tables"]
    assert t["kind"] == "main" and [c["task"] for c in t["columns"]] == ["gsm8k_calc", "gsm8k"]
    rows = _rows(t)
    assert set(rows) == {"dLLM SFT · static", "dLLM TraceRL · static", "dLLM SFT · dynamic",
                         "dLLM TraceRL · dynamic", "AR twin SFT", "SmolLM2-135M-Instruct (AR)",
                         *(f"dLLM {m} · dynamic {t}" for m in ("SFT", "TraceRL") for t in ("0.7", "0.5"))}
    assert {n for n, r in rows.items() if r["ar_baseline"]} == {"AR twin SFT", "SmolLM2-135M-Instruct (AR)"}
    assert set(rows["SmolLM2-135M-Instruct (AR)"]["cells"]) == {"gsm8k"}
    d = rows["dLLM TraceRL · static"]["cells"]["gsm8k_calc"]["delta"]
    assert d["reference"] == "dLLM SFT · static" and d["mode"] == "paired" and round(d["diff"], 3) == 0.037
    md = markdown_table(t)
    smol = next(ln for ln in md.splitlines() if ln.startswith("| SmolLM2"))
    assert smol.count("| –") == 2 and "0.000 ± 0.000 (n=16)" in smol  # no gsm8k_calc cell
    assert [c["name"] for c in table_columns(t)] == [
        "system", "family", "sampler", "gsm8k_calc accuracy", "gsm8k_calc TPF / NFE", "gsm8k_calc Δ accuracy",
        "gsm8k accuracy", "gsm8k TPF / NFE"]


def test_committed_leaderboard_and_readme_are_current(default_data, tmp_path):
    for d in ("entries", "baselines"):
        for f in (REPO / "leaderboards" / d).rglob("entry.json"):
            assert json.loads(f.read_text())["schema_version"] == "2", f"run: dllm-bench leaderboard migrate {f}"
    out = build(load_entries(REPO / "leaderboards" / "entries"), tmp_path)
    assert out["markdown"].read_text() == (REPO / "leaderboards" / "README.md").read_text(), \
        "run: dllm-bench leaderboard build --entries leaderboards/entries --output leaderboards"
    assert markdown_table(default_data["tables"][0]) in (REPO / "README.md").read_text(), \
        "README.md's leaderboard table is not the one built from leaderboards/entries/default"


def test_markdown_tables(built, data):
    md = built["markdown"].read_text()
    assert re.findall(r"^## (\d+)\. ", md, flags=re.MULTILINE) == ["1", "2"]
    assert "## 2. gsm8k — documents evaluated: 10 vs 40; samples per problem: 4 vs 1" in md
    assert "| tiny-ar " in md and "AR baseline" in md
    assert f"gsm8k Δ accuracy vs {SFT9}" in md
    assert "+0.100 ± 0.048 (paired, n=40)" in md
    assert "0.400 ± 0.078 (n=40)" in md  # SFT accuracy 16/40, se sqrt(.4*.6/39)
    assert "![gsm8k: accuracy vs tokens per forward and NFE](plot-gsm8k.svg)" in md
    assert md.count("- **protocol of gsm8k**: gsm8k v1 · dataset packaged/test") == 2
    assert "- **common sampler settings**: all rows: attention backend sdpa" in md
    tables = re.split(r"^## ", md, flags=re.MULTILINE)[1:]
    for t, text in zip(data["tables"], tables):
        assert len([ln for ln in text.splitlines() if ln.startswith("|")]) == 2 + len(t["rows"])


def test_csv_and_json(built, data):
    rows = list(csv.DictReader(io.StringIO(built["csv"].read_text())))
    assert len(rows) == sum(len(c["metrics"]) for t in data["tables"] for r in t["rows"] for c in r["cells"].values())
    tr = next(r for r in rows if r["system"] == "tiny-block-dlm (TraceRL)" and r["metric"] == "accuracy")
    assert float(tr["value"]) == 0.5 and float(tr["delta"]) == pytest.approx(0.1)
    assert tr["delta_reference"] == SFT9 and tr["delta_mode"] == "paired" and tr["verified"] == "True"
    assert tr["task"] == "gsm8k" and tr["protocol_digest"] == data["tables"][0]["columns"][0]["protocol_digest"]
    assert tr["system_digest"] == _rows(data["tables"][0])["tiny-block-dlm (TraceRL)"]["system_digest"]
    written = json.loads(built["json"].read_text())
    assert "sections" not in written  # no published counterpart, no sweep (knob "threshold" is not a sampler's)
    assert written == json.loads(json.dumps(data, sort_keys=True))


def test_plot_series_are_named_by_system(built, data):
    svg = built["plot:gsm8k"].read_text()
    for r in data["tables"][0]["rows"]:
        assert html_escape(r["name"]) in svg
    assert "group" not in svg and "tokens per forward" in svg and "NFE per sample" in svg
    assert "tiny-ar [AR baseline]" in svg


def html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=False)


def test_extra_sections_reach_every_output(tmp_path):
    s = Section(id="published", title="Published vs reproduced", markdown="| a |\n|---|\n| 1 |",
                html='<table id="pub"><tr><td>1</td></tr></table>', data={"rows": 1})
    out = build(load_entries(FIX), tmp_path, sections=[s])
    assert "## Published vs reproduced\n\n| a |" in out["markdown"].read_text()
    assert '<section id="section-published"><h2>Published vs reproduced</h2><table id="pub">' in out["html"].read_text()
    assert json.loads(out["json"].read_text())["sections"] == {"published": {"rows": 1}}


def test_cli_build_and_show(tmp_path):
    r = runner.invoke(app, ["leaderboard", "build", "--entries", str(FIX), "--output", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert {p.name for p in tmp_path.iterdir()} >= {"README.md", "leaderboard.csv", "leaderboard.json",
                                                     "index.html", "plot-gsm8k.svg"}
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(FIX), "--json"])
    assert r.exit_code == 0
    assert len(json.loads(r.stdout)["tables"]) == 2
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(FIX)])
    assert r.exit_code == 0 and "tiny-block-dlm (TraceRL)" in r.stdout and "AR baseline" in r.stdout
    assert "protocol of gsm8k: gsm8k v1" in r.stdout and "samples per problem: 4 vs 1" in r.stdout


def test_empty_and_bad_entries(tmp_path):
    empty = tmp_path / "entries"
    empty.mkdir()
    r = runner.invoke(app, ["leaderboard", "build", "--entries", str(empty), "--output", str(tmp_path / "out")])
    assert r.exit_code == 0 and "No entries yet" in (tmp_path / "out" / "README.md").read_text()
    (empty / "bad.json").write_text(json.dumps({"schema_version": "1", "label": 3}))
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(empty)])
    assert r.exit_code == 2 and "bad.json" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------ verification
def _sft9_copy(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the fixture entries; returns (dir, the SFT threshold-0.9 entry, its samples)."""
    d = tmp_path / "entries"
    shutil.copytree(FIX, d)
    e = next(le for le in load_entries(d) if le.name == "tiny-block-dlm (SFT)"
             and le.entry.system.sampler.config.get("threshold") == 0.9)
    return d, e.path, e.samples_path


def _tamper(kind: str, entry: Path, samples: Path) -> str:
    data = json.loads(entry.read_text())
    if kind == "metric":
        data["metrics"]["accuracy"]["value"] = 0.9
        entry.write_text(json.dumps(data))
        return "metric accuracy: stored value 0.9000, recomputed 0.4000"
    if kind == "truncated":
        lines = samples.read_text().splitlines(keepends=True)
        samples.write_text("".join(lines[:-5]))
        return "does not match the entry's"
    if kind == "truncated-resealed":  # also the sha256 in the entry re-sealed: the count still fails
        lines = samples.read_text().splitlines(keepends=True)
        samples.write_text("".join(lines[:-5]))
        data["samples"]["sha256"] = sha256_file(samples)
        entry.write_text(json.dumps(data))
        return "per-sample file has 35 records, the entry says 40"
    samples.unlink()
    return "is missing"


@pytest.mark.parametrize("kind", ["metric", "truncated", "truncated-resealed", "deleted"])
def test_tampered_entry_is_refused_by_build(kind, tmp_path):
    d, entry, samples = _sft9_copy(tmp_path)
    why = _tamper(kind, entry, samples)
    out = tmp_path / "out"
    r = runner.invoke(app, ["leaderboard", "build", "--entries", str(d), "--output", str(out)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert "'tiny-block-dlm (SFT)' does not verify" in lines[0] and why in lines[0]
    assert not (out / "README.md").exists()
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(d)])
    assert r.exit_code == 2 and why in r.output


def test_allow_unverified_lists_marked_and_never_a_reference(tmp_path):
    d, entry, samples = _sft9_copy(tmp_path)
    _tamper("metric", entry, samples)
    out = tmp_path / "out"
    r = runner.invoke(app, ["leaderboard", "build", "--entries", str(d), "--output", str(out), "--allow-unverified"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "leaderboard.json").read_text())
    rows = _rows(data["tables"][0])
    sft = rows[SFT9]
    assert sft["verified"] is False and sft["cells"]["gsm8k"]["verified"] is False
    assert sft["cells"]["gsm8k"]["problems"] == ["metric accuracy: stored value 0.9000, recomputed 0.4000"]
    assert sft["cells"]["gsm8k"]["delta"] is None  # not marked as anyone's reference
    d_tr = rows["tiny-block-dlm (TraceRL)"]["cells"]["gsm8k"]["delta"]
    assert "diff" not in d_tr and d_tr["skipped"] == "unverified reference"
    assert data["n_unverified"] == 1 and data["tables"][0]["rows"][-1]["name"] == SFT9  # listed last
    md = (out / "README.md").read_text()
    assert f"| {SFT9} (unverified) " in md and "+0.100" not in md
    lines = [r for r in csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())) if r["system"] == SFT9]
    assert lines and {r["verified"] for r in lines} == {"False"} and not any(r["delta"] for r in lines)
    page = (out / "index.html").read_text()
    assert 'class="unverified"' in page and '<span class="badge unverified">unverified</span>' in page
    # --reference on the unverified row: no Δ against it anywhere
    data = leaderboard_data(load_entries(d), reference="tiny-block-dlm (SFT)", allow_unverified=True)
    deltas = [c["delta"] for r in data["tables"][0]["rows"] for c in r["cells"].values() if c["delta"]]
    assert deltas and not any("diff" in x and x["reference"] == SFT9 for x in deltas)


# ------------------------------------------------------------------------- migrate
def test_migrate_rewrites_v1_in_place_and_is_idempotent(tmp_path):
    d = tmp_path / "v1"
    shutil.copytree(V1, d)
    entry, samples = d / "dllm-sft-static" / "entry.json", d / "dllm-sft-static" / "samples.jsonl"
    before = json.loads(entry.read_text())
    assert before["schema_version"] == "1"
    samples_bytes = samples.read_bytes()
    r = runner.invoke(app, ["leaderboard", "migrate", str(d)])
    assert r.exit_code == 0, r.output
    assert f"rewrote {entry} (schema 1 -> 2)" in r.stdout and "1 entry rewritten" in r.stdout
    after = json.loads(entry.read_text())
    assert after["schema_version"] == "2" and after["entry_id"] == before["entry_id"]
    assert "key" not in after and after["protocol"]["generation"]["max_new_tokens"] == 8
    assert samples.read_bytes() == samples_bytes and not list(d.rglob("*.tmp"))
    assert load_entries(entry)[0].entry == load_entries(V1 / "dllm-sft-static" / "entry.json")[0].entry
    text = entry.read_text()
    r = runner.invoke(app, ["leaderboard", "migrate", str(d)])
    assert r.exit_code == 0 and "0 entries rewritten" in r.stdout and entry.read_text() == text
    r = runner.invoke(app, ["leaderboard", "migrate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such entry file or directory" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------- real browser check
# Records every uncaught error, unhandled rejection and console.error into the DOM, where
# --dump-dom shows it; inserted first in <head>, before the page's own script runs.
ERROR_HOOK = ("<script>window.__errs=[];function __rec(m){window.__errs.push(String(m));"
              "document.documentElement.setAttribute('data-js-errors',JSON.stringify(window.__errs));}"
              "window.addEventListener('error',function(e){__rec(e.message)});"
              "window.addEventListener('unhandledrejection',function(e){__rec(e.reason)});"
              "var __ce=console.error;console.error=function(){__rec(Array.prototype.join.call(arguments,' '));"
              "__ce.apply(console,arguments);};</script>")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=180, check=False)


def _js_errors(p: subprocess.CompletedProcess) -> list[str]:
    """Errors the page raised: from the DOM hook, and console messages Chromium logged."""
    m = re.search(r'data-js-errors="([^"]*)"', p.stdout)
    errs = json.loads(m.group(1).replace("&quot;", '"')) if m else []
    return errs + re.findall(r"CONSOLE[^\]]*\]\s*(\".*)", p.stderr)


def _with_hook(page: Path, *, probe: bool = False) -> None:
    text = page.read_text()
    text = text.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + ERROR_HOOK, 1)
    if probe:
        text = text.replace("<script>\n(function(){", "<script>\n(function(){throw new Error('probe-error');", 1)
    page.write_text(text)


def test_html_in_headless_chromium(built, data, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    site = tmp_path / "site"
    shutil.copytree(built["html"].parent, site)
    _with_hook(site / "index.html")
    url = (site / "index.html").as_uri()
    p = _chromium(tmp_path, "--dump-dom", url)
    dom = p.stdout
    assert "<table" in dom, "Chromium produced no DOM"
    assert _js_errors(p) == []
    for t in data["tables"]:
        m = re.search(rf'<table[^>]*id="table-{t["index"]}".*?</table>', dom, flags=re.DOTALL)
        assert m, t["index"]
        head, body = m.group(0).split("<tbody>")
        assert len(re.findall(r"<tr[ >]", body)) == len(t["rows"])
        for c in table_columns(t):  # every task column
            assert f">{html_escape(c['name'])}</th>" in head
        for r in t["rows"]:  # every system row
            assert html_escape(r["name"]) in body
            for c in r["cells"].values():
                assert c["entry_id"] in body
    for t in data["tables"]:
        assert html_escape(t["heading"]) in dom
        for c in t["columns"]:
            assert html_escape(c["protocol_words"]) in dom.replace("&#x27;", "'")
    fig = re.search(r'<figure class="plot" id="plot-gsm8k".*?</figure>', dom, flags=re.DOTALL)
    assert fig and "<svg" in fig.group(0) and "tokens per forward" in fig.group(0)
    assert 'class="ar-baseline"' in dom and "AR baseline" in dom
    # the inline sorter runs in the browser: #sort=1:<TPF / NFE column>:asc orders by tokens per forward
    t1 = data["tables"][0]
    col = [c["name"] for c in table_columns(t1)].index("gsm8k TPF / NFE")
    p = _chromium(tmp_path, "--dump-dom", f"{url}#sort=1:{col}:asc")
    assert _js_errors(p) == []
    t = re.search(r'<table[^>]*id="table-1".*?</table>', p.stdout, flags=re.DOTALL).group(0)
    order = re.findall(r'<tr[^>]*data-system="([0-9a-f]+)"', t)
    expect = [r["system_digest"] for r in sorted(t1["rows"], key=lambda r: r["cells"]["gsm8k"]["tokens_per_forward"])]
    assert order == expect and "sorted-asc" in t and order != [r["system_digest"] for r in t1["rows"]]
    shot = tmp_path / "leaderboard.png"
    _chromium(tmp_path, "--window-size=1400,1800", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # the error check itself: the same page with a throw in its script is caught both ways
    shutil.copy(built["html"], site / "probe.html")
    _with_hook(site / "probe.html", probe=True)
    errs = _js_errors(_chromium(tmp_path, "--dump-dom", (site / "probe.html").as_uri()))
    assert any("probe-error" in e for e in errs) and len(errs) >= 1


def test_run_directories_skip_non_entry_json(tmp_path):
    """Run directories hold DONE.json / lmeval_results.json next to entry.json: not entries."""
    src = next(FIX.rglob("*.json"))
    d = tmp_path / "evals" / "one"
    d.mkdir(parents=True)
    shutil.copy(src, d / "entry.json")
    (d / "DONE.json").write_text(json.dumps({"digest": "x", "entry": str(d / "entry.json")}))
    (d / "lmeval_results.json").write_text(json.dumps({"results": {}}))
    assert [e.path.name for e in load_entries(tmp_path / "evals")] == ["entry.json"]


# ----------------------------------------- published vs reproduced, accuracy vs parallelism
EXAMPLES = REPO / "tests" / "fixtures" / "published-examples"


@pytest.fixture(scope="module")
def examples_built(tmp_path_factory) -> dict[str, Path]:
    return build(load_entries(EXAMPLES), tmp_path_factory.mktemp("examples"), title="examples")


def test_published_and_aup_views_reach_every_output(examples_built):
    md = examples_built["markdown"].read_text()
    js = json.loads(examples_built["json"].read_text())
    page = examples_built["html"].read_text()
    # published vs reproduced: one row per measured system x source with a counterpart
    pub = js["sections"]["published"]
    assert {(r["system"], r["arxiv_id"]) for r in pub} >= {("TraDo-4B-Instruct · static (synthetic)", "2509.06949"),
                                                           ("Qwen2.5-7B-Instruct (synthetic)", "2512.22234")}
    assert "## Published vs reproduced" in md and "| 91.2 " in md and 'id="section-published"' in page
    # AUP: the threshold sweep is one curve named by what its labels share, AR / static single points
    aup = {r["system"]: r for r in js["sections"]["aup"]}
    sweep = aup["TraDo-4B-Instruct · dynamic"]
    assert [p["tokens_per_forward"] for p in sweep["points"]] == [2.0, 3.2, 4.0]
    assert sweep["aup"] == pytest.approx(2 * 90 + 0.5 * 1.2 * (87.5 * math.exp(-3 * (1 - 87.5 / 90)) + 90))
    assert aup["Qwen2.5-7B-Instruct (synthetic)"]["aup"] == pytest.approx(90.0)
    assert "## Accuracy vs parallelism (AUP)" in md and "arXiv 2601.07568" in md
    svg = re.search(r'<section id="section-aup">.*?</section>', page, flags=re.DOTALL).group(0)
    assert "<svg" in svg and "TraDo-4B-Instruct · dynamic (AUP 282.3)" in svg.replace("&#183;", "·")


def test_default_entries_threshold_curves(tmp_path):
    """The default recipe's thresholds 0.9 / 0.7 / 0.5 make one curve per dLLM; no published
    counterpart exists for the tiny models."""
    out = build(load_entries(REPO / "leaderboards" / "entries" / "default"), tmp_path)
    sections = json.loads(out["json"].read_text())["sections"]
    assert set(sections) == {"aup"}
    curves = {c["system"]: c for c in sections["aup"]}
    for name in ("dLLM SFT · dynamic", "dLLM TraceRL · dynamic"):
        assert len(curves[name]["points"]) == 3


def test_examples_page_in_headless_chromium(examples_built, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    site = tmp_path / "site"
    shutil.copytree(examples_built["html"].parent, site)
    _with_hook(site / "index.html")
    p = _chromium(tmp_path, "--dump-dom", (site / "index.html").as_uri())
    assert _js_errors(p) == []
    dom = p.stdout
    for sid, rows in (("published", 6), ("aup", 3)):
        m = re.search(rf'<table[^>]*id="table-{sid}".*?</table>', dom, flags=re.DOTALL)
        assert m and len(re.findall(r"<tr[ >]", m.group(0).split("<tbody>")[1])) == rows, sid
    assert dom.count("<svg") >= 2
    shot = tmp_path / "examples.png"
    _chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", (site / "index.html").as_uri())
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_show_prints_the_extra_views(tmp_path):
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(EXAMPLES)])
    assert r.exit_code == 0 and "Published vs reproduced" in r.stdout and "Accuracy vs parallelism (AUP)" in r.stdout
    assert "282.3" in r.stdout
    r = runner.invoke(app, ["leaderboard", "show", "--entries", str(EXAMPLES), "--json"])
    assert set(json.loads(r.stdout)["sections"]) == {"published", "aup"}
