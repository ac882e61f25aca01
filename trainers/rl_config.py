"""Config fields of the RL trainers: :class:`RolloutConfig` (rollout, reward, batching;
shared with the value trainer), :class:`RLConfig` (the policy objective; ``tracerl`` and its
variants) and :class:`ValueOptions` (the diffusion value model). Every field documents its
unit and, where it follows the reference, the source (dLLM-RL at 10b4fd1; DiRL at ec4bfb3).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dllm_bench.plugins import StrictModel

from .config import TrainConfig


class ValueOptions(StrictModel):
    """The diffusion value model (dLLM-RL ``train/init_trado_value_model.py`` and
    ``train/train_trado_value.py`` at 10b4fd1) used by ``tracerl`` (and trained by ``value``)."""

    model: str | None = Field(None, description="Initial value model: null = a copy of the policy's backbone with "
                                                "a zero head; or a directory saved by the value trainer "
                                                "(run_dir/value); or any model spec (its backbone, zero head). "
                                                "Unit: none.")
    lr: float = Field(5e-6, gt=0, description="AdamW learning rate of the value model (its own optimizer). "
                                              "Unit: 1/step.")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ per trajectory step. Unit: dimensionless.")
    lam: float = Field(1.0, ge=0, le=1, description="GAE λ. Unit: dimensionless.")
    clip: float = Field(0.2, ge=0, description="Value clipping ε around the pre-update values (0 = off). "
                                               "Unit: reward units.")
    reward: Literal["zscore", "raw"] = Field("zscore", description="Sequence reward the values regress on: the "
                                                                   "group z-score (TraceRL) or the raw reward. "
                                                                   "Unit: none.")
    warmup_steps: int = Field(0, ge=0, description="RL steps during which only the value model trains (policy "
                                                   "frozen). Unit: RL steps.")


class RolloutConfig(TrainConfig):
    """Rollout, reward and batching fields shared by the RL trainers and the value trainer."""

    task: str = Field(description="Task plugin giving prompts and rewards, e.g. gsm8k_calc_train, math_train. "
                                  "Unit: none.")
    task_args: dict[str, Any] = Field(default_factory=dict, description="Task config. Unit: none.")
    sampler: str | None = Field(None, description="Rollout sampler plugin; null = block-dynamic (block models), "
                                                  "full-diffusion (full attention), ar (AR). Unit: none.")
    sampler_args: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 1.0, "max_new_tokens": 256},
        description="Rollout sampler config (temperature, top_k, max_new_tokens, confidence_threshold, ...). "
                    "Unit: none.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per RL step (per process). Unit: prompts.")
    samples_per_prompt: int = Field(8, ge=1, description="Group size: samples per prompt. Unit: samples.")
    rollout_batch_size: int = Field(64, ge=1, description="Sequences per sampler.generate call. Unit: sequences.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Drop prompts longer than this. Unit: tokens.")
    block_size: int | None = Field(None, ge=1, description="Training block size B_t (block models); null = the "
                                                           "rollout block size. Unit: tokens.")
    block_alignment: Literal["response", "absolute"] | None = Field(
        None, description="Block alignment (dllm_bench.blocks) of the rollouts and of training, one definition for "
                          "both: response = the response starts a block; absolute = blocks from sequence position 0, "
                          "the prompt's tail in the first block (released SDAR / TraDo convention). null = the "
                          "model's convention. Unit: none.")
    shrink: int = Field(1, ge=1, description="Shrinkage s: merge s consecutive trajectory steps (per block for "
                                             "block models, globally for full attention). Unit: steps.")
    post_num: int = Field(0, ge=0, description="Train this many tokens after the first EOS. Unit: tokens.")
    minibatch: Literal["round_rows", "responses"] = Field(
        "round_rows", description="What an optimizer step's mini-batch is made of: round_rows = consecutive "
                                  "rows_per_update TraceRL round rows (one row = one round of one response, "
                                  "trajectory.round_ids), several optimizer steps per rollout batch, as dLLM-RL "
                                  "train/rl_trado.py@10b4fd1 lines 600-606, 769-820; responses = the kept "
                                  "responses split into updates_per_step mini-batches (updates_per_step: 1 = one "
                                  "optimizer step per RL step, on-policy: this project's former default). "
                                  "With round_rows the LR schedule (warmup_steps, decay) counts RL steps that "
                                  "made an update instead of optimizer steps. Unit: none.")
    rows_per_update: int = Field(32, ge=1, description="minibatch=round_rows: round rows per optimizer step, per "
                                                       "process (dLLM-RL configs/rl_trado.yaml@10b4fd1 lines 53-54: "
                                                       "gradient_accumulation_steps 32 x batch_size_lm 1; with N "
                                                       "processes a step averages N x this many rows). Unit: rows.")
    partial_update: Literal["drop", "step"] = Field(
        "drop", description="minibatch=round_rows: the last rows_per_update-incomplete mini-batch of a pass is "
                            "dropped (dLLM-RL: its gradients are accumulated but no optimizer step follows before "
                            "the process ends, rl_trado.py lines 814-831) or gets its own optimizer step "
                            "(normalised by its actual row count). Unit: none.")
    shuffle: bool = Field(False, description="Shuffle the rows (round_rows) or responses (responses) before "
                                             "cutting mini-batches, per pass (dLLM-RL: no, a DataLoader without "
                                             "sampler in rollout order, rl_trado.py lines 600-606). Unit: none.")
    updates_per_step: int = Field(1, ge=1, description="minibatch=responses: optimizer steps per pass (mini-"
                                                       "batches of the kept responses). Unit: optimizer steps.")
    epochs_per_step: int = Field(1, ge=1, description="Passes over the rollout batch per RL step (dLLM-RL "
                                                      "configs/rl_trado.yaml line 58: num_train_epochs 1). "
                                                      "Unit: passes.")
    micro_batch_size: int = Field(4, ge=1, description="Responses per training forward. Unit: responses.")
    rows_per_forward: int = Field(8, ge=1, description="Full-attention models: trajectory rows per forward. "
                                                       "Unit: rows.")
    layout: Literal["packed", "rounds", "per_step"] = Field(
        "packed", description="Block models: packed = all steps of a response in one forward; rounds = one row "
                              "per round (TraceRL's layout); per_step = one forward per step (reference). "
                              "Unit: none.")
    group_filter: Literal["none", "acc_range", "nonzero_std"] = Field(
        "acc_range", description="Drop groups by mean reward: acc_range keeps acc_range[0] <= mean <= "
                                 "acc_range[1]; nonzero_std keeps groups whose rewards differ. Unit: none.")
    acc_range: tuple[float, float] = Field((0.2, 0.8), description="Inclusive mean-reward range kept by "
                                                                   "group_filter=acc_range. Unit: reward.")
    truncated_reward: float | None = Field(0.0, description="Reward given to responses that hit max_new_tokens "
                                                            "without EOS (null = keep the task's). Unit: reward.")
    value: ValueOptions | None = Field(None, description="Enable the diffusion value model (step-level GAE). "
                                                         "Unit: none.")

    @model_validator(mode="after")
    def _check_range(self):
        if self.acc_range[0] > self.acc_range[1]:
            raise ValueError("acc_range must be (low, high) with low <= high")
        if self.minibatch == "round_rows" and self.updates_per_step != 1:
            raise ValueError("updates_per_step applies to minibatch='responses'; with minibatch='round_rows' the "
                             "number of optimizer steps follows from rows_per_update")
        return self


class RLConfig(RolloutConfig):
    """Fields of every policy-RL trainer (units in each description)."""

    lr: float = Field(1e-6, gt=0, description="Policy AdamW learning rate. Unit: 1/step.")
    clip_low: float = Field(0.2, ge=0, lt=1, description="Ratio clip ε_low: ratios below 1-ε_low are clipped. "
                                                         "Unit: dimensionless.")
    clip_high: float = Field(0.2, ge=0, description="Ratio clip ε_high: ratios above 1+ε_high are clipped. "
                                                    "Unit: dimensionless.")
    log_ratio_clamp: float = Field(10.0, gt=0, description="Clamp log π_θ − log π_old to ±c before exp. "
                                                           "Unit: nats.")
    kl_beta: float = Field(0.01, ge=0, description="Weight β of the k3 KL term. Unit: dimensionless.")
    kl_anchor: Literal["old", "reference"] = Field(
        "old", description="KL against π_old (the rollout policy; TraceRL) or a frozen copy of the initial model "
                           "(reference; DiRL). Recorded in the final sidecar. Unit: none.")
    old_logprobs: Literal["recompute", "detach"] = Field(
        "recompute", description="π_old: a no-grad pass before the first update (recompute), or log π_θ.detach() "
                                 "(detach: strictly on-policy, ratio exactly 1; needs updates_per_step = "
                                 "epochs_per_step = 1). Unit: none.")
    logprob_temperature: float = Field(1.0, gt=0, description="Divide logits by this before log-softmax when "
                                                              "scoring tokens. Unit: dimensionless.")
    loss_norm: Literal["round_row", "response", "tokens", "row_mean"] = Field(
        "round_row", description="Per-token weight of an optimizer step's loss (objectives.token_weights): "
                                 "round_row = each round row's sum / L1, averaged over the step's rows (TraceRL, "
                                 "rl_trado.py@10b4fd1 lines 741-744, 807); response = sum / (responses x L1) "
                                 "(former default); tokens = token mean over the step; row_mean = token mean "
                                 "per round row averaged over responses x block_size/shrink rows (DiRL DiPO). "
                                 "L1 = max_new_tokens rounded up to the block. 'gen_len' is read as "
                                 "'response'. Unit: none.")

    @model_validator(mode="before")
    @classmethod
    def _legacy_norm(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("loss_norm") == "gen_len":
            data = {**data, "loss_norm": "response"}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.old_logprobs == "detach" and (self.minibatch != "responses" or self.updates_per_step != 1
                                              or self.epochs_per_step != 1):
            raise ValueError("old_logprobs='detach' (on-policy) needs minibatch='responses' and "
                             "updates_per_step = epochs_per_step = 1")
        return self
