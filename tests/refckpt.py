"""Tiny seeded checkpoints laid out like the released diffusion-LM checkpoints (no hub access).

Each builder writes a directory that a loader sees exactly as it would see the released
checkpoint, only smaller:

* :func:`build_llada` - GSAI-ML/LLaDA-8B-Instruct (and LLaDA-1.5, same layout);
* :func:`build_dream` - Dream-org/Dream-v0-Instruct-7B (and -Base);
* :func:`build_sdar` - JetAstra/SDAR-*-Chat and Gen-Verse/TraDo-*-Instruct (SDAR layout).

**Exactly as released** (read from the reference code named in each builder): the file names,
``config.json`` keys and values (``model_type``, ``architectures``, ``auto_map``, every
architecture switch: norms, eps, rope theta, biases, tying, activation, block type ...),
weight names and shapes as functions of the sizes, sharded safetensors with
``model.safetensors.index.json``, the tokenizer's file set and ``tokenizer_config.json``
keys, the special-token *strings* and their relative order, the chat template.

**Reduced**: sizes (default hidden 64, 2 layers, 4 heads); the vocabulary (256 byte tokens +
a few BPE merges, so the special tokens get small ids: same order as released, smaller
numbers; every id the loader needs is written into ``config.json``,
``generation_config.json`` and the tokenizer files, as in the released ones); the
pre-tokenizer of LLaDA's tokenizer.json (Qwen2-style byte-level BPE here); only the tool-free
branch of the chat templates; 2 weight shards. The ``modeling_*.py`` / ``configuration_*.py``
/ ``tokenization_*.py`` files the released repos ship are present under the released names
but are **placeholders** that raise on import: dllm-bench must never execute them.

Weights are seeded (``seed``): norm weights ``1 + 0.1 N(0,1)``, linear weights
``N(0, 1/fan_in)``, biases ``0.1 N(0,1)``, embeddings ``N(0,1)``, so that a wrong
mapping (swapped gate/up, missing norm, wrong rotary half) changes logits visibly.

Each builder returns the checkpoint directory; :func:`special_ids` reads the ids back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from dllm_bench.models.tokenizer import _bytes_to_unicode

# ------------------------------------------------------------------ vocabulary
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("a", "n"),
           ("r", "e"), ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "c"), ("i", "s"), ("o", "u"), ("Ġ", "w"),
           ("Ġc", "at"), ("Ġ", "i"), ("Ġi", "s"), ("in", "g"), ("Ġ", "o"), ("Ġo", "n"), ("Ċ", "Ċ"),
           ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")]
"""BPE merges of the reduced vocabulary (byte-level alphabet; ``Ġ`` = space, ``Ċ`` = newline)."""

PLACEHOLDER = ('"""Placeholder for the released {name}: dllm-bench loads this checkpoint natively and must '
               'never execute shipped code."""\nraise ImportError("placeholder module {name}: not executable")\n')


