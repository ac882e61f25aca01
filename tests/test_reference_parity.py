"""Decoding parity with the released models' reference code, restated here.

Each ``ref_*`` function below is this project's own statement, batch 1, of a reference
decoder, written from reading it (never copied):

* ``ref_sdar`` — Gen-Verse/dLLM-RL ``generate.py::block_diffusion_generate`` at commit
  10b4fd1 (adapted from JetAstra/SDAR ``generate.py``): blocks counted from sequence
  position 0 (the prompt's tail shares the first decoded block), a prefill of the full
  prompt blocks, per block up to S denoise forwards with ``get_num_transfer_tokens``
  quotas, ``torch.topk`` over the block's confidences (``-inf`` where not masked), dynamic =
  every confidence strictly ``>`` the threshold when at least the quota pass, else the top
  quota; a store forward once the block is clean.
* ``ref_llada`` — NVlabs/Fast-dLLM ``llada/generate.py`` (``generate``,
  ``generate_with_prefix_cache``, ``generate_with_dual_cache``, ``get_transfer_index``) at
  24cc59e: semi-AR blocks from the response start, ``torch.topk`` over the whole sequence's
  confidences (prefix: the window ``[s, T)``; dual: the block), threshold = the top-1 plus
  every other candidate not below the threshold, until the block is clean.
* ``ref_dream`` — Fast-dLLM ``dream/model/generation_utils_block.py`` (threshold
  algorithm) at 24cc59e: shifted logits, the block's first position committed at the
  block's first (full) forward, then windows ``[s, T)`` (prefix cache cut at s) or
  ``[s, s + B)`` (dual: prefix and suffix cached, the block's K/V replaced), top-1 plus
  every candidate ``>=`` the threshold, until the block is clean.

The models are tiny seeded checkpoints laid out exactly like the released ones
(``tests/refckpt.py``: SDAR / TraDo, LLaDA-8B-Instruct, Dream-v0-Instruct-7B), loaded the
way a user loads a released checkpoint (``load_model(directory)``: block size, mask and EOS
ids and the block alignment come from the checkpoint). The reference forwards go through
the same loaded model, uncached where the reference cache is exact, and through a
test-local cache holding the reference's K/V otherwise.
Deviations stated on purpose, and recorded in the samplers: ``[MASK]`` is never proposed;
sampling draws ``torch.multinomial`` from a per-sequence generator (the references use the
global RNG; LLaDA a float64 Gumbel-max and Dream ``Categorical``, which draw differently —
so the LLaDA / Dream comparisons are greedy); confidences are float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from dllm_bench.models import load_model
from dllm_bench.samplers.base import filter_logits, sample_seed, step_quotas
from dllm_bench.samplers.block import BlockDynamic, BlockStatic
from dllm_bench.samplers.full import FullDiffusion
from refckpt import build_dream, build_llada, build_sdar

try:
    from transformers.cache_utils import Cache as HFCache
except ImportError:  # pragma: no cover
    HFCache = object

PROMPTS = ["12*3=", "7+5=", "100-1=", "Natalia sold 48/2=", "9*9=", "a", "two words"]


@pytest.fixture(scope="module")
def bm():
    torch.manual_seed(0)
    return load_model("tiny-block-dlm", dtype="float32", block_size=4)


@pytest.fixture(scope="module")
def sdar(tmp_path_factory):
    """A released-layout SDAR / TraDo checkpoint (config.json declares block_size 4)."""
    m = load_model(str(build_sdar(tmp_path_factory.mktemp("sdar"), seed=3, block_size=4)), dtype="float32")
    assert m.family == "block-diffusion" and m.block_size == 4 and m.block_alignment == "absolute"
    return m


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    m = load_model(str(build_llada(tmp_path_factory.mktemp("llada"), seed=4)), dtype="float32", block_size=4)
    assert m.family == "full-diffusion" and not m.logits_shift
    return m


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    m = load_model(str(build_dream(tmp_path_factory.mktemp("dream"), seed=5)), dtype="float32", block_size=4)
    assert m.family == "full-diffusion" and m.logits_shift
    return m


def _propose(logits, temperature, top_k, top_p, mask_id, gen):
    """Candidates and confidences for ``logits [n, V]`` (one sequence)."""
    lg = logits.float().index_fill(-1, torch.tensor([mask_id]), float("-inf"))
    probs = torch.softmax(filter_logits(lg, temperature, top_k, top_p), dim=-1)
    if temperature <= 0:
        x0 = probs.argmax(-1)
    else:
        x0 = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return x0, probs.gather(-1, x0[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------ SDAR
def ref_sdar(model, prompt, *, B, S, gen_length, temperature=0.0, top_k=0, top_p=1.0, threshold=None, seed=0):
    """Returns (tokens after the prompt, step map of those tokens, denoise forwards)."""
    mask_id = model.mask_token_id
    n = len(prompt)
    num_blocks = math.ceil((n + gen_length) / B)
    total = num_blocks * B
    x = torch.full((total,), mask_id, dtype=torch.long)
    x[:n] = torch.tensor(prompt)
    step_at = torch.zeros(total, dtype=torch.long)
    quotas = step_quotas(B, S)
    gen = torch.Generator().manual_seed(seed)
    nfe = 0
    for blk in range(n // B, num_blocks):
        s, e = blk * B, (blk + 1) * B
        for step in range(S + 1):
            masked = x[s:e] == mask_id
            if not bool(masked.any()):
                break  # (the reference's store forward: writes K/V, denoises nothing)
            ids = x[None, :e]
            col = torch.arange(e)
            mask = (col[None, :] // B <= col[:, None] // B)[None, None]  # the reference's block-causal mask
            logits = model.forward(ids, mask, col[None])[0, s:e]
            nfe += 1
            x0, p = _propose(logits, temperature, top_k, top_p, mask_id, gen)
            conf = torch.where(masked, p, torch.tensor(float("-inf")))
            transfer = torch.zeros(B, dtype=torch.bool)
            if threshold is not None and int((conf > threshold).sum()) >= quotas[step]:
                transfer = conf > threshold
            else:
                transfer[torch.topk(conf, quotas[step]).indices] = True
            transfer &= masked  # (the reference may overwrite a decoded token here; we never do)
            x[s:e] = torch.where(transfer, x0, x[s:e])
            step_at[s:e][transfer] = nfe
    return x[n:].tolist(), step_at[n:].tolist(), nfe


SDAR_CASES = [
    dict(B=4, S=4), dict(B=4, S=2), dict(B=8, S=4), dict(B=4, S=4, top_k=1),  # top_k=1: every confidence 1.0
    dict(B=4, S=4, temperature=1.0), dict(B=8, S=8, temperature=1.0, top_k=20),
    dict(B=4, S=4, threshold=0.5), dict(B=8, S=8, threshold=0.3, temperature=1.0),
]


@pytest.mark.parametrize("case", SDAR_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("cache", ["exact", "separate", "none"])
def test_block_samplers_decode_as_the_sdar_reference(sdar, case, cache):
    """Released SDAR layout, the samplers' defaults (alignment from the checkpoint, topk, >)."""
    bm = sdar
    case = dict(case)
    B, S, thr = case.pop("B"), case.pop("S"), case.pop("threshold", None)
    prompts = [bm.encode(t) for t in PROMPTS]
    assert {len(p) % B for p in prompts} != {0}, "some prompt lengths must not be block multiples"
    seeds = [sample_seed(5, i) for i in range(len(prompts))]
    cls = BlockDynamic if thr is not None else BlockStatic
    cfg = dict(block_size=B, denoising_steps=S, max_new_tokens=9,
               cache_mode="none" if cache == "none" else "exact", fuse_commit=cache != "separate", **case)
    if thr is not None:
        cfg["confidence_threshold"] = thr
    got = cls(cls.Config(**cfg)).generate(bm, prompts, seed=seeds, record_trajectory=True)
    for p, g, sd in zip(prompts, got, seeds):
        toks, steps, nfe = ref_sdar(bm, p, B=B, S=S, gen_length=9, threshold=thr, seed=sd, **case)
        assert g.raw_token_ids == toks
        assert g.trajectory.step_map == steps
        assert g.nfe == nfe
        assert g.trajectory.block_alignment == "absolute"


