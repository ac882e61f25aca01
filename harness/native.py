"""Released diffusion-LM checkpoints loaded natively into stock transformers classes.

No shipped modeling code is executed (no ``trust_remote_code``): each released layout is
mapped onto a stock architecture whose math is the same, and the diffusion behaviour comes
from the 4-D attention masks :class:`dllm_bench.models.ModelAdapter` passes.

========================  ===============  ===================  =====================================
released layout           ``model_type``   loaded as            reference read (repository @ commit)
========================  ===============  ===================  =====================================
SDAR / TraDo              ``sdar``         Qwen3ForCausalLM     Gen-Verse/dLLM-RL @ 10b4fd1
                                                                ``models/sdar/modeling_sdar.py``
Dream-v0 (Base/Instruct)  ``Dream``        Qwen2ForCausalLM     NVlabs/Fast-dLLM @ 24cc59e
                                                                ``dream/model/modeling_dream.py``
LLaDA-8B / LLaDA-1.5      ``llada``        LlamaForCausalLM     NVlabs/Fast-dLLM @ 24cc59e
                                                                ``llada/model/modeling_llada.py``
========================  ===============  ===================  =====================================

LLaDA (:func:`llada_llama_config`, :func:`llada_to_llama_name`): its ``LLaDALlamaBlock`` is a
pre-norm Llama block. Per layer ``h = x + attn_out(Attn(RoPE(q_proj n), RoPE(k_proj n), v_proj
n))`` with ``n = attn_norm(x)``, then ``h + ff_out(act(ff_proj m) * up_proj m)`` with ``m =
ff_norm(h)``; RMSNorm ``w * x / sqrt(mean(x^2) + eps)`` computed in float32; rotary over
``head_dim = d_model / n_heads`` with ``inv_freq = theta^(-2i/head_dim)`` applied to the two
halves of each head (``x1 cos - x2 sin``, ``x2 cos + x1 sin``, not interleaved); grouped K/V
heads repeated per query group; scale ``head_dim^-0.5``; no causal mask; final ``ln_f``,
logits ``ff_out`` (or ``wte`` when ``weight_tying``), not shifted. That is Llama's math with
``ff_proj`` -> ``gate_proj``, ``up_proj`` -> ``up_proj``, ``ff_out`` -> ``down_proj``,
``attn_out`` -> ``o_proj``. Config switches with no Llama equivalent raise
:class:`~dllm_bench.errors.BadInputError` naming the field.

Dream: ``DreamModel`` is Qwen2 (q/k/v biases, untied ``lm_head``) without a causal mask; its
logits at position i predict token i+1 (``ModelAdapter.logits_shift``). Its ``DreamTokenizer``
is Qwen2's byte-level BPE (same split regex, NFC, ``vocab.json`` + ``merges.txt``), so it
loads as a stock ``Qwen2Tokenizer`` (:data:`STOCK_TOKENIZERS`).

SDAR / TraDo: ``SDARForCausalLM`` is Qwen3 (per-head q/k RMSNorm) driven by a block-causal
mask; config.json declares ``block_size``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import BadInputError

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("dllm_bench.models")

LLADA_DEFAULTS: dict[str, Any] = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False, "rope": False,
    "attention_dropout": 0.1, "multi_query_attention": None, "attention_layer_norm": False,
    "residual_dropout": 0.1, "embedding_dropout": 0.1, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 1024, "rope_theta": 10000.0,
    "include_qkv_bias": False, "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False,
    "vocab_size": 50257, "embedding_size": 50304, "weight_tying": True, "eos_token_id": 50256,
    "pad_token_id": 50256,
}
"""``ModelConfig`` defaults of ``llada/model/configuration_llada.py`` (Fast-dLLM @ 24cc59e) for the
fields that change the forward pass; a config.json that omits one gets this value, as with the
released ``LLaDAConfig``."""

LLADA_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "relu": "relu"}
"""LLaDA ``activation_type`` -> transformers ``hidden_act`` (exact GELU both sides). ``swiglu``
inside a ``llama`` block halves ``ff_proj``'s output before the ``up_proj`` product: not Llama."""

STOCK_TOKENIZERS: dict[str, str] = {"DreamTokenizer": "Qwen2Tokenizer"}
"""Custom tokenizer classes of released checkpoints -> the stock transformers class that
tokenizes identically from the same files (checked against the reference class in
tests/test_reference_models.py)."""