def byte_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The reduced regular vocabulary: byte tokens (id = byte value), then one token per merge."""
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    return vocab, list(_MERGES)


def _added(tokens: list[tuple[str, bool]], start: int) -> dict[str, dict[str, Any]]:
    return {str(start + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": special} for i, (t, special) in enumerate(tokens)}


def _padded(n: int) -> int:
    return int(math.ceil(n / 64) * 64)


def _start(root: str | Path, name: str, specials: list[tuple[str, bool]]):
    """The checkpoint directory (created), the reduced vocabulary and merges, the special-token
    ids (after the regular vocabulary, in released order) and the embedding rows (padded to 64)."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = byte_bpe_vocab()
    n = len(vocab)
    ids = {t: n + i for i, (t, _) in enumerate(specials)}
    return d, vocab, merges, ids, _padded(n + len(specials))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_bpe_files(d: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    _write_json(d / "vocab.json", vocab)
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _write_tokenizer_json(d: Path, vocab: dict[str, int], merges: list[tuple[str, str]],
                          added: list[tuple[str, bool]], start: int) -> None:
    """tokenizer.json of a Qwen2-style byte-level BPE: the pipeline (NFC, Qwen2 split regex,
    ByteLevel) of a stock ``transformers.Qwen2Tokenizer`` over the reduced vocabulary, plus
    the added tokens ``added`` from id ``start`` on."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tk = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None, eos_token=None, pad_token=None,
                        bos_token=None).backend_tokenizer
    assert tk.get_vocab_size() == start
    tk.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    tk.save(str(d / "tokenizer.json"))


def _write_placeholders(d: Path, names: list[str]) -> None:
    for name in names:
        (d / name).write_text(PLACEHOLDER.format(name=name), encoding="utf-8")


def _write_sharded(d: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` (as released)."""
    from safetensors.torch import save_file

    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(d / fname), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    _write_json(d / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


class _Init:
    """Seeded tensors for the fixtures (see the module docstring for the distributions)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def linear(self, out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=self.g) / math.sqrt(in_f)

    def norm(self, n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=self.g)

    def bias(self, n: int) -> torch.Tensor:
        return 0.1 * torch.randn(n, generator=self.g)

    def embedding(self, rows: int, dim: int) -> torch.Tensor:
        return torch.randn(rows, dim, generator=self.g)


def special_ids(ckpt: str | Path) -> dict[str, int]:
    """Token string -> id of every added token of a fixture (from its tokenizer files)."""
    d = Path(ckpt)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    return {v["content"]: int(k) for k, v in cfg.get("added_tokens_decoder", {}).items()}


# ------------------------------------------------------------------ LLaDA
LLADA_SPECIALS = [(t, True) for t in ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "<|eot_id|>")]
"""LLaDA-8B-Instruct's special tokens in id order (released ids 126080, 126081, 126336, 126346,
126347, 126348; reference: ML-GSAI/LLaDA generate.py and Gen-Verse/dLLM-RL sample code)."""

LLAMA3_STYLE_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def build_llada(root: str | Path, seed: int = 0, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                n_kv_heads: int | None = None, mlp_hidden_size: int = 160, rope_theta: float = 500000.0,
                rms_norm_eps: float = 1e-5, weight_tying: bool = False, **overrides: Any) -> Path:
    """A tiny LLaDA-8B-Instruct-layout checkpoint in ``root / "llada"``.

    Layout source: ``llada/model/configuration_llada.py`` and ``modeling_llada.py`` of
    NVlabs/Fast-dLLM @ 24cc59e (== ``models/llada`` of Gen-Verse/dLLM-RL @ 10b4fd1): ``config.json``
    with every ``ModelConfig`` field the released 8B config sets (block_type ``llama``,
    activation ``silu``, RMS norm, rope, no biases, ``weight_tying`` false, ...), weights
    ``model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm,
    ff_proj, up_proj, ff_out}, ln_f, ff_out}.weight``; tokenizer.json + tokenizer_config.json
    (``PreTrainedTokenizerFast``, Llama-3-style chat template), generation_config.json.

    Args:
        root: parent directory (created).
        seed: weight seed.
        d_model, n_layers, n_heads, n_kv_heads, mlp_hidden_size, rope_theta, rms_norm_eps,
        weight_tying: the LLaDA config fields of the same names (``n_kv_heads`` None ->
            ``n_heads``, as released: multi-head attention).
        **overrides: any other ``config.json`` field, written as given (e.g. ``include_bias=True``
            to build an unsupported variant); weights follow ``include_qkv_bias`` and
            ``weight_tying``.

    Returns:
        the checkpoint directory.
    """
    d, vocab, merges, ids, rows = _start(root, "llada", LLADA_SPECIALS)
    n = len(vocab)
    kv = n_kv_heads or n_heads
    cfg = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
        "embedding_dropout": 0.0, "embedding_size": rows, "eos_token_id": ids["<|endoftext|>"],
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": ids["<|mdm_mask|>"],
        "max_sequence_length": 4096, "mlp_hidden_size": mlp_hidden_size, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": kv, "n_layers": n_layers,
        "pad_token_id": ids["<|endoftext|>"], "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": rms_norm_eps, "rope": True, "rope_full_precision": True, "rope_theta": rope_theta,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False, "vocab_size": rows,
        "weight_tying": weight_tying,
    }
    cfg.update(overrides)
    _write_json(d / "config.json", cfg)
    _write_json(d / "generation_config.json", {"_from_model_config": True, "bos_token_id": ids["<|startoftext|>"],
                                               "eos_token_id": ids["<|endoftext|>"],
                                               "pad_token_id": ids["<|endoftext|>"],
                                               "transformers_version": "4.46.3"})
    _write_placeholders(d, ["configuration_llada.py", "modeling_llada.py"])
    _write_tokenizer_json(d, vocab, merges, LLADA_SPECIALS, n)
    _write_json(d / "tokenizer_config.json", {
        "added_tokens_decoder": _added(LLADA_SPECIALS, n),
        "bos_token": "<|startoftext|>", "chat_template": LLAMA3_STYLE_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(d / "special_tokens_map.json", {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                                "pad_token": "<|endoftext|>"})

    init, hd = _Init(seed), d_model // n_heads
    qkv_bias = bool(cfg.get("include_qkv_bias")) or bool(cfg.get("include_bias"))
    w: dict[str, torch.Tensor] = {"model.transformer.wte.weight": init.embedding(rows, d_model)}
    for i in range(n_layers):
        p = f"model.transformer.blocks.{i}."
        w[p + "attn_norm.weight"] = init.norm(d_model)
        w[p + "q_proj.weight"] = init.linear(d_model, d_model)
        w[p + "k_proj.weight"] = init.linear(kv * hd, d_model)
        w[p + "v_proj.weight"] = init.linear(kv * hd, d_model)
        if qkv_bias:
            for name, size in (("q_proj", d_model), ("k_proj", kv * hd), ("v_proj", kv * hd)):
                w[p + name + ".bias"] = init.bias(size)
        w[p + "attn_out.weight"] = init.linear(d_model, d_model)
        w[p + "ff_norm.weight"] = init.norm(d_model)
        w[p + "ff_proj.weight"] = init.linear(mlp_hidden_size, d_model)
        w[p + "up_proj.weight"] = init.linear(mlp_hidden_size, d_model)
        w[p + "ff_out.weight"] = init.linear(d_model, mlp_hidden_size)
    w["model.transformer.ln_f.weight"] = init.norm(d_model)
    if not cfg.get("weight_tying"):
        w["model.transformer.ff_out.weight"] = init.linear(rows, d_model)
    _write_sharded(d, w)
    return d


# ------------------------------------------------------------------ Qwen2-family tokens
QWEN25_SPECIALS = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                   ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
                   ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
                   ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
                   ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
                   ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
                   ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
"""Qwen2.5's added tokens (released ids 151643..151664) with their ``special`` flags."""

