"""The RL loop shared by ``tracerl``, ``dipo``, ``block-adapt`` and ``random-mask-rl``.

One RL step (dLLM-RL ``rl.py``, ``train/rl_trado.py``, ``train/train_trado_value.py`` at
10b4fd1; DiRL, arXiv 2512.22234, §3.2 and §4.2):

1. **Rollout.** ``prompts_per_step`` task documents × ``samples_per_prompt`` samples are
   decoded by a sampler plugin with ``record_trajectory=True`` from the *current* weights
   (in process, no checkpoint reload); each sample keeps the sampler's token ids and step
   map (nothing is re-tokenised; dLLM-RL's ``train/rl_trado.py`` re-tokenises the decoded
   text, so its step map can drift from the tokens).
2. **Reward.** The task's own scorer (``Task.score_batch`` / ``reward``); a truncated
   response (finish reason ``length``) can be given ``truncated_reward`` (TraceRL: 0).
3. **Advantage.** Group z-score within each prompt's samples; groups are then filtered
   (``group_filter``). With a value model: step-level GAE (γ, λ) on top
   (``train/train_trado_value.py``).
4. **Update.** π_old is a no-grad pass of the trainer over the whole rollout batch
   before the first update (``old_logprobs="recompute"``, dLLM-RL ``rl_trado.py`` @10b4fd1
   lines 629-682) or ``logπ_θ.detach()`` (``"detach"``, strictly on-policy: ratio exactly
   1, DiPO). The update is a sequence of optimizer steps (:func:`update_plan`):
   ``minibatch="round_rows"`` (TraceRL as published, the default) cuts the round rows
   (:func:`.trajectory.round_ids`: one row = one round of one response) in rollout order
   into mini-batches of ``rows_per_update`` rows (32), one optimizer step each, dropping a
   last incomplete one (``partial_update``), ``epochs_per_step`` passes (1) — so all but the
   first step are off-policy and the clip and the KL to π_old act;
   ``minibatch="responses"`` cuts the kept responses into ``updates_per_step`` mini-batches
   (``updates_per_step: 1`` = one on-policy optimizer step per RL step). Each step applies
   the clipped surrogate with the k3 KL term (:func:`.objectives.clipped_policy_terms`) to
   the tokens of its rows. Block models score a response's rows in one packed forward
   (:mod:`.trajectory`); full-attention models use one forward per shrunk step; AR models
   one causal forward.

**Loss normalisation** (``loss_norm``, :func:`.objectives.token_weights`): ``round_row``
(TraceRL: each round row's summed loss / L1, averaged over the step's rows), ``response``
(sum / (responses × L1)), ``tokens`` (token mean) or ``row_mean`` (DiRL: token mean per
round row, averaged over responses × block_size/shrink rows); L1 is the sampler's
``max_new_tokens`` rounded up to the block size.

With ``minibatch="round_rows"`` the LR schedule advances once per RL step that makes at
least one optimizer step (the number of optimizer steps per RL step depends on the
rollouts); with ``"responses"`` once per optimizer step. See docs/tracerl-procedure.md.

The optimizer, its moments and the LR schedule persist across RL steps and are
checkpointed (not so in dLLM-RL at 10b4fd1: ``rl.py`` relaunches ``train/rl_trado.py`` every
RL step, which builds a fresh AdamW).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from dllm_bench.console import progress
from dllm_bench.errors import BadInputError
from dllm_bench.plugins import StrictModel

from .base import (
    FAMILY_SHORT,
    Engine,
    PolicyNet,
    TrainConfig,
    TrainResult,
    ValueNet,
    config_hash,
    derive_seed,
    load_adapter,
    open_run,
)
from .objectives import (
    GAEResult,
    clipped_policy_terms,
    clipped_value_terms,
    group_zscore,
    keep_groups,
    loss_normaliser,
    step_gae,
    token_weights,
)
from .trajectory import (
    ForwardInputs,
    Trajectory,
    TrajectoryBatch,
    collate,
    forward_plan,
    round_ids,
    round_rows,
    scatter_tokens,
    trainable_length,
)

log = logging.getLogger("dllm_bench.trainers")

DEFAULT_SAMPLER = {"block": "block-dynamic", "full": "full-diffusion", "ar": "ar"}
VALUE_HEAD_FILE = "value_head.pt"
VALUE_META_FILE = "dllm_bench_value.json"


# --------------------------------------------------------------------------- configs
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


# --------------------------------------------------------------------------- value nets
def build_value_net(opts: ValueOptions, adapter: Any, device: torch.device) -> ValueNet:
    """The value model: a backbone (policy copy / saved value dir / model spec) + head (dLLM-RL
    ``train/init_trado_value_model.py`` at 10b4fd1)."""
    import copy

    src = opts.model
    if src is not None and (Path(src) / VALUE_META_FILE).is_file():
        from transformers import AutoModel

        meta = json.loads((Path(src) / VALUE_META_FILE).read_text())
        backbone = AutoModel.from_pretrained(src, dtype=adapter.dtype)
        net = ValueNet(backbone, int(meta["hidden_size"]), adapter.attn_backend)
        net.head.weight.data.copy_(torch.load(Path(src) / VALUE_HEAD_FILE, map_location="cpu"))
        return net.to(device)
    if src is None:
        lm = adapter.model
    else:
        from dllm_bench.models import load_model

        lm = load_model(src, dtype=str(adapter.dtype).replace("torch.", ""), device=str(device)).model
    dec = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    backbone = copy.deepcopy(dec)
    backbone.requires_grad_(True)
    return ValueNet(backbone, int(lm.config.hidden_size), adapter.attn_backend).to(device)


def save_value_net(engine: Engine, vmodel: torch.nn.Module, directory: Path) -> Path:
    """Save the value model (backbone in HF format + head) so ``ValueOptions.model`` can load it."""
    engine.accelerator.wait_for_everyone()
    state = engine.accelerator.get_state_dict(vmodel)
    if engine.is_main:
        inner = engine.unwrap(vmodel)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        inner.backbone.save_pretrained(d, state_dict=bb, safe_serialization=True)
        torch.save(state["head.weight"].detach().cpu(), d / VALUE_HEAD_FILE)
        (d / VALUE_META_FILE).write_text(json.dumps({"format": 1, "hidden_size": inner.head.in_features}) + "\n")
    engine.accelerator.wait_for_everyone()
    return Path(directory)


# --------------------------------------------------------------------------- scoring
def token_logprobs(net: torch.nn.Module, batch: TrajectoryBatch, family: str, *, layout: str,
                   rows_per_forward: int, temperature: float, shift: int, device: torch.device,
                   banned: int | None = None) -> torch.Tensor:
    """``[b, L]`` log π(y_j | state before y_j's step) for every trainable token (0 elsewhere).

    π is the sampler's distribution: ``softmax(logits / temperature)`` with the ``banned``
    token (the MASK id of diffusion models, never proposed by the samplers) removed, so at
    temperature 1 with no top-k/top-p, ``exp(logp)`` is the confidence the sampler recorded.
    Differentiable when called with grad enabled. ``shift`` = 1 for models whose logits at
    column i predict token i+1 (Dream; never with the packed block layout).
    """

    def fn(inp: ForwardInputs) -> torch.Tensor:
        gi = (inp.gather_index - shift).clamp_min(0)
        tgt = batch.response_ids[inp.rows[:, None], inp.cols.clamp_min(0)]
        return net(inp.input_ids.to(device), inp.attention_mask.to(device), inp.position_ids.to(device),
                   gi.to(device), targets=tgt.to(device), temperature=temperature, banned=banned)

    return scatter_tokens(batch, forward_plan(batch, family, layout=layout, rows_per_forward=rows_per_forward), fn)


def token_values(vnet: torch.nn.Module, batch: TrajectoryBatch, family: str, *, layout: str, rows_per_forward: int,
                 device: torch.device) -> torch.Tensor:
    """``[b, L]`` values V_j read at each trainable token's trajectory step (same rows as the policy)."""

    def fn(inp: ForwardInputs) -> torch.Tensor:
        return vnet(inp.input_ids.to(device), inp.attention_mask.to(device), inp.position_ids.to(device),
                    inp.gather_index.to(device))

    return scatter_tokens(batch, forward_plan(batch, family, layout=layout, rows_per_forward=rows_per_forward), fn)


def _chunks(idx: list[int], n: int) -> list[list[int]]:
    return [idx[i:i + n] for i in range(0, len(idx), n)]


# --------------------------------------------------------------------------- update plan
@dataclasses.dataclass
class MiniBatch:
    """One optimizer step's share of a rollout batch.

    Attributes:
        responses: batch indices of the responses it touches, in first-row order.
        mask: ``[len(responses), L]`` bool — the tokens trained in this step (a response's
            trainable tokens restricted to the step's round rows).
        rows: its round rows ``(response index, round id)`` in plan order.
    """

    responses: list[int]
    mask: torch.Tensor
    rows: list[tuple[int, int]]


def update_plan(rid: torch.Tensor, mask: torch.Tensor, *, minibatch: str, rows_per_update: int,
                partial_update: str, updates_per_step: int, epochs: int, shuffle: bool,
                g: torch.Generator) -> tuple[list[list[MiniBatch]], int]:
    """The sequence of optimizer steps of one RL step's update.

    ``minibatch='round_rows'`` (TraceRL as published; dLLM-RL ``train/rl_trado.py`` @10b4fd1
    lines 514-576 build the rows, 600-606 the DataLoader, 769-820 the loop): the round rows
    (:func:`.trajectory.round_rows`: response by response, rounds ascending) are, per pass,
    taken in that order (or a permutation drawn from ``g`` when ``shuffle``) and cut into
    consecutive mini-batches of ``rows_per_update`` rows, one optimizer step each; a last,
    shorter mini-batch is dropped (``partial_update='drop'``; in dLLM-RL its gradients are
    accumulated but never applied) or stepped (``'step'``). ``minibatch='responses'``: the
    responses (permuted when ``shuffle``) are cut into ``updates_per_step`` mini-batches of
    ``ceil(n / updates_per_step)`` whole responses. ``epochs`` passes either way.

    Args:
        rid: ``[b, L]`` long round ids (-1 = not trainable); mask: ``[b, L]`` bool trainable.
        g: CPU generator (the RL step's; only drawn from when ``shuffle``).

    Returns:
        ``(passes, dropped_rows)``: per pass the list of :class:`MiniBatch`, and the number of
        round rows (over all passes) that got no optimizer step.

    Raises:
        ValueError: unknown ``minibatch`` / ``partial_update``.
    """
    rows = round_rows(rid)
    passes: list[list[MiniBatch]] = []
    dropped = 0

    def make(chunk: list[tuple[int, int]]) -> MiniBatch:
        resp: list[int] = []
        rounds: dict[int, list[int]] = {}
        for i, r in chunk:
            if i not in rounds:
                resp.append(i)
                rounds[i] = []
            rounds[i].append(r)
        m = torch.stack([mask[i] & torch.isin(rid[i], torch.as_tensor(rounds[i], dtype=rid.dtype))
                         for i in resp]) if resp else mask[:0]
        return MiniBatch(resp, m, list(chunk))

    if minibatch == "round_rows":
        if partial_update not in ("drop", "step"):
            raise ValueError(f"unknown partial_update {partial_update!r}")
        for _ in range(epochs):
            order = torch.randperm(len(rows), generator=g).tolist() if shuffle else list(range(len(rows)))
            seq = [rows[k] for k in order]
            chunks = [seq[k:k + rows_per_update] for k in range(0, len(seq), rows_per_update)]
            if chunks and len(chunks[-1]) < rows_per_update and partial_update == "drop":
                dropped += len(chunks.pop())
            passes.append([make(c) for c in chunks])
    elif minibatch == "responses":
        n = rid.shape[0]
        by_resp: dict[int, list[tuple[int, int]]] = {}
        for i, r in rows:
            by_resp.setdefault(i, []).append((i, r))
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
            size = math.ceil(n / updates_per_step) if n else 1
            mbs = [make([row for i in perm[k:k + size] for row in by_resp.get(i, [])]) for k in range(0, n, size)]
            passes.append([mb for mb in mbs if mb.responses])
    else:
        raise ValueError(f"unknown minibatch {minibatch!r}")
    return passes, dropped


# --------------------------------------------------------------------------- trainer
class RLTrainer:
    """Base class of the RL trainers (see the module docstring). Subclasses set ``name``,
    ``version``, ``Config`` and may override :meth:`rollout_block_size`,
    :meth:`train_block_size`, :meth:`sampler_args`, :meth:`training_batch` and
    :meth:`final_adapter`."""

    name: ClassVar[str] = "rl"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[RolloutConfig]] = RLConfig
    train_policy: ClassVar[bool] = True
    """False for the value trainer: the rollout policy is frozen, only the value model trains."""

    def __init__(self, config: RolloutConfig | dict[str, Any], adapter: Any = None, task: Any = None):
        """Args: ``config`` (validated ``Config`` or a dict); optional in-memory ``adapter``
        (a :class:`dllm_bench.models.ModelAdapter`, trained in place, instead of loading
        ``config.model``) and ``task`` (a Task object instead of the ``config.task`` plugin)."""
        self.config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        self.adapter = adapter
        self.task = task

    # ------------------------------------------------------------------ hooks
    def rollout_block_size(self, step: int, adapter: Any) -> int | None:
        """Block size the sampler uses at RL step ``step`` (None = sampler/model default)."""
        return self.config.sampler_args.get("block_size")

    def train_block_size(self, step: int, adapter: Any) -> int:
        """Training block size B_t at ``step``."""
        rb = self.rollout_block_size(step, adapter)
        return int(self.config.block_size or rb or adapter.block_size or 1)

    def training_batch(self, trajs: list[Trajectory], step: int, adapter: Any, family: str,
                       g: torch.Generator) -> tuple[list[Trajectory], list[int]]:
        """The rows to train on and, per row, the index of its trajectory (TraceRL: identity)."""
        return trajs, list(range(len(trajs)))

    # ------------------------------------------------------------------ rollout
    def sampler_args(self, step: int, adapter: Any) -> dict[str, Any]:
        """The sampler config at RL step ``step``."""
        return dict(self.config.sampler_args)

    def make_sampler(self, step: int, adapter: Any):
        from dllm_bench import registry

        cfg = self.config
        fam = FAMILY_SHORT[adapter.family]
        name = cfg.sampler or DEFAULT_SAMPLER[fam]
        args = self.sampler_args(step, adapter)
        rb = self.rollout_block_size(step, adapter)
        if rb is not None and fam == "block":
            args["block_size"] = rb
            if args.get("denoising_steps") and args["denoising_steps"] > rb:
                args["denoising_steps"] = rb
        cls = registry.load("samplers", name)
        if fam == "block" and "block_alignment" in getattr(cls.Config, "model_fields", {}):
            given = args.get("block_alignment")
            want = self.block_alignment(adapter)
            if given is not None and given != want:
                raise BadInputError(f"sampler_args.block_alignment={given!r} differs from the trainer's block "
                                    f"alignment {want!r}: rollouts must be decoded with the blocks training uses")
            args["block_alignment"] = want
        return registry.create("samplers", name, args)

    def block_alignment(self, adapter: Any) -> str:
        """The block alignment of rollouts and training: the config's, else the model's."""
        return self.config.block_alignment or getattr(adapter, "block_alignment", "response")

    def rollout(self, engine: Engine, model: torch.nn.Module, adapter: Any, sampler: Any, docs: list[Any],
                prompts: list[list[int]], step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """Decode ``samples_per_prompt`` samples of every prompt from the current weights."""
        cfg = self.config
        G = cfg.samples_per_prompt
        flat = [(gi, p) for gi, p in enumerate(prompts) for _ in range(G)]
        seeds = [derive_seed(cfg.seed, step, 11, engine.accelerator.process_index, i) for i in range(len(flat))]
        gens = []
        t0 = time.perf_counter()
        with engine.full_params(model) as inner:
            lm = inner.lm
            was_training = lm.training
            lm.eval()
            backend = adapter.attn_backend
            ad = dataclasses.replace(adapter, model=lm)
            for c in _chunks(list(range(len(flat))), cfg.rollout_batch_size):
                gens += sampler.generate(ad, [flat[i][1] for i in c], seed=[seeds[i] for i in c],
                                         record_trajectory=True)
            if ad.attn_backend != backend:
                ad.set_attn_backend(backend)
            lm.train(was_training)
        wall = time.perf_counter() - t0
        eos = adapter.eos_token_ids
        trajs = []
        for (gi, p), gen in zip(flat, gens):
            raw = list(gen.raw_token_ids or gen.token_ids)
            if not raw:
                continue
            sm = list(gen.trajectory.step_map) if gen.trajectory is not None else list(range(1, len(raw) + 1))
            sm = sm[:len(raw)]
            if gen.finish_reason == "eos":
                n_tr = min(len(raw), trainable_length(raw, eos, cfg.post_num))
            else:
                n_tr = min(len(raw), len(gen.token_ids))
            trajs.append(Trajectory(prompt_ids=list(p), response_ids=raw, step_map=sm, n_trainable=n_tr, group=gi,
                                    doc_id=docs[gi].id, text=gen.text,
                                    extra={"finish_reason": gen.finish_reason, "nfe": gen.nfe},
                                    block_alignment=getattr(gen.trajectory, "block_alignment", "response")))
        gen_tokens = sum(len(g.token_ids) for g in gens)
        nfe = sum(g.nfe for g in gens)
        stats = {"rollout_s": wall, "rollout_tokens_per_s": gen_tokens / wall if wall > 0 else 0.0,
                 "rollout_tokens_per_forward": gen_tokens / nfe if nfe else 0.0,
                 "response_len": gen_tokens / max(len(gens), 1),
                 "truncated_frac": sum(g.finish_reason == "length" for g in gens) / max(len(gens), 1)}
        return trajs, stats

    def score(self, task: Any, docs: list[Any], trajs: list[Trajectory]) -> dict[str, float]:
        """Fill ``reward`` from the task's scorer; returns reward mean and accuracy."""
        cfg = self.config
        items = [(docs[t.group], t.text) for t in trajs]
        if hasattr(task, "score_batch"):
            verdicts = task.score_batch(items)
            rewards = [float(v.score) for v in verdicts]
            correct = [bool(v.correct) for v in verdicts]
        else:
            rewards = [float(task.reward(d, c)) for d, c in items]
            correct = [r >= 1.0 for r in rewards]
        for t, r in zip(trajs, rewards):
            t.reward = r
            if cfg.truncated_reward is not None and t.extra.get("finish_reason") == "length":
                t.reward = float(cfg.truncated_reward)
        n = max(len(trajs), 1)
        return {"reward_mean": sum(t.reward for t in trajs) / n, "accuracy": sum(correct) / n}

    # ------------------------------------------------------------------ train
    def train(self, run_dir: Path) -> TrainResult:
        """Run RL into ``run_dir`` (resumes from its newest checkpoint)."""
        from dllm_bench import registry

        cfg = self.config
        run_dir = Path(run_dir)
        eng = open_run(self.name, cfg, run_dir, ("policy", "value") if cfg.value else ("policy",))
        if isinstance(eng, TrainResult):
            return eng
        adapter = self.adapter if self.adapter is not None else load_adapter(cfg, eng.device)
        family = FAMILY_SHORT[adapter.family]
        if adapter.logits_shift and family == "block":
            raise BadInputError("block-diffusion models with shifted logits are not supported")
        shift = 1 if (adapter.logits_shift and family != "ar") else 0
        task = self.task if self.task is not None else registry.create("tasks", cfg.task, cfg.task_args)
        docs_all = list(task.docs())
        enc = [(d, adapter.encode(task.prompt(d, adapter.tokenizer))) for d in docs_all]
        enc = [(d, p) for d, p in enc if 0 < len(p) <= cfg.max_prompt_tokens]
        if not enc:
            raise BadInputError(f"task {cfg.task!r}: no prompt fits max_prompt_tokens={cfg.max_prompt_tokens}")

        ref_net = None
        if self.train_policy and cfg.kl_anchor == "reference":
            ref_net = eng.prepare_frozen(PolicyNet(adapter.clone().model, adapter.attn_backend))
        vnet = build_value_net(cfg.value, adapter, eng.device) if cfg.value else None
        net = PolicyNet(adapter.model, adapter.attn_backend)
        # the LR schedule counts optimizer steps (minibatch=responses) or RL steps (round_rows)
        total_updates = (cfg.max_steps if cfg.minibatch == "round_rows"
                         else cfg.max_steps * cfg.updates_per_step * cfg.epochs_per_step)
        opt = sched = None
        if self.train_policy:
            net.train()
            model, opt, sched = eng.prepare(net, eng.make_optimizer(net), total_updates, name="policy")
        else:  # the value trainer: a frozen rollout policy
            model = eng.prepare_frozen(net)
        vmodel = vopt = vsched = None
        if vnet is not None:
            vnet.train()
            vmodel, vopt, vsched = eng.prepare(vnet, eng.make_optimizer(vnet, lr=cfg.value.lr), total_updates,
                                               name="value")
        start = eng.resume()
        last: dict[str, Any] = {}
        with progress(self.name, cfg.max_steps - start) as advance:
            for step in range(start, cfg.max_steps):
                metrics = self.rl_step(step, eng, adapter, family, shift, task, enc, model, opt, sched,
                                       ref_net, vmodel, vopt, vsched)
                eng.state.step = step + 1
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                    last = eng.log_metrics(step + 1, metrics)
                advance(1, f"reward {metrics.get('reward_mean', 0):.3f}")
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
                    eng.save_checkpoint()
        if cfg.save_every:
            eng.save_checkpoint()
        training = {"trainer": self.name, "trainer_version": self.version, "config_sha256": config_hash(cfg),
                    "base_model": cfg.model, "steps": eng.state.step, "task": cfg.task, "shrink": cfg.shrink,
                    "value_model": cfg.value is not None, "run_dir": str(run_dir), "parent": adapter.training}
        extra = {}
        if self.train_policy:
            training.update({"kl_anchor": cfg.kl_anchor, "kl_beta": cfg.kl_beta, "minibatch": cfg.minibatch,
                             "rows_per_update": cfg.rows_per_update if cfg.minibatch == "round_rows" else None,
                             "loss_norm": cfg.loss_norm})
            final = eng.save_final(model, self.final_adapter(adapter), run_dir / "final", training)
            if vmodel is not None:
                extra["value"] = str(save_value_net(eng, vmodel, run_dir / "value"))
        else:
            final = save_value_net(eng, vmodel, run_dir / "final")
            extra["value"] = str(final)
        res = TrainResult(self.name, run_dir, final, eng.metrics_path, eng.state.step, last, extra)
        return eng.finish(res)

    def final_adapter(self, adapter: Any) -> Any:
        """The adapter whose tokenizer and sidecar go with the final weights (block-adapt
        changes the block size)."""
        return adapter

    def prompt_indices(self, n: int, step: int, rank: int = 0) -> list[int]:
        """Prompt indices of RL step ``step`` on process ``rank`` (per-epoch permutations)."""
        from .sft import SFT

        return SFT.batch_indices(n, step, self.config.prompts_per_step, derive_seed(self.config.seed, 3, rank))

    def rl_step(self, step: int, eng: Engine, adapter: Any, family: str, shift: int, task: Any,
                enc: list[tuple[Any, list[int]]], model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                ref_net: torch.nn.Module | None, vmodel: torch.nn.Module | None, vopt: Any, vsched: Any
                ) -> dict[str, Any]:
        """One rollout + update round; returns the step's metrics."""
        cfg = self.config
        t_step = time.perf_counter()
        g = eng.step_generator(step)
        idx = self.prompt_indices(len(enc), step, eng.accelerator.process_index)
        docs = [enc[i][0] for i in idx]
        prompts = [enc[i][1] for i in idx]
        sampler = self.make_sampler(step, adapter)
        trajs, metrics = self.rollout(eng, model, adapter, sampler, docs, prompts, step)
        metrics.update(self.score(task, docs, trajs))
        # advantages: z-score within each prompt group, then filter groups
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        groups = torch.tensor([t.group for t in trajs], dtype=torch.long)
        seq_adv = group_zscore(rewards, groups) if trajs else torch.zeros(0)
        keep = keep_groups([t.reward for t in trajs], [t.group for t in trajs], cfg.group_filter, cfg.acc_range)
        kept = [i for i, k in enumerate(keep) if k and trajs[i].n_trainable > 0]
        metrics["kept_frac"] = len(kept) / max(len(trajs), 1)
        if not kept:
            metrics.update({"skipped": 1, "step_s": time.perf_counter() - t_step})
            return metrics
        B_t = self.train_block_size(step, adapter)
        rows, src = self.training_batch([trajs[i] for i in kept], step, adapter, family, g)
        try:
            mask_id = adapter.mask_token_id if adapter.mask_token_id is not None else adapter.pad_token_id
            batch = collate(rows, family=family, block_size=B_t, shrink=cfg.shrink, mask_id=mask_id,
                            pad_id=adapter.pad_token_id, alignment=self.block_alignment(adapter))
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
        kept_adv = seq_adv[torch.as_tensor(kept)][torch.as_tensor(src)]
        n_rows = batch.size
        rid = self.round_ids(batch, family)
        unit = B_t if family == "block" else 1
        gen_len = int(math.ceil(int(cfg.sampler_args.get("max_new_tokens", batch.gen_len)) / unit) * unit)
        kw = dict(family=family, layout=cfg.layout, rows_per_forward=cfg.rows_per_forward)
        dev = eng.device
        t_train = time.perf_counter()
        # value model: pre-update values, GAE, value update
        adv = kept_adv[:, None].expand(n_rows, batch.gen_len).clone()
        if vmodel is not None:
            v_reward = kept_adv if cfg.value.reward == "zscore" else torch.tensor(
                [trajs[kept[s]].reward for s in src], dtype=torch.float32)
            with torch.no_grad():
                v_old = torch.cat([token_values(vmodel, batch.select(c), device=dev, **kw).cpu()
                                   for c in _chunks(list(range(n_rows)), cfg.micro_batch_size)])
            gae: GAEResult = step_gae(v_old, v_reward, batch.steps, batch.mask, cfg.value.gamma, cfg.value.lam)
            adv = gae.advantages
            metrics.update(self._value_update(eng, vmodel, vopt, vsched, batch, v_old, gae.returns, gen_len, g, kw,
                                              rid))
            metrics["value_mean"] = float((v_old * batch.mask).sum() / batch.mask.sum().clamp_min(1))
        if not self.train_policy or (vmodel is not None and step < cfg.value.warmup_steps):
            metrics.update({"policy_frozen": 1, "step_s": time.perf_counter() - t_step})
            return metrics
        # π_old and the KL anchor
        old = anchor = None
        chunks = _chunks(list(range(n_rows)), cfg.micro_batch_size)
        lp_kw = dict(temperature=cfg.logprob_temperature, shift=shift, device=dev,
                     banned=adapter.mask_token_id if family != "ar" else None, **kw)
        with torch.no_grad():
            if cfg.old_logprobs == "recompute":
                old = torch.cat([token_logprobs(model, batch.select(c), **lp_kw).cpu() for c in chunks])
            if cfg.kl_anchor == "reference" and ref_net is not None:
                anchor = torch.cat([token_logprobs(ref_net, batch.select(c), **lp_kw).cpu() for c in chunks])
        metrics.update(self._policy_update(eng, model, opt, sched, batch, adv, old, anchor, gen_len, g, lp_kw, rid,
                                           self.rows_per_response(family, B_t)))
        dt = time.perf_counter() - t_train
        n_tok = int(batch.mask.sum())
        metrics.update({"train_s": dt, "train_tokens_per_s": n_tok / dt if dt > 0 else 0.0, "train_rows": n_rows,
                        "round_rows": len(round_rows(rid)),
                        "trainable_tokens": n_tok, "lr": eng.current_lr(sched),
                        "step_s": time.perf_counter() - t_step})
        return metrics

    # ------------------------------------------------------------------ updates
    def round_ids(self, batch: TrajectoryBatch, family: str) -> torch.Tensor:
        """``[b, L]`` round row of every trainable token (:func:`.trajectory.round_ids`);
        random-mask RL overrides it (one row per noised copy)."""
        return round_ids(batch, family)

    def rows_per_response(self, family: str, block_size: int) -> int | None:
        """Rows every response counts for under ``loss_norm='row_mean'`` (DiRL: block_size /
        shrink, grpo.py@ec4bfb3 lines 163-168); None for full-attention and AR models."""
        return max(block_size // self.config.shrink, 1) if family == "block" else None

    def _plan(self, eng: Engine, batch: TrajectoryBatch, rid: torch.Tensor,
              g: torch.Generator) -> tuple[list[list[MiniBatch]], int]:
        """The optimizer steps of one update (:func:`update_plan`), cut to the same count on
        every process (a process with more mini-batches drops its extra ones)."""
        cfg = self.config
        passes, dropped = update_plan(rid, batch.mask, minibatch=cfg.minibatch, rows_per_update=cfg.rows_per_update,
                                      partial_update=cfg.partial_update, updates_per_step=cfg.updates_per_step,
                                      epochs=cfg.epochs_per_step, shuffle=cfg.shuffle, g=g)
        out = []
        for mbs in passes:
            n = eng.min_over_processes(len(mbs))
            dropped += sum(len(mb.rows) for mb in mbs[n:])
            out.append(mbs[:n])
        return out, dropped

    def _policy_update(self, eng: Engine, model, opt, sched, batch: TrajectoryBatch, adv: torch.Tensor,
                       old: torch.Tensor | None, anchor: torch.Tensor | None, gen_len: int, g: torch.Generator,
                       lp_kw: dict[str, Any], rid: torch.Tensor, rows_per_response: int | None) -> dict[str, float]:
        """Optimizer steps of the policy over the plan's mini-batches; fills
        ``self.last_update_trace`` with one record per optimizer step."""
        cfg = self.config
        agg = {"clip_frac": 0.0, "ratio_mean": 0.0, "kl": 0.0, "pg_loss": 0.0, "loss": 0.0}
        n_tok_total, grad_norms, trace = 0, [], []
        step_sched = sched if cfg.minibatch == "responses" else None
        passes, dropped = self._plan(eng, batch, rid, g)
        for p, mbs in enumerate(passes):
            for mb in mbs:
                # row_mean weighs tokens unequally; the other normalisers divide the step's sum by a constant
                w = (token_weights(mb.mask, rid[mb.responses], cfg.loss_norm, gen_len, rows_per_response)
                     if cfg.loss_norm == "row_mean" else None)
                denom = loss_normaliser(mb.mask, rid[mb.responses], cfg.loss_norm, gen_len) if w is None else 1.0
                micro = _chunks(list(range(len(mb.responses))), cfg.micro_batch_size)
                rec = {"pass": p, "rows": list(mb.rows), "loss": 0.0, "clip_frac": 0.0, "ratio_max_dev": 0.0,
                       "kl": 0.0, "n_tokens": 0}
                for k, c in enumerate(micro):
                    is_last = k == len(micro) - 1
                    ix = [mb.responses[x] for x in c]
                    sub = dataclasses.replace(batch.select(ix), mask=mb.mask[c])
                    with eng.sync_context(model, is_last):
                        lp = token_logprobs(model, sub, **lp_kw)
                        dev = lp.device
                        o = old[ix].to(dev) if old is not None else lp.detach()
                        a = anchor[ix].to(dev) if anchor is not None else (o if cfg.kl_anchor == "old" else None)
                        loss, st = clipped_policy_terms(
                            lp, o, adv[ix].to(dev), sub.mask.to(dev), clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                            log_ratio_clamp=cfg.log_ratio_clamp, anchor_logp=a, kl_beta=cfg.kl_beta,
                            weights=w[c].to(dev) if w is not None else None)
                        if w is None:
                            loss = loss / denom
                        eng.backward(model, loss, is_last)
                    n = st.n_tokens
                    n_tok_total += n
                    for key, val in (("clip_frac", st.clip_frac), ("ratio_mean", st.ratio_mean), ("kl", st.kl),
                                     ("pg_loss", st.pg)):
                        agg[key] += val * n
                    agg["loss"] += float(loss.detach())
                    rec["loss"] += float(loss.detach())
                    rec["clip_frac"] += st.clip_frac * n
                    rec["kl"] += st.kl * n
                    rec["ratio_max_dev"] = max(rec["ratio_max_dev"], st.ratio_max_dev)
                    rec["n_tokens"] += n
                rec["grad_norm"] = eng.optimizer_step(model, opt, step_sched)
                grad_norms.append(rec["grad_norm"])
                rec["clip_frac"] /= max(rec["n_tokens"], 1)
                rec["kl"] /= max(rec["n_tokens"], 1)
                trace.append(rec)
        if cfg.minibatch == "round_rows" and trace:
            sched.step()  # the LR schedule counts updating RL steps here (optimizer steps per RL step vary)
        self.last_update_trace = trace
        out = {k: (v / max(n_tok_total, 1) if k != "loss" else v) for k, v in agg.items()}
        if trace:
            out.update({"first_clip_frac": trace[0]["clip_frac"], "first_ratio_max_dev": trace[0]["ratio_max_dev"],
                        "last_clip_frac": trace[-1]["clip_frac"], "last_ratio_max_dev": trace[-1]["ratio_max_dev"],
                        "ratio_max_dev": max(r["ratio_max_dev"] for r in trace)})
        out["grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
        out["optimizer_steps"] = len(grad_norms)
        out["update_rows"] = sum(len(r["rows"]) for r in trace if r["pass"] == 0)
        out["dropped_rows"] = dropped
        if not trace:
            log.warning("%s: no policy optimizer step this RL step (%d round rows < rows_per_update=%d, "
                        "partial_update=drop)", self.name, dropped, cfg.rows_per_update)
        return out

    def _value_update(self, eng: Engine, vmodel, vopt, vsched, batch: TrajectoryBatch, v_old: torch.Tensor,
                      returns: torch.Tensor, gen_len: int, g: torch.Generator, kw: dict[str, Any],
                      rid: torch.Tensor) -> dict[str, float]:
        """Optimizer steps of the value model over the same kind of plan as the policy; the
        value loss is weighted ``round_row`` (dLLM-RL train_trado_value.py@10b4fd1 lines
        1004-1005, 1052) with minibatch=round_rows, else ``response``."""
        cfg = self.config
        mode = "round_row" if cfg.minibatch == "round_rows" else "response"
        step_sched = vsched if cfg.minibatch == "responses" else None
        losses, gns = [], []
        passes, _ = self._plan(eng, batch, rid, g)
        for mbs in passes:
            for mb in mbs:
                denom = loss_normaliser(mb.mask, rid[mb.responses], mode, gen_len)
                micro = _chunks(list(range(len(mb.responses))), cfg.micro_batch_size)
                tot = 0.0
                for k, c in enumerate(micro):
                    is_last = k == len(micro) - 1
                    ix = [mb.responses[x] for x in c]
                    sub = dataclasses.replace(batch.select(ix), mask=mb.mask[c])
                    with eng.sync_context(vmodel, is_last):
                        v = token_values(vmodel, sub, device=eng.device, **kw)
                        dev = v.device
                        loss = clipped_value_terms(v, v_old[ix].to(dev), returns[ix].to(dev), sub.mask.to(dev),
                                                   cfg.value.clip) / denom
                        eng.backward(vmodel, loss, is_last)
                    tot += float(loss.detach())
                losses.append(tot)
                gns.append(eng.optimizer_step(vmodel, vopt, step_sched))
        if cfg.minibatch == "round_rows" and gns:
            vsched.step()
        return {"value_loss": sum(losses) / max(len(losses), 1), "value_grad_norm": sum(gns) / max(len(gns), 1),
                "value_lr": eng.current_lr(vsched), "value_optimizer_steps": len(gns)}
