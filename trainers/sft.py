"""Supervised fine-tuning for the three model families (dLLM-RL ``train/sft_trado.py`` at
10b4fd1; DiRL, arXiv 2512.22234, §3.1 and §4.1).

* **Block SFT** (``block-diffusion`` models, semi-autoregressive): each example is packed
  as ``[prompt (P) ; clean response x0 (L) ; masked copy xt (L)]`` with the staircase layout
  (:meth:`dllm_bench.models.layout.AttentionLayout.staircase`), so every block is trained in
  one forward: a masked-copy block sees the prompt, the clean blocks before it and itself. Inside each
  response block a mask ratio ``t ~ U(mask_ratio_min, mask_ratio_max)`` is drawn and each
  token is masked with probability t (at least one token per block, so a block always has
  a target); the loss is on the masked tokens.
* **Random-masking SFT** (``full-diffusion`` models, LLaDA-style): one ratio t per example,
  each response token masked with probability t (at least one), full attention over
  ``[prompt ; xt]``; the loss is on the masked tokens.
* **Plain SFT** (``ar`` models): next-token cross-entropy on the response tokens.

The response is the tokenised response text followed by EOS; block models pad the last
block with EOS tokens (trained, so the model learns to end a block after EOS). Prompt tokens
are never targets.

**Loss** (per optimizer step over ``batch_size`` examples)::

    L = Σ_{examples} Σ_{target tokens j} w_j · (−log p_θ(x0_j | input)) / Σ_{examples} n_resp

with ``n_resp`` the number of response tokens (EOS padding included) and ``w_j = 1``
(``weighting="none"``) or ``1/t`` (``"elbo"``, the masked-diffusion ELBO weight; AR: 1).
Every response token therefore has the same weight whatever the micro-batching.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from dllm_bench.blocks import left_pad_prompts, response_position_ids, round_up
from dllm_bench.console import progress
from dllm_bench.errors import BadInputError
from dllm_bench.models.layout import AttentionLayout, left_pads

from .base import Trainer, open_run
from .batching import batch_indices
from .config import TrainConfig, config_hash
from .networks import FAMILY_SHORT, PolicyNet, load_adapter
from .run_dir import TrainResult

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class SFTConfig(TrainConfig):
    """``sft`` trainer config (every field: description and unit)."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW. Unit: 1/step (parameter units).")
    task: str | None = Field(None, description="Task plugin whose sft_pairs() give (prompt, response) pairs, "
                                               "e.g. gsm8k_calc_train. Unit: none.")
    task_args: dict[str, Any] = Field(default_factory=dict, description="Task config (e.g. {limit: 1000}). "
                                                                         "Unit: none.")
    data_file: str | None = Field(None, description="JSONL file with {\"prompt\": ..., \"response\": ...} per "
                                                    "line (instead of task); prompts are used verbatim. Unit: none.")
    mode: Literal["auto", "block", "random_mask", "ar"] = Field(
        "auto", description="auto = by model family: block-diffusion -> block, full-diffusion -> random_mask, "
                            "ar -> ar. Unit: none.")
    block_size: int | None = Field(None, ge=1, description="Training block size B (block mode); None = the "
                                                           "model's. Unit: tokens.")
    block_alignment: Literal["response", "absolute"] | None = Field(
        None, description="Block mode: where blocks start (dllm_bench.blocks): response = the response starts a "
                          "block; absolute = blocks from sequence position 0, the prompt's tail sharing the first "
                          "block as unmasked, untrained context (SDAR's own training mask). null = the model's "
                          "convention. Unit: none.")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer step (per process). Unit: examples.")
    micro_batch_size: int = Field(8, ge=1, description="Examples per forward (gradient accumulation inside a "
                                                       "step). Unit: examples.")
    max_prompt_tokens: int = Field(512, ge=1, description="Drop examples with longer prompts. Unit: tokens.")
    max_response_tokens: int = Field(512, ge=1, description="Drop examples with longer responses (EOS "
                                                            "included). Unit: tokens.")
    mask_ratio_min: float = Field(0.0, ge=0, le=1, description="Lower end of the mask ratio t ~ U(min, max). "
                                                               "Unit: fraction of tokens.")
    mask_ratio_max: float = Field(1.0, ge=0, le=1, description="Upper end of the mask ratio t. Unit: fraction "
                                                               "of tokens.")
    weighting: Literal["none", "elbo"] = Field("none", description="Per-token loss weight: none = 1, elbo = 1/t. "
                                                                   "Unit: none.")
    epochs_limit: int | None = Field(None, ge=1, description="Stop after this many passes over the data even if "
                                                            "max_steps is not reached. Unit: epochs.")