DREAM_SPECIALS = QWEN25_SPECIALS + [("<|beginoftext|>", True), ("<|mask|>", True)]
"""Dream's added tokens: Qwen2.5's, then ``<|beginoftext|>`` 151665 and ``<|mask|>`` 151666."""

SDAR_SPECIALS = QWEN25_SPECIALS + [("<tool_response>", False), ("</tool_response>", False), ("<think>", False),
                                   ("</think>", False), ("<|MASK|>", True)]
"""SDAR's added tokens: Qwen3's (151643..151668), then ``<|MASK|>`` 151669 (JetAstra/SDAR README)."""

DREAM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
"""Qwen2.5-style ChatML with the default system prompt (HKUNLP/Dream demo output @ a1b4472)."""

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _qwen2_weights(init: _Init, *, vocab_rows: int, hidden: int, layers: int, heads: int, kv_heads: int,
                   head_dim: int, inter: int, qkv_bias: bool, qk_norm: bool, tie: bool) -> dict[str, torch.Tensor]:
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": init.embedding(vocab_rows, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = init.norm(hidden)
        for name, out in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim),
                          ("v_proj", kv_heads * head_dim)):
            w[p + f"self_attn.{name}.weight"] = init.linear(out, hidden)
            if qkv_bias:
                w[p + f"self_attn.{name}.bias"] = init.bias(out)
        if qk_norm:
            w[p + "self_attn.q_norm.weight"] = init.norm(head_dim)
            w[p + "self_attn.k_norm.weight"] = init.norm(head_dim)
        w[p + "self_attn.o_proj.weight"] = init.linear(hidden, heads * head_dim)
        w[p + "post_attention_layernorm.weight"] = init.norm(hidden)
        w[p + "mlp.gate_proj.weight"] = init.linear(inter, hidden)
        w[p + "mlp.up_proj.weight"] = init.linear(inter, hidden)
        w[p + "mlp.down_proj.weight"] = init.linear(hidden, inter)
    w["model.norm.weight"] = init.norm(hidden)
    if not tie:
        w["lm_head.weight"] = init.linear(vocab_rows, hidden)
    return w


