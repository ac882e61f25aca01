"""Samplers: exact-cache parity, dynamic/static equivalence, step maps, EOS/stop handling,
seeding, NFE accounting, Fast-dLLM cache bounds, AR parity."""

from __future__ import annotations

import pytest
import torch

from dllm_bench import registry
from dllm_bench.errors import BadInputError
from dllm_bench.models import load_model
from dllm_bench.samplers.ar import AR
from dllm_bench.samplers.base import finish, select_unmask, step_quotas
from dllm_bench.samplers.block import BlockDynamic, BlockStatic
from dllm_bench.samplers.full import FullDiffusion, cache_fidelity

TEXTS = ["a", "12+3=", "hello world", "Natalia sold 48/2=24 clips in May.", "x" * 17, "What is 7*8?"]



@pytest.fixture(scope="module")
def bm():
    return load_model("tiny-block-dlm", dtype="float32")


@pytest.fixture(scope="module")
def fm():
    return load_model("tiny-full-dlm", dtype="float32")


@pytest.fixture(scope="module")
def prompts(bm):
    return [bm.encode(t) for t in TEXTS]  # lengths 1, 5, 11, 34, 17, 12


def _static(**kw):
    return BlockStatic(BlockStatic.Config(**kw))


def _dynamic(**kw):
    return BlockDynamic(BlockDynamic.Config(**kw))


def _raw(gens):
    return [g.raw_token_ids for g in gens]


# --------------------------------------------------------------------------- exact cache
@pytest.mark.parametrize("block_size,steps", [(4, None), (4, 2), (8, None), (8, 3)])
def test_block_cache_equals_no_cache_greedy(bm, prompts, block_size, steps):
    """The exact KV cache reproduces uncached decoding token for token (batch 6, prompt lengths 1..34)."""
    kw = dict(block_size=block_size, denoising_steps=steps, max_new_tokens=3 * block_size)
    cached = _static(cache_mode="exact", **kw).generate(bm, prompts, seed=0, record_trajectory=True)
    plain = _static(cache_mode="none", **kw).generate(bm, prompts, seed=0, record_trajectory=True)
    separate = _static(cache_mode="exact", fuse_commit=False, **kw).generate(bm, prompts, seed=0)
    assert _raw(cached) == _raw(plain) == _raw(separate)
    assert [g.trajectory.step_map for g in cached] == [g.trajectory.step_map for g in plain]
    dyn_c = _dynamic(cache_mode="exact", confidence_threshold=0.004, **kw).generate(bm, prompts, seed=0)
    dyn_p = _dynamic(cache_mode="none", confidence_threshold=0.004, **kw).generate(bm, prompts, seed=0)
    assert _raw(dyn_c) == _raw(dyn_p)


def test_block_nfe_accounting(bm, prompts):
    """Per-sequence NFE counts the forwards that denoise the sequence (S per block, whatever
    the cache); the batch's model calls are counted separately (``forward_calls``, shared
    among rows): fused exact cache and no cache S per block; separate prefill/commit forwards
    1 + S per block + 1 per block that has a successor; skip-commit 1 + S per block."""
    B, S, nb = 4, 2, 3
    kw = dict(block_size=B, denoising_steps=S, max_new_tokens=B * nb)

    def calls(gens):
        return pytest.approx(sum(g.forward_calls for g in gens), abs=1e-4)

    fused = _static(cache_mode="exact", **kw).generate(bm, prompts, seed=0)
    assert {g.nfe for g in fused} == {nb * S} and calls(fused) == nb * S
    plain = _static(cache_mode="none", **kw).generate(bm, prompts, seed=0)
    assert {g.nfe for g in plain} == {nb * S} and calls(plain) == nb * S
    separate = _static(cache_mode="exact", fuse_commit=False, **kw).generate(bm, prompts, seed=0)
    assert {g.nfe for g in separate} == {nb * S}
    assert calls(separate) == 1 + nb * S + (nb - 1)
    assert _raw(separate) == _raw(fused)
    skip = _static(cache_mode="exact", skip_commit_forward=True, **kw).generate(bm, prompts, seed=0)
    assert {g.nfe for g in skip} == {nb * S} and calls(skip) == 1 + nb * S
    assert [g.raw_token_ids[:B] for g in skip] == [g.raw_token_ids[:B] for g in fused]  # block 0 never sees the cache
    g = fused[0]
    assert g.generated_tokens == len(g.token_ids) == B * nb and g.finish_reason == "length"


def test_batch_composition_does_not_change_a_sequence(bm, prompts):
    """Left padding + per-row seeds: a prompt decodes the same alone or in a batch (greedy and sampled)."""
    for cfg in (dict(), dict(temperature=1.0, top_k=20)):
        s = _static(block_size=4, max_new_tokens=12, **cfg)
        batch = s.generate(bm, prompts, seed=[11, 12, 13, 14, 15, 16])
        for i in (0, 3):
            alone = s.generate(bm, [prompts[i]], seed=[11 + i])[0]
            assert alone.raw_token_ids == batch[i].raw_token_ids


