"""Released LLaDA / Dream / SDAR layouts load natively and match reference forwards.

The reference forwards below are plain torch written from reading the released modeling code
(not imported, not copied):

* LLaDA: ``llada/model/modeling_llada.py`` of NVlabs/Fast-dLLM @ 24cc59e (``LLaDALlamaBlock``,
  ``RMSLayerNorm``, ``RotaryEmbedding``, ``LLaDAModel.forward``), identical in that math to
  ``models/llada/modeling_llada.py`` of Gen-Verse/dLLM-RL @ 10b4fd1;
* Dream: ``dream/model/modeling_dream.py`` of NVlabs/Fast-dLLM @ 24cc59e (Qwen2 math, no causal
  mask, logits at i predict token i+1);
* SDAR: ``models/sdar/modeling_sdar.py`` of Gen-Verse/dLLM-RL @ 10b4fd1 (Qwen3 math, per-head q/k
  RMSNorm, block-causal mask).

Each reads the fixture's weights by their *released* names from the safetensors shards, so the
name mapping of :mod:`dllm_bench.native` is checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllm_bench.blocks import left_pad_prompts
from dllm_bench.errors import BadInputError
from dllm_bench.models import load_model
from dllm_bench.models.layout import AttentionLayout, left_pads
from refckpt import build_dream, build_llada, build_sdar, special_ids

FAST_DLLM = Path("/work/.mirror/NVlabs+Fast-dLLM/repo")
FAST_DLLM_COMMIT = "24cc59e"


# ------------------------------------------------------------------ reference building blocks
def released_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint by their stored names (sharded via the index, as released)."""
    from safetensors.torch import load_file

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(ckpt / shard)))
    return {k: v.float() for k, v in out.items()}


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``w * x / sqrt(mean(x^2) + eps)`` over the last dim, normalised in float32."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotary(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate the two halves of each head: ``x1 cos - x2 sin | x2 cos + x1 sin`` with angle
    ``pos * theta^(-2i/d)``. x ``[b, h, t, d]``, pos ``[b, t]``."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos.float()[:, None, :, None] * inv
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), keys not ``allowed`` excluded) v; K/V heads repeated per query group.
    q ``[b, h, t, d]``, k/v ``[b, h_kv, t, d]``, allowed ``[b, 1, t, t]`` bool -> ``[b, t, h*d]``."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    out = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n, -1).transpose(1, 2)


def llada_reference(ckpt: Path, ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """LLaDAModel.forward with block_type 'llama' (reading of modeling_llada.py): positions are
    0..T-1 (the released rotary uses the absolute index), attention limited by ``allowed``."""
    c = json.loads((ckpt / "config.json").read_text())
    w = released_weights(ckpt)
    eps, theta, nh = c["rms_norm_eps"], c["rope_theta"], c["n_heads"]
    nkv = c["n_kv_heads"] or nh
    act = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu}[c["activation_type"]]
    b, t = ids.shape
    pos = torch.arange(t).expand(b, t)
    x = w["model.transformer.wte.weight"][ids]
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        n = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = rotary(heads(n @ w[p + "q_proj.weight"].T, nh), pos, theta)
        k = rotary(heads(n @ w[p + "k_proj.weight"].T, nkv), pos, theta)
        v = heads(n @ w[p + "v_proj.weight"].T, nkv)
        x = x + attention(q, k, v, allowed) @ w[p + "attn_out.weight"].T
        m = rms_norm(x, w[p + "ff_norm.weight"], eps)
        gated = act(m @ w[p + "ff_proj.weight"].T) * (m @ w[p + "up_proj.weight"].T)  # ff_proj is the gate
        x = x + gated @ w[p + "ff_out.weight"].T
    x = rms_norm(x, w["model.transformer.ln_f.weight"], eps)
    out = w["model.transformer.wte.weight"] if c["weight_tying"] else w["model.transformer.ff_out.weight"]
    return x @ out.T


