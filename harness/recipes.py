"""Recipes: a train -> evaluate cycle as one validated YAML file (``dllm-bench run``).

A recipe lists

* ``models`` — built from a spec (``tiny-block-dlm`` ...) and saved under the run
  directory, or loaded as they are (``smollm2-135m``, a checkpoint directory, a hub id);
* ``stages`` — trainer runs (SFT, value model, TraceRL, DiPO, block-adapt ...); each
  stage's config is validated by the trainer plugin's own pydantic ``Config`` and
  produces a new model id (its final Hugging Face-format weights);
* ``evaluations`` — model x task x sampler, each writing a leaderboard entry + per-sample
  records (AR baselines use the same tasks and scorer);
* optional ``reference`` labels on evaluations: the leaderboard shows
  ``Δ metric vs reference ± stderr`` (paired per-problem when both have samples).

Strings of the form ``${id}`` anywhere in a stage config or an evaluation's ``model``
are replaced by the path (or spec) of model ``id``; ``${run_dir}`` by the run directory.

Resumability: a finished stage leaves ``stages/<name>/DONE.json`` (with the hash of its
resolved config) and is skipped when re-run with the same config; an evaluation leaves
``evals/<slug>/DONE.json`` and is skipped, and an interrupted one resumes sample by
sample (:class:`dllm_bench.results.SampleStore`). Re-running a finished recipe into the
same output directory does no training and no generation.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, PrivateAttr, model_validator
from rich.markup import escape

from .console import console, stdout_console
from .errors import BadInputError, LocatedValueError, RunFailedError
from .outdir import write_atomic
from .plugins import StrictModel
from .schema import canonical_json, sha256_text

if TYPE_CHECKING:
    from .parallel import Ranks

log = logging.getLogger("dllm_bench.recipes")

DEFAULT_RECIPE = "default"
_REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


class ModelDecl(StrictModel):
    id: str = Field(description="Handle used by stages and evaluations (${id})")
    spec: str = Field(description="Built-in spec (tiny-block-dlm, tiny-full-dlm, tiny-ar, smollm2-135m), "
                                  "checkpoint directory, .gguf file or hub id")
    args: dict[str, Any] = Field(default_factory=dict, description="Model args (sizes, block_size, dtype ...)")
    build: bool = Field(True, description="Built-in specs: build from config and save under the run dir "
                                          "(false: load at evaluation time as given)")


class StageDecl(StrictModel):
    name: str = Field(description="Stage name (its directory under stages/)")
    trainer: str = Field(description="Trainer plugin name")
    config: dict[str, Any] = Field(description="Trainer config (validated by the trainer's Config); ${id} allowed")
    produces: str = Field(description="Model id given to this stage's final weights")


class EvalDecl(StrictModel):
    label: str = Field(description="Row label in the leaderboard: one system evaluated on several tasks keeps one "
                       "label (one row, a cell per task); (label, task) is unique within the recipe")
    model: str = Field(description="Model id (or spec)")
    task: str
    sampler: str
    sampler_args: dict[str, Any] = Field(default_factory=dict)
    task_args: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, description="First N documents only")
    samples: int = Field(1, ge=1, description="Samples per problem")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call")
    reference: str | None = Field(None, description="Label of the row this one is compared against (Δ ± stderr)")


class Recipe(StrictModel):
    _path: Path | None = PrivateAttr(None)
    _node: Any = PrivateAttr(None)

    name: str
    description: str = ""
    seed: int = Field(0, description="Base seed for model init, training and sampling")
    models: list[ModelDecl] = Field(default_factory=list)
    stages: list[StageDecl] = Field(default_factory=list)
    evaluations: list[EvalDecl] = Field(default_factory=list)
    gpu_required: bool = Field(False, description="The recipe needs CUDA (checked before running)")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads for the whole run (null = "
                                      "torch's default); 1 is fastest for the tiny CPU models, whose matrices are too "
                                      "small to split")
    deterministic: bool | None = Field(None, description="Deterministic mode (dllm_bench.determinism): pin the "
                                       "CPU code paths, thread counts and deterministic algorithms before torch "
                                       "loads, so any x86-64 machine gives the same bits. null = on for CPU recipes "
                                       "(gpu_required false), off for GPU recipes")

    def where(self, *loc: Any) -> dict[str, Any]:
        """``path=`` / ``line=`` keywords for a :class:`BadInputError` about the part of the
        recipe at ``loc`` (e.g. ``"stages", 0, "config"``): the recipe file and that part's
        line; the recipe's name when it was not read from a file."""
        from .jsonl import yaml_line

        if self._path is None:
            return {"path": self.name, "line": None}
        return {"path": str(self._path), "line": yaml_line(self._node, loc)}

    def line_of(self, *prefix: Any) -> Callable[[tuple], int | None]:
        """The ``line`` argument of :func:`dllm_bench.plugins.validate_config` for a config
        nested at ``prefix``: a failing field's location within it -> its recipe line."""
        return lambda loc: self.where(*prefix, *loc)["line"]

    @property
    def threads(self) -> int:
        """Intra-op threads in deterministic mode: ``torch_threads``, else 1."""
        return self.torch_threads or 1

    def wants_deterministic(self) -> bool:
        """The recipe's own choice: ``deterministic``, else on exactly when no GPU is required."""
        return (not self.gpu_required) if self.deterministic is None else self.deterministic

    @model_validator(mode="after")
    def _ids_resolve(self) -> Recipe:
        """Every ``${id}`` and evaluation model names a declared or produced model, ids and labels
        are unique, references name labels; each error is located at its field (its line in the
        recipe file, :class:`~dllm_bench.errors.LocatedValueError`)."""
        from .errors import did_you_mean

        known: set[str] = set()
        for i, m in enumerate(self.models):
            if m.id in known:
                raise LocatedValueError(f"duplicate model id {m.id!r}", ("models", i, "id"))
            known.add(m.id)
        for i, st in enumerate(self.stages):
            for ref in sorted(_refs(st.config)):
                if ref not in known and ref != "run_dir":
                    raise LocatedValueError(f"stage {st.name!r} refers to unknown model ${{{ref}}}"
                                            f"{did_you_mean(ref, sorted(known))}",
                                            ("stages", i, "config", *_ref_loc(st.config, ref)))
            if st.produces in known:
                raise LocatedValueError(f"stage {st.name!r} produces {st.produces!r}, which already exists",
                                        ("stages", i, "produces"))
            known.add(st.produces)
        labels: list[str] = []
        seen: set[tuple[str, str]] = set()
        for i, ev in enumerate(self.evaluations):
            if (ev.label, ev.task) in seen:
                raise LocatedValueError(f"duplicate evaluation label {ev.label!r} for task {ev.task!r}",
                                        ("evaluations", i, "label"))
            seen.add((ev.label, ev.task))
            labels.append(ev.label)
        for i, ev in enumerate(self.evaluations):
            if _model_id(ev.model) not in known:
                raise LocatedValueError(f"evaluation {ev.label!r} refers to unknown model {ev.model!r}"
                                        f"{did_you_mean(_model_id(ev.model), sorted(known))}",
                                        ("evaluations", i, "model"))
            if ev.reference is not None and (ev.reference, ev.task) not in seen:
                raise LocatedValueError(f"evaluation {ev.label!r}: reference {ev.reference!r} is not a label "
                                        f"on task {ev.task!r}"
                                        f"{did_you_mean(ev.reference, labels)}", ("evaluations", i, "reference"))
        return self