# --------------------------------------------------------------------------- dynamic vs static
def test_dynamic_above_one_equals_static_one_token_per_step(bm, prompts):
    for B in (4, 8):
        kw = dict(block_size=B, denoising_steps=B, max_new_tokens=2 * B)
        static = _static(**kw).generate(bm, prompts, seed=3, record_trajectory=True)
        dyn = _dynamic(confidence_threshold=1.01, **kw).generate(bm, prompts, seed=3, record_trajectory=True)
        assert _raw(static) == _raw(dyn)
        assert [g.trajectory.step_map for g in static] == [g.trajectory.step_map for g in dyn]
        assert [g.nfe for g in static] == [g.nfe for g in dyn]


def test_top_k_one_makes_dynamic_commit_whole_blocks(bm, prompts):
    """dLLM-RL generate.py (10b4fd1) takes confidence after top-k: top_k=1 -> 1.0 -> one step per block."""
    B, nb = 4, 3
    gens = _dynamic(block_size=B, top_k=1, temperature=1.0, max_new_tokens=B * nb).generate(
        bm, prompts, seed=0, record_trajectory=True)
    for g in gens:
        assert g.trajectory.step_map == [k + 1 for k in range(nb) for _ in range(B)]
        assert all(c == 1.0 for st in g.trajectory.steps for c in st.confidence)
        assert g.nfe == nb  # one (fused) forward per block


def test_dynamic_takes_at_least_the_static_quota(bm, prompts):
    B = 8
    gens = _dynamic(block_size=B, denoising_steps=4, confidence_threshold=0.5, max_new_tokens=2 * B).generate(
        bm, prompts, seed=0, record_trajectory=True)
    for g in gens:
        assert all(len(st.positions) >= 2 for st in g.trajectory.steps)


