"""Triton block-diffusion attention kernels against the plain PyTorch reference.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here
before triton is imported); on a CUDA machine the same tests run the compiled kernels.
Shapes are tiny (the interpreter runs every program in Python); tile sizes are forced small
so that multi-tile loops, split-K and tile-boundary masks are exercised.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton` of the kernels

pytest.importorskip("triton", reason="triton is an optional extra (pip install dllm-bench[triton])")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from dllm_bench import blocks  # noqa: E402
from dllm_bench.models import triton_attention as ta  # noqa: E402
from dllm_bench.models.attention import attention, attention_reference, register_transformers_attention  # noqa: E402
from dllm_bench.models.layout import AttentionLayout, left_pads  # noqa: E402

if not CUDA and not ta.interpreting():  # imported earlier in this process without the interpreter
    ta = importlib.reload(ta)

DEV = torch.device("cuda" if CUDA else "cpu")
SMALL = dict(BLOCK_M=16, BLOCK_N=16, BWD_BLOCK_M=16, BWD_BLOCK_N=16)
"""Small tiles: several tiles per loop even at these tiny lengths (64 / 128 head dims fit)."""


def _tiles(B: int):
    """Small tiles for small blocks; the default tiles (64) for B >= 16 (keeps the interpreter fast)."""
    return SMALL if B <= 8 else None


def _qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g).to(DEV, dtype) for s in
                 ((b, hq, lq, d), (b, hkv, lk, d), (b, hkv, lk, d)))


def _left_padded(width, pads):
    """``[len(pads), width]`` bool validity of left-padded prompts."""
    return torch.arange(width, device=DEV)[None, :] >= torch.tensor(pads, device=DEV)[:, None]


def _rel(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _check_fwd(spec, q, k, v, *, config=SMALL, tol=1e-5, mask=None):
    """Forward vs the float64 reference; relative L2 error <= tol."""
    out = ta.block_attention(q, k, v, layout=spec, mask=mask, config=config)
    ref = attention_reference(q, k, v, layout=spec, mask=mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert _rel(out, ref) <= tol


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_decode_block_against_cache(d, B):
    """Current block (B queries) vs ragged left-padded cache + block, GQA 4:2, with and without split-K."""
    ctx = 2 * B + 7  # committed cache length (not a tile multiple)
    spec = AttentionLayout(B, kv_start=torch.tensor([0, 5, ctx - 1], device=DEV))
    q, k, v = _qkv(3, 4, 2, B, ctx + B, d, seed=B)
    ref = attention_reference(q, k, v, layout=spec)
    for splits in (1, 3):
        out = ta.block_attention(q, k, v, layout=spec, num_splits=splits, config=_tiles(B))
        assert out.shape == q.shape and out.dtype == q.dtype
        assert _rel(out, ref) <= 1e-5, splits


def test_decode_mqa_and_lse():
    """8 query heads on 1 kv head (MQA), natural-log LSE returned for the merged splits."""
    spec = AttentionLayout(4, kv_start=torch.tensor([3, 30], device=DEV))
    q, k, v = _qkv(2, 8, 1, 4, 64, 64, seed=11)
    out1, lse1 = ta.block_attention(q, k, v, layout=spec, num_splits=1, return_lse=True)
    out3, lse3 = ta.block_attention(q, k, v, layout=spec, num_splits=3, config=SMALL, return_lse=True)
    m = spec.dense(2, 4, 64, DEV)
    s = torch.einsum("bhqd,bkd->bhqk", q.double(), k[:, 0].double()) * 64 ** -0.5
    ref_lse = torch.logsumexp(s.masked_fill(~m, float("-inf")), -1)
    torch.testing.assert_close(lse1.double(), ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse3.double(), ref_lse, atol=1e-5, rtol=1e-5)
    assert _rel(out1, out3) <= 1e-5


def test_non_contiguous_inputs_and_block_origin():
    """transformers hands over [b, L, H, D] tensors transposed to [b, H, L, D]; blocks aligned at 2 (mod 4)."""
    b, L, hq, hkv, d = 2, 22, 4, 2, 64
    g = torch.Generator().manual_seed(5)
    qs = torch.randn(b, L, hq, d, generator=g).to(DEV).transpose(1, 2)
    ks = torch.randn(b, L, hkv, d, generator=g).to(DEV).transpose(1, 2)
    vs = torch.randn(b, L, hkv, d, generator=g).to(DEV).transpose(1, 2)
    spec = AttentionLayout(4, block_origin=2, kv_start=torch.tensor([1, 0], device=DEV))
    out = ta.block_attention(qs, ks, vs, layout=spec, config=SMALL)
    assert _rel(out, attention_reference(qs, ks, vs, layout=spec)) <= 1e-5


# ----------------------------------------------------------------------------- prefill, dense-mask layouts


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_prefill_block_causal(d, B):
    """Pad rows included: a pad query sees its own column (the layout's pad rule), in the kernel too."""
    spec = AttentionLayout(B, kv_start=torch.tensor([B // 2 + 1, 0], device=DEV))
    T = 2 * B + 3
    _check_fwd(spec, *_qkv(2, 4, 2, T, T, d, seed=B + d), config=_tiles(B))


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_staircase_layout_reads_its_dense_mask(d, B):
    """[prompt ; clean ; masked copy] (copy segments: no row bounds) runs on the dense-mask path."""
    P, L = (2 * B, 2 * B) if B <= 8 else (B, 2 * B)
    spec = AttentionLayout.staircase(_left_padded(P, [B // 2 + 1, 0]), L, B)
    assert spec.kernel_params(P + 2 * L, P + 2 * L) is None
    _check_fwd(spec, *_qkv(2, 4, 2, P + 2 * L, P + 2 * L, d, seed=3 * B + d), config=_tiles(B))


def test_staircase_default_tiles_and_partial_blocks():
    """Default (larger) tiles, a prompt that is not a block multiple, 2 query heads per kv head."""
    spec = AttentionLayout.staircase(_left_padded(9, [0, 6]), 12, 4)
    _check_fwd(spec, *_qkv(2, 4, 2, 9 + 24, 9 + 24, 64, seed=7), config=None)


def test_dense_mask_path():
    """Arbitrary boolean masks (rows with no key -> 0), alone and intersected with a spec."""
    q, k, v = _qkv(2, 4, 2, 10, 30, 64, seed=9)
    dense = (torch.rand(2, 1, 10, 30, generator=torch.Generator().manual_seed(1)) > 0.5).to(DEV)
    dense[1, 0, 4] = False
    out = ta.block_attention(q, k, v, mask=dense, config=SMALL)
    assert out[1, :, 4].abs().max() == 0
    _check_fwd(None, q, k, v, mask=dense)
    _check_fwd(AttentionLayout(4, kv_start=torch.tensor([2, 9], device=DEV)), q, k, v, mask=dense)


def test_causal_is_block_size_one():
    q, k, v = _qkv(1, 4, 2, 20, 20, 64, seed=12)
    out = ta.block_attention(q, k, v, layout=AttentionLayout(1), config=SMALL)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                                           v.double().repeat_interleave(2, 1), is_causal=True)
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("layout", ["decode", "staircase"])
def test_bf16(layout):
    """bf16 inputs (on the interpreter the dot operands are upcast; probabilities still round to bf16)."""
    if layout == "decode":
        spec = AttentionLayout(8, kv_start=torch.tensor([1, 4], device=DEV))
        q, k, v = _qkv(2, 4, 2, 8, 40, 128, dtype=torch.bfloat16, seed=21)
        out = ta.block_attention(q, k, v, layout=spec, num_splits=2, config=SMALL)
        assert out.dtype == torch.bfloat16
        assert _rel(out, attention_reference(q, k, v, layout=spec)) <= 1e-2
    else:
        spec = AttentionLayout.staircase(_left_padded(8, [3, 0]), 8, 4)
        _check_fwd(spec, *_qkv(2, 4, 2, 24, 24, 64, dtype=torch.bfloat16, seed=22), tol=1e-2)


def test_dispatch_reaches_triton():
    spec = AttentionLayout.staircase(_left_padded(4, [0]), 4, 4)
    q, k, v = _qkv(1, 2, 1, 12, 12, 64, seed=31)
    out = attention(q, k, v, layout=spec, backend="triton")
    assert _rel(out, attention_reference(q, k, v, layout=spec)) <= 1e-5


def test_no_backward():
    """Inference kernels: asking for a gradient is refused with one clear error."""
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 1, 8, 8, 64, seed=32))
    with pytest.raises(RuntimeError, match="no backward"):
        ta.block_attention(q, k, v, layout=AttentionLayout(4))


# ----------------------------------------------------------------------------- row bounds vs the predicate


@triton.jit
def _visibility_kernel(OUT, KV_START, q_len, kv_len, q_offset, block_size, origin_mod,
                       BQ: tl.constexpr, BK: tl.constexpr):
    """Writes the kernels' own [q_len, kv_len] visibility (``_row_bounds`` + ``_visible``) of row b."""
    b = tl.program_id(0)
    tok = tl.arange(0, BQ)
    qpos = q_offset + tok
    kpos = tl.arange(0, BK)
    bound = ta._row_bounds(qpos, tok < q_len, kv_len, block_size, origin_mod)
    vis = ta._visible(kpos, kpos < kv_len, tl.load(KV_START + b), bound, qpos, OUT, 0, False)
    tl.store(OUT + b * BQ * BK + tok[:, None] * BK + kpos[None, :], vis.to(tl.int8))


def test_kernel_row_bounds_equal_the_predicate_exhaustively():
    """For every small block-causal / full / causal layout with left pads and queries at the end, the
    visibility the Triton kernels compute equals AttentionLayout.dense (the predicate) element by element."""
    checked = 0
    for B in (None, 1, 2, 3, 4):
        for origin in (0, 1, 2):
            for kv_len in range(1, 10):
                kv_start = torch.tensor([0, kv_len // 2, kv_len - 1], device=DEV)
                lay = AttentionLayout(B, kv_start=kv_start, block_origin=origin)
                for q_len in range(1, kv_len + 1):
                    kp = lay.kernel_params(q_len, kv_len)
                    out = torch.zeros(3, 16, 16, dtype=torch.int8, device=DEV)
                    _visibility_kernel[(3,)](out, lay.kv_start_for(3, DEV), q_len, kv_len, kp.q_offset,
                                             kp.block_size, kp.origin_mod, BQ=16, BK=16)
                    got = out[:, :q_len, :kv_len].bool()
                    assert torch.equal(got, lay.dense(3, q_len, kv_len, DEV)[:, 0]), (B, origin, kv_len, q_len)
                    checked += 1
    assert checked == 5 * 3 * 45


# ----------------------------------------------------------------------------- model level


def test_transformers_forward_with_triton_backend():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    names = register_transformers_attention()
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    m = Qwen3ForCausalLM(cfg).eval().to(DEV)
    B, L, lens = 4, 8, [5, 8]
    pb = blocks.left_pad_prompts([[3] * n for n in lens], B, 0, DEV)
    ids = torch.cat([pb.input_ids, torch.randint(0, 64, (2, L), generator=torch.Generator().manual_seed(0)).to(DEV)], 1)
    kv = torch.cat([pb.valid, torch.ones(2, L, dtype=torch.bool, device=DEV)], 1)
    pos = torch.cat([pb.position_ids, blocks.response_position_ids(pb.prompt_lens, L, DEV)], 1)
    with torch.no_grad():
        m.set_attn_implementation("sdpa")
        spec = AttentionLayout(B, kv_start=left_pads(pb.valid))
        ref = m(ids, attention_mask=spec.dense(2, ids.shape[1], ids.shape[1], DEV), position_ids=pos).logits
        m.set_attn_implementation(names["triton"])
        out = m(ids, position_ids=pos, attention_layout=spec).logits
    torch.testing.assert_close(out[kv], ref[kv], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache_mode,B", [("exact", 4), ("none", 8)])
def test_sampler_greedy_tokens_triton_equal_sdpa(cache_mode, B):
    """block-static greedy decoding on tiny-block-dlm (fp32): the Triton backend gives the same tokens."""
    try:
        from dllm_bench.models import load_model
        from dllm_bench.samplers.block import BlockStatic
    except ImportError as exc:  # the models / samplers layer is not in this checkout yet
        pytest.skip(f"models / block samplers not importable: {exc}")
    prompts = [[5, 9, 17], list(range(30, 41))]
    tokens = {}
    for backend in ("sdpa", "triton"):
        model = load_model("tiny-block-dlm", block_size=B, device=str(DEV), dtype="float32")
        sampler = BlockStatic(BlockStatic.Config(attention_backend=backend, max_new_tokens=12, block_size=B,
                                                   cache_mode=cache_mode))
        tokens[backend] = [g.raw_token_ids for g in sampler.generate(model, prompts, seed=0)]
    assert all(len(t) >= 12 for t in tokens["sdpa"])  # whole blocks
    assert tokens["triton"] == tokens["sdpa"]
