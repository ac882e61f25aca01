"""The config fields every trainer shares (:class:`TrainConfig`) and the config digest
recorded in the final weights' sidecar (:func:`config_hash`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dllm_bench.plugins import StrictModel


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



def config_hash(cfg: StrictModel) -> str:
    from dllm_bench.schema import canonical_json, sha256_text

    return sha256_text(canonical_json(cfg.model_dump(mode="json")))

