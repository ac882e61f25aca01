"""``random-mask-rl``: RL with random-masking likelihoods — the comparison baseline of
TraceRL (dLLM-RL ``train/rl_trado.py`` ``random_masking`` at 10b4fd1; d1 / diffu-GRPO, arXiv 2504.12216).

Instead of the decode trajectory, each response is scored on ``mask_copies`` random
noised copies: in each copy a mask ratio t ~ U(mask_ratio_min, mask_ratio_max) is drawn
(per block for block models, per response for full attention; ``per_token_ratio`` draws
it per token as dLLM-RL does, which is marginally Bernoulli of the mean) and every
response token is masked with probability t (at least one per copy); the masked trainable
tokens are scored given the copy (block models: the masked block sees the clean blocks
before it and itself). ``masking="full"`` masks the whole response in every copy (d1's
one-step likelihood; d1 additionally masks 15% of the prompt, not done here).

Each copy is one training row carrying its response's advantage, so the surrogate, the KL
term, the loss normalisation and the update procedure are TraceRL's (:mod:`.tracerl`) with
one round row per copy (dLLM-RL ``train/rl_trado.py`` @10b4fd1 lines 441-467, method
``random_masking``: one ``[prompt ; clean ; noised copy]`` row per response, the same
32-row mini-batches): ``round_row`` normalisation divides by copies × L1. The masks of an RL step are drawn
once (seeded by (seed, step)), so π_old and π_θ see the same copies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from .rl_config import RLConfig
from .tracerl import TraceRL
from .trajectory import Rollout

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class RandomMaskRLConfig(RLConfig):
    """``random-mask-rl`` config: TraceRL's fields plus the masking distribution."""

    shrink: int = Field(1, ge=1, le=1, description="Fixed at 1 (the copies are not trajectories). Unit: steps.")
    masking: Literal["random", "full"] = Field("random", description="random: mask ratio t ~ U(min, max); full: "
                                                                     "mask every response token (d1). Unit: none.")
    mask_copies: int = Field(1, ge=1, description="Noised copies per response per RL step (dLLM-RL: 1 for block "
                                                  "models, 35 for full attention). Unit: copies.")
    mask_ratio_min: float = Field(0.1, ge=0, le=1, description="Lower end of t. Unit: fraction of tokens.")
    mask_ratio_max: float = Field(0.9, ge=0, le=1, description="Upper end of t. Unit: fraction of tokens.")
    per_token_ratio: bool = Field(False, description="Draw t per token (dLLM-RL's block random_masking) instead "
                                                     "of per block / response. Unit: none.")

    @model_validator(mode="after")
    def _ratio(self):
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError("mask_ratio_min must be <= mask_ratio_max")
        return self


class RandomMaskRL(TraceRL):
    """Random-masking RL baseline (plugin ``random-mask-rl``).

    Differs from :class:`.tracerl.TraceRL` by its training rows: :meth:`training_batch`
    (noised copies instead of the trajectory) and :meth:`round_ids` (one row per copy)."""

    name: ClassVar[str] = "random-mask-rl"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[RandomMaskRLConfig]] = RandomMaskRLConfig
    config: RandomMaskRLConfig

    def training_batch(self, trajs: list[Rollout], step: int, adapter: ModelAdapter, family: str,
                       g: torch.Generator) -> tuple[list[Rollout], list[int]]:
        """``mask_copies`` rows per response: step map 2 on masked tokens (targets), 1 elsewhere."""
        cfg = self.config
        B = self.train_block_size(step, adapter) if family == "block" else None
        rows, src = [], []
        for k, t in enumerate(trajs):
            n = len(t.response_ids)
            if family == "ar":  # no masking for AR: the plain token-level objective
                rows.append(t)
                src.append(k)
                continue
            for _ in range(cfg.mask_copies):
                if cfg.masking == "full":
                    masked = torch.ones(n, dtype=torch.bool)
                else:
                    lo, hi = cfg.mask_ratio_min, cfg.mask_ratio_max
                    if cfg.per_token_ratio:
                        ratio = lo + (hi - lo) * torch.rand(n, generator=g)
                    elif B:
                        nb = -(-n // B)
                        ratio = (lo + (hi - lo) * torch.rand(nb, generator=g)).repeat_interleave(B)[:n]
                    else:
                        ratio = (lo + (hi - lo) * torch.rand(1, generator=g)).expand(n)
                    masked = torch.rand(n, generator=g) < ratio
                    live = torch.zeros(n, dtype=torch.bool)
                    live[:t.n_trainable] = True
                    if not bool((masked & live).any()) and t.n_trainable > 0:
                        masked[int(torch.randint(t.n_trainable, (1,), generator=g))] = True
                steps = [2 if m else 1 for m in masked.tolist()]
                rows.append(Rollout(t.prompt_ids, t.response_ids, steps, t.n_trainable, t.reward, t.group,
                                    t.doc_id, t.text, train_mask=masked.tolist(), extra=t.extra))
                src.append(k)
        return rows, src

    def round_ids(self, batch: Any, family: str) -> torch.Tensor:
        """One round row per noised copy (its trainable tokens all have round 0)."""
        return torch.where(batch.mask, torch.zeros_like(batch.steps), torch.full_like(batch.steps, -1)).cpu()
