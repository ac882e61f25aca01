"""``tracerl``: TraceRL — trajectory-aware RL for diffusion LMs (arXiv 2509.06949; Gen-Verse/dLLM-RL
at 10b4fd1: ``rl.py``, ``train/rl_trado.py``, ``train/train_trado_value.py``, ``configs/rl_trado.yaml``).

This file is the whole algorithm, read top to bottom. One RL step (:meth:`TraceRL.rl_step`)
runs six phases: phases 1-2 fill the step's :class:`RLStepState`, phase 3 turns the kept
trajectories into the :class:`TrainingRows` that phases 4-6 train on:

1. **Rollout** (:meth:`TraceRL.rollout`). ``prompts_per_step`` task documents ×
   ``samples_per_prompt`` samples are decoded by a sampler plugin with
   ``record_trajectory=True`` from the *current* weights (in process, no checkpoint reload);
   each sample keeps the sampler's token ids and its **step map** (the denoising step at
   which each token was unmasked; nothing is re-tokenised: dLLM-RL's ``train/rl_trado.py``
   re-tokenises the decoded text, so its step map can drift from the tokens). The task's
   own scorer gives the reward (``Task.score_batch`` / ``reward``); a truncated response
   (finish reason ``length``) can be given ``truncated_reward`` (TraceRL: 0).
2. **Advantages** (:meth:`TraceRL.advantages`). Group z-score within each prompt's
   samples; groups are then filtered (``group_filter``; TraceRL keeps 0.2 <= mean reward
   <= 0.8).
3. **Trajectory → training rows** (:meth:`TraceRL.training_rows`). The kept trajectories
   are collated (:func:`.trajectory.collate`: shrinkage ``s`` merges ``s`` consecutive
   steps) and every trainable token gets its *round row* (:func:`.trajectory.round_ids`:
   one row = one round of one response, in every block the tokens of the block's r-th
   step). Training re-creates the sampler's state before each step:

   * block-diffusion models: all steps of a response in **one packed forward**
     ``[prompt ; clean response ; one B-token segment per (block, step)]``
     (:func:`.trajectory.packed_block_inputs`), equal to one forward per step (tested);
   * full-attention models: one forward per shrunk step (the published default for
     LLaDA/Dream is s = 8);
   * AR models: the trajectory is the token order (plain GRPO with the same objective).
4. **Value model + GAE** (:meth:`TraceRL.value_step`, only with ``value``). V_old is a
   no-grad pass of the diffusion value model over the rows; step-level GAE (γ, λ) turns the
   sequence advantage into per-token advantages and returns (``train/train_trado_value.py``;
   :func:`.objectives.step_gae`); the value model then takes its optimizer steps on the
   clipped value loss over the same mini-batches as the policy.
5. **π_old** (:meth:`TraceRL.old_logprobs`). A no-grad pass of the policy over the whole
   rollout batch before the first update (``old_logprobs="recompute"``, ``rl_trado.py``
   lines 629-682) or ``log π_θ.detach()`` (``"detach"``, strictly on-policy: ratio exactly
   1, DiPO); with ``kl_anchor="reference"`` also the frozen reference's log-probs.
6. **Policy update** (:meth:`TraceRL.policy_update`). A sequence of optimizer steps
   (:func:`.batching.update_plan`): ``minibatch="round_rows"`` (TraceRL as published, the
   default) takes the batch's round rows in rollout order and cuts them into mini-batches of
   ``rows_per_update`` = 32 rows, one optimizer step each, one pass (``epochs_per_step`` 1),
   no shuffling, the last incomplete mini-batch dropped (``partial_update: drop``). Every
   step after the first is off-policy, so the clip and the KL to π_old act.
   ``minibatch: responses`` with ``updates_per_step: 1`` restores the former single
   on-policy update per RL step. Each step applies the clipped surrogate with the k3 KL
   term (:func:`.objectives.clipped_policy_terms`) to the tokens of its rows.

**Loss** of an optimizer step over its rows ``M`` (``loss_norm: round_row``)::

    L = 1/(|M|·L1) Σ_{rows ∈ M} Σ_{j ∈ row} [ −min(ρ_j A_j, clip(ρ_j, 1−ε_low, 1+ε_high) A_j)
                                              + β (exp(−k_j) − 1 + k_j) ]

with ``ρ = exp(clamp(log π_θ − log π_old, ±c))``, ``k = log π_θ − log π_anchor`` (anchor π_old
by default, TraceRL; or a frozen reference) and L1 the sampler's ``max_new_tokens`` rounded
up to the block size (rl_trado.py lines 731-760 and 807: a row's sum / L1, averaged over the
gradient_accumulation_steps rows). ``loss_norm: response`` divides by responses × L1
instead (the former default), ``tokens`` by the number of trainable tokens, ``row_mean``
takes a token mean per round row averaged over responses × block_size/shrink rows (DiRL,
arXiv 2512.22234, §3.2 and §4.2; :func:`.objectives.token_weights`). Other defaults follow
dLLM-RL ``configs/rl_trado.yaml`` at 10b4fd1: lr 1e-6, ε 0.2, β 0.01, KL to π_old, shrink 1,
groups kept when 0.2 <= mean reward <= 0.8 (every field: :mod:`.rl_config`).

With ``minibatch="round_rows"`` the LR schedule advances once per RL step that makes at
least one optimizer step (the number of optimizer steps per RL step depends on the
rollouts); with ``"responses"`` once per optimizer step. The optimizer, its moments and the
LR schedule persist across RL steps and are checkpointed (not so in dLLM-RL at 10b4fd1:
``rl.py`` relaunches ``train/rl_trado.py`` every RL step, which builds a fresh AdamW). See
docs/tracerl-procedure.md.

**Variants** are small named differences from :class:`TraceRL`: ``dipo`` (:mod:`.dipo`,
config only: on-policy, DiRL's normaliser), ``block-adapt`` (:mod:`.block_adapt`: the block
sizes of rollout and training), ``random-mask-rl`` (:mod:`.random_mask_rl`: the training
rows are random noised copies instead of the trajectory) and ``value`` (:mod:`.value`: the
policy frozen, only phase 4 trains).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch

from dllm_bench.console import progress
from dllm_bench.errors import BadInputError

from .base import Trainer, open_run
from .batching import MiniBatch, batch_indices, chunks, update_plan
from .config import config_hash
from .engine import Engine
from .networks import FAMILY_SHORT, PolicyNet, build_value_net, load_adapter, save_value_net
from .objectives import (
    GAEResult,
    Normalisation,
    clipped_policy_terms,
    clipped_value_terms,
    group_zscore,
    keep_groups,
    loss_normaliser,
    step_gae,
    token_weights,
)
from .rl_config import RLConfig, RolloutConfig, ValueOptions
from .run_dir import TrainResult
from .scoring import token_logprobs, token_values
from .seeding import train_seed
from .trajectory import Family, Rollout, RolloutBatch, collate, round_ids, round_rows, trainable_length

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter
    from dllm_bench.plugins import Doc
    from dllm_bench.samplers.base import Sampler
    from dllm_bench.tasks.base import Task

log = logging.getLogger("dllm_bench.trainers")

DEFAULT_SAMPLER = {"block": "block-dynamic", "full": "full-diffusion", "ar": "ar"}


class TraceRLConfig(RLConfig):
    """``tracerl`` config: :class:`dllm_bench.trainers.rl_config.RLConfig` (every field documented there)."""


@dataclasses.dataclass
class ValueModel:
    """The diffusion value model of a run (``config.value`` set), trained in phase 4."""

    net: torch.nn.Module
    """The prepared :class:`.networks.ValueNet`."""
    opt: torch.optim.Optimizer
    """Its own AdamW (learning rate ``options.lr``)."""
    sched: torch.optim.lr_scheduler.LambdaLR
    options: ValueOptions
    """``config.value``: γ, λ, the value clip, the reward it regresses on, the warmup steps."""


@dataclasses.dataclass
class RLRun:
    """What stays fixed across the RL steps of one run (built by :meth:`TraceRL.train`)."""

    engine: Engine
    adapter: ModelAdapter
    family: Family
    """``block``, ``full`` or ``ar`` (:data:`.networks.FAMILY_SHORT`)."""
    shift: int
    """1 for models whose logits at column i predict token i+1 (Dream), else 0."""
    policy: torch.nn.Module
    """The prepared :class:`.networks.PolicyNet` (frozen for the value trainer)."""
    task: Task
    """The task giving prompts and rewards."""
    opt: Any = None
    sched: Any = None
    prompts: list[tuple[Doc, list[int]]] = dataclasses.field(default_factory=list)
    """(document, prompt token ids) of every task document whose prompt fits."""
    reference: torch.nn.Module | None = None
    """The frozen initial policy (``kl_anchor="reference"``)."""
    value: ValueModel | None = None
    """The value model (``config.value`` set), else None."""


@dataclasses.dataclass
class RLStepState:
    """What phases 1-2 of one RL step fill, with the step's metrics and timings (:meth:`TraceRL.rl_step`)."""

    step: int
    g: torch.Generator
    """All of the step's randomness: seeded by (seed, step, rank)."""
    t_start: float
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    # 1. rollout
    trajs: list[Rollout] = dataclasses.field(default_factory=list)
    """The samples with token ids, step maps and rewards."""
    # 2. advantages
    seq_adv: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    """``[len(trajs)]`` group z-scored rewards."""
    kept: list[int] = dataclasses.field(default_factory=list)
    """Indices of the trajectories kept by the group filter (with a trainable token)."""
    t_train: float = 0.0
    """When phase 3 finished building the training rows (``time.perf_counter()``, seconds)."""

    def stop(self, **flags: int) -> dict[str, float]:
        """The metrics of a step that ends early (``skipped``, ``policy_frozen``)."""
        self.metrics.update({**flags, "step_s": time.perf_counter() - self.t_start})
        return self.metrics


