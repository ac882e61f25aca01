"""The shared training engine: accelerate (+ DeepSpeed ZeRO-2/3), checkpoints with exact
resume, metrics logging, final Hugging Face weights, and ``run_trainer``.

Every trainer (``sft``, ``tracerl``, ``value``, ``block-adapt``, ``dipo``,
``random-mask-rl``) is one module with a pydantic ``Config`` (a :class:`TrainConfig`
subclass) and a class whose ``train(run_dir)`` drives an :class:`Engine`.

Run directory layout::

    run_dir/
      config.json          the validated config (what this run was started with)
      metrics.jsonl        one JSON object per logged step: {"step", "time_s", <metrics>}
      checkpoints/step-000010/   accelerate state: model(s), optimizer(s), scheduler(s),
                                 RNG states (python, numpy, torch, cuda), trainer state
      final/               Hugging Face weights + tokenizer + dllm_bench.json sidecar,
                           loadable by ``dllm_bench.models.load_model(run_dir / "final")``
      result.json          :class:`TrainResult` once training finished

Re-running into the same directory resumes from the newest complete checkpoint (or returns
at once when ``result.json`` says the run finished). Resume is *exact*: besides the
restored optimizer/scheduler/RNG states, every random draw of a step comes from a generator
seeded by ``(seed, step)`` (:meth:`Engine.step_generator`), so step ``k+1`` after a resume
sees the same batch, masks and rollouts as in an uninterrupted run.

Distributed use: ``accelerate launch [--num_processes N] -m dllm_bench train --trainer T
--config FILE``; single process (CPU, gloo) needs no launcher. DeepSpeed is selected by the
config's ``deepspeed`` field (``zero2``, ``zero3`` or a JSON path); the packaged JSON files
live in ``dllm_bench/trainers/configs/``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from dllm_bench.errors import BadInputError, RunFailedError, interrupt_in
from dllm_bench.plugins import StrictModel

log = logging.getLogger("dllm_bench.trainers")

CONFIG_DIR = "configs"
DEEPSPEED_PRESETS = {"zero2": "zero2.json", "zero3": "zero3.json"}


# --------------------------------------------------------------------------- config
class TrainConfig(StrictModel):
    """Fields shared by every trainer (units in each description)."""

    model: str = Field(description="Model to train: a built-in spec (tiny-block-dlm, tiny-full-dlm, tiny-ar, "
                                   "smollm2-135m), a checkpoint directory (e.g. a previous run's final/), "
                                   "a .gguf file or a hub id. Unit: none.")
    model_args: dict[str, Any] = Field(default_factory=dict,
                                       description="Keyword arguments for dllm_bench.models.load_model (dtype, "
                                                   "block_size, family, sizes of tiny specs, ...). Unit: none.")
    seed: int = Field(0, description="Base seed; every step draws its randomness from (seed, step). Unit: none.")
    max_steps: int = Field(100, ge=1, description="Number of training steps (SFT: optimizer steps; RL: rollout "
                                                  "+ update rounds). Unit: steps.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate of AdamW. Unit: 1/step (parameter units).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay. Unit: dimensionless.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2). Unit: dimensionless.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon. Unit: gradient units.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient L2 norm to this (0 = off). "
                                                        "Unit: gradient L2 norm.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Learning-rate schedule after warm-up. Unit: none.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up length. Unit: optimizer steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR of cosine/linear decay as a fraction of lr. "
                                                             "Unit: dimensionless.")
    save_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0 = only at the "
                                                 "end). Unit: steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep. Unit: checkpoints.")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N steps. Unit: steps.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="accelerate mixed precision (autocast) mode. Unit: none.")
    deepspeed: str | None = Field(None, description="DeepSpeed config: 'zero2', 'zero3' (packaged JSON) or a path "
                                                    "to a DeepSpeed JSON; null = plain accelerate (DDP or single "
                                                    "process). Unit: none.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory. "
                                                            "Unit: none.")
    tensorboard: bool = Field(True, description="Also log metrics to TensorBoard (run_dir/tb) when tensorboard is "
                                                "installed. Unit: none.")


# --------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What a finished training run produced.

    Attributes:
        trainer: trainer name.
        run_dir: the run directory.
        final_dir: Hugging Face weights loadable by ``load_model(final_dir)``.
        metrics_path: the JSONL metrics log.
        steps: steps completed.
        last_metrics: the last logged metrics line.
        extra_dirs: other saved artefacts (e.g. ``{"value": <dir>}``).
    """

    trainer: str
    run_dir: Path
    final_dir: Path
    metrics_path: Path
    steps: int
    last_metrics: dict[str, Any] = field(default_factory=dict)
    extra_dirs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("run_dir", "final_dir", "metrics_path"):
            d[k] = str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(trainer=d["trainer"], run_dir=Path(d["run_dir"]), final_dir=Path(d["final_dir"]),
                   metrics_path=Path(d["metrics_path"]), steps=int(d["steps"]),
                   last_metrics=d.get("last_metrics", {}), extra_dirs=d.get("extra_dirs", {}))


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from ``seed`` and integer ``parts`` (stable across runs and platforms)."""
    h = seed & ((1 << 63) - 1)
    for p in parts:
        h = (h * 6364136223846793005 + (int(p) & ((1 << 63) - 1)) + 1442695040888963407) % (1 << 63)
    return h


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_dist_env() -> None:
    """Single-process defaults for the torch.distributed env vars DeepSpeed insists on."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")