def test_response_alignment_differs_from_the_reference_when_prompts_are_ragged(bm):
    """The harness's own convention is a different partition (so it is a recorded option)."""
    prompts = [bm.encode(t) for t in PROMPTS]
    kw = dict(block_size=4, denoising_steps=2, max_new_tokens=8, temperature=1.0)
    seeds = [sample_seed(1, i) for i in range(len(prompts))]
    ab = BlockStatic(BlockStatic.Config(block_alignment="absolute", **kw)).generate(bm, prompts, seed=seeds)
    rs = BlockStatic(BlockStatic.Config(block_alignment="response", **kw)).generate(bm, prompts, seed=seeds)
    ragged = [i for i, p in enumerate(prompts) if len(p) % 4]
    assert any(ab[i].raw_token_ids[:8] != rs[i].raw_token_ids[:8] for i in ragged)
    aligned = [i for i, p in enumerate(prompts) if len(p) % 4 == 0]
    for i in aligned:  # a block-multiple prompt: the two conventions coincide
        assert ab[i].raw_token_ids == rs[i].raw_token_ids


def test_stable_ranking_is_an_explicit_option_with_its_own_tie_order(bm):
    prompts = [bm.encode(t) for t in PROMPTS]
    kw = dict(block_size=4, denoising_steps=4, max_new_tokens=8, top_k=1, block_alignment="absolute",
              record=None)
    kw.pop("record")
    stable = BlockStatic(BlockStatic.Config(ranking="stable", **kw)).generate(bm, prompts, seed=0,
                                                                                record_trajectory=True)
    for g in stable:  # leftmost first among ties: the step map increases along each block
        sm = g.trajectory.step_map
        assert sm == sorted(sm)
    topk = BlockStatic(BlockStatic.Config(**kw)).generate(bm, prompts, seed=0, record_trajectory=True)
    assert BlockStatic.Config(**kw).ranking == "topk"
    for p, g in zip(prompts, topk):
        assert g.trajectory.step_map == ref_sdar(bm, p, B=4, S=4, gen_length=8, top_k=1)[1]


