"""Block-diffusion attention: mask semantics and the sdpa / flex backends against the reference.

The Triton kernels are tested in ``test_attention_triton.py`` (CPU interpreter).
"""

from __future__ import annotations

import pytest
import torch

from dllm_bench import blocks
from dllm_bench.errors import BadInputError
from dllm_bench.models.attention import (
    BACKENDS,
    TRANSFORMERS_ATTN_NAMES,
    attention,
    attention_reference,
    flex_attention,
    register_transformers_attention,
)
from dllm_bench.models.layout import PAD_SEGMENT, AttentionLayout, left_pads, row_bounds, visible

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def _qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, lq, d, generator=g, dtype=dtype), torch.randn(b, hkv, lk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, lk, d, generator=g, dtype=dtype))


def _left_padded(width, pads):
    return torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]


# ----------------------------------------------------------------------------- the masks the package built before
# Restated from the former dllm_bench.blocks.block_causal_mask / staircase_mask and the packed layout's
# inline mask (trainers/trajectory.py), so that the layout's dense masks are shown equal to them.


def _former_block_causal(key_valid, B, q_start=0, q_len=None):
    b, K = key_valid.shape
    q_len = K - q_start if q_len is None else q_len
    qpos, kpos = torch.arange(q_start, q_start + q_len), torch.arange(K)
    m = ((kpos[None, :] // B) <= (qpos[:, None] // B))[None] & key_valid[:, None, :]
    return (m | (kpos[None, None, :] == qpos[None, :, None]))[:, None]


def _former_staircase(prompt_valid, L, B):
    b, P = prompt_valid.shape
    T = P + 2 * L
    idx = torch.arange(T)
    is_m = idx >= P + L
    blk = torch.where(is_m, (idx - L) // B, idx // B)
    q_blk, k_blk, q_m, k_m = blk[:, None], blk[None, :], is_m[:, None], is_m[None, :]
    allowed = ((~q_m) & (~k_m) & (k_blk <= q_blk)) | (q_m & (((~k_m) & (k_blk < q_blk)) | (k_m & (k_blk == q_blk))))
    key_valid = torch.cat([prompt_valid, torch.ones(b, 2 * L, dtype=torch.bool)], 1)
    return ((allowed[None] & key_valid[:, None, :]) | torch.eye(T, dtype=torch.bool)[None])[:, None]


@pytest.mark.parametrize("B", [1, 2, 4, 8])
def test_dense_masks_equal_the_former_masks(B):
    """Block-causal (uncached, prefill, decode against a cache) and staircase masks derived from the layout
    are the masks the package built before, on every row, pad rows included (same pad rule)."""
    lens = [3, 9, 1, 2 * B]
    pb = blocks.left_pad_prompts([[1] * n for n in lens], B, 0)
    P, b = pb.padded_len, len(lens)
    for L in (B, 3 * B):
        ours = AttentionLayout.staircase(pb.valid, L, B).dense(b, P + 2 * L, P + 2 * L)
        assert torch.equal(ours, _former_staircase(pb.valid, L, B))
    lay = AttentionLayout.from_prompt_lens(lens, P, B)
    for n_blocks in range(3):
        K = P + (n_blocks + 1) * B
        kv = torch.cat([pb.valid, torch.ones(b, (n_blocks + 1) * B, dtype=torch.bool)], 1)
        assert torch.equal(lay.dense(b, B, K), _former_block_causal(kv, B, q_start=K - B, q_len=B))
        assert torch.equal(lay.dense(b, K, K), _former_block_causal(kv, B))
        assert torch.equal(lay.dense(b, K - P, K), _former_block_causal(kv, B, q_start=P, q_len=K - P))
    full = AttentionLayout(None, kv_start=left_pads(pb.valid))
    former_full = pb.valid[:, None, None, :].expand(b, 1, P, P) | torch.eye(P, dtype=torch.bool)
    assert torch.equal(full.dense(b, P, P), former_full)


def test_packed_layout_equals_the_former_inline_mask_on_real_rows():
    """Packed [prompt ; clean ; seg_1 .. seg_n]: equal to the former inline mask except on padding
    segments' rows (never read: nobody attends to them and no target is gathered there)."""
    B, P, L = 2, 4, 6
    valid = _left_padded(P, [1, 0])
    segs = torch.tensor([[2, 3, 4], [4, PAD_SEGMENT, PAD_SEGMENT]])  # clean blocks (from column 0) copied
    T = P + L + 3 * B
    lay = AttentionLayout(B, kv_start=left_pads(valid), segments=segs)
    blk = torch.zeros(2, T, dtype=torch.long)
    seg_id = torch.full((2, T), -1)
    key_ok = torch.zeros(2, T, dtype=torch.bool)
    blk[:, :P + L] = torch.arange(P + L) // B
    key_ok[:, :P], key_ok[:, P:P + L] = valid, True
    for i in range(2):
        for s_, c in enumerate(segs[i].tolist()):
            if c != PAD_SEGMENT:
                c0 = P + L + s_ * B
                blk[i, c0:c0 + B], seg_id[i, c0:c0 + B], key_ok[i, c0:c0 + B] = c, s_, True
    q_clean, k_clean = (seg_id < 0)[:, :, None], (seg_id < 0)[:, None, :]
    former = (q_clean & k_clean & (blk[:, None, :] <= blk[:, :, None])) | \
        (~q_clean & ((k_clean & (blk[:, None, :] < blk[:, :, None])) | (seg_id[:, :, None] == seg_id[:, None, :])))
    former = (former & key_ok[:, None, :]) | torch.eye(T, dtype=torch.bool)
    real_rows = key_ok[:, :, None]
    assert torch.equal(lay.dense(2, T, T)[:, 0] & real_rows, former & real_rows)
    # a padding segment's column is seen by nobody but itself
    pad_col = P + L + B
    assert lay.dense(2, T, T)[1, 0, :, pad_col].nonzero().flatten().tolist() == [pad_col]


LAYOUTS = [  # (layout, batch, [(q_len, kv_len), ...])
    (AttentionLayout(None, kv_start=torch.tensor([0, 3])), 2, [(4, 9), (9, 9)]),
    (AttentionLayout(None, kv_start=torch.tensor([0, 3]), q_start=2), 2, [(4, 9)]),
    (AttentionLayout(1, kv_start=torch.tensor([2, 0]), kv_end=torch.tensor([7, 9])), 2, [(9, 9)]),
    (AttentionLayout(3, kv_start=torch.tensor([0, 4]), block_origin=1), 2, [(3, 10), (10, 10)]),
    (AttentionLayout(2, kv_start=torch.tensor([1, 0]), q_start=3), 2, [(4, 9)]),
    (AttentionLayout.staircase(_left_padded(4, [1, 3]), 4, 2), 2, [(12, 12)]),
    (AttentionLayout(2, kv_start=torch.tensor([1, 0]), segments=torch.tensor([[2, 4], [3, PAD_SEGMENT]])),
     2, [(14, 14)]),
]


@pytest.mark.parametrize("case", range(len(LAYOUTS)))
def test_derivations_equal_the_predicate_exhaustively(case):
    """dense, the Flex mask_mod and the Triton row bounds (PyTorch mirror; the kernels' own in
    test_attention_triton.py) against visible() evaluated one (row, query, key) at a time."""
    lay, b, shapes = LAYOUTS[case]
    for lq, lk in shapes:
        dense = lay.dense(b, lq, lk)
        q0 = lay.q_offset(lq, lk)
        mod = lay.mask_mod(lq, lk)
        for bi in range(b):
            for i in range(lq):
                for k in range(lk):
                    t = torch.tensor
                    want = bool(visible(lay, t(bi), t(q0 + i), t(k), lk))
                    assert bool(dense[bi, 0, i, k]) == want, (bi, i, k)
                    assert bool(mod(t(bi), t(0), t(i), t(k))) == want, (bi, i, k)
        kp = lay.kernel_params(lq, lk)
        if kp is not None:
            lo, hi = row_bounds(kp, lay.kv_start_for(b, torch.device("cpu")), lq)
            kpos = torch.arange(lk)
            qpos = torch.arange(q0, q0 + lq)
            from_bounds = ((kpos >= lo[:, :, None]) & (kpos < hi[:, :, None])) | (kpos == qpos[:, None])
            assert torch.equal(from_bounds, dense[:, 0]), case


def test_kernel_params_only_for_layouts_the_kernels_express():
    assert AttentionLayout(4).kernel_params(4, 12) == (4, 8, 0, 12)
    assert AttentionLayout(None, block_origin=3).kernel_params(4, 12) == (12, 8, 0, 12)
    assert AttentionLayout(4, q_start=0).kernel_params(4, 12) is None  # queries not at the end
    assert AttentionLayout(1, kv_end=torch.tensor([3])).kernel_params(4, 4) is None  # right padding
    assert AttentionLayout.staircase(_left_padded(4, [0]), 4, 4).kernel_params(12, 12) is None


def test_staircase_by_hand():
    """P=2 (one prompt block), L=4, B=2: columns p0 p1 | c0 c1 c2 c3 | m0 m1 m2 m3."""
    m = AttentionLayout.staircase(_left_padded(2, [0]), 4, 2).dense(1, 10, 10)[0, 0]
    seen = {i: m[i].nonzero().flatten().tolist() for i in range(10)}
    assert seen[0] == seen[1] == [0, 1]                  # prompt block
    assert seen[2] == seen[3] == [0, 1, 2, 3]            # clean response block 0
    assert seen[4] == seen[5] == [0, 1, 2, 3, 4, 5]      # clean response block 1
    assert seen[6] == seen[7] == [0, 1, 6, 7]            # masked block 0: prompt + itself
    assert seen[8] == seen[9] == [0, 1, 2, 3, 8, 9]      # masked block 1: prompt, clean block 0, itself
    # left padding: one pad column is never a key, except of its own row (the pad rule)
    mp = AttentionLayout.staircase(_left_padded(2, [1]), 4, 2).dense(1, 10, 10)[0, 0]
    assert mp[:, 0].nonzero().flatten().tolist() == [0] and torch.equal(mp[:, 1:], m[:, 1:])


def test_block_origin_and_prompt_blocks_from_the_response_start():
    # block-causal with blocks starting at columns = 1 (mod 3): [0] [1 2 3] [4 5 6]
    m = AttentionLayout(3, block_origin=1).dense(1, 7, 7)[0, 0]
    assert m[0].nonzero().flatten().tolist() == [0]
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert m[6].nonzero().flatten().tolist() == list(range(7))
    # staircase with a prompt that is not a block multiple: prompt blocks counted back from P
    m = AttentionLayout.staircase(_left_padded(3, [0]), 2, 2).dense(1, 7, 7)[0, 0]  # [0] [1 2] | [3 4] | [5 6]
    assert m[0].nonzero().flatten().tolist() == [0]
    assert m[1].nonzero().flatten().tolist() == [0, 1, 2]
    assert m[5].nonzero().flatten().tolist() == [0, 1, 2, 5, 6]


def test_layout_validation():
    with pytest.raises(ValueError):
        AttentionLayout(0)
    with pytest.raises(ValueError):
        AttentionLayout(segments=torch.zeros(1, 1, dtype=torch.long))  # segments need a block size
    with pytest.raises(ValueError):
        AttentionLayout(4).dense(1, 8, 4)  # q_len > kv_len
    with pytest.raises(ValueError):
        AttentionLayout(4, q_start=2).dense(1, 4, 5)  # queries past the keys
    with pytest.raises(ValueError):
        AttentionLayout.staircase(_left_padded(4, [0]), 8, 4).dense(1, 6, 6)  # kv_len < the copy segments
    with pytest.raises(ValueError):
        AttentionLayout.staircase(_left_padded(4, [0]), 6, 4)  # L not a multiple of B
    with pytest.raises(ValueError):
        AttentionLayout(4, kv_start=torch.tensor([0, 1])).kv_start_for(3, torch.device("cpu"))
    with pytest.raises(ValueError):
        left_pads(torch.tensor([[True, False, True]]))
    assert left_pads(torch.tensor([[False, True, True], [True, True, True]])).tolist() == [1, 0]
    with pytest.raises(ValueError):
        AttentionLayout.from_prompt_lens([5], 4, 4)
    with pytest.raises(BadInputError):
        attention(*_qkv(1, 2, 1, 4, 4, 8), layout=AttentionLayout(4), backend="cuda-magic")
    with pytest.raises(ValueError):
        attention(*_qkv(1, 3, 2, 4, 4, 8), layout=AttentionLayout(4))  # 3 heads over 2 kv heads


# ----------------------------------------------------------------------------- backends

CASES = [  # name, layout, q_len, kv_len
    ("decode", AttentionLayout(4, kv_start=torch.tensor([3, 0])), 4, 37),
    ("decode-aligned-no-pad", AttentionLayout(8), 8, 40),
    ("prefill", AttentionLayout(4, kv_start=torch.tensor([5, 0])), 24, 24),
    ("staircase", AttentionLayout.staircase(_left_padded(16, [2, 7]), 16, 8), 48, 48),
    ("packed", AttentionLayout(4, kv_start=torch.tensor([2, 0]), segments=torch.tensor([[2, 3], [5, -1]])), 32, 32),
    ("full-window", AttentionLayout(None, kv_start=torch.tensor([3, 0]), q_start=8), 4, 20),
]


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("d", [64, 128])
def test_backend_matches_reference(backend, case, d):
    _, spec, lq, lk = case
    q, k, v = _qkv(2, 8, 2, lq, lk, d)
    ref = attention_reference(q, k, v, layout=spec)
    out = attention(q, k, v, layout=spec, backend=backend)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_dense_mask_and_intersection(backend):
    q, k, v = _qkv(2, 4, 2, 6, 20, 64, seed=1)
    dense = torch.rand(2, 1, 6, 20, generator=torch.Generator().manual_seed(3)) > 0.4
    dense[0, 0, 2] = False  # a row with no key -> zeros
    ref = attention_reference(q, k, v, mask=dense)
    assert ref[0, :, 2].abs().max() == 0
    torch.testing.assert_close(attention(q, k, v, mask=dense, backend=backend).double(), ref, atol=2e-5, rtol=1e-4)
    spec = AttentionLayout(3, kv_start=torch.tensor([1, 4]))
    ref = attention_reference(q, k, v, layout=spec, mask=dense)
    torch.testing.assert_close(attention(q, k, v, layout=spec, mask=dense, backend=backend).double(), ref,
                               atol=2e-5, rtol=1e-4)


def test_flex_compiled_on_cpu():
    """torch 2.13 compiles FlexAttention for the CPU too (inductor C++ backend)."""
    spec = AttentionLayout.staircase(_left_padded(8, [2]), 8, 4)
    q, k, v = _qkv(1, 4, 2, 24, 24, 64, seed=2)
    try:
        out = flex_attention(q, k, v, layout=spec, compiled=True)
    except Exception as exc:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile(flex_attention) unavailable on CPU here: {type(exc).__name__}: {exc}")
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, layout=spec), atol=2e-5, rtol=1e-4)


def test_sdpa_and_flex_gradients_match_reference():
    spec = AttentionLayout.staircase(_left_padded(8, [1, 3]), 8, 4)
    q, k, v = (t.requires_grad_() for t in _qkv(2, 4, 2, 24, 24, 64, seed=4))
    do = torch.randn(2, 4, 24, 64)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_reference(qr, kr, vr, layout=spec).backward(do.double())
    attention(q, k, v, layout=spec, backend="sdpa").backward(do)
    for a, r in ((q, qr), (k, kr), (v, vr)):
        torch.testing.assert_close(a.grad.double(), r.grad, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- transformers


def _tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    return Qwen3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_transformers_attention_interface(backend):
    """A stock Qwen3 driven through the registered backend == stock sdpa with the 4-D block mask."""
    names = register_transformers_attention()
    assert set(names) == set(BACKENDS) and names == TRANSFORMERS_ATTN_NAMES
    m = _tiny_qwen3()
    B, L, lens = 4, 8, [5, 8]
    pb = blocks.left_pad_prompts([[3] * n for n in lens], B, 0)
    ids = torch.cat([pb.input_ids, torch.randint(0, 64, (2, L), generator=torch.Generator().manual_seed(0))], 1)
    kv = torch.cat([pb.valid, torch.ones(2, L, dtype=torch.bool)], 1)
    pos = torch.cat([pb.position_ids, blocks.response_position_ids(pb.prompt_lens, L)], 1)
    with torch.no_grad():
        m.set_attn_implementation("sdpa")
        spec = AttentionLayout.from_prompt_lens(lens, pb.padded_len, B)
        dense = spec.dense(2, ids.shape[1], ids.shape[1])
        ref = m(ids, attention_mask=dense, position_ids=pos).logits
        m.set_attn_implementation(names[backend])
        out = m(ids, position_ids=pos, attention_layout=spec).logits
        out_mask = m(ids, attention_mask=dense, position_ids=pos).logits  # 4-D mask path
        out_causal = m(ids[:1, 4:]).logits  # no spec, no mask: the module's causal attention
        m.set_attn_implementation("sdpa")
        ref_causal = m(ids[:1, 4:]).logits
    torch.testing.assert_close(out[kv], ref[kv], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_mask[kv], ref[kv], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_causal, ref_causal, atol=1e-5, rtol=1e-4)
