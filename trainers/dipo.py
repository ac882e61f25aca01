"""``dipo``: DiPO — DiRL's strictly on-policy TraceRL (DiRL, arXiv 2512.22234, §3.2 eqs. 6-7).

TraceRL with shrink 1 taken fully on-policy: exactly one optimizer step per rollout batch
(``minibatch: responses``, ``updates_per_step: 1``), so π_old = stop-grad(π_θ) and the ratio
is exactly 1 (the clip never fires on that step; the gradient is the plain policy gradient
of the exact per-step likelihoods). The KL term is against a **frozen reference** (the
initial model), not π_old; groups are kept when their rewards are not all equal (DAPO
dynamic sampling: 0 < mean accuracy < 1 for binary rewards); the clip range is DiRL's
asymmetric "clip-higher" [1 − 0.2, 1 + 0.28].

**Normalisation** (``loss_norm: row_mean``, :func:`.objectives.token_weights`): DiRL cuts
each response into its round rows (as TraceRL), pads every response to block_size/shrink
rows with empty ones, takes a token mean inside each row and averages over all those
rows (OpenMOSS/DiRL ``train/grpo.py`` @ec4bfb3 lines 163-168, 636-697, 773-792, 1437;
``models/sdar/modeling_sdar.py`` lines 1255-1279 with ``loss_mean`` True). With ``N`` kept
responses, ``B`` the block size, ``r(j)`` the round row of token j and ``n_r`` its size::

    L = 1/(N·B) Σ_rows r  1/n_r Σ_{j∈r} [ −A_i · exp(log π_θ − sg(log π_θ)) + β (exp(−k_j) − 1 + k_j) ],
    k_j = log π_θ(y_j) − log π_ref(y_j)

(DiRL's N is the configured rollout count, equal to the kept count there because it keeps
sampling until enough groups pass the filter; here it is the kept count.)

Rollouts come from the current in-process weights (no checkpoint reload, like DiRL's
in-place LMDeploy update).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .rl_config import RLConfig
from .tracerl import TraceRL


class DiPOConfig(RLConfig):
    """``dipo`` config: :class:`dllm_bench.trainers.rl_config.RLConfig` with DiRL's defaults; the
    on-policy fields are fixed (validated)."""

    shrink: int = Field(1, ge=1, le=1, description="Fixed at 1 (every decode step is its own trajectory step). "
                                                   "Unit: steps.")
    minibatch: Literal["responses"] = Field("responses", description="Fixed: the whole rollout batch is one "
                                                                    "mini-batch. Unit: none.")
    updates_per_step: int = Field(1, ge=1, le=1, description="Fixed at 1: one optimizer step per rollout batch. "
                                                             "Unit: optimizer steps.")
    epochs_per_step: int = Field(1, ge=1, le=1, description="Fixed at 1. Unit: passes.")
    old_logprobs: Literal["detach"] = Field("detach", description="π_old = stop-grad(π_θ): ratio exactly 1. "
                                                                  "Unit: none.")
    kl_anchor: Literal["reference"] = Field("reference", description="KL against the frozen initial model. "
                                                                     "Unit: none.")
    kl_beta: float = Field(0.1, ge=0, description="Weight β of the k3 KL to the reference (DiRL configs/rl.yaml). "
                                                  "Unit: dimensionless.")
    clip_high: float = Field(0.28, ge=0, description="Clip-higher ε_high (DiRL: 0.2 + 0.08). Unit: dimensionless.")
    loss_norm: Literal["round_row", "response", "tokens", "row_mean"] = Field(
        "row_mean", description="DiRL: token mean per round row, averaged over kept responses x block_size rows "
                                "(grpo.py@ec4bfb3 lines 163-168, 1437; modeling_sdar.py lines 1260-1264). "
                                "Unit: none.")
    group_filter: Literal["none", "acc_range", "nonzero_std"] = Field(
        "nonzero_std", description="DAPO filtering: keep groups whose rewards differ. Unit: none.")

    @model_validator(mode="after")
    def _no_value(self):
        if self.value is not None:
            raise ValueError("dipo has no value model (use tracerl with value)")
        return self


class DiPO(TraceRL):
    """DiPO trainer (plugin ``dipo``). ``DiPO(config).train(run_dir) -> TrainResult``.

    Differs from :class:`.tracerl.TraceRL` by its config only (:class:`DiPOConfig`): one
    on-policy optimizer step per rollout batch, KL to the reference, ``row_mean``."""

    name: ClassVar[str] = "dipo"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[DiPOConfig]] = DiPOConfig
    config: DiPOConfig
