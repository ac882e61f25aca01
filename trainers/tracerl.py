"""``tracerl``: TraceRL — trajectory-aware RL for diffusion LMs (arXiv 2509.06949, Gen-Verse/dLLM-RL@10b4fd1).

Rollouts record every token's denoising step (the step map); training re-creates the
sampler's state before each step and applies the clipped policy objective to the tokens
committed at that step, with the sequence's group-normalised advantage (or, with
``value``, per-token step-level GAE advantages from the diffusion value model).

* Block-diffusion models: all steps of a response in **one packed forward**
  ``[prompt ; clean response ; one B-token segment per (block, step)]``
  (:func:`dllm_bench.trainers.trajectory.packed_block_inputs`), equal to one forward per
  step (tested).
* Full-attention models: one forward per shrunk step (shrinkage ``s`` merges ``s``
  consecutive steps; the published default for LLaDA/Dream is s = 8).
* AR models: the trajectory is the token order (plain GRPO with the same objective).

**Update procedure** (the defaults are the published one, dLLM-RL ``train/rl_trado.py`` and
``configs/rl_trado.yaml`` @10b4fd1; docs/tracerl-procedure.md): π_old is scored once on
the whole rollout batch before any update; the batch's *round rows* (one row = one round
of one response: in every block the tokens of the block's r-th step,
:func:`dllm_bench.trainers.trajectory.round_ids`) are taken in rollout order and cut into
mini-batches of ``rows_per_update`` = 32 rows, one optimizer step each, one pass
(``epochs_per_step`` 1), no shuffling, the last incomplete mini-batch dropped
(``partial_update: drop``). Every step after the first is off-policy, so the clip and the
KL to π_old act. ``minibatch: responses`` with ``updates_per_step: 1`` restores the former
single on-policy update per RL step.

**Loss** of an optimizer step over its rows ``M`` (``loss_norm: round_row``)::

    L = 1/(|M|·L1) Σ_{rows ∈ M} Σ_{j ∈ row} [ −min(ρ_j A_j, clip(ρ_j, 1−ε_low, 1+ε_high) A_j)
                                              + β (exp(−k_j) − 1 + k_j) ]

with ``ρ = exp(clamp(log π_θ − log π_old, ±c))``, ``k = log π_θ − log π_anchor`` (anchor π_old
by default, TraceRL; or a frozen reference) and L1 the sampler's ``max_new_tokens`` rounded
up to the block size (rl_trado.py lines 731-760 and 807: a row's sum / L1, averaged over the
gradient_accumulation_steps rows). ``loss_norm: response`` divides by responses × L1
instead (the former default), ``tokens`` by the number of trainable tokens. Other defaults
follow dLLM-RL ``configs/rl_trado.yaml`` at 10b4fd1: lr 1e-6, ε 0.2, β 0.01, KL to π_old,
shrink 1,
groups kept when 0.2 <= mean reward <= 0.8.
"""

from __future__ import annotations

from typing import ClassVar

from .rl import RLConfig, RLTrainer


class TraceRLConfig(RLConfig):
    """``tracerl`` config: :class:`dllm_bench.trainers.rl.RLConfig` (every field documented there)."""


class TRACERL(RLTrainer):
    """TraceRL trainer (plugin ``tracerl``). ``TRACERL(config).train(run_dir) -> TrainResult``."""

    name: ClassVar[str] = "tracerl"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[TraceRLConfig]] = TraceRLConfig
