"""``dllm-bench train``: :func:`run_trainer` reads a trainer config file (plus ``--set``
overrides), validates it naming the field and its source, runs the preflight checks, then the
trainer (see :class:`dllm_bench.trainers.base.Trainer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dllm_bench.errors import BadInputError
from dllm_bench.parallel import quiet_import_accelerate
from dllm_bench.plugins import StrictModel

from .base import Trainer
from .config import TrainConfig
from .run_dir import TrainResult


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    cur = data
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def load_config_file(path: Path, *, with_node: bool = False) -> Any:
    """Read a YAML/JSON trainer config (a mapping).

    With ``with_node``, returns ``(data, node)``: ``node`` is the composed YAML tree for
    :func:`dllm_bench.jsonl.yaml_line` (field line numbers).

    Raises:
        BadInputError: missing file, unreadable or non-UTF-8 file (with line), YAML syntax
            error (with line), not a mapping.
    """
    from dllm_bench.jsonl import load_yaml

    p = Path(path)
    if not p.is_file():
        raise BadInputError("config file not found", path=p)
    data, node = load_yaml(p, "trainer config")
    data = data or {}
    if not isinstance(data, dict):
        raise BadInputError("a trainer config must be a mapping of field: value", path=p)
    return (data, node) if with_node else data


def preflight(cfg: TrainConfig) -> None:
    """Check what a validated trainer config points at before a run writes anything: the
    model source (:func:`dllm_bench.models.check_model_source`), the task (it resolves and
    its ``task_args`` validate) and a ``data_file`` (exists, UTF-8); ``task`` xor
    ``data_file`` where the config has both fields.

    Raises:
        BadInputError: naming the field (and the file where one is at fault).
    """
    from dllm_bench import registry
    from dllm_bench.jsonl import read_text
    from dllm_bench.models import check_model_source

    check_model_source(str(cfg.model), dict(cfg.model_args or {}), arg_source="model_args")
    fields = type(cfg).model_fields  # trainers differ: RL needs a task, SFT a task or a data file
    task = getattr(cfg, "task", None) if "task" in fields else None
    data_file = getattr(cfg, "data_file", None) if "data_file" in fields else None
    if "data_file" in fields and "task" in fields and (task is None) == (data_file is None):
        raise BadInputError("sft config: give exactly one of 'task' and 'data_file'")
    if task is not None:
        t_cls = registry.load("tasks", task)
        registry.validate_config(t_cls.Config, dict(getattr(cfg, "task_args", None) or {}),
                                 what=f"task {task!r} task_args")
    if data_file is not None:
        p = Path(data_file)
        if not p.is_file():
            raise BadInputError("data file not found", path=p)
        read_text(p, "data file")


def build_trainer(trainer_name: str, config: dict[str, Any] | StrictModel, *, source: str | None = None) -> Trainer:
    """Instantiate trainer plugin ``trainer_name`` with a validated config."""
    from dllm_bench import registry

    if isinstance(config, StrictModel):
        config = config.model_dump(mode="json")
    return registry.create("trainers", trainer_name, dict(config), source=source)


def _validate_sources(cls: Any, trainer_name: str, data: dict[str, Any], node: Any,
                      config_path: str | Path | None, overrides: dict[str, Any]) -> None:
    """Validate the merged config and blame the right source: a field set by ``--set`` is
    reported as ``--set key=value``, a field from the file with the file and its line.

    Raises:
        BadInputError: the first invalid field, naming ``--set`` or the config file and line.
    """
    from pydantic import ValidationError

    from dllm_bench.jsonl import yaml_line

    try:
        cls.Config.model_validate(data)
        return
    except ValidationError as exc:
        errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "(root)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    for key, value in overrides.items():
        parts = tuple(key.split("."))
        n = min(len(parts), len(loc))
        if n and tuple(str(p) for p in loc[:n]) == parts[:n]:
            raise BadInputError(f"--set {key}={value!r}: {trainer_name} config field {dotted!r}: "
                                f"{err['msg']}{more}") from None
    line = yaml_line(node, loc) if node is not None else None
    raise BadInputError(f"{trainer_name} config: field {dotted!r}: {err['msg']}{more}",
                        path=str(config_path) if config_path else "--set", line=line) from None


def run_trainer(trainer_name: str, config_path: str | Path | None, output_dir: str | Path,
                overrides: dict[str, Any] | None = None) -> TrainResult:
    """Run trainer ``trainer_name`` with the config file (plus ``--set`` overrides, dotted keys
    allowed) into ``output_dir``; resumes when ``output_dir`` holds a checkpoint.

    Nothing is written to ``output_dir`` until the config validates and its model, task
    and data file pass :func:`preflight`.

    Raises:
        BadInputError: unknown trainer, unreadable or invalid config (names the field and the
            file and line, or ``--set`` for an override), a bad model / task / data file.
    """
    import sys
    from contextlib import redirect_stdout

    from dllm_bench import registry

    cls = registry.load("trainers", trainer_name)  # an unknown name fails before the config is read
    data, node = load_config_file(Path(config_path), with_node=True) if config_path is not None else ({}, None)
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    _validate_sources(cls, trainer_name, data, node, config_path, overrides or {})
    trainer = build_trainer(trainer_name, data, source=str(config_path) if config_path else None)
    preflight(trainer.config)  # model, task and data file checked before the run directory is touched
    trainer.preflight()  # the trainer's own weight-free checks
    with redirect_stdout(sys.stderr):  # library prints (DeepSpeed) stay off stdout
        quiet_import_accelerate()
        return trainer.train(Path(output_dir))
