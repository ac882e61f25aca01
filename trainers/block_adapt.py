"""``block-adapt``: adapt a block-diffusion model to a larger block with TraceRL
(TraceRL, arXiv 2509.06949; dLLM-RL ``configs/rl_trado.yaml`` at 10b4fd1 keeps separate
``rollout.block_size`` and ``training.block_size``).

Roll out with the model's native block size B_r, train with B_t > B_r (a multiple of B_r).
A B_r trajectory is a valid decode order for B_t blocks — every token of a later B_r
block is decoded after every token of an earlier one — so the B_t packed layout (one
segment per (B_t block, step), each seeing the clean B_t blocks before it) teaches B_t
denoising from B_r traces. At ``switch_step`` (optional) rollouts switch to B_t as well
(the TraceRL paper switched after 60 steps); when ``sampler_args`` sets
``denoising_steps``, it is scaled by B_t / B_r at the switch, otherwise the sampler's
default (one token per step) applies.

The objective, loss normalisation and defaults are TraceRL's (:mod:`.tracerl`). The final
weights' sidecar records block size B_t, so evaluation uses the adapted block.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from dllm_bench.errors import BadInputError

from .rl_config import RLConfig
from .tracerl import TraceRL

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class BlockAdaptConfig(RLConfig):
    """``block-adapt`` config: TraceRL's fields plus the two block sizes and the switch step."""

    rollout_block_size: int = Field(4, ge=1, description="B_r: block size of the rollouts (the model's native "
                                                         "block). Unit: tokens.")
    block_size: int | None = Field(8, ge=1, description="B_t: training block size, a multiple of B_r and larger. "
                                                        "Unit: tokens.")
    switch_step: int | None = Field(None, ge=0, description="RL step from which rollouts also use B_t (null = "
                                                            "never). Unit: RL steps.")

    @model_validator(mode="after")
    def _sizes(self):
        bt, br = self.block_size, self.rollout_block_size
        if bt is None or bt <= br or bt % br:
            raise ValueError(f"block_size (B_t={bt}) must be a multiple of rollout_block_size (B_r={br}) and larger")
        return self


class BlockAdapt(TraceRL):
    """Block-size adaptation trainer (plugin ``block-adapt``).

    Differs from :class:`.tracerl.TraceRL` by its block sizes: :meth:`rollout_block_size`
    (B_r, B_t after ``switch_step``) and :meth:`train_block_size` (B_t); the sampler's
    ``denoising_steps`` and the final sidecar's block size follow from them."""

    name: ClassVar[str] = "block-adapt"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[BlockAdaptConfig]] = BlockAdaptConfig
    config: BlockAdaptConfig

    def _block_size(self) -> int:
        """B_t (set: the config's validator refuses ``block_size=None``)."""
        assert self.config.block_size is not None, "BlockAdaptConfig requires block_size"
        return int(self.config.block_size)

    def rollout_block_size(self, step: int, adapter: ModelAdapter) -> int:
        cfg = self.config
        if cfg.switch_step is not None and step >= cfg.switch_step:
            return self._block_size()
        return int(cfg.rollout_block_size)

    def train_block_size(self, step: int, adapter: ModelAdapter) -> int:
        if adapter.family != "block-diffusion":
            raise BadInputError(f"block-adapt needs a block-diffusion model; {adapter.spec!r} is {adapter.family}")
        return self._block_size()

    def sampler_args(self, step: int, adapter: ModelAdapter) -> dict[str, Any]:
        cfg = self.config
        args = dict(cfg.sampler_args)
        if cfg.switch_step is not None and step >= cfg.switch_step and args.get("denoising_steps"):
            args["denoising_steps"] = int(args["denoising_steps"]) * self._block_size() // cfg.rollout_block_size
        return args

    def final_adapter(self, adapter: ModelAdapter) -> ModelAdapter:
        return dataclasses.replace(adapter, block_size=self._block_size())
