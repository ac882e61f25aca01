"""Block-diffusion attention: mask semantics and the sdpa / flex backends against the reference.

The Triton kernels are tested in ``test_attention_triton.py`` (CPU interpreter).
"""

from __future__ import annotations

import pytest
import torch

from dllm_bench import blocks
from dllm_bench.errors import BadInputError
from dllm_bench.samplers.attention import (
    BACKENDS,
    TRANSFORMERS_ATTN_NAMES,
    BlockAttentionSpec,
    attention,
    attention_reference,
    block_attention_mask,
    flex_attention,
    register_transformers_attention,
    staircase_attention_mask,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def _qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, lq, d, generator=g, dtype=dtype), torch.randn(b, hkv, lk, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, lk, d, generator=g, dtype=dtype))


# ----------------------------------------------------------------------------- mask semantics


@pytest.mark.parametrize("B", [1, 2, 4, 8])
def test_masks_agree_with_the_block_rule(B):
    """Spec masks == dllm_bench.blocks masks on every real row (decode, prefill, staircase)."""
    lens = [3, 9, 1, 2 * B]
    pb = blocks.left_pad_prompts([[1] * n for n in lens], B, 0)
    P, b = pb.padded_len, len(lens)
    for L in (B, 3 * B):
        spec = BlockAttentionSpec.from_prompt_lens(lens, P, B, copy_len=L)
        ours = block_attention_mask(spec, b, P + 2 * L, P + 2 * L)
        ref = blocks.staircase_mask(pb.valid, L, B)
        real = torch.cat([pb.valid, torch.ones(b, 2 * L, dtype=torch.bool)], 1)[:, None, :, None]
        assert torch.equal(ours & real, ref & real)
    spec = BlockAttentionSpec.from_prompt_lens(lens, P, B)
    for n_blocks in range(3):
        K = P + (n_blocks + 1) * B
        kv = torch.cat([pb.valid, torch.ones(b, (n_blocks + 1) * B, dtype=torch.bool)], 1)
        # decode: the current block's B queries against the cache + block
        assert torch.equal(block_attention_mask(spec, b, B, K), blocks.block_causal_mask(kv, B, q_start=K - B, q_len=B))
        real = kv[:, None, :, None]
        assert torch.equal(block_attention_mask(spec, b, K, K) & real, blocks.block_causal_mask(kv, B) & real)


def test_staircase_by_hand():
    """P=2 (one prompt block), L=4, B=2: columns p0 p1 | c0 c1 c2 c3 | m0 m1 m2 m3."""
    m = staircase_attention_mask(2, 4, 2)[0, 0]
    seen = {i: m[i].nonzero().flatten().tolist() for i in range(10)}
    assert seen[0] == seen[1] == [0, 1]                  # prompt block
    assert seen[2] == seen[3] == [0, 1, 2, 3]            # clean response block 0
    assert seen[4] == seen[5] == [0, 1, 2, 3, 4, 5]      # clean response block 1
    assert seen[6] == seen[7] == [0, 1, 6, 7]            # masked block 0: prompt + itself
    assert seen[8] == seen[9] == [0, 1, 2, 3, 8, 9]      # masked block 1: prompt, clean block 0, itself
    # left padding: one pad column is never a key
    mp = staircase_attention_mask(2, 4, 2, kv_start=torch.tensor([1]))[0, 0]
    assert not mp[:, 0].any() and torch.equal(mp[:, 1:], m[:, 1:])


def test_block_origin_and_prompt_blocks_from_the_response_start():
    # block-causal with blocks starting at columns = 1 (mod 3): [0] [1 2 3] [4 5 6]
    m = block_attention_mask(BlockAttentionSpec(3, block_origin=1), 1, 7, 7)[0, 0]
    assert m[0].nonzero().flatten().tolist() == [0]
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert m[6].nonzero().flatten().tolist() == list(range(7))
    # staircase with a prompt that is not a block multiple: prompt blocks counted back from P
    m = block_attention_mask(BlockAttentionSpec(2, copy_len=2), 1, 7, 7)[0, 0]  # P=3: [0] [1 2] | [3 4] | [5 6]
    assert m[0].nonzero().flatten().tolist() == [0]
    assert m[1].nonzero().flatten().tolist() == [0, 1, 2]
    assert m[5].nonzero().flatten().tolist() == [0, 1, 2, 5, 6]