# ------------------------------------------------------------------------------ LLaDA / Dream
class _RefCache(HFCache):
    """The reference caches' K/V, held as the references hold them (test-local).

    ``prefix``: the K/V of the block's first full forward cut at s (the window's own K/V
    appended for that forward only). ``dual``: all T positions from the block's first
    forward, the window's positions replaced for that forward only.
    """

    is_compileable = False

    def __init__(self, full: list[tuple[torch.Tensor, torch.Tensor]], kind: str, s: int):
        try:
            super().__init__(layers=[])
        except TypeError:  # pragma: no cover
            pass
        self.full, self.kind, self.s = full, kind, s

    def update(self, k, v, layer_idx, *args, **kwargs):
        K, V = self.full[layer_idx]
        q = k.shape[2]
        if self.kind == "prefix":
            return torch.cat([K[:, :, :self.s], k], 2), torch.cat([V[:, :, :self.s], v], 2)
        K, V = K.clone(), V.clone()
        K[:, :, self.s:self.s + q], V[:, :, self.s:self.s + q] = k, v
        return K, V

    def get_seq_length(self, layer_idx=0):
        return self.s

    def get_mask_sizes(self, query_length, layer_idx=0):
        return (self.s + query_length if self.kind == "prefix" else self.full[0][0].shape[2]), 0

    def __len__(self):
        return len(self.full)


class _Recorder(HFCache):
    """Collects every layer's K/V of one full forward."""

    is_compileable = False

    def __init__(self):
        try:
            super().__init__(layers=[])
        except TypeError:  # pragma: no cover
            pass
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, k, v, layer_idx, *args, **kwargs):
        self.kv.append((k, v))
        return k, v

    def get_seq_length(self, layer_idx=0):
        return 0

    def get_mask_sizes(self, query_length, layer_idx=0):
        return query_length, 0

    def __len__(self):
        return len(self.kv)


def _full(model, x, cache=None):
    T = x.shape[0]
    return model.forward(x[None], torch.ones(1, 1, T, T, dtype=torch.bool), torch.arange(T)[None], cache)[0]


def _window(model, x, a, b, kv, kind, s):
    T = x.shape[0]
    keys = s + (b - a) if kind == "prefix" else T
    mask = torch.ones(1, 1, b - a, keys, dtype=torch.bool)
    return model.forward(x[None, a:b], mask, torch.arange(a, b)[None], _RefCache(kv, kind, s))[0]


def _select(conf, n_transfer, threshold):
    """Fast-dLLM's selection: topk, then (threshold) keep the first and every other not below it."""
    vals, idx = torch.topk(conf, n_transfer)
    keep = torch.ones(n_transfer, dtype=torch.bool)
    if threshold is not None:
        keep[1:] = ~(vals[1:] < threshold)
    return idx[keep]


def _commit(x, base, logits, e, mask_id, quota, threshold):
    """One greedy step over the window ``x[base:]`` (the block ends at e): rank the block's
    masked positions over the whole window vector and commit ``quota`` of them (None: all
    masked positions ranked, then Fast-dLLM's threshold rule)."""
    window = x[base:base + logits.shape[0]]
    masked = window == mask_id
    masked[e - base:] = False
    x0, p = _propose(logits, 0.0, 0, 1.0, mask_id, None)
    conf = torch.where(masked, p, torch.tensor(float("-inf")))
    sel = _select(conf, int(masked.sum()) if quota is None else quota, threshold)
    window[sel] = x0[sel]