_LLADA_BLOCK = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")
_LLADA_BLOCK_PARTS = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
                      "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                      "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                      "ff_out": "mlp.down_proj"}
_LLADA_TOP = {"model.transformer.wte.weight": "model.embed_tokens.weight",
              "model.transformer.ln_f.weight": "model.norm.weight",
              "model.transformer.ff_out.weight": "lm_head.weight"}


def llada_to_llama_name(name: str) -> str:
    """The ``LlamaForCausalLM`` parameter name of a released LLaDA weight name.

    ``model.transformer.wte`` -> ``model.embed_tokens``, ``ln_f`` -> ``model.norm``,
    top-level ``ff_out`` -> ``lm_head``, ``blocks.N.{attn_norm, ff_norm, q_proj, k_proj,
    v_proj, attn_out, ff_proj, up_proj, ff_out}`` -> ``layers.N.{input_layernorm,
    post_attention_layernorm, self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}``.

    Raises:
        BadInputError: a name outside that layout (e.g. ``block_groups``, fused ``att_proj``).
    """
    if name in _LLADA_TOP:
        return _LLADA_TOP[name]
    m = _LLADA_BLOCK.fullmatch(name)
    if m and m.group(2) in _LLADA_BLOCK_PARTS:
        return f"model.layers.{m.group(1)}.{_LLADA_BLOCK_PARTS[m.group(2)]}.{m.group(3)}"
    raise BadInputError(f"LLaDA checkpoint weight {name!r} has no LlamaForCausalLM equivalent")


def llada_llama_config(raw: dict[str, Any]) -> LlamaConfig:
    """A ``LlamaConfig`` with the same math as a released LLaDA ``config.json``.

    Args:
        raw: config.json as a dict (missing fields take :data:`LLADA_DEFAULTS`).

    Returns:
        transformers.LlamaConfig (``hidden_size = d_model``, ``intermediate_size =
        mlp_hidden_size or mlp_ratio * d_model``, ``num_key_value_heads`` = LLaDA's effective
        K/V heads, ``vocab_size = embedding_size or vocab_size``, ``rope_theta``,
        ``rms_norm_eps``, ``tie_word_embeddings = weight_tying``, no biases, no embedding
        ``padding_idx``).

    Raises:
        BadInputError: a field whose LLaDA math Llama cannot express: ``block_type`` other
            than ``llama``, ``block_group_size`` > 1, ``alibi``, ``rope`` false,
            ``layer_norm_type`` other than ``rms``, norms without affine weights or with a
            bias, ``attention_layer_norm``, ``input_emb_norm``, ``scale_logits``,
            ``include_bias`` / ``include_qkv_bias``, ``activation_type`` ``swiglu``,
            inconsistent head counts.
    """
    from transformers import LlamaConfig

    c = {**LLADA_DEFAULTS, **raw}

    def unsupported(field: str, why: str) -> BadInputError:
        return BadInputError(f"LLaDA config {field}={c.get(field)!r} is not supported natively ({why}); "
                             "pass --model-arg trust_remote_code=true to run the shipped code")

    if c["block_type"] != "llama":
        raise unsupported("block_type", "only the 'llama' block of the released checkpoints maps onto Llama")
    if int(c["block_group_size"]) != 1:
        raise unsupported("block_group_size", "grouped blocks use other weight names")
    if c["alibi"] or not c["rope"]:
        raise unsupported("alibi" if c["alibi"] else "rope", "the reference forward requires rope and no alibi")
    if c["layer_norm_type"] != "rms":
        raise unsupported("layer_norm_type", "Llama uses RMSNorm w * x / rms(x)")
    if not c["layer_norm_with_affine"]:
        raise unsupported("layer_norm_with_affine", "norms without weights")
    norm_bias = c["bias_for_layer_norm"] if c["bias_for_layer_norm"] is not None else c["include_bias"]
    for field in ("attention_layer_norm", "input_emb_norm", "scale_logits", "include_bias", "include_qkv_bias"):
        if c[field]:
            raise unsupported(field, "no Llama equivalent")
    if norm_bias:
        raise unsupported("bias_for_layer_norm", "RMSNorm with a bias")
    act = LLADA_ACTIVATIONS.get(str(c["activation_type"]))
    if act is None:
        raise unsupported("activation_type", "Llama's MLP is act(gate) * up")
    d, heads = int(c["d_model"]), int(c["n_heads"])
    kv, mqa = c["n_kv_heads"], c["multi_query_attention"]
    if kv is None:
        kv = 1 if mqa else heads
    elif mqa is not None and int(kv) != (1 if mqa else heads):
        raise unsupported("n_kv_heads", "conflicts with multi_query_attention")
    kv = int(kv)
    if d % heads or heads % kv:
        raise BadInputError(f"LLaDA config: d_model {d} must divide by n_heads {heads}, and n_heads by "
                            f"n_kv_heads {kv}")
    rows = int(c["embedding_size"] or c["vocab_size"])
    if rows < int(c["vocab_size"]):
        raise BadInputError(f"LLaDA config: embedding_size {rows} is smaller than vocab_size {c['vocab_size']}")
    if float(c["residual_dropout"]) or float(c["embedding_dropout"]):
        log.warning("LLaDA residual/embedding dropout (%s/%s) is not applied by LlamaForCausalLM: "
                    "inference is unaffected, training differs", c["residual_dropout"], c["embedding_dropout"])
    return LlamaConfig(
        vocab_size=rows, hidden_size=d, intermediate_size=int(c["mlp_hidden_size"] or int(c["mlp_ratio"]) * d),
        num_hidden_layers=int(c["n_layers"]), num_attention_heads=heads, num_key_value_heads=kv, head_dim=d // heads,
        hidden_act=act, max_position_embeddings=int(c["max_sequence_length"]), rms_norm_eps=float(c["rms_norm_eps"]),
        rope_theta=float(c["rope_theta"]),  # type: ignore[call-arg]  # a parameter in transformers 4, a legacy kwarg in 5
        attention_bias=False, mlp_bias=False,
        attention_dropout=float(c["attention_dropout"]), tie_word_embeddings=bool(c["weight_tying"]),
        eos_token_id=c.get("eos_token_id"), bos_token_id=c.get("bos_token_id"), use_cache=False,
        architectures=["LlamaForCausalLM"],
        pad_token_id=None,  # LLaDA's wte has no padding_idx (Llama's would freeze that row in training)
    )


