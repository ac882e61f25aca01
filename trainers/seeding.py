"""Seeds: the process-wide seeding at the start of a run and the derived seeds every random
draw of a step comes from (so resume is exact)."""

from __future__ import annotations

import random

import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def train_seed(seed: int, *parts: int) -> int:
    """A training draw's 63-bit seed from ``seed`` and integer ``parts`` (step, stream, rank...);
    an LCG chain, stable across runs and platforms. Not ``samplers.base.sample_seed``."""
    h = seed & ((1 << 63) - 1)
    for p in parts:
        h = (h * 6364136223846793005 + (int(p) & ((1 << 63) - 1)) + 1442695040888963407) % (1 << 63)
    return h