# --------------------------------------------------------------------------- step map
def _check_trajectory(g, B):
    t = g.trajectory
    raw = g.raw_token_ids
    assert len(t.step_map) == len(raw) and len(raw) % B == 0
    assert all(s >= 1 for s in t.step_map)
    seen = {}
    prev_step = 0
    for st in t.steps:
        assert st.step > prev_step  # steps are strictly increasing
        prev_step = st.step
        for p, tok, c in zip(st.positions, st.tokens, st.confidence):
            assert p not in seen, "a token is unmasked exactly once"
            assert p // B == st.block and raw[p] == tok and 0.0 <= c <= 1.0
            seen[p] = st.step
    assert seen == {p: s for p, s in enumerate(t.step_map)}  # every token has exactly one step
    for k in range(1, len(raw) // B):  # block k is decoded after block k-1
        assert min(t.step_map[k * B:(k + 1) * B]) > max(t.step_map[(k - 1) * B:k * B])
    assert t.denoise_steps == max(t.step_map)


def test_step_map_consistency_and_masked_before(bm, prompts):
    """Every response token has one step; replaying the commits, a token unmasked at step t is
    still [MASK] in the state before t, and the replay reproduces the output."""
    B = 4
    for s in (_static(block_size=B, denoising_steps=2, max_new_tokens=12, remasking="random", temperature=0.8),
              _dynamic(block_size=B, confidence_threshold=0.005, max_new_tokens=12)):
        for g in s.generate(bm, prompts, seed=5, record_trajectory=True):
            _check_trajectory(g, B)
            state = [None] * len(g.raw_token_ids)
            for st in g.trajectory.steps:
                for p, tok in zip(st.positions, st.tokens):
                    assert state[p] is None  # masked before step st.step
                    state[p] = tok
            assert state == g.raw_token_ids


def test_full_diffusion_step_map(fm):
    ps = [fm.encode(t) for t in TEXTS[:3]]
    for g in FullDiffusion(FullDiffusion.Config(block_size=4, denoising_steps=2, max_new_tokens=12)).generate(
            fm, ps, seed=0, record_trajectory=True):
        _check_trajectory(g, 4)


# --------------------------------------------------------------------------- EOS / stop / seeds
def test_eos_inside_a_block_ends_the_sequence(prompts):
    """EOS stops a sequence after its block; tokens after EOS are not in the response."""
    m = load_model("tiny-block-dlm", dtype="float32")
    B = 4
    s = _static(block_size=B, max_new_tokens=6 * B)
    free = s.generate(m, prompts, seed=0)
    eos = free[1].raw_token_ids[5]  # a token sequence 1 produces in its second block
    m.eos_token_ids = (eos,)
    for cm in ("exact", "none"):
        gens = _static(block_size=B, max_new_tokens=6 * B, cache_mode=cm).generate(m, prompts, seed=0)
        for f, g in zip(free, gens):
            if eos in f.raw_token_ids:
                i = f.raw_token_ids.index(eos)
                stop_block = i // B + 1
                assert g.raw_token_ids == f.raw_token_ids[:stop_block * B]  # earlier blocks unchanged
                assert g.token_ids == f.raw_token_ids[:i + 1] and g.finish_reason == "eos"
                assert g.text == m.decode(f.raw_token_ids[:i])
                assert g.nfe < f.nfe if stop_block < 6 else True
            else:
                assert g.raw_token_ids == f.raw_token_ids and g.finish_reason == "length"
    assert any(g.finish_reason == "eos" for g in gens)


def test_stop_strings(bm, prompts):
    B = 4
    free = _static(block_size=B, max_new_tokens=16).generate(bm, prompts[:2], seed=0)
    stop = free[0].text[5:7]
    g = _static(block_size=B, max_new_tokens=16, stop=[stop]).generate(bm, prompts[:2], seed=0)[0]
    cut = free[0].text.find(stop)
    assert g.finish_reason == "stop" and g.text == free[0].text[:cut] and stop not in g.text
    assert len(g.raw_token_ids) < len(free[0].raw_token_ids) or cut + len(stop) > 12


def test_finish_rules():
    tok = load_model("tiny-ar", dtype="float32").tokenizer
    ids = tok("ab\nc", add_special_tokens=False).input_ids
    assert finish(ids + [257, 65], tokenizer=tok, eos_ids=[257], stop=[], max_new_tokens=99) == \
        (ids + [257], "ab\nc", "eos")
    assert finish(ids, tokenizer=tok, eos_ids=[257], stop=["\n"], max_new_tokens=99) == (ids[:3], "ab", "stop")
    assert finish(ids, tokenizer=tok, eos_ids=[257], stop=[], max_new_tokens=2) == (ids[:2], "ab", "length")


def test_seeded_sampling_is_reproducible(bm, prompts):
    s = _dynamic(block_size=4, temperature=1.0, top_p=0.9, max_new_tokens=8, remasking="random")
    a, b = s.generate(bm, prompts, seed=7), s.generate(bm, prompts, seed=7)
    c = s.generate(bm, prompts, seed=8)
    assert _raw(a) == _raw(b) and _raw(a) != _raw(c)


def test_selection_and_quotas():
    assert step_quotas(8, 3) == [3, 3, 2] and step_quotas(4, 9) == [1, 1, 1, 1]
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
    masked = torch.tensor([[True, True, True, False]])
    assert select_unmask(conf, masked, torch.tensor([1])).tolist() == [[False, True, False, False]]
    assert select_unmask(conf, masked, torch.tensor([1]), threshold=0.4).tolist() == [[False, True, True, False]]
    tie = torch.ones(1, 4)
    assert select_unmask(tie, torch.ones(1, 4, dtype=torch.bool), torch.tensor([2])).tolist() == \
        [[True, True, False, False]]  # ties: leftmost first


# --------------------------------------------------------------------------- full diffusion caches
def test_full_diffusion_caches_exact_with_one_step_per_block(fm):
    ps = [fm.encode(t) for t in TEXTS]
    base = dict(block_size=8, denoising_steps=1, max_new_tokens=24)
    ref = FullDiffusion(FullDiffusion.Config(**base)).generate(fm, ps, seed=0)
    for mode in ("prefix", "dual"):
        got = FullDiffusion(FullDiffusion.Config(cache_mode=mode, **base)).generate(fm, ps, seed=0)
        assert _raw(got) == _raw(ref)
        assert [g.nfe for g in got] == [g.nfe for g in ref] == [3] * len(ps)


def test_full_diffusion_first_step_exact_and_nfe(fm):
    ps = [fm.encode(t) for t in TEXTS]
    kw = dict(block_size=4, denoising_steps=4, max_new_tokens=8)
    ref = FullDiffusion(FullDiffusion.Config(**kw)).generate(fm, ps, seed=0, record_trajectory=True)
    for mode in ("prefix", "dual"):
        got = FullDiffusion(FullDiffusion.Config(cache_mode=mode, **kw)).generate(fm, ps, seed=0,
                                                                                    record_trajectory=True)
        for a, b in zip(ref, got):
            assert a.trajectory.steps[0] == b.trajectory.steps[0]  # block 0, step 1: a full forward
            assert a.nfe == b.nfe == 8


def test_full_diffusion_logits_shift_path():
    """Dream-style shifted logits (logits at i predict i+1) without Dream's first-position rule:
    caches read one column to the left; with one step per block they stay exact, and step maps
    stay consistent (the rule itself is tested against the reference in test_reference_parity)."""
    m = load_model("tiny-full-dlm", dtype="float32")
    m.logits_shift = True
    ps = [m.encode(t) for t in TEXTS[:3]]
    one = dict(block_size=4, denoising_steps=1, max_new_tokens=12, commit_first_position=False)
    ref = FullDiffusion(FullDiffusion.Config(**one)).generate(m, ps, seed=0)
    for mode in ("prefix", "dual"):
        assert _raw(FullDiffusion(FullDiffusion.Config(cache_mode=mode, **one)).generate(m, ps, seed=0)) == _raw(ref)
        for g in FullDiffusion(FullDiffusion.Config(cache_mode=mode, block_size=4, max_new_tokens=8)).generate(
                m, ps, seed=0, record_trajectory=True):
            _check_trajectory(g, 4)


def test_fast_dllm_cache_bound(fm):
    """Stated bound (samplers/full.py): on the same states, cached next-token distributions are
    within total variation 0.1 of exact at every masked position, 0.02 on average."""
    ps = [fm.encode(t) for t in TEXTS[:4]]
    for B in (4, 8):
        stats = cache_fidelity(fm, ps, block_size=B, denoising_steps=B, max_new_tokens=2 * B)
        for mode in ("prefix", "dual"):
            st = stats[mode]
            assert st["positions"] > 0 and st["max_tv"] <= 0.1 and st["mean_tv"] <= 0.02, (mode, B, st)
            assert st["max_tv"] > 0.0  # the cache *is* approximate: exact equality would mean it is unused


# --------------------------------------------------------------------------- AR
def test_ar_greedy_matches_manual_argmax_loop():
    m = load_model("tiny-ar", dtype="float32")
    ps = [m.encode("12+3="), m.encode("hello")]
    gens = AR(AR.Config(max_new_tokens=6)).generate(m, ps, seed=0)
    for p, g in zip(ps, gens):
        x = torch.tensor([p])
        with torch.no_grad():
            for _ in range(6):
                x = torch.cat([x, m.forward(x)[:, -1:].argmax(-1)], 1)
        assert g.raw_token_ids == x[0, len(p):].tolist() and g.nfe == 6
    s = AR(AR.Config(max_new_tokens=6, temperature=1.0, top_k=10))
    both = s.generate(m, ps, seed=[5, 6])
    assert s.generate(m, ps[1:], seed=[6])[0].raw_token_ids == both[1].raw_token_ids


def test_ar_vllm_absent_is_a_clear_error():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed; the absent-vllm error path does not apply")
    except ImportError:
        pass
    s = registry.create("samplers", "ar-vllm", {})
    m = load_model("tiny-ar", dtype="float32")
    with pytest.raises(BadInputError, match="pip install 'dllm-bench\\[vllm\\]'"):
        s.generate(m, [m.encode("hi")], seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM generation needs a CUDA GPU")
def test_ar_vllm_greedy_matches_ar():
    pytest.importorskip("vllm")
    m = load_model("tiny-ar", dtype="float32")
    ps = [m.encode("12+3=")]
    a = AR(AR.Config(max_new_tokens=6)).generate(m, ps, seed=0)
    b = registry.create("samplers", "ar-vllm", {"max_new_tokens": 6}).generate(m, ps, seed=0)
    assert a[0].raw_token_ids == b[0].raw_token_ids


# --------------------------------------------------------------------------- plumbing
def test_registry_configs_and_family_checks(bm, fm):
    for name in ("block-static", "block-dynamic", "full-diffusion", "ar", "ar-vllm"):
        s = registry.create("samplers", name, {})
        key = s.key()
        assert key["name"] == name and "temperature" in key["config"] and "attention_backend" in key["config"]
    with pytest.raises(BadInputError, match="denoising_steps"):
        registry.create("samplers", "block-static", {"block_size": 4, "denoising_steps": 8})
    with pytest.raises(BadInputError, match="Extra inputs"):
        registry.create("samplers", "block-static", {"steps": 4})
    with pytest.raises(BadInputError, match="needs a block-diffusion model"):
        _static().generate(fm, [[1, 2]], seed=0)
    with pytest.raises(BadInputError, match="needs a ar model"):
        AR().generate(bm, [[1, 2]], seed=0)


def test_flex_attention_backend_matches_sdpa(prompts):
    """The model layer's `flex` backend (the AttentionLayout as a mask_mod, no dense mask) decodes the same tokens."""
    m = load_model("tiny-block-dlm", dtype="float32")
    kw = dict(block_size=4, max_new_tokens=8)
    ref = _static(**kw).generate(m, prompts[:3], seed=0)
    try:
        got = _static(attention_backend="flex", **kw).generate(m, prompts[:3], seed=0)
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - torch without flex attention
        pytest.skip(f"flex attention unavailable: {exc}")
    assert _raw(got) == _raw(ref)