# ------------------------------------------------------------------ Dream
def build_dream(root: str | Path, seed: int = 0, *, hidden_size: int = 64, num_hidden_layers: int = 2,
                num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 160,
                rope_theta: float = 1000000.0, rms_norm_eps: float = 1e-6, **overrides: Any) -> Path:
    """A tiny Dream-v0-Instruct-7B-layout checkpoint in ``root / "dream"``.

    Layout source: ``dream/model/{configuration,modeling,tokenization}_dream.py`` of
    NVlabs/Fast-dLLM @ 24cc59e (== ``models/dream`` of Gen-Verse/dLLM-RL @ 10b4fd1): config
    class ``DreamConfig`` (``model_type`` "Dream", ``architectures`` ["DreamModel"],
    ``auto_map`` naming only AutoConfig and AutoModel), Qwen2 weight names (q/k/v biases, no
    o/MLP bias, untied ``lm_head``), ``mask_token_id`` in config.json; a slow ``DreamTokenizer``
    tokenizer (vocab.json + merges.txt + tokenizer_config.json with ``auto_map`` AutoTokenizer
    and the added tokens, no tokenizer.json), generation_config.json with bos/eos/pad/mask ids.

    Args:
        root: parent directory (created).
        seed: weight seed.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        intermediate_size, rope_theta, rms_norm_eps: the DreamConfig fields.
        **overrides: any other ``config.json`` field (e.g. ``use_sliding_window=True``).

    Returns:
        the checkpoint directory.
    """
    d, vocab, merges, ids, rows = _start(root, "dream", DREAM_SPECIALS)
    n = len(vocab)
    cfg = {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "hidden_act": "silu",
        "hidden_size": hidden_size, "initializer_range": 0.02, "intermediate_size": intermediate_size,
        "mask_token_id": ids["<|mask|>"], "max_position_embeddings": 131072, "max_window_layers": 28,
        "model_type": "Dream", "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads, "pad_token_id": ids["<|endoftext|>"],
        "rms_norm_eps": rms_norm_eps, "rope_scaling": None, "rope_theta": rope_theta, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
        "use_cache": False, "use_sliding_window": False, "vocab_size": rows,
    }
    cfg.update(overrides)
    _write_json(d / "config.json", cfg)
    _write_json(d / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "mask_token_id": ids["<|mask|>"], "transformers_version": "4.46.2"})
    _write_placeholders(d, ["configuration_dream.py", "modeling_dream.py", "generation_utils.py",
                            "tokenization_dream.py"])
    _write_bpe_files(d, vocab, merges)
    named = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
             "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    _write_json(d / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": _added(DREAM_SPECIALS, n),
        "additional_special_tokens": named,
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>", "chat_template": DREAM_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "mask_token": "<|mask|>", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "DreamTokenizer",
        "unk_token": None})
    _write_json(d / "special_tokens_map.json", {
        "additional_special_tokens": named, "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "pad_token": "<|endoftext|>"})
    heads = int(cfg["num_attention_heads"])
    w = _qwen2_weights(_Init(seed), vocab_rows=rows, hidden=hidden_size, layers=num_hidden_layers, heads=heads,
                       kv_heads=int(cfg["num_key_value_heads"]), head_dim=hidden_size // heads,
                       inter=intermediate_size, qkv_bias=True, qk_norm=False, tie=bool(cfg["tie_word_embeddings"]))
    _write_sharded(d, w)
    return d


# ------------------------------------------------------------------ SDAR / TraDo
def build_sdar(root: str | Path, seed: int = 0, *, block_size: int | None = 4, name: str = "sdar",
               hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
               num_key_value_heads: int = 2, head_dim: int = 16, intermediate_size: int = 160,
               rope_theta: float = 1000000.0, rms_norm_eps: float = 1e-6, tie_word_embeddings: bool = True,
               **overrides: Any) -> Path:
    """A tiny SDAR-Chat / TraDo-Instruct-layout checkpoint in ``root / name``.

    Layout source: ``models/sdar/{configuration_sdar,modeling_sdar}.py`` of Gen-Verse/dLLM-RL @
    10b4fd1 and JetAstra/SDAR @ c2041a8 (README, generate.py): ``model_type`` "sdar",
    ``architectures`` ["SDARForCausalLM"], ``auto_map`` for AutoConfig / AutoModel /
    AutoModelForCausalLM, Qwen3 weight names (per-head q/k RMS norms, no biases), tied
    embeddings (SDAR-1.7B/4B, TraDo-4B; pass ``tie_word_embeddings=False`` for the 8B
    layout), ``block_size`` in config.json; Qwen2-style tokenizer (vocab.json, merges.txt,
    tokenizer.json, tokenizer_config.json with ``auto_map`` to the shipped
    ``tokenization_qwen2*.py`` and ``mask_token`` ``<|MASK|>``), generation_config.json with
    the EOS ids.

    Args:
        root: parent directory (created).
        seed: weight seed.
        block_size: written to config.json as ``block_size`` (None: omitted).
        name: directory name (e.g. ``"TraDo-4B-Instruct"``).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
        intermediate_size, rope_theta, rms_norm_eps, tie_word_embeddings: the SDARConfig fields.
        **overrides: any other ``config.json`` field.

    Returns:
        the checkpoint directory.
    """
    d, vocab, merges, ids, rows = _start(root, name, SDAR_SPECIALS)
    n = len(vocab)
    cfg = {
        "architectures": ["SDARForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                     "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "fuse_cross_entropy": True,
        "head_dim": head_dim, "hidden_act": "silu", "hidden_size": hidden_size, "initializer_range": 0.02,
        "intermediate_size": intermediate_size, "max_position_embeddings": 40960, "max_window_layers": 28,
        "model_type": "sdar", "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
        "num_key_value_heads": num_key_value_heads, "rms_norm_eps": rms_norm_eps, "rope_scaling": None,
        "rope_theta": rope_theta, "sliding_window": None, "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "bfloat16", "transformers_version": "4.52.4", "use_cache": True,
        "use_sliding_window": False, "vocab_size": rows,
    }
    if block_size is not None:
        cfg["block_size"] = block_size
    cfg.update(overrides)
    _write_json(d / "config.json", cfg)
    _write_json(d / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.52.4"})
    _write_placeholders(d, ["configuration_sdar.py", "modeling_sdar.py", "tokenization_qwen2.py",
                            "tokenization_qwen2_fast.py"])
    _write_bpe_files(d, vocab, merges)
    _write_tokenizer_json(d, vocab, merges, SDAR_SPECIALS, n)
    _write_json(d / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": _added(SDAR_SPECIALS, n),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer",
                                       "tokenization_qwen2_fast.Qwen2TokenizerFast"]},
        "bos_token": None, "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "mask_token": "<|MASK|>", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None})
    heads = int(cfg["num_attention_heads"])
    w = _qwen2_weights(_Init(seed), vocab_rows=rows, hidden=hidden_size, layers=num_hidden_layers, heads=heads,
                       kv_heads=int(cfg["num_key_value_heads"]), head_dim=head_dim, inter=intermediate_size,
                       qkv_bias=bool(cfg["attention_bias"]), qk_norm=True, tie=bool(cfg["tie_word_embeddings"]))
    _write_sharded(d, w)
    return d