def qwen_reference(ckpt: Path, ids: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """DreamModel (Qwen2: q/k/v biases) / SDARForCausalLM (Qwen3: per-head q/k RMSNorm) forward,
    unshifted logits, attention limited by ``allowed``, rotary at ``pos``."""
    c = json.loads((ckpt / "config.json").read_text())
    w = released_weights(ckpt)
    eps, theta, nh, nkv = c["rms_norm_eps"], c["rope_theta"], c["num_attention_heads"], c["num_key_value_heads"]

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q, k = heads(lin(n, p + "self_attn.q_proj"), nh), heads(lin(n, p + "self_attn.k_proj"), nkv)
        if p + "self_attn.q_norm.weight" in w:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rotary(q, pos, theta), rotary(k, pos, theta)
        v = heads(lin(n, p + "self_attn.v_proj"), nkv)
        x = x + lin(attention(q, k, v, allowed), p + "self_attn.o_proj")
        m = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gated = torch.nn.functional.silu(lin(m, p + "mlp.gate_proj")) * lin(m, p + "mlp.up_proj")
        x = x + lin(gated, p + "mlp.down_proj")
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """Full attention over real keys: ``[b, 1, t, t]`` bool."""
    b, t = valid.shape
    return valid[:, None, None, :].expand(b, 1, t, t)


def padded_batch(pad_id: int):
    torch.manual_seed(0)
    seqs = [torch.randint(0, 280, (n,)).tolist() for n in (11, 5)]
    return seqs, left_pad_prompts(seqs, 1, pad_id)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return {"llada": build_llada(root), "dream": build_dream(root), "sdar": build_sdar(root)}


@pytest.fixture
def no_einops(monkeypatch):
    """``import einops`` fails (the released LLaDA code needs it; the native path must not)."""
    monkeypatch.setitem(sys.modules, "einops", None)


# ------------------------------------------------------------------ LLaDA
@pytest.mark.parametrize("n_kv_heads,weight_tying", [(None, False), (2, True)])  # released: MHA, untied
def test_llada_loads_natively_and_matches_reference_forward(tmp_path, no_einops, n_kv_heads, weight_tying):
    """Released LLaDA layout -> LlamaForCausalLM, no remote code, no einops; logits equal the
    reference forward with and without left pads (pads masked, real positions independent of
    padding); full-diffusion, unshifted, mask/EOS/pad ids from the checkpoint's files."""
    ck = build_llada(tmp_path, n_kv_heads=n_kv_heads, weight_tying=weight_tying)
    m = load_model(str(ck), dtype="float32")
    ids = special_ids(ck)
    assert type(m.model).__name__ == "LlamaForCausalLM" and m.supports_cache
    assert m.model.get_input_embeddings().padding_idx is None  # as LLaDA's wte: the pad row trains too
    assert (m.family, m.logits_shift, m.block_size) == ("full-diffusion", False, 32)
    assert m.mask_token_id == ids["<|mdm_mask|>"] == json.loads((ck / "config.json").read_text())["mask_token_id"]
    assert m.pad_token_id == ids["<|endoftext|>"] and m.eos_token_id == ids["<|endoftext|>"]
    assert ids["<|eot_id|>"] in m.eos_token_ids
    assert m.tokenizer.apply_chat_template([{"role": "user", "content": " 2+3= "}], tokenize=False,
                                           add_generation_prompt=True) == \
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n2+3=<|eot_id|>" \
        "<|start_header_id|>assistant<|end_header_id|>\n\n"

    x = torch.randint(0, 280, (2, 9))
    with torch.no_grad():
        ours = m.forward(x)
    ref = llada_reference(ck, x, key_mask(torch.ones_like(x, dtype=torch.bool)))
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)

    seqs, pb = padded_batch(m.pad_token_id)
    with torch.no_grad():
        both = m.forward(pb.input_ids, AttentionLayout(None, kv_start=left_pads(pb.valid)), pb.position_ids)
        alone = m.forward(torch.tensor([seqs[1]]))
    ref_pad = llada_reference(ck, pb.input_ids, key_mask(pb.valid))
    real = pb.valid
    assert torch.allclose(both[real], ref_pad[real], atol=1e-5, rtol=1e-5)
    assert torch.allclose(both[1, -len(seqs[1]):], alone[0], atol=1e-5, rtol=1e-5)
    attended_pads = llada_reference(ck, pb.input_ids, key_mask(torch.ones_like(pb.valid)))
    assert not torch.allclose(attended_pads[1, -len(seqs[1]):], alone[0], atol=1e-2)  # the test can fail


