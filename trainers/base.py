"""The trainer contract (:class:`Trainer`) and starting a training run: :func:`open_run`
(what every trainer's ``train`` calls first). The ``dllm-bench train`` command (config file
+ ``--set`` overrides, validation naming the field and its source, preflight checks) is
:func:`dllm_bench.trainers.cli.run_trainer`.

Every trainer (``sft``, ``tracerl``, ``value``, ``block-adapt``, ``dipo``,
``random-mask-rl``) is one module with a pydantic ``Config`` (a
:class:`.config.TrainConfig` subclass) and a class whose ``train(run_dir)`` drives an
:class:`.engine.Engine`; the run directory's layout is in :mod:`.run_dir`.

Resume is *exact*: besides the restored optimizer/scheduler/RNG states, every random draw
of a step comes from a generator seeded by ``(seed, step)``
(:meth:`.engine.Engine.step_generator`), so step ``k+1`` after a resume sees the same
batch, masks and rollouts as in an uninterrupted run.

Distributed use: ``accelerate launch [--num_processes N] -m dllm_bench train --trainer T
--config FILE``; single process (CPU, gloo) needs no launcher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from .config import TrainConfig
from .engine import Engine
from .run_dir import TrainResult, check_config, finished_result
from .seeding import seed_everything


def open_run(trainer: str, cfg: TrainConfig, run_dir: Path,
             ds_models: tuple[str, ...] = ("policy",)) -> Engine | TrainResult:
    """Start (or resume) a run: the stored :class:`TrainResult` when ``run_dir`` holds a
    finished run, else a new :class:`Engine` after checking the config against the run's
    (:func:`check_config`) and seeding. ``config.json`` is written later, by
    :meth:`Engine.resume`, once the trainer's model-dependent checks have passed.

    Raises:
        BadInputError: ``run_dir`` holds trained state of a run with a different config.
    """
    done = finished_result(run_dir)
    if done is not None:
        return done
    check_config(run_dir, trainer, cfg)
    seed_everything(cfg.seed)
    return Engine(cfg, run_dir, trainer, ds_models=ds_models)


class Trainer(ABC):
    """The trainer contract: a training method (entry-point group ``dllm_bench.trainers``).
    Class attributes ``name``, ``version`` (bump when the weights trained from the same
    config could change) and ``Config`` (a :class:`.config.TrainConfig` subclass); built as
    ``cls(config)``, the validated config kept in ``self.config``.

    ``dllm-bench train`` and recipes call :meth:`preflight` once (after the config, its model,
    task and data file were checked, before the run directory is touched), then
    :meth:`train` (``run_dir`` may hold a checkpoint of the same config: resume). A plugin
    implements :meth:`train`; :meth:`preflight` defaults to no checks.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[TrainConfig]]
    config: TrainConfig

    @abstractmethod
    def train(self, run_dir: Path) -> TrainResult:
        """Train to completion (resuming from ``run_dir``'s checkpoint when it holds one) and
        return the final Hugging Face-format weights directory and the metrics log path;
        a finished ``run_dir`` returns its stored result without training."""

    def preflight(self) -> None:
        """Weight-free checks of the config against its model and task (seconds, no weights
        loaded); raise :class:`dllm_bench.errors.BadInputError` naming the field. Default: none."""
        return None
