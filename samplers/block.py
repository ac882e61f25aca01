"""Block-diffusion samplers: ``block-static`` and ``block-dynamic`` (SDAR / TraDo style).

Decoding (dLLM-RL ``generate.py::block_diffusion_generate`` and JetEngine
``sample/jetengine_ext/engine/`` at 10b4fd1; SDAR, arXiv 2510.06303), for a batch of prompts:

1. Prompts are left-padded by the block alignment (:mod:`dllm_bench.blocks`):
   ``response`` — to a multiple of the block size B, the response starts on a block
   boundary and is ``ceil(max_new_tokens / B)`` blocks of B ``[MASK]`` tokens; ``absolute``
   — blocks counted from sequence position 0 as SDAR / TraDo's reference ``generate.py``
   does, the prompt's tail sharing the first decoded block. Pads are never attended to;
   position ids skip pads. ``block_alignment=None`` takes the model's convention
   (:attr:`dllm_bench.models.ModelAdapter.block_alignment`: ``absolute`` for released SDAR /
   TraDo checkpoints, ``response`` for models the harness trains).
2. Blocks are decoded left to right. Each block takes up to ``denoising_steps`` (S) denoise
   forwards. At every step every masked position gets a candidate token and a confidence
   (:mod:`dllm_bench.samplers.base`); ``block-static`` unmasks exactly the step quota
   (B split over S steps) of highest-confidence (or random) positions, ranked with
   ``torch.topk`` as the reference does (``ranking``); ``block-dynamic`` unmasks every
   position with confidence strictly above ``confidence_threshold`` (reference
   ``generate.py`` l. 177; ``threshold_rule``) and at least the quota, so a block may finish
   in fewer than S steps. With the prompt's tail in the first block fewer positions are
   masked there and the block finishes in fewer steps.
3. Attention is block-causal: a token sees every earlier block and its own block
   bidirectionally (one :class:`dllm_bench.models.layout.AttentionLayout` per forward; the
   model adapter derives what the attention backend reads).

**Exact KV cache** (``cache_mode="exact"``, default): every forward runs only the current
block's B tokens against the cached prefix, *reading* the cache without writing it (the
block's K/V go to scratch slots that the next forward overwrites); a block's K/V are
committed once the block is clean. Two exact ways to commit:

* ``fuse_commit=True`` (default): the clean K/V of the prompt (for block 0) and of the
  previous block are written by the *first denoise forward of the next block*, whose
  queries are ``[clean previous block ; current block]`` (2B rows; the block-causal mask
  keeps the clean rows from seeing the current block, so their K/V are exactly those of a
  separate commit forward). No prefill or commit forwards: NFE = denoise steps, the same
  as without a cache.
* ``fuse_commit=False``: JetEngine / dLLM-RL style — a prefill forward over the prompt and a
  **commit forward** over each clean block before the next one: (denoise steps + 1)
  forwards per block (the SAVING state of dLLM-RL ``sample/jetengine_ext/engine/scheduler.py``
  at 10b4fd1: an extra forward per block that only writes K/V).

Either way every cached forward computes what the uncached forward over ``[prompt ;
decoded blocks ; current block]`` computes for the current block's queries, so greedy
decoding gives the same tokens with and without the cache (tested).

``skip_commit_forward=True`` (approximate, off by default) keeps instead the K/V of the
block's *last denoise forward*, computed while the positions unmasked at that step were
still ``[MASK]``; it changes later blocks' logits (with the prompt prefilled separately).

``cache_mode="none"``: every denoise forward recomputes ``[prompt ; decoded ; current
block]`` (no commit forward).

**EOS, stop strings, length.** A sequence ends after the block in which it produced an EOS
token or completed a stop string, or after ``ceil(max_new_tokens / B)`` blocks; finished
sequences leave the batch (their rows are dropped from the cache). Tokens after the first
EOS are not part of the response.

**Trajectory.** Per generated token, the 1-based denoise step at which it was unmasked
(the ``step_map``; prefill and commit forwards do not advance the step counter, and a
sequence's counter advances only on forwards where its current block still had masks);
per step the committed positions, tokens and confidences; the block alignment it was
decoded under (trainers refuse trajectories of another alignment).

**Reference.** Gen-Verse/dLLM-RL ``generate.py::block_diffusion_generate`` at commit
10b4fd1 (adapted from JetAstra/SDAR), batch 1: with ``block_alignment=absolute``,
``ranking=topk``, ``threshold_rule=gt`` and ``fuse_commit=False`` this sampler decodes the
same tokens, step maps and per-sequence NFE as that function (tests/test_reference_parity.py,
which restates it). Recorded differences: ``[MASK]`` is never proposed (the reference
samples the full vocabulary); a quota larger than the masked count never overwrites a
decoded position; greedy is ``temperature = 0`` (the reference divides by the temperature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from dllm_bench.models.layout import AttentionLayout

from .base import (
    DiffusionBatch,
    DiffusionConfig,
    Generation,
    SamplerBase,
    Timer,
    diffusion_generations,
    row_seeds,
    step_quotas,
)

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class BlockStaticConfig(DiffusionConfig):
    """``block-static``: a fixed number of tokens per denoising step."""

    block_alignment: Literal["absolute", "response"] | None = Field(
        None, description="Where blocks start (dllm_bench.blocks): absolute = from sequence position 0, the "
        "prompt's tail sharing the first decoded block (SDAR / TraDo reference); response = the response starts "
        "on a block boundary (prompts left-padded to a multiple of B). None = the model's convention (the "
        "evaluated value is recorded)")
    threshold_rule: Literal["gt", "ge"] = Field("gt", description="Dynamic threshold comparison: gt = confidence "
                                                "> threshold (SDAR reference), ge = >=")

    cache_mode: Literal["exact", "none"] = Field("exact", description="exact: prompt prefill + per-block commit "
                                                 "forward, denoise reads the cache without writing it; none: recompute")
    skip_commit_forward: bool = Field(False, description="Approximate: keep the last denoise forward's K/V instead "
                                      "of writing the clean block's K/V (saves the commit forward / its B rows)")
    fuse_commit: bool = Field(True, description="Exact: write the prompt's and each finished block's clean K/V in "
                              "the same forward as the next block's first denoise step (no separate prefill / "
                              "commit forwards: NFE = denoise steps); false: separate prefill and commit forwards")


class BlockDynamicConfig(BlockStaticConfig):
    """``block-dynamic``: unmask every token whose confidence reaches the threshold."""

    confidence_threshold: float = Field(0.9, ge=0.0, description="Unmask every masked token whose confidence "
                                        "(probability after filtering) passes this (threshold_rule: > by default); "
                                        "at least the static quota per step. At or above 1: static decoding")


class _BlockSampler(SamplerBase):
    families = ("block-diffusion",)
    config: BlockStaticConfig

    def confidence_threshold(self) -> float | None:
        """The dynamic unmasking threshold; None for static decoding (the step quota only)."""
        return None

    # ------------------------------------------------------------------ public API
    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Decode a batch of prompts.

        Args:
            model: a :class:`dllm_bench.models.ModelAdapter` of family ``block-diffusion``.
            prompts: token-id lists (non-empty; any lengths).
            seed: an int (row i uses ``sample_seed(seed, i)``) or one seed per prompt; a
                row's draws depend only on its own seed, not on its batch mates.
            record_trajectory: attach :class:`~dllm_bench.samplers.base.Trajectory` (step map +
                per-step commits) to each generation.

        Returns:
            one :class:`~dllm_bench.samplers.base.Generation` per prompt, in order.

        Raises:
            BadInputError: a model of another family.
        """
        self.check_model(model)
        cfg = self.config
        B = int(cfg.block_size or model.block_size or 4)
        S = min(int(cfg.denoising_steps or B), B)
        quotas = step_quotas(B, S)
        threshold = self.confidence_threshold()
        model.set_attn_backend(cfg.attention_backend)
        dev = model.device
        seeds = row_seeds(seed, len(prompts))
        alignment = cfg.block_alignment or model.block_alignment
        with torch.no_grad(), Timer(dev) as timer:
            st = DiffusionBatch(model, prompts, B, cfg, seeds, record_trajectory, alignment=alignment)
            self._decode(st, quotas, threshold)
        return diffusion_generations(model, cfg, st, seeds, timer.seconds, record_trajectory)

    # ------------------------------------------------------------------ decoding
    def _decode(self, st: DiffusionBatch, quotas: list[int], threshold: float | None) -> None:
        cfg, model, B, P = self.config, st.model, st.B, st.P
        cached = cfg.cache_mode == "exact"
        fuse = cached and cfg.fuse_commit and not cfg.skip_commit_forward

        def layout() -> AttentionLayout:
            """Block-causal over the batch's current rows; the queries are the last key columns."""
            return AttentionLayout(block_size=B, kv_start=st.kv_start)

        def write(start: int, end: int) -> None:
            """A forward over columns [start, end) that only writes their K/V (prefill / commit)."""
            st.cache.window(start)
            model.forward(st.x[:, start:end], layout(), st.pos[:, start:end], st.cache, logits_to_keep=1)
            st.book.forward(st.rows)  # writes K/V only: denoises nobody
            st.cache.commit(end)

        pending = None  # fused mode: first column whose clean K/V the next forward must write
        if cached:
            st.cache = model.new_cache(len(st.rows), st.x.shape[1])
            if fuse:
                pending = 0  # the prompt is written by block 0's first denoise forward
            elif P > 0:
                write(0, P)  # prefill (the full prompt blocks; absolute alignment may have none)
        for k in range(st.n_blocks):
            s, e = st.block(k)
            for quota in quotas:
                masked, active = st.masked(s, e)
                if not bool(active.any()):
                    break
                if cached:
                    # queries [w, e): w < s when the previous block's (or the prompt's) clean K/V are
                    # written in this same forward; the current block's K/V go to scratch slots [s, e)
                    # that the next forward overwrites, so the committed prefix [0, s) is only read.
                    w = s if pending is None else pending
                    st.cache.window(w)
                    logits = model.forward(st.x[:, w:e], layout(), st.pos[:, w:e], st.cache, logits_to_keep=B)
                    if pending is not None:
                        st.cache.commit(s)
                        pending = None
                else:
                    logits = model.forward(st.x[:, :e], layout(), st.pos[:, :e], logits_to_keep=B)
                st.book.forward(st.rows, active)
                st.denoise(logits, s, e, quota, k, threshold, masked, active, threshold_rule=cfg.threshold_rule)
            if not st.end_block(k):  # retires finished rows (and drops them from the cache)
                break
            if cached:  # the clean block's K/V, needed by the next block
                if cfg.skip_commit_forward:
                    st.cache.commit(e)  # approximate: keep the last denoise forward's K/V
                elif fuse:
                    pending = s
                else:
                    write(s, e)  # the commit forward


class BlockStatic(_BlockSampler):
    """Block diffusion, static: ``B / denoising_steps`` tokens per step (low-confidence or random
    remasking), exact KV cache by default. See the module docstring."""

    name = "block-static"
    version = "1"
    Config = BlockStaticConfig


class BlockDynamic(_BlockSampler):
    """Block diffusion, dynamic: every token with confidence > ``confidence_threshold``, at
    least the static quota per step; exact KV cache by default. See the module docstring."""

    name = "block-dynamic"
    version = "1"
    Config = BlockDynamicConfig
    config: BlockDynamicConfig

    def confidence_threshold(self) -> float | None:
        return self.config.confidence_threshold