def test_llada_native_model_drives_the_slot_cache(tmp_path):
    """Natively loaded LLaDA takes our KV cache: a window forward over [s, T) reading the cached
    prefix equals the uncached full-attention forward (what Fast-dLLM prefix caching relies on)."""
    m = load_model(str(build_llada(tmp_path)), dtype="float32")
    _, pb = padded_batch(m.pad_token_id)
    x, valid, pos, T, s = pb.input_ids, pb.valid, pb.position_ids, pb.padded_len, 6
    with torch.no_grad():
        full_attention = AttentionLayout(None, kv_start=left_pads(valid))  # queries: the last key columns
        full = m.forward(x, full_attention, pos)
        cache = m.new_cache(2, T)
        m.forward(x, full_attention, pos, cache.window(0))
        part = m.forward(x[:, s:], full_attention, pos[:, s:],
                         cache.window(s, T))
    assert torch.allclose(part, full[:, s:], atol=1e-5)


def test_llada_native_model_saves_and_reloads(tmp_path):
    """A natively loaded LLaDA saved by the adapter reloads (Llama layout + sidecar) with equal logits."""
    m = load_model(str(build_llada(tmp_path)), dtype="float32")
    back = load_model(str(m.save(tmp_path / "saved")), dtype="float32")
    assert (back.family, back.mask_token_id, back.eos_token_ids) == (m.family, m.mask_token_id, m.eos_token_ids)
    x = torch.randint(0, 280, (1, 7))
    with torch.no_grad():
        assert torch.allclose(back.forward(x), m.forward(x), atol=1e-6)


@pytest.mark.parametrize("field,value", [("include_bias", True), ("block_type", "sequential"),
                                         ("activation_type", "swiglu"), ("layer_norm_type", "gemma_rms"),
                                         ("scale_logits", True), ("attention_layer_norm", True),
                                         ("input_emb_norm", True), ("block_group_size", 2), ("alibi", True)])
def test_llada_options_llama_cannot_express_are_refused(tmp_path, field, value):
    ck = build_llada(tmp_path, **{field: value})
    with pytest.raises(BadInputError, match=f"LLaDA config {field}="):
        load_model(str(ck), dtype="float32")


def test_llada_unknown_weight_name_is_refused(tmp_path):
    from safetensors.torch import save_file

    ck = build_llada(tmp_path)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    save_file({"model.transformer.blocks.0.att_proj.weight": torch.zeros(4, 4)}, str(ck / "extra.safetensors"))
    index["weight_map"]["model.transformer.blocks.0.att_proj.weight"] = "extra.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BadInputError, match="att_proj.weight' has no LlamaForCausalLM equivalent"):
        load_model(str(ck), dtype="float32")