def quiet_import_accelerate() -> None:
    """Import accelerate (and DeepSpeed, which it imports when installed) with stdout sent
    to stderr: DeepSpeed's logger binds stdout at import time and would print there, and
    stdout carries only results."""
    import importlib
    import importlib.util
    import sys
    from contextlib import redirect_stdout

    with redirect_stdout(sys.stderr):
        for name in ("deepspeed", "accelerate"):
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


def packaged_config(name: str) -> Path:
    """Path of a file shipped in ``dllm_bench/trainers/configs``."""
    return Path(str(resources.files("dllm_bench.trainers").joinpath(CONFIG_DIR, name)))


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


def lr_lambda(cfg: TrainConfig, total: int):
    """Multiplier of ``cfg.lr`` at optimizer step s (warm-up, then constant/cosine/linear)."""

    def f(s: int) -> float:
        if cfg.warmup_steps and s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(total - cfg.warmup_steps, 1)
        frac = min(max(s - cfg.warmup_steps, 0) / span, 1.0)
        if cfg.lr_schedule == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - frac)

    return f


class TrainerState:
    """Checkpointed trainer counters (registered with accelerate for save/load)."""

    def __init__(self) -> None:
        self.step = 0
        self.samples = 0
        self.extra: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "extra": json.dumps(self.extra)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step, self.samples = int(d["step"]), int(d["samples"])
        self.extra = json.loads(d.get("extra", "{}"))


