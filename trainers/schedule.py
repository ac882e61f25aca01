"""The learning-rate schedule: linear warm-up, then constant, cosine or linear decay."""

from __future__ import annotations

import math
from collections.abc import Callable

from .config import TrainConfig


def lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
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

