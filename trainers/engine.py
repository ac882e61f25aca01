"""The training engine: accelerate (+ DeepSpeed ZeRO-2/3) around the trainers' own loops.

:class:`Engine` prepares models and optimizers for the backend, runs backward and optimizer
steps with the trainer's micro-batching, gives every step its seeded generator and gathers
ZeRO-3 parameters for generation; what it writes to the run directory (checkpoints, metrics,
final weights, result) is :class:`.run_dir.RunFiles`.

DeepSpeed is selected by the config's ``deepspeed`` field (``zero2``, ``zero3`` or a JSON
path); the packaged JSON files live in ``dllm_bench/trainers/configs/`` and their ``"auto"``
fields are filled from the config (:func:`deepspeed_config`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from dllm_bench.errors import BadInputError
from dllm_bench.jsonl import JsonlStore
from dllm_bench.parallel import free_port, quiet_import_accelerate

from .config import TrainConfig
from .run_dir import RunFiles, TrainerState
from .schedule import lr_lambda
from .seeding import train_seed

CONFIG_DIR = "configs"
DEEPSPEED_PRESETS = {"zero2": "zero2.json", "zero3": "zero3.json"}


def ensure_dist_env() -> None:
    """Single-process defaults for the torch.distributed env vars DeepSpeed insists on."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")


def packaged_config(name: str) -> Path:
    """Path of a file shipped in ``dllm_bench/trainers/configs``."""
    return Path(str(resources.files("dllm_bench.trainers").joinpath(CONFIG_DIR).joinpath(name)))


def deepspeed_config(spec: str, cfg: TrainConfig) -> dict[str, Any]:
    """Load a DeepSpeed JSON (preset name or path) and fill its ``"auto"`` fields from ``cfg``.

    The engine runs micro-batches itself, so ``train_micro_batch_size_per_gpu`` and
    ``gradient_accumulation_steps`` are 1 and accumulation boundaries are set per backward.

    Raises:
        BadInputError: unknown preset, missing file or invalid JSON.
    """
    path = packaged_config(DEEPSPEED_PRESETS[spec]) if spec in DEEPSPEED_PRESETS else Path(spec)
    if not path.is_file():
        raise BadInputError(f"deepspeed config {spec!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) "
                            f"nor an existing JSON file")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInputError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds.pop("train_batch_size", None)
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.max_grad_norm
    for key, on in (("bf16", cfg.mixed_precision == "bf16"), ("fp16", cfg.mixed_precision == "fp16")):
        sect = ds.setdefault(key, {})
        if sect.get("enabled", "auto") == "auto":
            sect["enabled"] = on
    ds.setdefault("zero_allow_untested_optimizer", True)
    zo = ds.setdefault("zero_optimization", {})
    for k in list(zo):
        if zo[k] == "auto":
            zo.pop(k)
    return ds