# ------------------------------------------------------------------ Dream
def test_dream_released_layout_loads_natively_and_matches_reference(ckpts, no_einops):
    """DreamConfig + auto_map without a causal-LM class + DreamTokenizer -> Qwen2ForCausalLM and a
    stock Qwen2Tokenizer; logits equal the Qwen2-math reference (pads masked, positions skip
    pads as Dream's generate does); logits_shift; mask/EOS from the files."""
    ck = ckpts["dream"]
    m = load_model(str(ck), dtype="float32")
    ids = special_ids(ck)
    assert type(m.model).__name__ == "Qwen2ForCausalLM" and type(m.tokenizer).__name__ == "Qwen2Tokenizer"
    assert (m.family, m.logits_shift) == ("full-diffusion", True)
    assert m.mask_token_id == ids["<|mask|>"] and m.pad_token_id == ids["<|endoftext|>"]
    assert m.eos_token_ids == (ids["<|endoftext|>"], ids["<|im_end|>"])
    assert m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True) == \
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
        "<|im_start|>assistant\n"
    seqs, pb = padded_batch(m.pad_token_id)
    with torch.no_grad():
        both = m.forward(pb.input_ids, AttentionLayout(None, kv_start=left_pads(pb.valid)), pb.position_ids)
        alone = m.forward(torch.tensor([seqs[1]]))
    ref = qwen_reference(ck, pb.input_ids, pb.position_ids, key_mask(pb.valid))
    assert torch.allclose(both[pb.valid], ref[pb.valid], atol=1e-5, rtol=1e-5)
    assert torch.allclose(both[1, -len(seqs[1]):], alone[0], atol=1e-5, rtol=1e-5)


DREAM_TEXTS = ["<|im_start|>the cat is on<|mask|> <|beginoftext|>", "Héllo wörld\n\n  x", "e\u0301 café",
               "12345 + 6 = 7", "<tool_call>x</tool_call>", "a<|im_end|>\n<|endoftext|><|endoftext|>", "  leading",
               "\t\ttabs\r\n", "中文 テスト 🙂", "it's I'll WE'RE", "the  cat\n\n\nis"]


def test_dream_tokenizer_ids_from_the_algorithm(ckpts):
    """Expected ids worked out by hand from tokenization_dream.py's algorithm (NFC, Qwen2 split
    regex, byte-level alphabet, lowest-rank merge first, added tokens never split) over the
    fixture vocabulary: bytes are ids 0..255, merge r is id 256 + r."""
    m = load_model(str(ckpts["dream"]), dtype="float32")
    ids = special_ids(ckpts["dream"])
    # "the": t + he (merge 1); " cat": Ġ c at (merge 10) -> Ġc (12) -> Ġcat (16); " is": is (13) wins
    # over Ġi (17), so Ġ + is; " on": on (6); then <|mask|>, " " (byte 32), <|beginoftext|>
    assert m.encode(DREAM_TEXTS[0]) == [ids["<|im_start|>"], ord("t"), 257, 272, 32, 269, 32, 262, ids["<|mask|>"],
                                        32, ids["<|beginoftext|>"]]
    assert m.encode("e\u0301") == [0xC3, 0xA9]  # NFC: e + combining acute -> é, UTF-8 bytes c3 a9


def _reference_dream_tokenizer_class(tmp_path: Path):
    """DreamTokenizer from the Fast-dLLM mirror, written to tmp_path and imported for this test only."""
    if shutil.which("git") is None or not FAST_DLLM.is_dir():
        pytest.skip("reference mirror NVlabs/Fast-dLLM not available")
    src = subprocess.run(["git", "-C", str(FAST_DLLM), "show", f"{FAST_DLLM_COMMIT}:dream/model/tokenization_dream.py"],
                         capture_output=True, text=True)
    if src.returncode != 0:
        pytest.skip(f"cannot read the reference tokenizer: {src.stderr.strip()}")
    f = tmp_path / "reference_tokenization_dream.py"
    f.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location("reference_tokenization_dream", f)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as exc:
        pytest.skip(f"reference DreamTokenizer does not import here: {exc}")
    return mod.DreamTokenizer