class SFT(Trainer):
    """Supervised fine-tuning (block / random-masking / AR); see the module docstring.

    Usage::

        SFT(SFTConfig(model="tiny-block-dlm", task="gsm8k_calc_train", max_steps=200)).train(Path("runs/sft"))
    """

    name: ClassVar[str] = "sft"
    version: ClassVar[str] = "1"
    Config: ClassVar[type[SFTConfig]] = SFTConfig
    config: SFTConfig

    def __init__(self, config: SFTConfig | dict[str, Any], adapter: ModelAdapter | None = None,
                 pairs: list[tuple[str, str]] | None = None):
        """Args: ``config`` (validated or a dict); optional in-memory ``adapter`` trained in
        place instead of loading ``config.model``; optional in-memory ``(prompt, response)``
        ``pairs`` instead of ``config.task`` / ``config.data_file``."""
        self.config = config if isinstance(config, SFTConfig) else SFTConfig.model_validate(config)
        self.adapter = adapter
        self.pairs = pairs

    # ------------------------------------------------------------------ data
    def load_pairs(self, tokenizer: Any) -> list[tuple[str, str]]:
        """The (prompt, response) texts from ``task`` or ``data_file``.

        Raises:
            BadInputError: neither/both given, unreadable file, a line without the fields.
        """
        cfg = self.config
        if self.pairs is not None:
            return list(self.pairs)
        if cfg.task is not None and cfg.data_file is None:
            from dllm_bench import registry

            task = registry.create("tasks", cfg.task, cfg.task_args)
            return list(task.sft_pairs(tokenizer))
        if cfg.data_file is None or cfg.task is not None:
            raise BadInputError("sft config: give exactly one of 'task' and 'data_file'")
        path = Path(cfg.data_file)
        if not path.is_file():
            raise BadInputError("data file not found", path=path)
        from dllm_bench.jsonl import iter_jsonl_objects, read_text

        pairs = []
        for n, row in iter_jsonl_objects(read_text(path, "SFT data file"), path):
            if "prompt" not in row or "response" not in row:
                raise BadInputError("expected a JSON object with 'prompt' and 'response'", path=path, line=n)
            pairs.append((str(row["prompt"]), str(row["response"])))
        return pairs

    def tokenize(self, adapter: ModelAdapter, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Token ids of every pair (response + EOS), dropping over-long examples."""
        cfg = self.config
        eos = adapter.eos_token_id
        out = []
        for p, r in pairs:
            pi = adapter.encode(p)
            ri = adapter.encode(r) + [eos]
            if 0 < len(pi) <= cfg.max_prompt_tokens and len(ri) <= cfg.max_response_tokens:
                out.append((pi, ri))
        if not out:
            raise BadInputError(f"sft: no example fits max_prompt_tokens={cfg.max_prompt_tokens} and "
                                f"max_response_tokens={cfg.max_response_tokens}")
        return out

    def preflight(self) -> None:
        """Checks that need no weights, run before anything is written: an explicit
        ``mode`` that needs a mask token (block, random_mask) with an ``ar`` model.

        Raises:
            BadInputError: naming the mode and the model's family.
        """
        from dllm_bench.models import declared_family

        cfg = self.config
        family = declared_family(cfg.model, cfg.model_args) if self.adapter is None else self.adapter.family
        if cfg.mode in ("block", "random_mask") and family == "ar":
            raise BadInputError(f"sft mode {cfg.mode!r} needs a diffusion model with a mask token; "
                                f"{cfg.model!r} is ar")

    def mode(self, adapter: ModelAdapter) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        return {"block": "block", "full": "random_mask", "ar": "ar"}[FAMILY_SHORT[adapter.family]]

    # ------------------------------------------------------------------ batches
    def build_inputs(self, examples: list[tuple[list[int], list[int]]], mode: str, adapter: ModelAdapter, B: int,
                     g: torch.Generator) -> dict[str, Any]:
        """Tensors for one micro-batch.

        Returns:
            dict with ``input_ids [n, T]``, ``layout`` (an :class:`AttentionLayout` of n rows),
            ``position_ids [n, T]``, ``gather_index [n, L]``, ``targets [n, L]``,
            ``weight [n, L]`` float (0 = not a target) and ``n_resp`` (response tokens).
        """
        cfg = self.config
        pad, mask_id, eos = adapter.pad_token_id, adapter.mask_token_id, adapter.eos_token_id
        unit = B if mode == "block" else 1
        tails = [0] * len(examples)
        if mode == "block" and (cfg.block_alignment or adapter.block_alignment) == "absolute":
            # blocks from position 0: the prompt's tail is unmasked context at the head of the first block
            tails = [len(p) % B for p, _ in examples]
            examples = [(p[:len(p) - t], p[len(p) - t:] + list(r)) for (p, r), t in zip(examples, tails)]
        prompts = [p for p, _ in examples]
        resp_lens = [round_up(len(r), unit) for _, r in examples]
        L = max(resp_lens)
        n = len(examples)
        pb = left_pad_prompts(prompts, unit, pad, allow_empty=True)
        P = pb.padded_len
        resp = torch.full((n, L), pad, dtype=torch.long)
        real = torch.zeros((n, L), dtype=torch.bool)
        for i, (_, r) in enumerate(examples):
            resp[i, :len(r)] = torch.as_tensor(r)
            resp[i, len(r):resp_lens[i]] = eos  # EOS-fill the last block
            real[i, :resp_lens[i]] = True
        rpos = response_position_ids(pb.prompt_lens, L)
        jj = torch.arange(L)[None].expand(n, L)
        kv_start, kv_end = left_pads(pb.valid), P + torch.as_tensor(resp_lens)  # real keys of [prompt ; response]
        if mode == "ar":
            causal = AttentionLayout(block_size=1, kv_start=kv_start, kv_end=kv_end)
            return {"input_ids": torch.cat([pb.input_ids, resp], 1), "layout": causal,
                    "position_ids": torch.cat([pb.position_ids, rpos], 1), "gather_index": P + jj - 1,
                    "targets": resp, "weight": real.float(), "n_resp": int(real.sum())}
        lo, hi = cfg.mask_ratio_min, cfg.mask_ratio_max
        if mode == "block":
            nb = L // B
            t = lo + (hi - lo) * torch.rand((n, nb), generator=g)
            t_tok = t.repeat_interleave(B, dim=1)
        else:
            t = lo + (hi - lo) * torch.rand((n, 1), generator=g)
            t_tok = t.expand(n, L)
        u = torch.rand((n, L), generator=g)
        ctx = jj < torch.as_tensor(tails)[:, None]  # absolute alignment: prompt tail, never masked or trained
        real = real & ~ctx
        masked = (u < t_tok) & real
        # at least one masked token per group (block or example): the real token with the smallest draw
        gsize = B if mode == "block" else L
        ug = torch.where(real, u, torch.full_like(u, 2.0)).view(n, L // gsize, gsize)
        need = ~masked.view(n, L // gsize, gsize).any(-1) & real.view(n, L // gsize, gsize).any(-1)
        pick = torch.zeros_like(ug, dtype=torch.bool).scatter_(-1, ug.argmin(-1, keepdim=True), True)
        masked |= (pick & need[..., None]).view(n, L)
        assert mask_id is not None, "train() refuses the diffusion modes for a model without a mask token"
        xt = torch.where(masked, torch.full_like(resp, mask_id), resp)
        w = masked.float()
        if cfg.weighting == "elbo":
            w = w / t_tok.clamp_min(1e-3)
        shift = -1 if adapter.logits_shift else 0
        if mode == "block":
            ids = torch.cat([pb.input_ids, resp, xt], 1)
            pos = torch.cat([pb.position_ids, rpos, rpos], 1)
            layout = AttentionLayout.staircase(pb.valid, L, B)
            gather = P + L + jj + shift
        else:
            ids = torch.cat([pb.input_ids, xt], 1)
            pos = torch.cat([pb.position_ids, rpos], 1)
            layout = AttentionLayout(block_size=None, kv_start=kv_start, kv_end=kv_end)
            gather = P + jj + shift
        return {"input_ids": ids, "layout": layout, "position_ids": pos, "gather_index": gather,
                "targets": resp, "weight": w, "n_resp": int(real.sum())}

    # ------------------------------------------------------------------ training
    def train(self, run_dir: Path) -> TrainResult:
        """Run SFT into ``run_dir`` (resumes from its newest checkpoint); see the module docstring."""
        cfg = self.config
        run_dir = Path(run_dir)
        eng = open_run(self.name, cfg, run_dir)
        if isinstance(eng, TrainResult):
            return eng
        adapter = self.adapter if self.adapter is not None else load_adapter(cfg, eng.device)
        mode = self.mode(adapter)
        if mode in ("block", "random_mask") and adapter.mask_token_id is None:
            raise BadInputError(f"sft mode {mode!r} needs a diffusion model with a mask token; "
                                f"{cfg.model!r} is {adapter.family}")
        B = int(cfg.block_size or adapter.block_size or 1)
        data = self.tokenize(adapter, self.load_pairs(adapter.tokenizer))
        net = PolicyNet(adapter.model, adapter.attn_backend)
        net.train()
        model, opt, sched = eng.prepare(net, eng.make_optimizer(net), cfg.max_steps)
        start = eng.resume()
        steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
        max_steps = (cfg.max_steps if cfg.epochs_limit is None
                     else min(cfg.max_steps, cfg.epochs_limit * steps_per_epoch))
        last: dict[str, Any] = {}
        with progress(f"sft ({mode})", max_steps - start) as advance:
            for step in range(start, max_steps):
                t0 = time.perf_counter()
                g = eng.step_generator(step)
                idx = batch_indices(len(data), step, cfg.batch_size, cfg.seed)
                examples = [data[i] for i in idx]
                micro = [examples[i:i + cfg.micro_batch_size] for i in range(0, len(examples), cfg.micro_batch_size)]
                inputs = [self.build_inputs(mb, mode, adapter, B, g) for mb in micro]
                denom = float(max(sum(x["n_resp"] for x in inputs), 1))
                total, n_tgt, tokens = 0.0, 0, 0
                for k, x in enumerate(inputs):
                    is_last = k == len(inputs) - 1
                    with eng.sync_context(model, is_last):
                        dev = eng.device
                        logp = model(x["input_ids"].to(dev), x["layout"].to(dev), x["position_ids"].to(dev),
                                     x["gather_index"].to(dev), targets=x["targets"].to(dev))
                        loss = -(logp * x["weight"].to(dev)).sum() / denom
                        eng.backward(model, loss, is_last)
                    total += float(loss.detach())
                    n_tgt += int((x["weight"] > 0).sum())
                    tokens += int(x["input_ids"].numel())
                gn = eng.optimizer_step(model, opt, sched)
                eng.state.step = step + 1
                eng.state.samples += len(examples)
                dt = time.perf_counter() - t0
                metrics = {"loss": total, "grad_norm": gn, "lr": eng.current_lr(sched), "target_tokens": n_tgt,
                           "samples_per_s": len(examples) / dt, "tokens_per_s": tokens / dt,
                           "epoch": (step + 1) * cfg.batch_size / len(data)}
                if (step + 1) % cfg.log_every == 0 or step + 1 == max_steps:
                    last = eng.log_metrics(step + 1, metrics)
                advance(1, f"loss {total:.4f}")
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < max_steps:
                    eng.save_checkpoint()
        if cfg.save_every:
            eng.save_checkpoint()
        training = {"trainer": self.name, "trainer_version": self.version, "config_sha256": config_hash(cfg),
                    "base_model": cfg.model, "steps": eng.state.step, "mode": mode, "run_dir": str(run_dir),
                    "parent": adapter.training}
        final = eng.save_final(model, adapter, run_dir / "final", training)
        res = TrainResult(self.name, run_dir, final, eng.metrics_path, eng.state.step, last)
        return eng.finish(res)