def ref_llada(model, prompt, *, B, S, gen_length, cache="none", threshold=None):
    """Greedy Fast-dLLM LLaDA decoding; returns (generated tokens, denoise forwards)."""
    mask_id, n = model.mask_token_id, len(prompt)
    T = n + gen_length
    x = torch.full((T,), mask_id, dtype=torch.long)
    x[:n] = torch.tensor(prompt)
    nfe = 0
    for blk in range(gen_length // B):
        s, e = n + blk * B, n + (blk + 1) * B
        quotas = step_quotas(B, S)
        kv = None
        i = 0
        while bool((x[s:e] == mask_id).any()):
            if cache == "none" or i == 0:
                rec = _Recorder() if cache != "none" else None
                logits, base = _full(model, x, rec), 0
                kv = rec.kv if rec is not None else None
            elif cache == "prefix":
                logits, base = _window(model, x, s, T, kv, "prefix", s), s
            else:
                logits, base = _window(model, x, s, e, kv, "dual", s), s
            nfe += 1
            _commit(x, base, logits, e, mask_id, None if threshold is not None else quotas[i], threshold)
            i += 1
    return x[n:].tolist(), nfe


def ref_dream(model, prompt, *, B, gen_length, cache="none", threshold=0.9):
    """Greedy Fast-dLLM Dream threshold decoding; returns (generated tokens, denoise forwards)."""
    mask_id, n = model.mask_token_id, len(prompt)
    T = n + gen_length
    x = torch.full((T,), mask_id, dtype=torch.long)
    x[:n] = torch.tensor(prompt)
    nfe = 0
    shift = lambda lg: torch.cat([lg[:1], lg[:-1]], 0)  # noqa: E731 - position i reads the output at i - 1
    for blk in range(gen_length // B):
        s, e = n + blk * B, n + (blk + 1) * B
        rec = _Recorder() if cache != "none" else None
        logits = shift(_full(model, x, rec))
        nfe += 1
        x0, _ = _propose(logits, 0.0, 0, 1.0, mask_id, None)
        x[s] = x0[s]  # the block's first position, whatever its confidence
        while bool((x[s:e] == mask_id).any()):
            if cache == "none":
                logits, base = shift(_full(model, x)[s:]), s
            elif cache == "prefix":
                logits, base = shift(_window(model, x, s, T, rec.kv, "prefix", s)), s
            else:
                logits, base = shift(_window(model, x, s, e, rec.kv, "dual", s)), s
            nfe += 1
            _commit(x, base, logits, e, mask_id, None, threshold)
    return x[n:].tolist(), nfe


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.004])
def test_full_diffusion_decodes_as_fast_dllm_llada(llada, cache, threshold):
    fm = llada
    prompts = [fm.encode(t) for t in PROMPTS[:5]]
    cfg = dict(block_size=4, denoising_steps=2, max_new_tokens=12, cache_mode=cache, confidence_threshold=threshold)
    got = FullDiffusion(FullDiffusion.Config(**cfg)).generate(fm, prompts, seed=0)  # one padded batch
    for p, g in zip(prompts, got):
        toks, nfe = ref_llada(fm, p, B=4, S=2, gen_length=12, cache=cache, threshold=threshold)
        assert g.raw_token_ids == toks
        assert g.nfe == nfe


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_full_diffusion_decodes_as_fast_dllm_dream(dream, cache):
    prompts = [dream.encode(t) for t in PROMPTS[:5]]
    cfg = dict(block_size=4, max_new_tokens=12, cache_mode=cache, confidence_threshold=0.004)
    got = FullDiffusion(FullDiffusion.Config(**cfg)).generate(dream, prompts, seed=0, record_trajectory=True)
    for p, g in zip(prompts, got):
        toks, nfe = ref_dream(dream, p, B=4, gen_length=12, cache=cache, threshold=0.004)
        assert g.raw_token_ids == toks
        assert g.nfe == nfe
        assert all(g.trajectory.step_map[b * 4] == min(g.trajectory.step_map[b * 4:b * 4 + 4]) for b in range(3))


def test_a_model_that_cannot_mask_padding_is_never_fed_pads(llada):
    """LLaDA's own modeling code ignores the attention mask: such a model path decodes single
    prompts (never padded by the full-diffusion sampler) and refuses a batch that needs pads."""
    import dataclasses

    from dllm_bench.errors import BadInputError

    remote_like = dataclasses.replace(llada, masks_padding=False)
    prompts = [llada.encode(t) for t in PROMPTS[:2]]
    smp = FullDiffusion(FullDiffusion.Config(block_size=4, max_new_tokens=8))
    with pytest.raises(BadInputError, match="cannot mask padding"):
        smp.generate(remote_like, prompts, seed=0)
    alone = smp.generate(remote_like, prompts[:1], seed=0)[0]
    assert alone.raw_token_ids == ref_llada(llada, prompts[0], B=4, S=4, gen_length=8)[0]