@dataclasses.dataclass
class TrainingRows:
    """What phase 3 builds from the kept trajectories (:meth:`TraceRL.training_rows`) and
    phases 4-6 train on."""

    batch: RolloutBatch
    """The collated rows: ``batch.size`` rows of L = ``batch.gen_len`` response tokens."""
    src: list[int]
    """Per batch row, the index (into ``RLStepState.kept``) of its trajectory."""
    row_adv: torch.Tensor
    """``[rows]`` the sequence advantage of every row."""
    rid: torch.Tensor
    """``[rows, L]`` round row of every trainable token (-1 elsewhere)."""
    block_size: int
    """Training block size B_t."""
    gen_len: int
    """L1: ``max_new_tokens`` rounded up to the block size."""
    # 3-4. advantages per token (step-level GAE with a value model)
    adv: torch.Tensor
    """``[rows, L]`` the advantage of every token (the row's sequence advantage until phase 4)."""
    # 5. π_old and the KL anchor
    old_logp: torch.Tensor | None = None
    """``[rows, L]`` log π_old (``old_logprobs="recompute"``); None: log π_θ.detach()."""
    anchor_logp: torch.Tensor | None = None
    """``[rows, L]`` the frozen reference's log-probs (``kl_anchor="reference"``); None: π_old's."""


