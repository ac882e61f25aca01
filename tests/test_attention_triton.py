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

from dllm_bench import blocks  # noqa: E402
from dllm_bench.samplers import triton_attention as ta  # noqa: E402
from dllm_bench.samplers.attention import (  # noqa: E402
    BlockAttentionSpec,
    attention,
    attention_reference,
    register_transformers_attention,
)

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


def _rel(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _check_fwd_bwd(spec, q, k, v, *, config=SMALL, tol=1e-5, mask=None):
    """Forward and (q, k, v) gradients vs the float64 reference; relative L2 error <= tol."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = ta.block_attention(q, k, v, spec=spec, mask=mask, config=config)
    do = torch.randn_like(out)
    out.backward(do)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(qr, kr, vr, spec=spec, mask=mask)
    ref.backward(do.double())
    assert _rel(out, ref) <= tol
    for name, a, r in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
        assert _rel(a.grad, r.grad) <= tol * 4, name


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_decode_block_against_cache(d, B):
    """Current block (B queries) vs ragged left-padded cache + block, GQA 4:2, with and without split-K."""
    ctx = 2 * B + 7  # committed cache length (not a tile multiple)
    spec = BlockAttentionSpec(B, kv_start=torch.tensor([0, 5, ctx - 1], device=DEV))
    q, k, v = _qkv(3, 4, 2, B, ctx + B, d, seed=B)
    ref = attention_reference(q, k, v, spec=spec)
    for splits in (1, 3):
        out = ta.block_attention(q, k, v, spec=spec, num_splits=splits, config=_tiles(B))
        assert out.shape == q.shape and out.dtype == q.dtype
        assert _rel(out, ref) <= 1e-5, splits


def test_decode_mqa_and_lse():
    """8 query heads on 1 kv head (MQA), natural-log LSE returned for the merged splits."""
    spec = BlockAttentionSpec(4, kv_start=torch.tensor([3, 30], device=DEV))
    q, k, v = _qkv(2, 8, 1, 4, 64, 64, seed=11)
    out1, lse1 = ta.block_attention(q, k, v, spec=spec, num_splits=1, return_lse=True)
    out3, lse3 = ta.block_attention(q, k, v, spec=spec, num_splits=3, config=SMALL, return_lse=True)
    from dllm_bench.samplers.attention import block_attention_mask

    m = block_attention_mask(spec, 2, 4, 64, DEV)
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
    spec = BlockAttentionSpec(4, block_origin=2, kv_start=torch.tensor([1, 0], device=DEV))
    out = ta.block_attention(qs, ks, vs, spec=spec, config=SMALL)
    assert _rel(out, attention_reference(qs, ks, vs, spec=spec)) <= 1e-5


# ----------------------------------------------------------------------------- prefill / training


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_prefill_block_causal_fwd_bwd(d, B):
    spec = BlockAttentionSpec(B, kv_start=torch.tensor([B // 2 + 1, 0], device=DEV))
    T = 2 * B + 3
    _check_fwd_bwd(spec, *_qkv(2, 4, 2, T, T, d, seed=B + d), config=_tiles(B))


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B", [4, 8, 16, 32])
def test_staircase_training_fwd_bwd(d, B):
    """[prompt ; clean ; masked copy] with ragged left-padded prompts, GQA 4:2."""
    P, L = (2 * B, 2 * B) if B <= 8 else (B, 2 * B)
    spec = BlockAttentionSpec(B, kv_start=torch.tensor([B // 2 + 1, 0], device=DEV), copy_len=L)
    _check_fwd_bwd(spec, *_qkv(2, 4, 2, P + 2 * L, P + 2 * L, d, seed=3 * B + d), config=_tiles(B))


def test_staircase_default_tiles_and_partial_blocks():
    """Default (larger) tiles, a prompt that is not a block multiple, 2 query heads per kv head."""
    spec = BlockAttentionSpec(4, kv_start=torch.tensor([0, 6], device=DEV), copy_len=12)
    _check_fwd_bwd(spec, *_qkv(2, 4, 2, 9 + 24, 9 + 24, 64, seed=7), config=None)


def test_dense_mask_path_fwd_bwd():
    """Arbitrary boolean masks (rows with no key -> 0), alone and intersected with a spec."""
    q, k, v = _qkv(2, 4, 2, 10, 30, 64, seed=9)
    dense = (torch.rand(2, 1, 10, 30, generator=torch.Generator().manual_seed(1)) > 0.5).to(DEV)
    dense[1, 0, 4] = False
    out = ta.block_attention(q, k, v, mask=dense, config=SMALL)
    assert out[1, :, 4].abs().max() == 0
    _check_fwd_bwd(None, q, k, v, mask=dense)
    _check_fwd_bwd(BlockAttentionSpec(4, kv_start=torch.tensor([2, 9], device=DEV)), q, k, v, mask=dense)


def test_causal_is_block_size_one():
    q, k, v = _qkv(1, 4, 2, 20, 20, 64, seed=12)
    out = ta.block_attention(q, k, v, spec=BlockAttentionSpec(1), config=SMALL)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1),
                                                           v.double().repeat_interleave(2, 1), is_causal=True)
    assert _rel(out, ref) <= 1e-5


@pytest.mark.parametrize("layout", ["decode", "staircase"])
def test_bf16(layout):
    """bf16 inputs (on the interpreter the dot operands are upcast; probabilities still round to bf16)."""
    if layout == "decode":
        spec = BlockAttentionSpec(8, kv_start=torch.tensor([1, 4], device=DEV))
        q, k, v = _qkv(2, 4, 2, 8, 40, 128, dtype=torch.bfloat16, seed=21)
        out = ta.block_attention(q, k, v, spec=spec, num_splits=2, config=SMALL)
        assert out.dtype == torch.bfloat16
        assert _rel(out, attention_reference(q, k, v, spec=spec)) <= 1e-2
    else:
        spec = BlockAttentionSpec(4, kv_start=torch.tensor([3, 0], device=DEV), copy_len=8)
        _check_fwd_bwd(spec, *_qkv(2, 4, 2, 24, 24, 64, dtype=torch.bfloat16, seed=22), tol=1e-2)


def test_dispatch_reaches_triton():
    spec = BlockAttentionSpec(4, copy_len=4)
    q, k, v = _qkv(1, 2, 1, 12, 12, 64, seed=31)
    out = attention(q, k, v, spec=spec, backend="triton")
    assert _rel(out, attention_reference(q, k, v, spec=spec)) <= 1e-5


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
        ref = m(ids, attention_mask=blocks.block_causal_mask(kv, B), position_ids=pos).logits
        m.set_attn_implementation(names["triton"])
        spec = BlockAttentionSpec.from_prompt_lens(lens, pb.padded_len, B)
        out = m(ids, position_ids=pos, block_attention=spec).logits
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
