"""``value``: train the diffusion value model alone (dLLM-RL ``train/train_trado_value.py`` at 10b4fd1).

The value model is the policy's backbone plus a zero-initialised ``Linear(hidden, 1,
bias=False)`` head (V ≡ 0 at the start). It reads the same packed trajectory rows as the
policy and predicts, for every token, the value of the sampler state just before the
token's step. Per RL step, with a frozen rollout policy:

1. roll out and score as in :mod:`.tracerl` (group z-scored rewards, group filtering);
2. V_old = the values before the update (no grad); step-level GAE (γ, λ) gives the
   token returns R_j (:func:`.objectives.step_gae`; γ = λ = 1: R_j = R);
3. optimizer steps on the clipped value loss
   ``0.5 · max((V−R)², (V_old + clip(V−V_old, ±ε) − R)²)`` over the same mini-batches as the
   policy (default: 32 round rows per step, dLLM-RL ``train/train_trado_value.py`` @10b4fd1
   lines 1004-1005, 1052-1068; ``minibatch: responses``: ``updates_per_step`` mini-batches of
   whole responses), each row's sum divided by L1 and averaged over the step's rows
   (responses × L1 with ``minibatch: responses``), with the value model's own AdamW and
   learning rate (``value.lr``).

``final/`` holds the value model (backbone in Hugging Face format + ``value_head.pt`` +
``dllm_bench_value.json``); pass it as ``value: {model: <run>/final}`` to ``tracerl`` to
start TraceRL from a pre-trained value model. ``tracerl`` with ``value`` set trains the
value model and the policy together (value first, each RL step).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .rl_config import RolloutConfig, ValueOptions
from .tracerl import TraceRL


class ValueConfig(RolloutConfig):
    """``value`` config: rollout fields of :class:`dllm_bench.trainers.rl_config.RolloutConfig` plus the
    value model options (required here)."""

    value: ValueOptions = Field(default_factory=ValueOptions, description="The value model: initialisation, "
                                                                          "LR, γ, λ, clip. Unit: none.")


class Value(TraceRL):
    """Value-model trainer (plugin ``value``).

    Differs from :class:`.tracerl.TraceRL` by ``train_policy = False``: the rollout policy
    stays frozen and only the value model trains (phase 4 of the RL step)."""

    name: ClassVar[str] = "value"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[ValueConfig]] = ValueConfig
    config: ValueConfig
    train_policy: ClassVar[bool] = False