class TraceRL(Trainer):
    """TraceRL trainer (plugin ``tracerl``). ``TraceRL(config).train(run_dir) -> TrainResult``.

    Variants subclass it and override the methods under "variant hooks"."""

    name: ClassVar[str] = "tracerl"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[RolloutConfig]] = TraceRLConfig
    config: RolloutConfig
    train_policy: ClassVar[bool] = True
    """False for the value trainer: the rollout policy is frozen, only the value model trains."""

    def __init__(self, config: RolloutConfig | dict[str, Any], adapter: ModelAdapter | None = None,
                 task: Task | None = None):
        """Args: ``config`` (validated ``Config`` or a dict); optional in-memory ``adapter``
        (a :class:`dllm_bench.models.ModelAdapter`, trained in place, instead of loading
        ``config.model``) and ``task`` (a Task object instead of the ``config.task`` plugin)."""
        self.config = config if isinstance(config, self.Config) else self.Config.model_validate(config)
        self.adapter = adapter
        self.task = task

    @property
    def rl_config(self) -> RLConfig:
        """``self.config`` with the policy objective's fields (:class:`.rl_config.RLConfig`: clip,
        KL, π_old, ``loss_norm``), which every trainer with ``train_policy`` has (the value
        trainer's :class:`.rl_config.RolloutConfig` does not).

        Raises:
            TypeError: the config is not an :class:`.rl_config.RLConfig` (a variant whose ``Config``
                lacks the policy fields reads them).
        """
        if not isinstance(self.config, RLConfig):
            raise TypeError(f"{self.name}: {type(self.config).__name__} has no policy-objective fields (RLConfig)")
        return self.config

    # ================================================================== the run
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
        if self.train_policy and self.rl_config.kl_anchor == "reference":
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
        value = None
        if vnet is not None and cfg.value is not None:  # vnet exists exactly when cfg.value is set
            vnet.train()
            vmodel, vopt, vsched = eng.prepare(vnet, eng.make_optimizer(vnet, lr=cfg.value.lr), total_updates,
                                               name="value")
            value = ValueModel(net=vmodel, opt=vopt, sched=vsched, options=cfg.value)
        run = RLRun(engine=eng, adapter=adapter, family=family, shift=shift, policy=model, task=task, opt=opt,
                    sched=sched, prompts=enc, reference=ref_net, value=value)
        start = eng.resume()
        last: dict[str, Any] = {}
        with progress(self.name, cfg.max_steps - start) as advance:
            for step in range(start, cfg.max_steps):
                metrics = self.rl_step(run, step)
                eng.state.step = step + 1
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                    last = eng.log_metrics(step + 1, metrics)
                advance(1, f"reward {metrics.get('reward_mean', 0):.3f}")
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
                    eng.save_checkpoint()
        if cfg.save_every:
            eng.save_checkpoint()
        return self.save(run, run_dir, last)

    def save(self, run: RLRun, run_dir: Path, last: dict[str, Any]) -> TrainResult:
        """Write the final weights (policy, and the value model when there is one) and the result."""
        cfg, eng, adapter = self.config, run.engine, run.adapter
        training = {"trainer": self.name, "trainer_version": self.version, "config_sha256": config_hash(cfg),
                    "base_model": cfg.model, "steps": eng.state.step, "task": cfg.task, "shrink": cfg.shrink,
                    "value_model": cfg.value is not None, "run_dir": str(run_dir), "parent": adapter.training}
        extra = {}
        if self.train_policy:
            pcfg = self.rl_config
            training.update({"kl_anchor": pcfg.kl_anchor, "kl_beta": pcfg.kl_beta, "minibatch": cfg.minibatch,
                             "rows_per_update": cfg.rows_per_update if cfg.minibatch == "round_rows" else None,
                             "loss_norm": pcfg.loss_norm})
            final = eng.save_final(run.policy, self.final_adapter(adapter), run_dir / "final", training)
            if run.value is not None:
                extra["value"] = str(save_value_net(eng, run.value.net, run_dir / "value"))
        else:
            assert run.value is not None, "the value trainer's config always has a value model"
            final = save_value_net(eng, run.value.net, run_dir / "final")
            extra["value"] = str(final)
        res = TrainResult(self.name, run_dir, final, eng.metrics_path, eng.state.step, last, extra)
        return eng.finish(res)

    # ================================================================== one RL step
    def rl_step(self, run: RLRun, step: int) -> dict[str, float]:
        """One rollout + update round; returns the step's metrics."""
        t_start = time.perf_counter()
        s = RLStepState(step=step, g=run.engine.step_generator(step), t_start=t_start)
        self.rollout(run, s)                              # 1. samples, step maps, rewards
        if not self.advantages(run, s):                   # 2. group z-scores, group filter
            return s.stop(skipped=1)
        rows = self.training_rows(run, s)                 # 3. trajectories -> rows, round ids
        if run.value is not None:
            self.value_step(run, run.value, s, rows)      # 4. V_old, step-level GAE, value update
        if not self.train_policy or (run.value is not None and step < run.value.options.warmup_steps):
            return s.stop(policy_frozen=1)
        self.old_logprobs(run, rows)                      # 5. π_old and the KL anchor
        s.metrics.update(self.policy_update(run, s, rows))  # 6. clipped objective, optimizer steps
        dt = time.perf_counter() - s.t_train
        n_tok = int(rows.batch.mask.sum())
        s.metrics.update({"train_s": dt, "train_tokens_per_s": n_tok / dt if dt > 0 else 0.0,
                          "train_rows": rows.batch.size, "round_rows": len(round_rows(rows.rid)),
                          "trainable_tokens": n_tok, "lr": run.engine.current_lr(run.sched),
                          "step_s": time.perf_counter() - s.t_start})
        return s.metrics

    # ------------------------------------------------------------------ 1. rollout
    def rollout(self, run: RLRun, s: RLStepState) -> None:
        """Decode ``samples_per_prompt`` samples of this step's prompts from the current
        weights and score them: fills ``s.trajs`` (rewards included) and the rollout metrics."""
        idx = self.prompt_indices(len(run.prompts), s.step, run.engine.accelerator.process_index)
        docs = [run.prompts[i][0] for i in idx]
        prompts = [run.prompts[i][1] for i in idx]
        sampler = self.make_sampler(s.step, run.adapter)
        s.trajs, s.metrics = self.decode(run.engine, run.policy, run.adapter, sampler, docs, prompts, s.step)
        s.metrics.update(self.score(run.task, docs, s.trajs))

    def prompt_indices(self, n: int, step: int, rank: int = 0) -> list[int]:
        """Prompt indices of RL step ``step`` on process ``rank`` (per-epoch permutations)."""
        return batch_indices(n, step, self.config.prompts_per_step, train_seed(self.config.seed, 3, rank))

    def make_sampler(self, step: int, adapter: ModelAdapter) -> Sampler:
        """The rollout sampler of RL step ``step`` (its block size and alignment those of training)."""
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
        if fam == "block" and "block_alignment" in cls.Config.model_fields:
            given = args.get("block_alignment")
            want = self.block_alignment(adapter)
            if given is not None and given != want:
                raise BadInputError(f"sampler_args.block_alignment={given!r} differs from the trainer's block "
                                    f"alignment {want!r}: rollouts must be decoded with the blocks training uses")
            args["block_alignment"] = want
        return registry.create("samplers", name, args)

    def block_alignment(self, adapter: ModelAdapter) -> str:
        """The block alignment of rollouts and training: the config's, else the model's."""
        return self.config.block_alignment or adapter.block_alignment

    def decode(self, engine: Engine, model: torch.nn.Module, adapter: ModelAdapter, sampler: Sampler, docs: list[Doc],
               prompts: list[list[int]], step: int) -> tuple[list[Rollout], dict[str, float]]:
        """Decode ``samples_per_prompt`` samples of every prompt from the current weights; one
        :class:`.trajectory.Rollout` (token ids + step map) per non-empty sample."""
        cfg = self.config
        G = cfg.samples_per_prompt
        flat = [(gi, p) for gi, p in enumerate(prompts) for _ in range(G)]
        seeds = [train_seed(cfg.seed, step, 11, engine.accelerator.process_index, i) for i in range(len(flat))]
        gens = []
        t0 = time.perf_counter()
        with engine.full_params(model) as inner:
            lm = cast(PolicyNet, inner).lm  # the PolicyNet that train() prepared
            was_training = lm.training
            lm.eval()
            backend = adapter.attn_backend
            ad = dataclasses.replace(adapter, model=lm)
            for c in chunks(list(range(len(flat))), cfg.rollout_batch_size):
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
            trajs.append(Rollout(prompt_ids=list(p), response_ids=raw, step_map=sm, n_trainable=n_tr, group=gi,
                                 doc_id=docs[gi].id, text=gen.text,
                                 extra={"finish_reason": gen.finish_reason, "nfe": gen.nfe},
                                 block_alignment=gen.trajectory.block_alignment if gen.trajectory is not None
                                 else "response"))
        gen_tokens = sum(len(g.token_ids) for g in gens)
        nfe = sum(g.nfe for g in gens)
        stats = {"rollout_s": wall, "rollout_tokens_per_s": gen_tokens / wall if wall > 0 else 0.0,
                 "rollout_tokens_per_forward": gen_tokens / nfe if nfe else 0.0,
                 "response_len": gen_tokens / max(len(gens), 1),
                 "truncated_frac": sum(g.finish_reason == "length" for g in gens) / max(len(gens), 1)}
        return trajs, stats

    def score(self, task: Task, docs: list[Doc], trajs: list[Rollout]) -> dict[str, float]:
        """Fill ``reward`` from the task's scorer; returns reward mean and accuracy."""
        cfg = self.config
        items = [(docs[t.group], t.text) for t in trajs]
        verdicts = task.score_batch(items)
        rewards = [float(v.score) for v in verdicts]
        correct = [bool(v.correct) for v in verdicts]
        for t, r in zip(trajs, rewards):
            t.reward = r
            if cfg.truncated_reward is not None and t.extra.get("finish_reason") == "length":
                t.reward = float(cfg.truncated_reward)
        n = max(len(trajs), 1)
        return {"reward_mean": sum(t.reward for t in trajs) / n, "accuracy": sum(correct) / n}

    # ------------------------------------------------------------------ 2. advantages
    def advantages(self, run: RLRun, s: RLStepState) -> bool:
        """Z-score the rewards within each prompt group, then filter groups; False when no
        trajectory is left to train on."""
        cfg, trajs = self.config, s.trajs
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        groups = torch.tensor([t.group for t in trajs], dtype=torch.long)
        s.seq_adv = group_zscore(rewards, groups) if trajs else torch.zeros(0)
        keep = keep_groups([t.reward for t in trajs], [t.group for t in trajs], cfg.group_filter, cfg.acc_range)
        s.kept = [i for i, k in enumerate(keep) if k and trajs[i].n_trainable > 0]
        s.metrics["kept_frac"] = len(s.kept) / max(len(trajs), 1)
        return bool(s.kept)

    # ------------------------------------------------------------------ 3. training rows
    def training_rows(self, run: RLRun, s: RLStepState) -> TrainingRows:
        """Collate the kept trajectories (step maps shrunk, blocks aligned as in the rollout)
        into the batch, give every trainable token its round row and every token its sequence
        advantage."""
        cfg, adapter = self.config, run.adapter
        block_size = self.train_block_size(s.step, adapter)
        trajs, src = self.training_batch([s.trajs[i] for i in s.kept], s.step, adapter, run.family, s.g)
        try:
            batch = collate(trajs, family=run.family, block_size=block_size, shrink=cfg.shrink,
                            mask_id=adapter.mask_token_id if adapter.mask_token_id is not None
                            else adapter.pad_token_id,
                            pad_id=adapter.pad_token_id, alignment=self.block_alignment(adapter))
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
        row_adv = s.seq_adv[torch.as_tensor(s.kept)][torch.as_tensor(src)]
        rid = self.round_ids(batch, run.family)
        unit = block_size if run.family == "block" else 1
        gen_len = int(math.ceil(int(cfg.sampler_args.get("max_new_tokens", batch.gen_len)) / unit) * unit)
        s.t_train = time.perf_counter()
        return TrainingRows(batch=batch, src=src, row_adv=row_adv, rid=rid, block_size=block_size, gen_len=gen_len,
                            adv=row_adv[:, None].expand(batch.size, batch.gen_len).clone())

    # ------------------------------------------------------------------ 4. value model + GAE
    def value_step(self, run: RLRun, value: ValueModel, s: RLStepState, rows: TrainingRows) -> None:
        """V_old (no grad), step-level GAE (replaces ``rows.adv`` by per-token advantages), then
        the value model's optimizer steps towards the GAE returns."""
        cfg, opts, batch = self.config, value.options, rows.batch
        v_reward = rows.row_adv if opts.reward == "zscore" else torch.tensor(
            [s.trajs[s.kept[i]].reward for i in rows.src], dtype=torch.float32)
        with torch.no_grad():
            v_old = torch.cat([token_values(value.net, batch.select(c), device=run.engine.device,
                                            **self.forward_kwargs(run)).cpu()
                               for c in chunks(list(range(batch.size)), cfg.micro_batch_size)])
        gae: GAEResult = step_gae(v_old, v_reward, batch.steps, batch.mask, opts.gamma, opts.lam)
        rows.adv = gae.advantages
        s.metrics.update(self.value_update(run, value, s, rows, v_old, gae.returns))
        s.metrics["value_mean"] = float((v_old * batch.mask).sum() / batch.mask.sum().clamp_min(1))

    def value_update(self, run: RLRun, value: ValueModel, s: RLStepState, rows: TrainingRows, v_old: torch.Tensor,
                     returns: torch.Tensor) -> dict[str, float]:
        """Optimizer steps of the value model over the same kind of plan as the policy; the
        value loss is weighted ``round_row`` (dLLM-RL train_trado_value.py@10b4fd1 lines
        1004-1005, 1052) with minibatch=round_rows, else ``response``."""
        cfg, eng, batch, rid = self.config, run.engine, rows.batch, rows.rid
        vmodel = value.net
        mode: Normalisation = "round_row" if cfg.minibatch == "round_rows" else "response"
        step_sched = value.sched if cfg.minibatch == "responses" else None
        losses, gns = [], []
        passes, _ = self.plan(run, s, rows)
        for mbs in passes:
            for mb in mbs:
                denom = loss_normaliser(mb.mask, rid[mb.responses], mode, rows.gen_len)
                micro = chunks(list(range(len(mb.responses))), cfg.micro_batch_size)
                tot = 0.0
                for k, c in enumerate(micro):
                    is_last = k == len(micro) - 1
                    ix = [mb.responses[x] for x in c]
                    sub = dataclasses.replace(batch.select(ix), mask=mb.mask[c])
                    with eng.sync_context(vmodel, is_last):
                        v = token_values(vmodel, sub, device=eng.device, **self.forward_kwargs(run))
                        dev = v.device
                        loss = clipped_value_terms(v, v_old[ix].to(dev), returns[ix].to(dev), sub.mask.to(dev),
                                                   value.options.clip) / denom
                        eng.backward(vmodel, loss, is_last)
                    tot += float(loss.detach())
                losses.append(tot)
                gns.append(eng.optimizer_step(vmodel, value.opt, step_sched))
        if cfg.minibatch == "round_rows" and gns:
            value.sched.step()
        return {"value_loss": sum(losses) / max(len(losses), 1), "value_grad_norm": sum(gns) / max(len(gns), 1),
                "value_lr": eng.current_lr(value.sched), "value_optimizer_steps": len(gns)}

    # ------------------------------------------------------------------ 5. π_old
    def old_logprobs(self, run: RLRun, rows: TrainingRows) -> None:
        """π_old (``old_logprobs="recompute"``: one no-grad pass over the whole batch before
        the first update) and, with ``kl_anchor="reference"``, the frozen reference's log-probs
        (``rows.old_logp``, ``rows.anchor_logp``)."""
        cfg, batch = self.rl_config, rows.batch
        lp_kw = self.logprob_kwargs(run)
        parts = chunks(list(range(batch.size)), cfg.micro_batch_size)
        with torch.no_grad():
            if cfg.old_logprobs == "recompute":
                rows.old_logp = torch.cat([token_logprobs(run.policy, batch.select(c), **lp_kw).cpu() for c in parts])
            if cfg.kl_anchor == "reference" and run.reference is not None:
                rows.anchor_logp = torch.cat([token_logprobs(run.reference, batch.select(c), **lp_kw).cpu()
                                              for c in parts])

    # ------------------------------------------------------------------ 6. policy update
    def policy_update(self, run: RLRun, s: RLStepState, rows: TrainingRows) -> dict[str, float]:
        """Optimizer steps of the policy over the plan's mini-batches (the clipped surrogate +
        β·k3 on each step's tokens, normalised by ``loss_norm``); fills
        ``self.last_update_trace`` with one record per optimizer step."""
        cfg, eng, model, batch, rid = self.rl_config, run.engine, run.policy, rows.batch, rows.rid
        lp_kw = self.logprob_kwargs(run)
        rows_per_response = self.rows_per_response(run.family, rows.block_size)
        agg = {"clip_frac": 0.0, "ratio_mean": 0.0, "kl": 0.0, "pg_loss": 0.0, "loss": 0.0}
        n_tok_total, grad_norms = 0, []
        trace: list[dict[str, Any]] = []
        step_sched = run.sched if cfg.minibatch == "responses" else None
        passes, dropped = self.plan(run, s, rows)
        for p, mbs in enumerate(passes):
            for mb in mbs:
                # row_mean weighs tokens unequally; the other normalisers divide the step's sum by a constant
                w = (token_weights(mb.mask, rid[mb.responses], cfg.loss_norm, rows.gen_len, rows_per_response)
                     if cfg.loss_norm == "row_mean" else None)
                denom = (loss_normaliser(mb.mask, rid[mb.responses], cfg.loss_norm, rows.gen_len) if w is None
                         else 1.0)
                micro = chunks(list(range(len(mb.responses))), cfg.micro_batch_size)
                rec: dict[str, Any] = {"pass": p, "rows": list(mb.rows), "loss": 0.0, "clip_frac": 0.0,
                                       "ratio_max_dev": 0.0, "kl": 0.0, "n_tokens": 0}
                for k, c in enumerate(micro):
                    is_last = k == len(micro) - 1
                    ix = [mb.responses[x] for x in c]
                    sub = dataclasses.replace(batch.select(ix), mask=mb.mask[c])
                    with eng.sync_context(model, is_last):
                        lp = token_logprobs(model, sub, **lp_kw)
                        dev = lp.device
                        o = rows.old_logp[ix].to(dev) if rows.old_logp is not None else lp.detach()
                        a = (rows.anchor_logp[ix].to(dev) if rows.anchor_logp is not None
                             else (o if cfg.kl_anchor == "old" else None))
                        loss, st = clipped_policy_terms(
                            lp, o, rows.adv[ix].to(dev), sub.mask.to(dev), clip_low=cfg.clip_low,
                            clip_high=cfg.clip_high, log_ratio_clamp=cfg.log_ratio_clamp, anchor_logp=a,
                            kl_beta=cfg.kl_beta, weights=w[c].to(dev) if w is not None else None)
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
                rec["grad_norm"] = eng.optimizer_step(model, run.opt, step_sched)
                grad_norms.append(rec["grad_norm"])
                rec["clip_frac"] /= max(rec["n_tokens"], 1)
                rec["kl"] /= max(rec["n_tokens"], 1)
                trace.append(rec)
        if cfg.minibatch == "round_rows" and trace:
            run.sched.step()  # the LR schedule counts updating RL steps here (optimizer steps per RL step vary)
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

    # ------------------------------------------------------------------ shared by 4-6
    def plan(self, run: RLRun, s: RLStepState, rows: TrainingRows) -> tuple[list[list[MiniBatch]], int]:
        """The optimizer steps of one update (:func:`.batching.update_plan`, drawing from
        ``s.g`` only when shuffling), cut to the same count on every process (a process with
        more mini-batches drops its extra ones); returns ``(passes, dropped round rows)``."""
        cfg = self.config
        passes, dropped = update_plan(rows.rid, rows.batch.mask, minibatch=cfg.minibatch,
                                      rows_per_update=cfg.rows_per_update, partial_update=cfg.partial_update,
                                      updates_per_step=cfg.updates_per_step, epochs=cfg.epochs_per_step,
                                      shuffle=cfg.shuffle, g=s.g)
        out: list[list[MiniBatch]] = []
        for mbs in passes:
            n = run.engine.min_over_processes(len(mbs))
            dropped += sum(len(mb.rows) for mb in mbs[n:])
            out.append(mbs[:n])
        return out, dropped

    def forward_kwargs(self, run: RLRun) -> dict[str, Any]:
        """How the rows become forwards (:func:`.trajectory.forward_plan`)."""
        return dict(family=run.family, layout=self.config.layout, rows_per_forward=self.config.rows_per_forward)

    def logprob_kwargs(self, run: RLRun) -> dict[str, Any]:
        """:func:`.scoring.token_logprobs` arguments: the sampler's distribution (temperature,
        the MASK token banned for diffusion models)."""
        return dict(temperature=self.rl_config.logprob_temperature, shift=run.shift, device=run.engine.device,
                    banned=run.adapter.mask_token_id if run.family != "ar" else None, **self.forward_kwargs(run))

    # ================================================================== variant hooks
    def rollout_block_size(self, step: int, adapter: ModelAdapter) -> int | None:
        """Block size the sampler uses at RL step ``step`` (None = sampler/model default)."""
        return self.config.sampler_args.get("block_size")

    def train_block_size(self, step: int, adapter: ModelAdapter) -> int:
        """Training block size B_t at ``step``."""
        rb = self.rollout_block_size(step, adapter)
        return int(self.config.block_size or rb or adapter.block_size or 1)

    def sampler_args(self, step: int, adapter: ModelAdapter) -> dict[str, Any]:
        """The sampler config at RL step ``step``."""
        return dict(self.config.sampler_args)

    def training_batch(self, trajs: list[Rollout], step: int, adapter: ModelAdapter, family: Family,
                       g: torch.Generator) -> tuple[list[Rollout], list[int]]:
        """The rows to train on and, per row, the index of its trajectory (TraceRL: the
        trajectories themselves)."""
        return trajs, list(range(len(trajs)))

    def round_ids(self, batch: RolloutBatch, family: Family) -> torch.Tensor:
        """``[b, L]`` round row of every trainable token (:func:`.trajectory.round_ids`)."""
        return round_ids(batch, family)

    def rows_per_response(self, family: Family, block_size: int) -> int | None:
        """Rows every response counts for under ``loss_norm='row_mean'`` (DiRL: block_size /
        shrink, grpo.py@ec4bfb3 lines 163-168); None for full-attention and AR models."""
        return max(block_size // self.config.shrink, 1) if family == "block" else None

    def final_adapter(self, adapter: ModelAdapter) -> ModelAdapter:
        """The adapter whose tokenizer and sidecar go with the final weights."""
        return adapter