def _qwen_config(class_name: str) -> Callable[[dict[str, Any]], Any]:
    def make(raw: dict[str, Any]) -> PretrainedConfig:
        import transformers

        if raw.get("use_sliding_window"):
            raise BadInputError(f"{raw.get('model_type')} config use_sliding_window=true is not supported natively; "
                                "pass --model-arg trust_remote_code=true to run the shipped code")
        kw = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map")}
        if kw.get("rope_scaling") is None:  # deprecated spelling of "no scaling" in transformers 5
            kw.pop("rope_scaling", None)
        return getattr(transformers, class_name)(**kw)

    return make


@dataclass(frozen=True)
class NativeLayout:
    """How one released checkpoint layout loads into a stock transformers class.

    Attributes:
        model_class: name of the transformers class (``Qwen3ForCausalLM``, ...).
        make_config: config.json dict -> the transformers config (raises BadInputError).
        rename: released weight name -> the class's parameter name; None when the names
            already match.
    """

    model_class: str
    make_config: Callable[[dict[str, Any]], Any]
    rename: Callable[[str], str] | None = None


LAYOUTS: dict[str, NativeLayout] = {
    "sdar": NativeLayout("Qwen3ForCausalLM", _qwen_config("Qwen3Config")),
    "dream": NativeLayout("Qwen2ForCausalLM", _qwen_config("Qwen2Config")),
    "llada": NativeLayout("LlamaForCausalLM", llada_llama_config, llada_to_llama_name),
}
"""Lower-cased config.json ``model_type`` -> its native layout."""


