"""The :class:`ModelAdapter`: a loaded model plus everything samplers and trainers need to drive
it (forward with the family's masks, the cache, the attention backend, text, identity, save)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from .cache import SlotKVCache
from .layout import LAYOUT_BACKENDS, AttentionLayout, forward_mask_kwargs

SIDECAR = "dllm_bench.json"
"""File name of the metadata sidecar written next to saved weights."""

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
    weights_loaded: bool = True
    """False for ``load_model(..., weights=False)``: the model is built on the ``meta`` device
    (shapes, dtype and identity only); only samplers that decode elsewhere (``openai``) take it."""
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
    def default_layout(self) -> AttentionLayout | None:
        """The family's layout when a caller passes none (no padding, no cache): ``ar`` -> None
        (the model's own causal mask); ``full-diffusion`` -> full attention;
        ``block-diffusion`` -> block-causal from position 0 with ``self.block_size``."""
        if self.family == "ar":
            return None
        return AttentionLayout(block_size=None if self.family == "full-diffusion" else self.block_size or 1)

    def _prep(self, input_ids, attention, position_ids, past_key_values):
        params = self._forward_params
        if attention is None and past_key_values is None:
            attention = self.default_layout()
        kv_len = None if past_key_values is None else int(past_key_values.get_mask_sizes(input_ids.shape[1], 0)[0])
        kw: dict[str, Any] = {"input_ids": input_ids,
                              **forward_mask_kwargs(attention, self.attn_backend, input_ids, self.dtype, kv_len)}
        attention_mask = kw["attention_mask"]
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

    def forward(self, input_ids: torch.Tensor, attention: AttentionLayout | torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """One model forward (one NFE).

        Args:
            input_ids: ``[b, t]`` long.
            attention: who sees whom: an :class:`AttentionLayout` (samplers and trainers pass
                one; the adapter derives what the attention backend reads: a dense mask for
                ``sdpa`` / ``eager``, the layout for ``flex`` / ``triton``), or an explicit
                ``[b, 1, t, k]`` bool mask (True = may attend; ``k = t`` without a cache, ``k``
                = the cache's read length with one), or None for the family default
                (:meth:`default_layout`; only without a cache).
            position_ids: ``[b, t]`` long (left pads excluded from the count; see
                :mod:`dllm_bench.blocks`), or None for ``0..t-1``.
            past_key_values: a :class:`SlotKVCache` (window set by the caller) or any
                transformers ``Cache``; it is updated in place.
            logits_to_keep: return logits of the last N positions only (0 = all).

        Returns:
            logits ``[b, t or N, V]`` in the model dtype (position i holds the prediction for
            token i, or i+1 when :attr:`logits_shift`).
        """
        kw = self._prep(input_ids, attention, position_ids, past_key_values)
        if logits_to_keep and "logits_to_keep" in self._forward_params:
            kw["logits_to_keep"] = logits_to_keep
        out = self.model(**kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if logits_to_keep and logits.shape[1] > logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return logits

    __call__ = forward

    def hidden_states(self, input_ids: torch.Tensor, attention: AttentionLayout | torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer hidden states ``[b, t, hidden]`` (after the final norm, before the LM head).

        Used by value models (a ``hidden -> 1`` head on the backbone, as in dLLM-RL
        ``train/init_trado_value_model.py`` at 10b4fd1).
        Mask and position conventions as in :meth:`forward`.
        """
        kw = self._prep(input_ids, attention, position_ids, None)
        backbone = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        out = backbone(**kw)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def new_cache(self, batch: int, max_len: int) -> SlotKVCache:
        """An empty :class:`SlotKVCache` for ``batch`` rows of up to ``max_len`` tokens."""
        return SlotKVCache(batch, max_len)

    # -------------------------------------------------------------------- attention
    def set_attn_backend(self, name: str) -> None:
        """Switch the attention implementation.

        ``sdpa`` / ``eager``: transformers' own, driven by the 4-D boolean mask.
        ``triton`` / ``flex``: the block-diffusion backends of :mod:`dllm_bench.models.attention`,
        driven by the :class:`AttentionLayout` passed to :meth:`forward`. Any other name must be
        registered with transformers' ``AttentionInterface``.

        Raises:
            BadInputError: unknown name.
        """
        if name == self.attn_backend:
            return
        impl = name
        if name in LAYOUT_BACKENDS:
            from .attention import TRANSFORMERS_ATTN_NAMES, register_transformers_attention

            register_transformers_attention()
            impl = TRANSFORMERS_ATTN_NAMES[name]
        elif name not in ("sdpa", "eager"):
            from transformers import AttentionInterface

            if name not in AttentionInterface._global_mapping:
                known = sorted({"sdpa", "eager", *LAYOUT_BACKENDS} | set(AttentionInterface._global_mapping))
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

    def save(self, directory: str | Path, training: dict[str, Any] | None = None,
             state_dict: dict[str, Any] | None = None) -> Path:
        """Write HF-format weights (safetensors), the tokenizer and the ``dllm_bench.json`` sidecar.

        ``load_model(directory)`` gives back an adapter with the same family, block size,
        mask token and logits. ``training`` (trainer name, config hash, steps, ...) is
        stored in the sidecar and reported in entries. ``state_dict`` replaces the model's own
        weights (a trainer passes the gathered weights of its wrapped model).

        Returns:
            the directory.

        Raises:
            OSError: a file could not be written (no space, read-only, ...), naming the file
                (safetensors' own I/O error is turned into the OSError it reports).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        try:
            self.model.save_pretrained(d, state_dict=state_dict, safe_serialization=True)
        except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors as its own type
            os_exc = os_error_of(exc, d / "model.safetensors")
            if os_exc is None:
                raise
            raise os_exc from None
        self.tokenizer.save_pretrained(d)
        meta = self.sidecar()
        if training is not None:
            meta["training"] = training
        from ..outdir import write_atomic

        write_atomic(d / SIDECAR, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return d

    def clone(self) -> ModelAdapter:
        """A deep copy (own weights), e.g. a frozen reference policy for a KL term."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model))


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