# --------------------------------------------------------------------------- models
def to_mask_arg(mask: torch.Tensor, attn_backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``[n, 1, T, T]`` mask -> what the attention backend reads (additive for eager)."""
    if attn_backend == "eager":
        from dllm_bench.blocks import to_additive

        return to_additive(mask, dtype)
    return mask


class PolicyNet(torch.nn.Module):
    """A causal-LM-shaped transformers model read at chosen positions only.

    ``forward(input_ids [n, T], attention_mask [n, 1, T, T] bool, position_ids [n, T],
    gather_index [n, K]) -> logits [n, K, V]`` (float32): the backbone runs once, the LM head
    only on the ``K`` gathered columns, so memory is ``O(K·V)`` instead of ``O(T·V)``.

    With ``targets [n, K]`` it returns ``log softmax(logits / temperature)[targets]`` ``[n, K]``
    instead (``banned`` token removed from the softmax), computed in chunks of columns so that
    at most ``logit_chunk_elems`` float32 logits exist at once; above that size each chunk is
    recomputed in backward (activation checkpointing of the LM head) — real vocabularies
    (150k) times long responses never materialise ``[n, K, V]``.

    The dense 4-D mask is always honoured: training forces the ``sdpa``/``eager`` attention paths.
    """

    logit_chunk_elems: int = 1 << 26

    def __init__(self, lm: torch.nn.Module, attn_backend: str = "sdpa"):
        super().__init__()
        self.lm = lm
        self.attn_backend = attn_backend if attn_backend in ("sdpa", "eager") else "sdpa"
        if attn_backend not in ("sdpa", "eager"):
            try:
                lm.set_attn_implementation(self.attn_backend)
            except (AttributeError, TypeError):
                lm.config._attn_implementation = self.attn_backend
        # stock transformers LMs: backbone + LM head on gathered columns; remote-code models
        # (LLaDA: 4-D mask as `attention_bias`, no position ids) go through their own forward
        self.fast = self._has_backbone()

    def _has_backbone(self) -> bool:
        import inspect

        try:
            dec = self.backbone()
            head = self.lm.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return False
        return head is not None and "position_ids" in inspect.signature(dec.forward).parameters

    def backbone(self) -> torch.nn.Module:
        return self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model

    def _full_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     gather_index: torch.Tensor) -> torch.Tensor:
        import inspect

        params = inspect.signature(self.lm.forward).parameters
        kw: dict[str, Any] = {"input_ids": input_ids}
        if "attention_bias" in params:
            kw["attention_bias"] = attention_mask
        else:
            kw["attention_mask"] = to_mask_arg(attention_mask, self.attn_backend, next(self.lm.parameters()).dtype)
        if "position_ids" in params:
            kw["position_ids"] = position_ids
        if "use_cache" in params:
            kw["use_cache"] = False
        out = self.lm(**kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, logits.shape[-1])
        return torch.gather(logits, 1, idx).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                gather_index: torch.Tensor, targets: torch.Tensor | None = None, temperature: float = 1.0,
                banned: int | None = None) -> torch.Tensor:
        if not self.fast:
            logits = self._full_logits(input_ids, attention_mask, position_ids, gather_index)
            if targets is None:
                return logits
            if banned is not None:
                logits = logits.index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
            return torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        dtype = next(self.lm.parameters()).dtype
        out = self.backbone()(input_ids=input_ids, attention_mask=to_mask_arg(attention_mask, self.attn_backend, dtype),
                              position_ids=position_ids, use_cache=False)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, h.shape[-1])
        hk = torch.gather(h, 1, idx)
        head = self.lm.get_output_embeddings()
        if targets is None:
            return head(hk).float()

        def chunk_logp(hc: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
            logits = head(hc).float()
            if banned is not None:
                logits = logits.index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
            return torch.log_softmax(logits / temperature, dim=-1).gather(-1, tc[..., None]).squeeze(-1)

        n, K = targets.shape
        V = head.weight.shape[0]
        cols = max(1, self.logit_chunk_elems // max(n * V, 1))
        if cols >= K:
            return chunk_logp(hk, targets)
        from torch.utils.checkpoint import checkpoint

        parts = []
        for c in range(0, K, cols):
            hc, tc = hk[:, c:c + cols], targets[:, c:c + cols]
            parts.append(checkpoint(chunk_logp, hc, tc, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_logp(hc, tc))
        return torch.cat(parts, dim=1)


class ValueNet(torch.nn.Module):
    """Diffusion value model (TraceRL, arXiv 2509.06949; dLLM-RL
    ``train/init_trado_value_model.py`` at 10b4fd1): a backbone copy + ``Linear(hidden, 1,
    bias=False)`` head initialised to zero, so V ≡ 0 at the start.

    ``forward(input_ids, attention_mask, position_ids, gather_index) -> [n, K]`` float32 values
    read at the gathered columns (the same packed rows as the policy).
    """

    def __init__(self, backbone: torch.nn.Module, hidden_size: int, attn_backend: str = "sdpa"):
        super().__init__()
        self.backbone = backbone
        self.attn_backend = attn_backend if attn_backend in ("sdpa", "eager") else "sdpa"
        self.head = torch.nn.Linear(hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                gather_index: torch.Tensor) -> torch.Tensor:
        dtype = self.head.weight.dtype
        out = self.backbone(input_ids=input_ids, attention_mask=to_mask_arg(attention_mask, self.attn_backend, dtype),
                            position_ids=position_ids, use_cache=False)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, h.shape[-1])
        return self.head(torch.gather(h, 1, idx)).squeeze(-1).float()


def load_adapter(cfg: TrainConfig, device: torch.device | None = None):
    """``load_model(cfg.model, **cfg.model_args)`` in float32 unless ``dtype`` is given, in
    train mode, with the training attention path (sdpa/eager)."""
    from dllm_bench.models import load_model

    args = dict(cfg.model_args)
    args.setdefault("dtype", "float32")
    if device is not None:
        args.setdefault("device", str(device))
    adapter = load_model(cfg.model, **args)
    if adapter.attn_backend not in ("sdpa", "eager"):
        adapter.set_attn_backend("sdpa")
    return adapter


FAMILY_SHORT = {"block-diffusion": "block", "full-diffusion": "full", "ar": "ar"}


# --------------------------------------------------------------------------- engine
class Engine:
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
        g.manual_seed(derive_seed(self.cfg.seed, step, stream, self.accelerator.process_index))
        return g

    # -- models and optimizers
    def make_optimizer(self, module: torch.nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (betas, eps, weight decay from the config)."""
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr or self.cfg.lr, betas=tuple(self.cfg.adam_betas),
                                 eps=self.cfg.adam_eps, weight_decay=self.cfg.weight_decay)

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, total_updates: int,
                name: str = "policy"):
        """Wrap ``module``/``optimizer`` for the backend; build the LR scheduler.

        ``name`` selects the DeepSpeed plugin when several models are trained (policy, value).

        Returns:
            ``(model, optimizer, scheduler)``; the scheduler is stepped by
            :meth:`optimizer_step` and checkpointed.
        """
        if self.cfg.gradient_checkpointing:
            for m in module.modules():
                if hasattr(m, "gradient_checkpointing_enable"):
                    m.gradient_checkpointing_enable()
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

    def sync_context(self, model: torch.nn.Module, last: bool):
        """Skip DDP gradient all-reduce on non-final micro-batches."""
        if last or self._is_ds(model) or self.accelerator.num_processes == 1:
            return nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, model: torch.nn.Module, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch's (already normalised) loss; ``last`` = boundary."""
        if self._is_ds(model):
            model.set_gradient_accumulation_boundary(last)
            model.backward(loss)
        else:
            self.accelerator.backward(loss)

    def optimizer_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LambdaLR | None) -> float:
        """Clip, step, zero grads, step the LR schedule (unless ``scheduler`` is None: the
        caller steps it). Returns the pre-clip gradient norm."""
        if self._is_ds(model):
            model.step()
            gn = model.get_global_grad_norm()
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

    # -- checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint directory with a ``COMPLETE`` marker, or None."""
        if not self.ckpt_root.is_dir():
            return None
        done = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "COMPLETE").is_file())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Save everything needed for exact resume at the current step.

        Raises:
            RunFailedError: the checkpoint could not be written (a full disk, a read-only or
                unwritable run directory); the partial checkpoint is removed and the earlier
                complete ones are kept, so re-running the same command resumes from the last.
        """
        d = self.ckpt_root / f"step-{self.state.step:06d}"
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(d), safe_serialization=False)
        except BaseException as exc:
            shutil.rmtree(d, ignore_errors=True)  # never a COMPLETE marker: resume ignores it anyway
            # torch.save reports a short write as RuntimeError; an interrupt stays an interrupt
            if isinstance(exc, (OSError, RuntimeError)) and interrupt_in(exc) is None:
                raise RunFailedError(self._checkpoint_failure(d, exc)) from None
            raise
        self.accelerator.wait_for_everyone()
        if self.is_main:
            (d / "COMPLETE").write_text(json.dumps({"step": self.state.step, "time": time.time()}) + "\n")
            old = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "COMPLETE").is_file())
            for p in old[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return d

    def _checkpoint_failure(self, d: Path, exc: BaseException, what: str = "the checkpoint") -> str:
        """One line: which checkpoint failed, why (the errno's meaning; no space when the disk is
        full), and what a re-run resumes from."""
        if isinstance(exc, OSError) and exc.errno:
            reason = os.strerror(exc.errno)
        else:
            try:
                full = shutil.disk_usage(self.run_dir).free < 16 * 2 ** 20
            except OSError:
                full = False
            reason = os.strerror(errno.ENOSPC) if full else str(exc).strip().splitlines()[0]
        last = self.latest_checkpoint()
        kept = f"checkpoint {last.name} is kept" if last is not None else "no checkpoint was saved yet"
        return f"{d}: cannot write {what}: {reason}; {kept}; fix this and re-run the same command to resume"

    def resume(self) -> int:
        """Record the config (:func:`write_config`: the trainer calls this after its checks that
        need the loaded model), then load the newest complete checkpoint (if any); returns the
        step to continue from.

        Raises:
            BadInputError: the run directory holds trained state of a run with another config.
        """
        if self.is_main:
            write_config(self.run_dir, self.trainer, self.cfg)
        ck = self.latest_checkpoint()
        if ck is None:  # a run killed before its first checkpoint starts over: drop its log lines
            self._truncate_metrics(0)
            return 0
        self.accelerator.load_state(str(ck))
        log.info("resumed %s from %s (step %d)", self.trainer, ck, self.state.step)
        self._truncate_metrics(self.state.step)
        return self.state.step

    def _truncate_metrics(self, step: int) -> None:
        if not (self.is_main and self.metrics_path.is_file()):
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    keep.append(line)
            except (json.JSONDecodeError, ValueError):
                continue
        self.metrics_path.write_text("".join(k + "\n" for k in keep))

    # -- logging
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Append one JSONL line (main process) and mirror scalars to TensorBoard."""
        line = {"step": step, "time_s": round(time.time() - self._t0, 3), **metrics}
        if self.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(line, default=float) + "\n")
            tb = self._tensorboard()
            if tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        tb.add_scalar(k, v, step)
                tb.flush()
        return line

    def _tensorboard(self):
        if not self.cfg.tensorboard:
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
                return None
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb or None

    # -- final weights
    def save_final(self, model: torch.nn.Module, adapter: Any, directory: Path,
                   training: dict[str, Any], submodule: str = "lm") -> Path:
        """Write the trained weights in Hugging Face format with the adapter's tokenizer and
        ``dllm_bench.json`` sidecar (``load_model(directory)`` loads them).

        Raises:
            RunFailedError: the weights could not be written (a full disk, a read-only run
                directory); the half-written directory is removed, the checkpoints are kept.
        """
        from dllm_bench.models import SIDECAR

        self.accelerator.wait_for_everyone()
        state = self.accelerator.get_state_dict(model)
        if self.is_main:
            prefix = submodule + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            d = Path(directory)
            try:
                d.mkdir(parents=True, exist_ok=True)
                adapter.model.save_pretrained(d, state_dict=sub, safe_serialization=True)
                adapter.tokenizer.save_pretrained(d)
                from dllm_bench.determinism import report

                meta = adapter.sidecar()
                det = report()
                meta["training"] = {**training, "determinism": {k: det[k] for k in ("mode", "pinned",
                                                                                    "aten_cpu_capability")}}
                (d / SIDECAR).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors as its own type
                if interrupt_in(exc) is not None or not (isinstance(exc, (OSError, RuntimeError))
                                                         or type(exc).__name__ == "SafetensorError"):
                    raise
                shutil.rmtree(d, ignore_errors=True)  # a half-written final directory is never loaded
                raise RunFailedError(self._checkpoint_failure(d, exc, what="the final weights")) from None
        self.accelerator.wait_for_everyone()
        return Path(directory)

    def finish(self, result: TrainResult) -> TrainResult:
        if self.is_main:
            (self.run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if self._tb:
            self._tb.close()
        self.accelerator.wait_for_everyone()
        return result


def _has_trained_state(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds something a re-run resumes from: a complete checkpoint or final weights."""
    d = Path(run_dir)
    return (d / "final").is_dir() or any((d / "checkpoints").glob("step-*/COMPLETE"))


def check_config(run_dir: Path, trainer: str, cfg: StrictModel) -> None:
    """Refuse to resume a run started with another config (checked before the model loads).

    A ``config.json`` that differs is only a conflict when ``run_dir`` holds trained state (a
    complete checkpoint or final weights): resuming from it would mix two configs. Without
    any (the earlier attempt stopped before its first checkpoint, e.g. its config failed a
    check that needs the loaded model) there is nothing to resume and the new config is
    accepted: :func:`write_config` replaces the old one and training starts over.

    Raises:
        BadInputError: ``run_dir`` holds trained state of a run with a different config
            (naming the differing fields).
    """
    p = Path(run_dir) / "config.json"
    if not p.is_file() or not _has_trained_state(run_dir):
        return
    data = {"trainer": trainer, "config": cfg.model_dump(mode="json")}
    try:
        old = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = None
    if old and old != data:
        diff = sorted(k for k in set(old.get("config", {})) | set(data["config"])
                      if old.get("config", {}).get(k) != data["config"].get(k))
        raise BadInputError(f"run directory {run_dir} holds a run with a different config (fields: "
                            f"{', '.join(diff) or 'trainer'}); use another --output or delete it")


def write_config(run_dir: Path, trainer: str, cfg: StrictModel) -> None:
    """Record the validated config in ``run_dir/config.json``.

    :meth:`Engine.resume` calls it, i.e. only after the trainer loaded the model and passed
    its checks that need it (a mode the model's family cannot train, no example fitting
    the token limits, ...): a config failing them leaves nothing in ``run_dir``, and the
    corrected re-run starts cleanly. A differing config is accepted when ``run_dir`` holds
    no trained state (:func:`check_config`).

    Raises:
        BadInputError: ``run_dir`` holds trained state of a run with a different config.
        OSError: the file could not be written.
    """
    check_config(run_dir, trainer, cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    data = {"trainer": trainer, "config": cfg.model_dump(mode="json")}
    from dllm_bench.outdir import write_atomic

    write_atomic(Path(run_dir) / "config.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def finished_result(run_dir: Path) -> TrainResult | None:
    """The stored result of a finished run in ``run_dir`` (None if not finished)."""
    p = Path(run_dir) / "result.json"
    if p.is_file() and (Path(run_dir) / "final").is_dir():
        try:
            return TrainResult.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, KeyError):
            return None
    return None


def config_hash(cfg: StrictModel) -> str:
    from dllm_bench.schema import canonical_json, sha256_text

    return sha256_text(canonical_json(cfg.model_dump(mode="json")))


# --------------------------------------------------------------------------- CLI glue
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


def preflight(cfg: StrictModel) -> None:
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

    check_model_source(str(getattr(cfg, "model", "")), dict(getattr(cfg, "model_args", {}) or {}),
                       arg_source="model_args")
    fields = type(cfg).model_fields
    if "data_file" in fields and "task" in fields and (cfg.task is None) == (cfg.data_file is None):
        raise BadInputError("sft config: give exactly one of 'task' and 'data_file'")
    if getattr(cfg, "task", None) is not None:
        t_cls = registry.load("tasks", cfg.task)
        registry.validate_config(t_cls.Config, dict(getattr(cfg, "task_args", {}) or {}),
                                 what=f"task {cfg.task!r} task_args")
    if getattr(cfg, "data_file", None) is not None:
        p = Path(cfg.data_file)
        if not p.is_file():
            raise BadInputError("data file not found", path=p)
        read_text(p, "data file")


def build_trainer(trainer_name: str, config: dict[str, Any] | StrictModel, *, source: str | None = None):
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
    if callable(getattr(trainer, "preflight", None)):  # the trainer's own weight-free checks
        trainer.preflight()
    with redirect_stdout(sys.stderr):  # library prints (DeepSpeed) stay off stdout
        quiet_import_accelerate()
        return trainer.train(Path(output_dir))