def eval_dirname(recipe: Recipe, ev: EvalDecl) -> str:
    """An evaluation's directory under ``evals/``: the label's slug, with the task appended
    when the recipe uses that label on more than one task."""
    tasks = {e.task for e in recipe.evaluations if e.label == ev.label}
    return _slug(ev.label) if len(tasks) <= 1 else f"{_slug(ev.label)}--{_slug(ev.task)}"


def _model_id(ref: str) -> str:
    """An evaluation's model reference, ``id`` or ``${id}``, as the bare id."""
    m = _REF.fullmatch(ref)
    return m.group(1) if m else ref


def _ref_loc(obj: Any, ref: str) -> tuple:
    """The location (keys / indices) inside ``obj`` of the first string that uses ``${ref}``."""
    if isinstance(obj, str):
        return ()
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        if ref in _refs(v):
            return (k, *_ref_loc(v, ref))
    return ()


def _refs(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return set(_REF.findall(obj))
    if isinstance(obj, dict):
        return set().union(*(_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_refs(v) for v in obj)) if obj else set()
    return set()


def _subst(obj: Any, table: dict[str, str]) -> Any:
    if isinstance(obj, str):
        m = _REF.fullmatch(obj)
        if m:
            return table[m.group(1)]
        return _REF.sub(lambda mm: str(table[mm.group(1)]), obj)
    if isinstance(obj, dict):
        return {k: _subst(v, table) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_subst(v, table) for v in obj]
    return obj


# ------------------------------------------------------------------------- loading
def packaged_recipes() -> dict[str, Path]:
    """name -> path of the recipes shipped inside the package."""
    root = resources.files("dllm_bench") / "recipes"
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def load_recipe(name_or_path: str | None) -> tuple[Recipe, Path]:
    """Load a packaged recipe by name or a YAML file by path.

    Raises:
        BadInputError: unknown name (with did-you-mean), unreadable or non-UTF-8 file, YAML
            error (with line) or a field that does not validate (with the field's line).
    """
    from .jsonl import load_yaml, yaml_line
    from .registry import did_you_mean, validate_config

    name_or_path = name_or_path or DEFAULT_RECIPE
    packaged = packaged_recipes()
    path = Path(name_or_path)
    if name_or_path in packaged and not path.exists():
        path = packaged[name_or_path]
    if not path.exists():
        raise BadInputError(f"no recipe named {name_or_path!r} and no such file"
                            f"{did_you_mean(name_or_path, sorted(packaged))} packaged recipes: "
                            f"{', '.join(sorted(packaged))}")
    data, node = load_yaml(path, "recipe")
    if not isinstance(data, dict):
        raise BadInputError("a recipe must be a YAML mapping", path=path)
    rec = validate_config(Recipe, data, what="recipe", source=str(path), line=lambda loc: yaml_line(node, loc))
    rec._path, rec._node = path, node
    return rec, path


# ------------------------------------------------------------------------ planning
def plan(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """Resolve every plugin and validate every trainer / sampler / task config.

    Returns the ordered list of steps. Raises :class:`BadInputError` / ``PluginError``.
    """
    from . import registry

    table = {m.id: str(run_dir / "models" / m.id) if _is_built(m) else m.spec for m in recipe.models}
    table["run_dir"] = str(run_dir)
    steps: list[dict[str, Any]] = []
    for i, m in enumerate(recipe.models):
        _check_model(recipe, m.spec, m.args, ("models", i))
        steps.append({"step": "model", "id": m.id, "spec": m.spec, "build": _is_built(m), "path": table[m.id]})
    for st in recipe.stages:
        table[st.produces] = str(run_dir / "stages" / st.name / "final")
    for i, st in enumerate(recipe.stages):
        cls = _load_plugin(recipe, "trainers", st.trainer, ("stages", i, "trainer"))
        cfg = _seeded(_subst(st.config, table), recipe.seed, cls.Config)
        registry.validate_config(cls.Config, cfg, what=f"stage {st.name!r} ({st.trainer}) config",
                                 source=recipe.where()["path"],
                                 line=recipe.line_of("stages", i, "config"))
        steps.append({"step": "train", "name": st.name, "trainer": st.trainer, "produces": st.produces,
                      "config": cfg, "config_sha256": sha256_text(canonical_json(cfg))})
    for i, ev in enumerate(recipe.evaluations):
        s_cls = _load_plugin(recipe, "samplers", ev.sampler, ("evaluations", i, "sampler"))
        registry.validate_config(s_cls.Config, ev.sampler_args, what=f"evaluation {ev.label!r} sampler args",
                                 source=recipe.where()["path"],
                                 line=recipe.line_of("evaluations", i, "sampler_args"))
        if not ev.task.startswith("lm-eval:"):
            t_cls = _load_plugin(recipe, "tasks", ev.task, ("evaluations", i, "task"))
            registry.validate_config(t_cls.Config, ev.task_args, what=f"evaluation {ev.label!r} task args",
                                     source=recipe.where()["path"],
                                     line=recipe.line_of("evaluations", i, "task_args"))
        model = table.get(_model_id(ev.model), ev.model)
        steps.append({"step": "eval", "label": ev.label, "model": model, "task": ev.task, "sampler": ev.sampler,
                      "decl": ev.model_dump(mode="json")})
    return steps


def _load_plugin(recipe: Recipe, kind: str, name: str, loc: tuple) -> Any:
    """``registry.load(kind, name)``; an unknown or broken plugin is reported at ``loc`` in the recipe file.

    Raises:
        BadInputError: naming the recipe file and the line of ``loc``.
    """
    from . import registry

    try:
        return registry.load(kind, name)
    except BadInputError as exc:
        raise BadInputError(exc.message, **recipe.where(*loc)) from None


def _check_model(recipe: Recipe, spec: str, args: dict[str, Any], loc: tuple) -> None:
    """:func:`dllm_bench.models.check_model_source` for a model the recipe declares, reported at
    ``loc`` (its ``spec`` line, or its ``args`` line for a bad arg) in the recipe file.

    Raises:
        BadInputError: unknown spec (with did-you-mean), a bad checkpoint directory, a bad arg.
    """
    from .models import check_model_args, check_model_source

    try:
        check_model_args(dict(args), "model arg")
    except BadInputError as exc:
        raise BadInputError(exc.message, **recipe.where(*loc, "args")) from None
    try:
        check_model_source(spec, dict(args))
    except BadInputError as exc:
        msg = exc.message if exc.path is None else f"{exc.path}{f':{exc.line}' if exc.line else ''}: {exc.message}"
        raise BadInputError(msg, **recipe.where(*loc, "spec")) from None


def _seeded(cfg: dict[str, Any], seed: int, config_cls: type[StrictModel]) -> dict[str, Any]:
    """A stage config with the recipe's seed where the stage sets none: the trainer's ``seed``
    and, for a model built from a spec (``tiny-*``), its ``model_args.init_seed``."""
    cfg = dict(cfg)
    fields = config_cls.model_fields
    if "seed" in fields:
        cfg.setdefault("seed", seed)
    if "model_args" in fields and str(cfg.get("model", "")).startswith("tiny-"):
        cfg["model_args"] = {"init_seed": seed, **dict(cfg.get("model_args") or {})}
    return cfg


def _is_built(m: ModelDecl) -> bool:
    return m.build and m.spec.startswith("tiny-")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-").lower()


def _done(path: Path, digest: str) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if d.get("digest") == digest else None


# ------------------------------------------------------------------------- running
def run_recipe(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) a recipe into ``run_dir``; returns a summary with the entry paths.

    Nothing is written to ``run_dir`` until :func:`plan` has validated the whole recipe.

    Raises:
        BadInputError: the recipe does not validate (:func:`plan`).
        RunFailedError: a stage or an evaluation failed (finished work is kept).
        OSError: a file of the run could not be written (a full disk, ...), naming it; a
            half-written model directory is removed (the re-run builds it again).
    """
    import random

    import torch

    if recipe.wants_deterministic():
        from . import determinism

        determinism.after_import(recipe.threads)  # sets torch's threads (torch_threads, else 1)
    elif recipe.torch_threads:
        torch.set_num_threads(recipe.torch_threads)
    if recipe.gpu_required:
        if not torch.cuda.is_available():
            raise RunFailedError(f"recipe {recipe.name!r} needs a CUDA GPU; use --dry-run to print its plan")
    from .parallel import ranks

    steps = plan(recipe, run_dir)  # everything validated before the run directory is written
    group = ranks()  # under a launch: rank 0 writes the shared files, the others wait for it
    run_dir.mkdir(parents=True, exist_ok=True)
    if group.main:
        write_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    summary: dict[str, Any] = {"recipe": recipe.name, "run_dir": str(run_dir), "stages": [], "entries": [],
                               "skipped": []}
    t0 = time.time()
    random.seed(recipe.seed)
    for step in steps:
        if step["step"] == "model" and step["build"]:
            _build_model(recipe, step, summary, group)
        elif step["step"] == "train":
            _train(step, run_dir, summary, group)
        elif step["step"] == "eval":
            _evaluate(recipe, step, run_dir, summary, group)
    summary["wall_s"] = round(time.time() - t0, 1)
    if group.main:
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _build_model(recipe: Recipe, step: dict, summary: dict, group: Ranks) -> None:
    """Build and save a model from its spec (rank 0 of a launch; the others wait for it)."""
    from .models import load_model

    path = Path(step["path"])
    m = next(m for m in recipe.models if m.id == step["id"])
    digest = sha256_text(canonical_json({"spec": m.spec, "args": m.args, "seed": recipe.seed}))
    if _done(path / "DONE.json", digest):
        summary["skipped"].append(f"model {m.id}")
        return
    if group.main:
        console.print("[bold]model[/] " + escape(f"{m.id}: building {m.spec} {m.args}"))
        args = {"init_seed": recipe.seed, **m.args}
        adapter = load_model(m.spec, **args)
        try:
            adapter.save(path)
            write_atomic(path / "DONE.json", json.dumps({"digest": digest, "num_parameters": adapter.num_parameters}))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # a half-written model directory is rebuilt on re-run anyway
            raise
    group.barrier()


def _train(step: dict, run_dir: Path, summary: dict, group: Ranks) -> None:
    """Run a training stage (every rank of a launch trains: the trainer's own data parallelism);
    rank 0 then links its final weights and writes the stage's marker."""
    from . import registry

    stage_dir = run_dir / "stages" / step["name"]
    marker = stage_dir / "DONE.json"
    if _done(marker, step["config_sha256"]):
        summary["skipped"].append(f"stage {step['name']}")
        return
    if group.main:
        console.print("[bold]stage[/] " + escape(f"{step['name']}: {step['trainer']}"))
    t0 = time.time()
    trainer = registry.create("trainers", step["trainer"], step["config"], source=step["name"])
    result = trainer.train(stage_dir)
    final = Path(result.final_dir)
    expected = stage_dir / "final"
    if group.main:
        if final.resolve() != expected.resolve():
            if expected.exists() or expected.is_symlink():
                expected.unlink()
            expected.symlink_to(final.resolve(), target_is_directory=True)
        info = result.to_dict()
        marker.write_text(json.dumps({"digest": step["config_sha256"], "final_dir": str(final),
                                      "wall_s": round(time.time() - t0, 1), "result": info}, default=str))
    group.barrier()
    summary["stages"].append({"name": step["name"], "wall_s": round(time.time() - t0, 1)})


def _evaluate(recipe: Recipe, step: dict, run_dir: Path, summary: dict, group: Ranks) -> None:
    """Run an evaluation (shared by the ranks of a launch, :func:`dllm_bench.evaluate.run_eval`);
    rank 0 writes its marker."""
    from .evaluate import run_eval

    ev = EvalDecl.model_validate(step["decl"])
    out = run_dir / "evals" / eval_dirname(recipe, ev)
    digest = sha256_text(canonical_json({"decl": step["decl"], "model": step["model"], "seed": recipe.seed,
                                         "weights": _weights_marker(step["model"])}))
    done = _done(out / "DONE.json", digest)
    if done and (out / "entry.json").exists():
        summary["skipped"].append(f"eval {ev.label}")
        summary["entries"].append(str(out / "entry.json"))
        return
    if group.main:
        console.print("[bold]eval[/] " + escape(f"{ev.label}: {ev.task} / {ev.sampler} / {step['model']}"))
    entry = run_eval(model=step["model"], task=ev.task, sampler=ev.sampler, sampler_args=ev.sampler_args,
                     model_args=ev.model_args, task_args=ev.task_args, limit=ev.limit, samples=ev.samples,
                     batch_size=ev.batch_size, seed=recipe.seed, output=out, sandbox=None,
                     data_source="packaged", record_trajectory=False, label=ev.label, reference=ev.reference)
    if entry.status.state == "failed":
        raise RunFailedError(f"evaluation {ev.label!r} failed: {'; '.join(entry.status.errors[:3])}")
    if group.main:
        (out / "DONE.json").write_text(json.dumps({"digest": digest, "entry": str(out / "entry.json")}))
    group.barrier()
    summary["entries"].append(str(out / "entry.json"))


def _weights_marker(model: str) -> str | None:
    """A cheap fingerprint of a local model directory (its DONE/sidecar files), else None."""
    p = Path(model)
    if not p.is_dir():
        return None
    parts = []
    for name in ("DONE.json", "dllm_bench.json", "model.safetensors"):
        f = p / name
        if f.exists():
            st = f.stat()
            parts.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts) or None


# ----------------------------------------------------------------------------- CLI
def run_cli(*, recipe: str | None, list_only: bool, output: Path | None, dry_run: bool, as_json: bool,
            seed: int | None = None, deterministic: bool | None = None) -> None:
    """Body of ``dllm-bench run``.

    ``seed`` overrides the recipe's seed; ``deterministic`` its deterministic mode (None:
    the recipe's choice, :meth:`Recipe.wants_deterministic`). In deterministic mode the
    process is pinned (:func:`dllm_bench.determinism.enter`) before torch is imported.
    """
    if list_only:
        rows: list[dict[str, Any]] = []
        for name, path in sorted(packaged_recipes().items()):
            r, _ = load_recipe(str(path))
            rows.append({"name": name, "description": r.description, "gpu_required": r.gpu_required})
        if as_json:
            stdout_console.print_json(json.dumps(rows))
        else:
            from rich.table import Table

            t = Table(title="packaged recipes")
            for c in ("name", "gpu", "description"):
                t.add_column(c)
            for row in rows:
                t.add_row(row["name"], "yes" if row["gpu_required"] else "no", escape(row["description"]))
            stdout_console.print(t)
        return
    rec, path = load_recipe(recipe)
    if seed is not None:
        rec = rec.model_copy(update={"seed": seed})
    if deterministic is not None:
        rec = rec.model_copy(update={"deterministic": deterministic})
    run_dir = output or Path("runs") / (rec.name if seed is None else f"{rec.name}-seed{seed}")
    if dry_run:
        steps = plan(rec, run_dir)
        if as_json:
            stdout_console.print_json(json.dumps(steps, default=str))
            return
        from rich.table import Table

        t = Table(title=f"plan: {rec.name} -> {run_dir}")
        for c in ("#", "step", "what", "details"):
            t.add_column(c)
        for i, s in enumerate(steps, 1):
            if s["step"] == "model":
                t.add_row(str(i), "model", s["id"], f"{'build' if s['build'] else 'load'} {s['spec']}")
            elif s["step"] == "train":
                t.add_row(str(i), "train", s["name"], f"{s['trainer']} -> {s['produces']}")
            else:
                t.add_row(str(i), "eval", escape(s["label"]), escape(f"{s['task']} / {s['sampler']} / {s['model']}"))
        stdout_console.print(t)
        return
    if rec.wants_deterministic():
        from . import determinism

        determinism.enter(rec.threads)
    from .outdir import claim_output

    claim_output(run_dir)  # one writer per run directory; before any model load
    from .parallel import quiet_rank

    if quiet_rank():  # a rank other than 0 of a launch: it shares the work; rank 0 writes and prints the rest
        run_recipe(rec, run_dir)
        return
    console.print(f"running recipe [bold]{escape(rec.name)}[/] ({escape(str(path))}) into {escape(str(run_dir))}"
                  f"{' (deterministic mode)' if rec.wants_deterministic() else ''}")
    summary = run_recipe(rec, run_dir)
    from .entries import load_entries
    from .leaderboard import build, show_cli

    entries = [le for p in summary["entries"] for le in load_entries(p)]
    outputs = build(entries, run_dir / "leaderboard", title=f"dllm-bench: {rec.name}")
    console.print(f"leaderboard written to {outputs['markdown'].parent}; {len(summary['skipped'])} finished "
                  f"steps skipped; wall {summary['wall_s']} s", markup=False, highlight=False, soft_wrap=True)
    show_cli(run_dir / "evals", as_json=as_json)