# --------------------------------------------------------------------------- engine
class Engine(RunFiles):
    """accelerate wrapper used by every trainer.

    Args:
        cfg: the trainer config.
        run_dir: the run directory (created).
        trainer: trainer name (metrics, sidecar).

    Models are trained through :meth:`prepare` and :meth:`backward`/:meth:`optimizer_step`;
    micro-batching is the trainer's (``last`` marks the accumulation boundary), so the same
    loop runs on plain torch, DDP and DeepSpeed engines.
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, trainer: str, ds_models: tuple[str, ...] = ("policy",)):
        quiet_import_accelerate()
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DeepSpeedPlugin

        self.cfg, self.trainer = cfg, trainer
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # a fresh accelerate state per run (several runs may share one process, e.g. a recipe)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        plugins = None
        self.ds_models = ds_models
        self.zero_stage = 0
        if cfg.deepspeed:
            ensure_dist_env()
            ds = deepspeed_config(cfg.deepspeed, cfg)
            self.zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
            plugins = {name: DeepSpeedPlugin(hf_ds_config=json.loads(json.dumps(ds))) for name in ds_models}
            if len(plugins) == 1:
                plugins = next(iter(plugins.values()))
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, deepspeed_plugins=plugins,
                                       project_dir=str(self.run_dir))
        self.state = TrainerState()
        self.accelerator.register_for_checkpointing(self.state)
        self.schedulers: list[torch.optim.lr_scheduler.LambdaLR] = []
        self._t0 = time.time()
        self._tb = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._metrics: JsonlStore | None = None  # the metrics log, opened on first use (main process)

    # -- properties
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def uses_deepspeed(self) -> bool:
        return bool(self.cfg.deepspeed)

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3

    def step_generator(self, step: int, stream: int = 0) -> torch.Generator:
        """CPU generator seeded by ``(seed, step, stream, rank)`` — all of a step's randomness."""
        g = torch.Generator()
        g.manual_seed(train_seed(self.cfg.seed, step, stream, self.accelerator.process_index))
        return g

    # -- models and optimizers
    def make_optimizer(self, module: torch.nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (betas, eps, weight decay from the config)."""
        params = [p for p in module.parameters() if p.requires_grad]
        beta1, beta2 = self.cfg.adam_betas
        return torch.optim.AdamW(params, lr=lr or self.cfg.lr, betas=(beta1, beta2),
                                 eps=self.cfg.adam_eps, weight_decay=self.cfg.weight_decay)

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, total_updates: int,
                name: str = "policy",
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """Wrap ``module``/``optimizer`` for the backend; build the LR scheduler.

        ``name`` selects the DeepSpeed plugin when several models are trained (policy, value).

        Returns:
            ``(model, optimizer, scheduler)``; the scheduler is stepped by
            :meth:`optimizer_step` and checkpointed.
        """
        if self.cfg.gradient_checkpointing:
            for m in module.modules():
                if hasattr(m, "gradient_checkpointing_enable"):
                    m.gradient_checkpointing_enable()  # type: ignore[operator]  # torch: Module.__getattr__ typing
                    break
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg, total_updates))
        if self.uses_deepspeed and len(self.ds_models) > 1:
            self.accelerator.state.select_deepspeed_plugin(name)
        model, opt = self.accelerator.prepare(module, optimizer)
        self.accelerator.register_for_checkpointing(sched)
        self.schedulers.append(sched)
        return model, opt, sched

    def prepare_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A no-grad model (frozen reference): moved to the device, eval mode, full copy per rank."""
        module.requires_grad_(False)
        return module.to(self.device).eval()

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    @contextmanager
    def full_params(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The unwrapped module with full parameters (gathered under ZeRO-3) for generation."""
        inner = self.unwrap(model)
        if self.zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=None):
                yield inner
        else:
            yield inner

    def _is_ds(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ == "DeepSpeedEngine"

    def sync_context(self, model: torch.nn.Module, last: bool) -> AbstractContextManager[Any]:
        """Skip DDP gradient all-reduce on non-final micro-batches."""
        if last or self._is_ds(model) or self.accelerator.num_processes == 1:
            return nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, model: torch.nn.Module, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch's (already normalised) loss; ``last`` = boundary."""
        if self._is_ds(model):
            ds: Any = model  # a DeepSpeedEngine (deepspeed is untyped)
            ds.set_gradient_accumulation_boundary(last)
            ds.backward(loss)
        else:
            self.accelerator.backward(loss)

    def optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LambdaLR | None) -> float:
        """Clip, step, zero grads, step the LR schedule (unless ``scheduler`` is None: the
        caller steps it). Returns the pre-clip gradient norm."""
        if self._is_ds(model):
            ds: Any = model  # a DeepSpeedEngine (deepspeed is untyped)
            ds.step()
            gn = ds.get_global_grad_norm()
            gn = float(gn.item() if hasattr(gn, "item") else (gn or 0.0))
        else:
            if self.cfg.max_grad_norm > 0:
                gn = float(self.accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm))
            else:
                gn = float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                   if p.grad is not None])) if any(
                    p.grad is not None for p in model.parameters()) else 0.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return gn

    def min_over_processes(self, n: int) -> int:
        """The smallest ``n`` over all processes (``n`` itself in a single process); used so
        every process takes the same number of optimizer steps."""
        if self.accelerator.num_processes == 1:
            return int(n)
        t = torch.tensor([int(n)], device=self.device)
        return int(self.accelerator.gather(t).min())

    def current_lr(self, scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
        return float(scheduler.get_last_lr()[0])

