"""Attention backends for the model layer: ``sdpa``, ``triton``, ``flex``, all driven by one
:class:`~dllm_bench.models.layout.AttentionLayout` (who sees whom is defined once, in
:mod:`dllm_bench.models.layout`; this module computes attention under it).

Shapes: ``q`` ``[batch, n_heads, q_len, head_dim]``, ``k``/``v``
``[batch, n_kv_heads, kv_len, head_dim]`` (GQA: ``n_heads % n_kv_heads == 0``, query head
``h`` reads key/value head ``h // (n_heads // n_kv_heads)``); output
``[batch, n_heads, q_len, head_dim]``. Scores are ``scale * q·k`` with
``scale = head_dim ** -0.5`` by default.

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the dense mask
  (:meth:`AttentionLayout.dense`);
* ``flex``: FlexAttention with the layout's ``mask_mod`` (:meth:`AttentionLayout.mask_mod`);
  masked tiles are skipped;
* ``triton``: the kernels of :mod:`dllm_bench.models.triton_attention` (inference: block-causal
  / full / causal layouts with left padding, queries at the end — prefill, uncached forward,
  decode against a KV cache, as JetEngine's ``flash_attn_with_kvcache(causal=False)`` in
  dLLM-RL ``sample/jetengine_ext/layers/attention.py`` at 10b4fd1); per-row key bounds from
  :meth:`AttentionLayout.kernel_params`, no mask in memory. A layout the kernels cannot
  express (copy segments, right padding) is read as a dense mask, tile by tile.

Every backend also accepts a dense ``mask`` instead of (or intersected with) the layout, so
any pattern runs through the same code. A row with no visible key (only possible with a dense
``mask``; a layout always lets a query see itself) outputs zeros.

:func:`register_transformers_attention` registers the backends with transformers'
``AttentionInterface`` (``dllm_sdpa`` / ``dllm_triton`` / ``dllm_flex``); the model forward then
takes the layout as the ``attention_layout`` kwarg (:meth:`dllm_bench.models.ModelAdapter.forward`
passes it).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .layout import LAYOUT_KWARG, AttentionLayout

BACKENDS: tuple[str, ...] = ("sdpa", "triton", "flex")
"""Attention backends selectable per sampler (``attention_backend=...``)."""

TRANSFORMERS_ATTN_NAMES: dict[str, str] = {
    "sdpa": "dllm_sdpa",
    "triton": "dllm_triton",
    "flex": "dllm_flex",
}
"""``attn_implementation`` names registered by :func:`register_transformers_attention`."""

def flex_block_mask(layout: AttentionLayout, batch: int, q_len: int, kv_len: int,
                    device: torch.device | str = "cpu") -> Any:
    """FlexAttention ``BlockMask`` for this layout (cached on the layout per shape and device).

    Raises:
        RuntimeError: this torch has no ``torch.nn.attention.flex_attention``.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    key = ("flex", batch, q_len, kv_len, str(device))
    bm = layout._cache.get(key)
    if bm is None:
        mod = layout.mask_mod(q_len, kv_len, device)
        per_row = any(t is not None for t in (layout.kv_start, layout.kv_end, layout.segments))
        bm = create_block_mask(mod, batch if per_row else None, None, q_len, kv_len, device=device)
        layout._cache[key] = bm
    return bm


_FLEX_COMPILED: Callable | None = None


def _flex_fn(compiled: bool) -> Callable:
    global _FLEX_COMPILED
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if _FLEX_COMPILED is None:
        _FLEX_COMPILED = torch.compile(flex_attention)  # static first, dynamic after a recompile
    return _FLEX_COMPILED


# ----------------------------------------------------------------------------- backends


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           layout: AttentionLayout | None, mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D [batch, heads, seq, head_dim]")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"n_heads {q.shape[1]} is not a multiple of n_kv_heads {k.shape[1]}")
    if layout is None and mask is None:
        raise ValueError("attention needs an AttentionLayout (layout=), a dense mask (mask=), or both")