def test_dream_tokenizer_matches_reference_dream_tokenizer(ckpts, tmp_path):
    ref = _reference_dream_tokenizer_class(tmp_path).from_pretrained(str(ckpts["dream"]))
    tok = load_model(str(ckpts["dream"]), dtype="float32").tokenizer
    assert len(tok) == len(ref)
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id", "mask_token_id"):
        assert getattr(tok, attr) == getattr(ref, attr), attr
    for text in DREAM_TEXTS:
        a, b = tok(text, add_special_tokens=False).input_ids, ref(text, add_special_tokens=False).input_ids
        assert a == b, text
        assert tok(text).input_ids == ref(text).input_ids
        assert tok.decode(a) == ref.decode(b)
        assert tok.decode(a, skip_special_tokens=True) == ref.decode(b, skip_special_tokens=True)
    chat = [{"role": "user", "content": DREAM_TEXTS[1]}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == \
        ref.apply_chat_template(chat, add_generation_prompt=True)


def test_dream_sliding_window_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="use_sliding_window=true is not supported"):
        load_model(str(build_dream(tmp_path, use_sliding_window=True, sliding_window=4)), dtype="float32")


# ------------------------------------------------------------------ SDAR / TraDo
def test_sdar_matches_reference_with_block_causal_mask(ckpts, no_einops):
    ck = ckpts["sdar"]
    m = load_model(str(ck), dtype="float32")
    ids = special_ids(ck)
    assert type(m.model).__name__ == "Qwen3ForCausalLM" and m.family == "block-diffusion" and not m.logits_shift
    assert (m.block_size, m.mask_token_id) == (4, ids["<|MASK|>"])
    assert m.eos_token_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    seqs, pb = padded_batch(m.pad_token_id)
    pb = left_pad_prompts(seqs, 4, m.pad_token_id)
    layout = AttentionLayout(4, kv_start=left_pads(pb.valid))
    mask = layout.dense(*pb.input_ids.shape, pb.input_ids.shape[1])
    with torch.no_grad():
        ours = m.forward(pb.input_ids, layout, pb.position_ids)
    ref = qwen_reference(ck, pb.input_ids, pb.position_ids, mask)
    assert torch.allclose(ours[pb.valid], ref[pb.valid], atol=1e-5, rtol=1e-5)


def test_checkpoint_declared_block_size_is_the_default_and_args_override(tmp_path):
    """config.json ``block_size: 8`` -> adapter.block_size 8; an explicit model arg still wins."""
    ck = build_sdar(tmp_path, block_size=8, name="TraDo-4B-Instruct")
    assert load_model(str(ck), dtype="float32").block_size == 8
    assert load_model(str(ck), dtype="float32", block_size=2).block_size == 2
    assert load_model(str(build_sdar(tmp_path, block_size=None, name="sdar-nb")), dtype="float32").block_size == 4
    bad = build_sdar(tmp_path, block_size=0, name="sdar-bad")
    with pytest.raises(BadInputError, match="block_size 0 is not a positive integer"):
        load_model(str(bad), dtype="float32")


def test_checkpoint_declared_mask_id_is_the_default_and_args_override(tmp_path):
    ck = build_llada(tmp_path)
    ids = special_ids(ck)
    assert load_model(str(ck), dtype="float32").mask_token_id == ids["<|mdm_mask|>"]
    assert load_model(str(ck), dtype="float32", mask_token="<|eot_id|>").mask_token_id == ids["<|eot_id|>"]
    cfg = json.loads((ck / "config.json").read_text())
    cfg["mask_token_id"] = 10_000
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match="mask token id 10000 is outside the model's 320 embeddings"):
        load_model(str(ck), dtype="float32")


def test_shipped_code_is_never_executed(ckpts):
    """The fixtures' modeling/config/tokenizer modules raise on import: loading works without them."""
    for ck in ckpts.values():
        shipped = sorted(p.name for p in ck.glob("*.py"))
        assert shipped and all("raise ImportError" in (ck / n).read_text() for n in shipped)
        load_model(str(ck), dtype="float32")
        assert not [name for name in sys.modules if Path(name).stem in [Path(n).stem for n in shipped]]