def test_spec_validation():
    with pytest.raises(ValueError):
        BlockAttentionSpec(0)
    with pytest.raises(ValueError):
        BlockAttentionSpec(4).layout(8, 4)  # q_len > kv_len
    with pytest.raises(ValueError):
        BlockAttentionSpec(4, copy_len=4).layout(8, 12)  # staircase needs q_len == kv_len
    with pytest.raises(ValueError):
        BlockAttentionSpec(4, copy_len=8).layout(12, 12)  # kv_len < 2L
    with pytest.raises(ValueError):
        BlockAttentionSpec(4, kv_start=torch.tensor([0, 1])).kv_start_for(3, torch.device("cpu"))
    with pytest.raises(ValueError):
        BlockAttentionSpec.from_key_valid(torch.tensor([[True, False, True]]), 2)
    spec = BlockAttentionSpec.from_key_valid(torch.tensor([[False, True, True], [True, True, True]]), 2)
    assert spec.kv_start.tolist() == [1, 0]
    with pytest.raises(ValueError):
        BlockAttentionSpec.from_prompt_lens([5], 4, 4)
    with pytest.raises(BadInputError):
        attention(*_qkv(1, 2, 1, 4, 4, 8), spec=BlockAttentionSpec(4), backend="cuda-magic")
    with pytest.raises(ValueError):
        attention(*_qkv(1, 3, 2, 4, 4, 8), spec=BlockAttentionSpec(4))  # 3 heads over 2 kv heads


# ----------------------------------------------------------------------------- backends

CASES = [  # name, spec, q_len, kv_len
    ("decode", BlockAttentionSpec(4, kv_start=torch.tensor([3, 0])), 4, 37),
    ("decode-aligned-no-pad", BlockAttentionSpec(8), 8, 40),
    ("prefill", BlockAttentionSpec(4, kv_start=torch.tensor([5, 0])), 24, 24),
    ("staircase", BlockAttentionSpec(8, kv_start=torch.tensor([2, 7]), copy_len=16), 48, 48),
]


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("d", [64, 128])
def test_backend_matches_reference(backend, case, d):
    _, spec, lq, lk = case
    q, k, v = _qkv(2, 8, 2, lq, lk, d)
    ref = attention_reference(q, k, v, spec=spec)
    out = attention(q, k, v, spec=spec, backend=backend)
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
    spec = BlockAttentionSpec(3, kv_start=torch.tensor([1, 4]))
    ref = attention_reference(q, k, v, spec=spec, mask=dense)
    torch.testing.assert_close(attention(q, k, v, spec=spec, mask=dense, backend=backend).double(), ref,
                               atol=2e-5, rtol=1e-4)


def test_flex_compiled_on_cpu():
    """torch 2.13 compiles FlexAttention for the CPU too (inductor C++ backend)."""
    spec = BlockAttentionSpec(4, kv_start=torch.tensor([2]), copy_len=8)
    q, k, v = _qkv(1, 4, 2, 24, 24, 64, seed=2)
    try:
        out = flex_attention(q, k, v, spec=spec, compiled=True)
    except Exception as exc:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile(flex_attention) unavailable on CPU here: {type(exc).__name__}: {exc}")
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, spec=spec), atol=2e-5, rtol=1e-4)


def test_sdpa_and_flex_gradients_match_reference():
    spec = BlockAttentionSpec(4, kv_start=torch.tensor([1, 3]), copy_len=8)
    q, k, v = (t.requires_grad_() for t in _qkv(2, 4, 2, 24, 24, 64, seed=4))
    do = torch.randn(2, 4, 24, 64)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    attention_reference(qr, kr, vr, spec=spec).backward(do.double())
    attention(q, k, v, spec=spec, backend="sdpa").backward(do)
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
        ref = m(ids, attention_mask=blocks.block_causal_mask(kv, B), position_ids=pos).logits
        m.set_attn_implementation(names[backend])
        spec = BlockAttentionSpec.from_prompt_lens(lens, pb.padded_len, B)
        out = m(ids, position_ids=pos, block_attention=spec).logits
        out_mask = m(ids, attention_mask=blocks.block_causal_mask(kv, B), position_ids=pos).logits  # 4-D mask path
        out_causal = m(ids[:1, 4:]).logits  # no spec, no mask: the module's causal attention
        m.set_attn_implementation("sdpa")
        ref_causal = m(ids[:1, 4:]).logits
    torch.testing.assert_close(out[kv], ref[kv], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_mask[kv], ref[kv], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_causal, ref_causal, atol=1e-5, rtol=1e-4)