def dense_mask(q: torch.Tensor, k: torch.Tensor, layout: AttentionLayout | None,
               mask: torch.Tensor | None) -> torch.Tensor:
    """The boolean mask a call computes: layout mask AND dense mask, ``[b, 1 or h, q_len, kv_len]``.

    A dense ``mask`` may be bool (True = attend) or additive float (``> finfo.min / 2`` =
    attend), shaped ``[q, k]``, ``[b, q, k]`` or ``[b, 1 or h, q, k]`` (extra key columns are
    dropped).
    """
    b, hq, lq, _ = q.shape
    lk = k.shape[2]
    out = None if layout is None else layout.dense(b, lq, lk, q.device)
    if mask is not None:
        m = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        while m.dim() < 4:
            m = m.unsqueeze(0)
        m = m[..., :lk].to(q.device).expand(b, m.shape[1], lq, lk)
        out = m if out is None else out & m
    assert out is not None, "_check() requires a layout or a mask"
    return out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        layout: AttentionLayout | None = None, mask: torch.Tensor | None = None,
                        scale: float | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Plain PyTorch reference: dense mask, softmax in ``dtype``, rows with no key -> 0.

    Returns:
        ``[batch, n_heads, q_len, head_dim]`` in ``dtype``.
    """
    _check(q, k, v, layout, mask)
    g = q.shape[1] // k.shape[1]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    m = dense_mask(q, k, layout, mask)
    kk = k.to(dtype).repeat_interleave(g, dim=1)
    vv = v.to(dtype).repeat_interleave(g, dim=1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.to(dtype), kk) * scale
    s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, vv)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   layout: AttentionLayout | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the dense mask.

    When the layout's mask is all-True (decode of one whole block without padding, no dense
    mask) no mask is passed, so SDPA may pick its flash kernel. Rows with no visible key are 0.
    Returns ``[batch, n_heads, q_len, head_dim]``.
    """
    _check(q, k, v, layout, mask)
    lq, lk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        assert layout is not None, "_check() requires a layout or a mask"
        kp = layout.kernel_params(lq, lk)
        if (kp is not None and layout.kv_start is None
                and (kp.q_offset - kp.origin_mod) % kp.block_size == 0 and lq <= kp.block_size):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    m = dense_mask(q, k, layout, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)
    return out.masked_fill(~m.any(dim=-1, keepdim=True), 0.0)


_DENSE_FLEX: list = []  # [(mask tensor, version, key, BlockMask)]: one entry, reused across layers


def _dense_flex_block_mask(q: torch.Tensor, k: torch.Tensor, layout: AttentionLayout | None,
                           mask: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    b, hq, lq, _ = q.shape
    lk = k.shape[2]
    key = (b, hq, lq, lk, str(q.device), id(layout))
    if _DENSE_FLEX and _DENSE_FLEX[0][0] is mask and _DENSE_FLEX[0][1] == mask._version \
            and _DENSE_FLEX[0][2] == key:
        return _DENSE_FLEX[0][3]
    m = dense_mask(q, k, layout, mask)
    heads = m.shape[1]

    def mask_mod(bi, h, qi, ki):
        return m[bi, h if heads > 1 else 0, qi, ki]

    bm = create_block_mask(mask_mod, b, hq if heads > 1 else None, lq, lk, device=q.device)
    _DENSE_FLEX[:] = [(mask, mask._version, key, bm)]
    return bm


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   layout: AttentionLayout | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None, compiled: bool | None = None) -> torch.Tensor:
    """FlexAttention with :func:`flex_block_mask` (``torch.compile``-d on CUDA by default).

    With a dense ``mask`` the ``mask_mod`` reads it (the ``BlockMask`` is rebuilt once per
    distinct mask tensor). Returns ``[batch, n_heads, q_len, head_dim]``; rows with no
    visible key are 0.
    """
    _check(q, k, v, layout, mask)
    b, hq, lq, _ = q.shape
    if mask is None:
        assert layout is not None, "_check() requires a layout or a mask"
        bm = flex_block_mask(layout, b, lq, k.shape[2], q.device)
    else:
        bm = _dense_flex_block_mask(q, k, layout, mask)
    fn = _flex_fn(q.is_cuda if compiled is None else compiled)
    return fn(q, k, v, block_mask=bm, scale=scale, enable_gqa=hq != k.shape[1])


def _triton_module():
    """Import the sibling ``triton_attention`` module (also when this file is loaded by path)."""
    try:
        return importlib.import_module("dllm_bench.models.triton_attention")
    except ImportError as exc:
        if "triton" in str(exc) and "triton_attention" not in str(exc):
            raise
        name = "_dllm_triton_attention"
        if name in sys.modules:
            return sys.modules[name]
        path = Path(__file__).with_name("triton_attention.py")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - the file sits beside this one
            raise ImportError(f"cannot load {path}") from exc
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     layout: AttentionLayout | None = None, mask: torch.Tensor | None = None,
                     scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """The Triton kernels (inference only); see ``triton_attention.block_attention``."""
    _check(q, k, v, layout, mask)
    return _triton_module().block_attention(q, k, v, layout=layout, mask=mask, scale=scale,
                                            num_splits=num_splits)


