"""``full-diffusion``: LLaDA-style semi-autoregressive low-confidence remasking over a
full-attention masked-diffusion LM, with Fast-dLLM prefix and dual caches.

Decoding (LLaDA ``generate``; Fast-dLLM, arXiv 2505.22618, §3.2, ``llada/generate.py`` at
24cc59e): the sequence is
``[left pads | prompt ; L x [MASK]]`` with ``L = ceil(max_new_tokens / B) * B``; attention
is bidirectional over every real token (pads excluded; position ids skip pads). Prompts are
left-padded only to the batch's longest prompt (the semi-AR blocks count from the response
start, as in LLaDA's ``generate``), so a single prompt is never padded — and a model whose
own code cannot mask padding (LLaDA's remote code) is refused any batch that needs it.
Blocks of B response positions are decoded left to right; inside a block each of the
``denoising_steps`` steps proposes tokens for the block's masked positions and unmasks
the step quota, ranked with ``torch.topk`` over the vector the reference ranks (static);
with ``confidence_threshold`` set, every step unmasks the most confident masked position
and every other whose confidence is ``>=`` the threshold, until the block is clean
(Fast-dLLM ``llada/generate.py::get_transfer_index`` at 24cc59e). Only the current block's
masks are eligible. Confidence and remasking are those of :mod:`dllm_bench.samplers.base`.

**Dream's rule** (``commit_first_position``, on by default for AR-adapted models whose
logits are shifted): at a block's first forward only the block's first position is
unmasked, with its sampled token whatever its confidence; the block's other positions
follow at the later steps (Fast-dLLM ``dream/model/generation_utils_block.py`` l. 456,
dLLM-RL ``sample/dream_sample.py`` l. 202). Static decoding then spreads the block's other
B - 1 positions over the remaining ``denoising_steps - 1`` steps (a recorded difference:
the references' static Dream schedule, ``int(m (1 - s/t))`` tokens over linearly spaced
timesteps ranked by negative entropy, is not reproduced).

Cache modes (``cache_mode``):

* ``none`` — every step is a full forward over the whole sequence (exact LLaDA).
* ``prefix`` — Fast-dLLM prefix cache: the first step of each block is a full forward that
  also stores K/V of every position; the block's later steps run only the window
  ``[block start, end of sequence)`` (the current block and the masked suffix) against the
  stored K/V of the prefix ``[0, block start)``.
* ``dual`` — Fast-dLLM DualCache: as ``prefix``, but the later steps run only the current
  block, reading the stored K/V of both the prefix and the suffix.

**Both caches are approximate.** With full attention the prefix's K/V depend on every
token, including the current block, whose tokens change at every step; the cache holds
the K/V from the block's first step. Exact statements (tested):

1. The first step of every block is a full forward, so with ``denoising_steps = 1`` (the
   whole block unmasked in one step) both caches reproduce ``none`` exactly.
2. Given the same state (:func:`cache_fidelity`), the cached forward's next-token
   distributions on the block's masked positions differ from the exact ones only through
   the stale K/V. Tested bound on tiny-full-dlm (random init, B in {4, 8}, greedy): total
   variation distance <= 0.1 at every position and <= 0.02 on average (measured: max
   ~0.02, mean ~0.003). Greedy *tokens* of a random-init model can still flip (its
   next-token distributions are nearly flat): free-running token agreement with ``none``
   is reported by ``benchmarks/sampler_speed.py``, not asserted.

Dream-style AR-adapted models (``logits_shift``: logits at i predict token i+1): full
forwards read the block's logits one position to the left. Cached windows start at the
block, as Fast-dLLM's do (prefix: ``[s, T)`` over the prefix cache cut at s; dual:
``[s, s + B)`` with the prefix and suffix cached, so the block's last position's K/V are
recomputed at every step); inside a window, column c > s reads the window output at c - 1
and column s its own output, which is never used because s is committed at the block's
first forward. (With ``commit_first_position=false`` a shifted model's windows start one
column left of the block instead.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from dllm_bench.errors import BadInputError
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


class FullDiffusionConfig(DiffusionConfig):
    """``full-diffusion`` knobs (the block size is the semi-AR block)."""

    cache_mode: Literal["none", "prefix", "dual"] = Field("none", description="none: exact full forwards; prefix / "
                                                           "dual: Fast-dLLM caches (approximate)")
    confidence_threshold: float | None = Field(None, ge=0.0, description="Threshold decoding (Fast-dLLM): at every "
                                               "step unmask the most confident masked token and every other whose "
                                               "confidence passes this, until the block is clean (denoising_steps "
                                               "is then not used); None = static")
    threshold_rule: Literal["gt", "ge"] = Field("ge", description="Threshold comparison: ge = confidence >= "
                                                "threshold (Fast-dLLM keeps a candidate unless it is below), gt = >")
    commit_first_position: bool | None = Field(
        None, description="Dream's rule: at a block's first forward unmask only the block's first position, with "
        "its sampled token whatever its confidence (Fast-dLLM dream/model/generation_utils_block.py l. 456, "
        "dLLM-RL sample/dream_sample.py l. 202); None = on for AR-adapted models whose logits are shifted (Dream)")


def _full(st: DiffusionBatch, q_start: int | None = None) -> AttentionLayout:
    """Full attention over the real keys (left pads excluded); queries from column ``q_start``
    (None: the last key columns)."""
    return AttentionLayout(block_size=None, kv_start=st.kv_start, q_start=q_start)


class FullDiffusion(SamplerBase):
    """Semi-AR low-confidence remasking for full-attention diffusion LMs (LLaDA / Dream /
    tiny-full-dlm), with optional Fast-dLLM prefix / dual caches. See the module docstring."""

    name = "full-diffusion"
    version = "1"
    Config = FullDiffusionConfig
    config: FullDiffusionConfig
    families = ("full-diffusion",)

    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Decode a batch; arguments and result as
        :meth:`dllm_bench.samplers.block.BlockStatic.generate`.

        Raises:
            BadInputError: a model of another family, or a cache mode on a model that cannot
                be driven with a transformers ``Cache`` (:attr:`ModelAdapter.supports_cache`).
        """
        self.check_model(model)
        cfg = self.config
        if cfg.cache_mode != "none" and not model.supports_cache:
            raise BadInputError(f"cache_mode={cfg.cache_mode!r} needs a model that takes a transformers Cache; "
                                f"{model.spec!r} does not (use cache_mode=none)")
        B = int(cfg.block_size or model.block_size or 32)
        S = min(int(cfg.denoising_steps or B), B)
        model.set_attn_backend(cfg.attention_backend)
        dev = model.device
        seeds = row_seeds(seed, len(prompts))
        with torch.no_grad(), Timer(dev) as timer:
            st = DiffusionBatch(model, prompts, B, cfg, seeds, record_trajectory, pad_unit=1)
            self._decode(st, step_quotas(B, S))
        return diffusion_generations(model, cfg, st, seeds, timer.seconds, record_trajectory)

    def _decode(self, st: DiffusionBatch, quotas: list[int]) -> None:
        cfg, model, B = self.config, st.model, st.B
        shift = 1 if model.logits_shift else 0
        first_rule = cfg.commit_first_position if cfg.commit_first_position is not None else bool(shift)
        T = st.x.shape[1]
        mode = cfg.cache_mode
        threshold = cfg.confidence_threshold
        if threshold is not None:  # Fast-dLLM threshold decoding: top-1 + every passing candidate, until clean
            quotas = [1] * B
        if mode != "none":
            st.cache = model.new_cache(len(st.rows), T)
        for k in range(st.n_blocks):
            s, e = st.block(k)
            lens = (st.resp_start - st.kv_start).tolist()  # real prompt length per batch row
            # first query column of a cached window: Fast-dLLM starts it at the block (Dream: the block's
            # first position is committed at the block's first forward, so its own logits are never used);
            # without that rule a shifted model reads the block's logits from one column to the left
            w = s if (first_rule or not shift) else s - shift
            if not first_rule:
                plan = list(quotas)
            elif threshold is not None:  # the first position, then top-1 + passing candidates until clean
                plan = [0] + list(quotas)
            else:  # the first position, then the rest over the remaining steps
                plan = [0] + (step_quotas(B - 1, max(1, len(quotas) - 1)) if B > 1 else [])
            for j, quota in enumerate(plan):
                masked, active = st.masked(s, e)
                if not bool(active.any()):
                    break
                x, pos, cache = st.x, st.pos, st.cache
                if mode == "none" or j == 0:
                    if cache is not None:
                        cache.window(0)  # full forward; stores K/V of every position
                    out = model.forward(x, _full(st), pos, cache)
                    logits = out[:, s - shift:e - shift]
                    # the vector the reference ranks: LLaDA's whole unpadded sequence; Dream's suffix from s
                    layout = [(T - s, 0)] * len(st.rows) if first_rule else \
                        [(n + T - st.P, n + (s - st.P)) for n in lens]
                elif mode == "prefix":  # window [w, T) against the stored prefix [0, w)
                    cache.window(w)
                    out = model.forward(x[:, w:], _full(st), pos[:, w:], cache)
                    logits = self._window_logits(out, s - w, B, shift, first_rule)
                    layout = [(T - s, 0)] * len(st.rows)
                else:  # dual: window [w, w + B) reads the stored prefix and suffix
                    cache.window(w, read_end=T)
                    out = model.forward(x[:, w:w + B], _full(st, q_start=w), pos[:, w:w + B], cache)
                    logits = self._window_logits(out, s - w, B, shift, first_rule)
                    layout = None
                st.book.forward(st.rows, active)
                first = first_rule and j == 0
                st.denoise(logits, s, e, quota, k, None if first else threshold, masked, active,
                           threshold_rule=cfg.threshold_rule, layout=layout, force_first=first)
            if not st.end_block(k):
                break

    @staticmethod
    def _window_logits(out: torch.Tensor, off: int, B: int, shift: int, first_rule: bool) -> torch.Tensor:
        """The block's ``[b, B, V]`` logits from a window forward whose block starts at window
        column ``off``. Shifted models under Dream's rule read column c from the window output
        at c - 1 and the block's first column from its own output (Fast-dLLM's
        ``cat([logits[:, :1], logits[:, :-1]])``; that column is already committed)."""
        if shift and first_rule:
            blk = out[:, off:off + B]
            return torch.cat([blk[:, :1], blk[:, :-1]], dim=1)
        return out[:, off:off + B]