def read_json(src: str, name: str) -> dict[str, Any]:
    """``name`` (e.g. ``config.json``) of a local directory or a hub repo as a dict; {} if absent."""
    p = Path(src) / name
    try:
        if not p.is_file():
            if Path(src).is_dir():
                return {}
            from huggingface_hub import hf_hub_download

            p = Path(hf_hub_download(src, name))
        return json.loads(p.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - unreachable or unreadable: callers fall back to defaults
        return {}


def declared_decoding_fields(config: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """Decoding defaults a released checkpoint declares in its files.

    Args:
        config: config.json (SDAR: ``block_size``; LLaDA / Dream: ``mask_token_id``,
            ``eos_token_id``).
        generation: generation_config.json (``eos_token_id`` int or list, ``mask_token_id``).

    Returns:
        dict with any of ``block_size`` (int), ``mask_token_id`` (int), ``eos_token_ids``
        (list of int: generation config's first, then config.json's).

    Raises:
        BadInputError: a declared ``block_size`` that is not a positive integer.
    """
    out: dict[str, Any] = {}
    block = config.get("block_size")
    if block is not None:
        if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
            raise BadInputError(f"config.json block_size {block!r} is not a positive integer")
        out["block_size"] = block
    for src in (generation, config):
        if isinstance(src.get("mask_token_id"), int):
            out["mask_token_id"] = src["mask_token_id"]
            break
    eos: list[int] = []
    for src in (generation, config):
        val = src.get("eos_token_id")
        for e in val if isinstance(val, list) else [val]:
            if isinstance(e, int) and e not in eos:
                eos.append(e)
    if eos:
        out["eos_token_ids"] = eos
    return out


def load_tokenizer(src: str, trust_remote_code: bool, config: Any = None, **kw: Any) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer; a custom class listed in :data:`STOCK_TOKENIZERS` loads as
    its stock equivalent unless ``trust_remote_code``. ``config`` (the model's loaded config)
    spares ``AutoTokenizer`` re-reading a config.json it may not understand.

    Raises:
        OSError / ValueError: from transformers (the caller turns them into BadInputError).
    """
    import transformers

    if not trust_remote_code and not kw.get("gguf_file"):
        stock = STOCK_TOKENIZERS.get(str(read_json(src, "tokenizer_config.json").get("tokenizer_class")))
        if stock:
            return getattr(transformers, stock).from_pretrained(src)
    if config is not None:
        kw["config"] = config
    return transformers.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kw)


def _weight_files(src: str) -> list[Path]:
    d = Path(src)
    if not d.is_dir():
        from huggingface_hub import snapshot_download

        d = Path(snapshot_download(src, allow_patterns=["*.safetensors", "model.safetensors.index.json"]))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [d / s for s in shards]
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    raise BadInputError(f"no safetensors weights (model.safetensors or model.safetensors.index.json) in {src}")


def load_native_model(layout: NativeLayout, src: str, config: Any, dtype: torch.dtype, spec: str,
                      mt: str) -> PreTrainedModel:
    """Build ``layout.model_class`` from the checkpoint's weights (renamed when the layout says so).

    Args:
        layout: the checkpoint's :class:`NativeLayout`.
        src: local directory or hub id.
        config: the transformers config from ``layout.make_config``.
        dtype: parameter dtype.
        spec / mt: the user's model spec and the config's model_type (for error messages).

    Returns:
        the model (on CPU).

    Raises:
        BadInputError: missing or unexpected weights, or shape mismatches.
    """
    import transformers

    cls = getattr(transformers, layout.model_class)

    def mismatch(what: str) -> BadInputError:
        return BadInputError(f"{spec!r} ({mt}) does not map onto {layout.model_class}: {what}; "
                             "pass --model-arg trust_remote_code=true")

    try:
        if layout.rename is None:
            model, info = cls.from_pretrained(src, config=config, dtype=dtype, output_loading_info=True)
        else:
            from safetensors import safe_open

            state: dict[str, torch.Tensor] = {}
            for f in _weight_files(src):
                with safe_open(str(f), framework="pt") as fh:
                    for name in fh.keys():
                        state[layout.rename(name)] = fh.get_tensor(name)
            model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                              output_loading_info=True)
    except (RuntimeError, ValueError) as exc:  # shape mismatches
        raise mismatch(str(exc).splitlines()[0]) from None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = sorted(k for k in info.get("missing_keys", []) if not (tied and k == "lm_head.weight"))
    if missing:
        raise mismatch(f"missing weights {', '.join(missing[:4])}...")
    if layout.rename is not None and info.get("unexpected_keys"):
        raise mismatch(f"unexpected weights {', '.join(sorted(info['unexpected_keys'])[:4])}...")
    if info.get("mismatched_keys"):
        raise mismatch(f"shape mismatch in {', '.join(sorted(map(str, info['mismatched_keys']))[:4])}")
    return model