_BACKEND_FNS: dict[str, Callable] = {
    "sdpa": sdpa_attention,
    "triton": triton_attention,
    "flex": flex_attention,
}


def validate_attention_backend(name: str) -> str:
    """Validate an attention backend name (``sdpa``, ``triton``, ``flex``).

    Raises:
        dllm_bench.errors.BadInputError: unknown name.
    """
    if name not in _BACKEND_FNS:
        from dllm_bench.errors import BadInputError

        raise BadInputError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              layout: AttentionLayout | None = None, mask: torch.Tensor | None = None,
              backend: str = "sdpa", scale: float | None = None) -> torch.Tensor:
    """Block-diffusion attention through the chosen backend.

    Args:
        q: ``[batch, n_heads, q_len, head_dim]``.
        k, v: ``[batch, n_kv_heads, kv_len, head_dim]``; the queries are the last ``q_len``
            columns (``q_len == kv_len`` for the staircase layout).
        layout: who sees whom (:mod:`dllm_bench.models.layout`); lets ``triton`` and ``flex``
            skip masked tiles.
        mask: a dense mask instead of (or intersected with) ``layout``; see :func:`dense_mask`.
        backend: ``sdpa`` (default), ``triton`` or ``flex``.
        scale: score scale, default ``head_dim ** -0.5``.

    Returns:
        ``[batch, n_heads, q_len, head_dim]`` in ``q.dtype``; rows with no visible key are 0.

    Raises:
        BadInputError: unknown backend. ValueError: inconsistent shapes, or neither layout nor mask.
    """
    return _BACKEND_FNS[validate_attention_backend(backend)](q, k, v, layout=layout, mask=mask, scale=scale)


# ----------------------------------------------------------------------------- transformers


def _make_hf_attention(backend: str) -> Callable:
    fn = _BACKEND_FNS[backend]

    def hf_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
        if dropout:
            raise ValueError(f"{backend} block attention has no dropout; put the model in eval() "
                             "or set attention_dropout=0")
        layout = kwargs.get(LAYOUT_KWARG)
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        if layout is not None and not isinstance(layout, AttentionLayout):
            raise ValueError(f"{LAYOUT_KWARG} must be an AttentionLayout, got {type(layout).__name__}")
        if layout is not None:
            mask = None  # the layout is the mask (a 4-D mask built by the caller is redundant)
        elif mask is None:  # no mask from the caller: the module's own causal / full attention
            causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
            layout = AttentionLayout(block_size=1 if causal else None)
        out = fn(query, key, value, layout=layout, mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    hf_attention.__name__ = f"dllm_{backend}_attention_forward"
    hf_attention.__doc__ = (
        f"transformers ``AttentionInterface`` function for the ``{backend}`` backend.\n\n"
        "Receives ``query [b, n_heads, q_len, d]``, ``key``/``value`` ``[b, n_kv_heads, kv_len, d]`` "
        "(after the KV-cache update, so the current tokens are the last ``q_len`` key columns). "
        f"The mask is, in order: the ``{LAYOUT_KWARG}`` kwarg of the model forward (an "
        "AttentionLayout; tiles are skipped), else the 4-D ``attention_mask`` the caller "
        "passed (bool or additive), else the module's causal (``is_causal``) or full attention. "
        "Returns ``(out [b, q_len, n_heads, d], None)``.")
    return hf_attention


def register_transformers_attention() -> dict[str, str]:
    """Register ``dllm_sdpa`` / ``dllm_triton`` / ``dllm_flex`` with transformers (idempotent).

    Called when this module is imported (when transformers is installed). Use:
    ``model.set_attn_implementation(TRANSFORMERS_ATTN_NAMES[backend])`` and call the model
    with ``attention_layout=layout`` (fast path), or with a 4-D boolean ``attention_mask``.
    These names have no ``AttentionMaskInterface`` entry, so transformers builds no mask
    for them: a 2-D padding mask is dropped (pass a layout or a 4-D mask instead), a 4-D
    mask is forwarded unchanged.

    Returns:
        backend name -> registered ``attn_implementation`` name.
    """
    from transformers import AttentionInterface

    for backend, name in TRANSFORMERS_ATTN_NAMES.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_hf_attention(backend))
    return dict(TRANSFORMERS_ATTN_NAMES)


try:  # models.ModelAdapter.set_attn_backend imports this module to get the names registered
    register_transformers_attention()
except ImportError:  # pragma: no cover - transformers absent (kernel benchmark machines)
    pass