def cache_fidelity(model: ModelAdapter, prompts: Sequence[Sequence[int]], *, block_size: int, denoising_steps: int,
                   max_new_tokens: int) -> dict[str, dict[str, float]]:
    """How far the Fast-dLLM caches are from exact, measured on the same states.

    Decodes greedily without a cache (``cache_mode=none``, static low-confidence); at every
    step after a block's first, it also computes the current block's logits the way the
    ``prefix`` and ``dual`` caches would (stale K/V stored at the block's first step) from
    the *same* state, and compares them with the exact logits on the still-masked positions.

    Returns:
        ``{"prefix": {...}, "dual": {...}}`` each with ``argmax_agreement`` (fraction of masked
        positions whose greedy token is the same), ``mean_tv`` / ``max_tv`` (total-variation
        distance between the two next-token distributions), ``steps`` (compared steps).
    """
    dev, B, mask_id = model.device, block_size, model.mask_token_id
    S = min(denoising_steps, B)
    cfg = FullDiffusionConfig(block_size=B, denoising_steps=S, max_new_tokens=max_new_tokens)
    st = DiffusionBatch(model, prompts, B, cfg, [0] * len(prompts), False, pad_unit=1)
    T, b = st.x.shape[1], len(prompts)
    ban = torch.tensor([mask_id], device=dev)
    stats = {m: {"agree": 0, "n": 0, "tv_sum": 0.0, "tv_max": 0.0, "steps": 0} for m in ("prefix", "dual")}
    with torch.no_grad():
        for k in range(st.n_blocks):
            s, e = st.block(k)
            caches = {"prefix": model.new_cache(b, T), "dual": model.new_cache(b, T)}
            for j, quota in enumerate(step_quotas(B, S)):
                masked, active = st.masked(s, e)
                if not bool(active.any()):
                    break
                x, pos = st.x, st.pos
                exact = model.forward(x, _full(st), pos)[:, s:e]
                if j == 0:
                    for c in caches.values():
                        c.window(0)
                        model.forward(x, _full(st), pos, c)
                else:
                    caches["prefix"].window(s)
                    approx = {"prefix": model.forward(x[:, s:], _full(st), pos[:, s:], caches["prefix"])[:, :B]}
                    caches["dual"].window(s, read_end=T)
                    approx["dual"] = model.forward(x[:, s:e], _full(st, q_start=s), pos[:, s:e], caches["dual"])
                    pe = torch.softmax(exact.float().index_fill(-1, ban, float("-inf")), -1)
                    for name, lg in approx.items():
                        pa = torch.softmax(lg.float().index_fill(-1, ban, float("-inf")), -1)
                        tv = 0.5 * (pa - pe).abs().sum(-1)[masked]
                        acc = stats[name]
                        acc["agree"] += int((pa.argmax(-1) == pe.argmax(-1))[masked].sum())
                        acc["n"] += int(masked.sum())
                        acc["tv_sum"] += float(tv.sum())
                        acc["tv_max"] = max(acc["tv_max"], float(tv.max()))
                        acc["steps"] += 1
                st.denoise(exact, s, e, quota, k, None, masked, active)
    return {m: {"argmax_agreement": a["agree"] / max(1, a["n"]), "mean_tv": a["tv_sum"] / max(1, a["n"]),
                "max_tv": a["tv_max"], "steps": a["steps"], "positions": a["n"]} for m, a in stats.items()}
