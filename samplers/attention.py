"""Block-diffusion attention: one mask definition, three backends (``sdpa``, ``triton``, ``flex``).

This module states *what* is computed; :mod:`dllm_bench.samplers.triton_attention` holds the
Triton kernels that compute it without materialising the mask, and FlexAttention computes
it from :func:`flex_mask_mod`. The block rule is the project's (``dllm_bench.blocks``,
whereas dLLM-RL at 10b4fd1 counts blocks from position 0 in ``generate.py`` but from the
response start in ``train/rl_trado.py``): prompts are left-padded to a multiple of the block size ``B``, so
response block ``r`` covers sequence columns ``[P + rB, P + (r+1)B)`` and the prompt is cut
into blocks counted back from the response start.

Two layouts share one kernel (``q`` ``[batch, n_heads, q_len, head_dim]``,
``k``/``v`` ``[batch, n_kv_heads, kv_len, head_dim]``, GQA: ``n_heads % n_kv_heads == 0``,
query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``):

1. **Block-causal** (``copy_len == 0``; prefill, uncached forward, and decode with a KV
   cache). The queries are the *last* ``q_len`` key columns (column of query ``i`` is
   ``kv_len - q_len + i``; ``q_len == kv_len`` for prefill). Query column ``q`` sees key
   column ``k`` iff ``block(k) <= block(q)`` where ``block(j) = floor((j - block_origin) / B)``.
   At decode time the queries are the current block's ``B`` tokens appended after the
   committed cache, so they see every committed token and their own block bidirectionally
   (JetEngine ``flash_attn_with_kvcache(causal=False)`` in dLLM-RL
   ``sample/jetengine_ext/layers/attention.py`` at 10b4fd1).
2. **Staircase training mask** (``copy_len == L > 0``; packed TraceRL / block SFT,
   dLLM-RL ``train/rl_trado.py`` at 10b4fd1; DiRL, arXiv 2512.22234, §4.1; BD3-LM, arXiv
   2503.09573). The sequence is ``[prompt (P) ; clean x0 (L) ;
   masked copy xt (L)]``, ``q_len == kv_len == P + 2L``; response block of a clean column is
   ``floor((j - P) / B)`` (negative for the prompt), of a masked-copy column
   ``floor((j - P - L) / B)``.

   * clean query (prompt or x0) in block ``c``: clean keys of blocks ``<= c``;
   * masked-copy query in response block ``r``: clean keys of blocks ``< r`` (the whole
     prompt and x0 blocks ``0..r-1``) and the masked-copy keys of block ``r``
     (bidirectionally) — never its own or later clean blocks, never other masked blocks.

In both layouts key columns ``< kv_start[b]`` (the left pads of sequence ``b``) are never
attended to. A query row with no visible key at all (a pad row whose block holds only pads)
outputs zeros; ``dllm_bench.blocks`` instead lets every pad row see itself. The two agree on
every real row, and pad rows never influence real rows.

Every backend also accepts a dense boolean ``mask`` instead of (or intersected with) the spec,
so any pattern (full attention, Fast-dLLM cache windows) runs through the same code; only
the spec lets ``triton`` and ``flex`` skip masked tiles.

Scores are ``scale * q·k`` with ``scale = head_dim ** -0.5`` by default.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BACKENDS: tuple[str, ...] = ("sdpa", "triton", "flex")
"""Attention backends selectable per sampler / trainer (``attention_backend=...``)."""

TRANSFORMERS_ATTN_NAMES: dict[str, str] = {
    "sdpa": "dllm_sdpa",
    "triton": "dllm_triton",
    "flex": "dllm_flex",
}
"""``attn_implementation`` names registered by :func:`register_transformers_attention`."""

SPEC_KWARG = "block_attention"
"""Name of the model-forward kwarg that carries the :class:`BlockAttentionSpec`."""


@dataclass(eq=False)
class BlockAttentionSpec:
    """The block structure of one attention call (see the module docstring for the rule).

    Attributes:
        block_size: ``B``, tokens per diffusion block (>= 1).
        kv_start: ``[batch]`` integer tensor, first real key column of each sequence (number
            of left pads), or None (no padding). Key columns ``< kv_start[b]`` are masked.
        block_origin: any column where a block starts (block-causal layout only); with the
            project rule (prompt left-padded to a block multiple) it is 0.
        copy_len: ``L``, length of the masked copy at the end of the sequence (staircase
            training layout), or 0 for the block-causal layout. With ``copy_len > 0`` the
            response starts at column ``kv_len - 2L`` and ``block_origin`` is ignored.

    Raises:
        ValueError: ``block_size < 1`` or ``copy_len < 0``.
    """

    block_size: int
    kv_start: torch.Tensor | None = None
    block_origin: int = 0
    copy_len: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if int(self.block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if int(self.copy_len) < 0:
            raise ValueError(f"copy_len must be >= 0, got {self.copy_len}")

    @classmethod
    def from_prompt_lens(cls, prompt_lens: list[int] | torch.Tensor, padded_prompt_len: int,
                         block_size: int, *, copy_len: int = 0,
                         device: torch.device | str | None = None) -> BlockAttentionSpec:
        """Spec for prompts left-padded to ``padded_prompt_len`` columns (``dllm_bench.blocks``).

        Args:
            prompt_lens: real prompt length per sequence.
            padded_prompt_len: P, the padded prompt width (a multiple of ``block_size``).
            block_size: B.
            copy_len: L for the staircase training layout, else 0.
            device: device of the ``kv_start`` tensor.

        Raises:
            ValueError: a prompt longer than ``padded_prompt_len``.
        """
        lens = torch.as_tensor(prompt_lens, dtype=torch.int32)
        if bool((lens > padded_prompt_len).any()):
            raise ValueError(f"prompt lengths {lens.tolist()} exceed padded length {padded_prompt_len}")
        kv_start = (padded_prompt_len - lens).to(device=device, dtype=torch.int32)
        return cls(block_size=block_size, kv_start=kv_start, block_origin=0, copy_len=copy_len)

    @classmethod
    def from_key_valid(cls, prompt_valid: torch.Tensor, block_size: int, *,
                       copy_len: int = 0) -> BlockAttentionSpec:
        """Spec from a ``[batch, P]`` bool mask of real (left-padded) prompt columns.

        Raises:
            ValueError: the mask is not left padding (a pad after a real token).
        """
        valid = prompt_valid.to(torch.bool)
        n_pad = (~valid).sum(dim=1)
        cols = torch.arange(valid.shape[1], device=valid.device)
        if not bool(torch.equal(valid, cols[None, :] >= n_pad[:, None])):
            raise ValueError("prompt_valid must describe left padding (pads first, then real tokens)")
        return cls(block_size=block_size, kv_start=n_pad.to(torch.int32), copy_len=copy_len)

    def kv_start_for(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[batch]`` int32 ``kv_start`` on ``device`` (zeros when no padding).

        Raises:
            ValueError: ``kv_start`` has the wrong length.
        """
        if self.kv_start is None:
            key = ("zeros", batch, str(device))
            if key not in self._cache:
                self._cache[key] = torch.zeros(batch, dtype=torch.int32, device=device)
            return self._cache[key]
        key = ("kv_start", batch, str(device), id(self.kv_start), self.kv_start._version)
        ks = self._cache.get(key)
        if ks is None:
            ks = self.kv_start.to(device=device, dtype=torch.int32).reshape(-1)
            if ks.numel() == 1 and batch > 1:
                ks = ks.expand(batch)
            if ks.numel() != batch:
                raise ValueError(f"kv_start has {ks.numel()} entries for batch {batch}")
            ks = self._cache[key] = ks.contiguous()
        return ks

    def layout(self, q_len: int, kv_len: int) -> MaskLayout:
        """Resolve the scalar parameters for a call with these lengths (see :class:`MaskLayout`).

        Raises:
            ValueError: ``q_len > kv_len``, or a staircase layout with ``q_len != kv_len`` or
                ``kv_len < 2 * copy_len``.
        """
        key = ("layout", q_len, kv_len)
        lay = self._cache.get(key)
        if lay is None:
            lay = self._cache[key] = self._layout(q_len, kv_len)
        return lay

    def _layout(self, q_len: int, kv_len: int) -> MaskLayout:
        if q_len > kv_len:
            raise ValueError(f"q_len {q_len} > kv_len {kv_len}: queries must be the last key columns")
        B = int(self.block_size)
        if self.copy_len:
            L = int(self.copy_len)
            if q_len != kv_len:
                raise ValueError(f"staircase layout needs q_len == kv_len, got {q_len} and {kv_len}")
            if kv_len < 2 * L:
                raise ValueError(f"kv_len {kv_len} < 2 * copy_len {2 * L}")
            resp_start = kv_len - 2 * L
            return MaskLayout(B, kv_len - q_len, resp_start % B, resp_start, kv_len - L, True)
        return MaskLayout(B, kv_len - q_len, int(self.block_origin) % B, int(self.block_origin), kv_len, False)


@dataclass(frozen=True)
class MaskLayout:
    """Scalar mask parameters shared by all backends (column indices are 0-based).

    Attributes:
        block_size: B.
        q_offset: column of query 0 (``kv_len - q_len``).
        origin_mod: ``block_origin mod B`` (>= 0): blocks start at columns ``= origin_mod (mod B)``.
        resp_start: column where response block 0 starts (staircase layout).
        clean_len: number of clean columns (``kv_len`` for the block-causal layout).
        has_copy: staircase layout with a masked copy after the clean columns.
    """

    block_size: int
    q_offset: int
    origin_mod: int
    resp_start: int
    clean_len: int
    has_copy: bool


def _visible(qpos: torch.Tensor, kpos: torch.Tensor, lay: MaskLayout) -> torch.Tensor:
    """Mask predicate on broadcastable integer column tensors (padding excluded).

    Written with comparisons against block *end* columns so it never floor-divides a
    negative number (identical in PyTorch, FlexAttention and Triton).
    """
    B = lay.block_size
    # end column (exclusive) of the block holding a clean column j >= 0
    q_end = qpos - torch.remainder(qpos + B - lay.origin_mod, B) + B
    if not lay.has_copy:
        return kpos < q_end
    q_clean = qpos < lay.clean_len
    k_clean = kpos < lay.clean_len
    q_blk = torch.div(torch.clamp(qpos - lay.clean_len, min=0), B, rounding_mode="floor")
    k_blk = torch.div(torch.clamp(kpos - lay.clean_len, min=0), B, rounding_mode="floor")
    clean_row = q_clean & k_clean & (kpos < q_end)
    masked_row = (~q_clean) & ((k_clean & (kpos < lay.resp_start + q_blk * B))
                              | ((~k_clean) & (k_blk == q_blk)))
    return clean_row | masked_row


def block_attention_mask(spec: BlockAttentionSpec, batch: int, q_len: int, kv_len: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense boolean reference mask, ``True`` = may attend.

    Returns:
        ``[batch, 1, q_len, kv_len]`` bool.

    Raises:
        ValueError: see :meth:`BlockAttentionSpec.layout`.
    """
    lay = spec.layout(q_len, kv_len)
    device = torch.device(device)
    qpos = torch.arange(q_len, device=device)[:, None] + lay.q_offset
    kpos = torch.arange(kv_len, device=device)[None, :]
    allowed = _visible(qpos, kpos, lay)  # [q, k]
    kv_start = spec.kv_start_for(batch, device)
    key_ok = kpos[None] >= kv_start[:, None, None].long()  # [b, 1, k]
    return (allowed[None] & key_ok)[:, None]


def staircase_attention_mask(prompt_len: int, gen_len: int, block_size: int,
                             kv_start: torch.Tensor | None = None, batch: int = 1,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """The training mask over ``[prompt ; clean x0 ; masked copy xt]`` (reference).

    Args:
        prompt_len: P (columns of the padded prompt).
        gen_len: L (response length; the masked copy has the same length).
        block_size: B.
        kv_start: ``[batch]`` left pads per sequence, or None.
        batch: batch size when ``kv_start`` is None.

    Returns:
        ``[batch, 1, P + 2L, P + 2L]`` bool.
    """
    spec = BlockAttentionSpec(block_size, kv_start=kv_start, copy_len=gen_len)
    b = kv_start.numel() if kv_start is not None else batch
    T = prompt_len + 2 * gen_len
    return block_attention_mask(spec, b, T, T, device)


# ----------------------------------------------------------------------------- FlexAttention


def flex_mask_mod(spec: BlockAttentionSpec, q_len: int, kv_len: int,
                  device: torch.device | str = "cpu") -> Callable:
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for this spec and these lengths.

    ``q_idx`` runs over ``0..q_len-1`` (the last ``q_len`` key columns), ``kv_idx`` over
    ``0..kv_len-1``. Same predicate as :func:`block_attention_mask`.
    """
    lay = spec.layout(q_len, kv_len)
    kv_start = spec.kv_start
    ks = None if kv_start is None else kv_start.to(device=device, dtype=torch.int64).reshape(-1)

    def mask_mod(b, h, q_idx, kv_idx):
        ok = _visible(q_idx + lay.q_offset, kv_idx, lay)
        if ks is not None:
            ok = ok & (kv_idx >= ks[b])
        return ok

    return mask_mod


def flex_block_mask(spec: BlockAttentionSpec, batch: int, q_len: int, kv_len: int,
                    device: torch.device | str = "cpu") -> Any:
    """FlexAttention ``BlockMask`` for this spec (cached on the spec per shape and device).

    Raises:
        RuntimeError: this torch has no ``torch.nn.attention.flex_attention``.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    key = ("flex", batch, q_len, kv_len, str(device))
    bm = spec._cache.get(key)
    if bm is None:
        mod = flex_mask_mod(spec, q_len, kv_len, device)
        bsz = batch if spec.kv_start is not None else None
        bm = create_block_mask(mod, bsz, None, q_len, kv_len, device=device)
        spec._cache[key] = bm
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
           spec: BlockAttentionSpec | None, mask: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D [batch, heads, seq, head_dim]")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"n_heads {q.shape[1]} is not a multiple of n_kv_heads {k.shape[1]}")
    if spec is None and mask is None:
        raise ValueError("attention needs a BlockAttentionSpec (spec=), a dense mask (mask=), or both")


def dense_mask(q: torch.Tensor, k: torch.Tensor, spec: BlockAttentionSpec | None,
               mask: torch.Tensor | None) -> torch.Tensor:
    """The boolean mask a call computes: spec mask AND dense mask, ``[b, 1 or h, q_len, kv_len]``.

    A dense ``mask`` may be bool (True = attend) or additive float (``> finfo.min / 2`` =
    attend), shaped ``[q, k]``, ``[b, q, k]`` or ``[b, 1 or h, q, k]`` (extra key columns are
    dropped).
    """
    b, hq, lq, _ = q.shape
    lk = k.shape[2]
    out = None if spec is None else block_attention_mask(spec, b, lq, lk, q.device)
    if mask is not None:
        m = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        while m.dim() < 4:
            m = m.unsqueeze(0)
        m = m[..., :lk].to(q.device).expand(b, m.shape[1], lq, lk)
        out = m if out is None else out & m
    return out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        spec: BlockAttentionSpec | None = None, mask: torch.Tensor | None = None,
                        scale: float | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Plain PyTorch reference: dense mask, softmax in ``dtype``, rows with no key -> 0.

    Returns:
        ``[batch, n_heads, q_len, head_dim]`` in ``dtype``.
    """
    _check(q, k, v, spec, mask)
    g = q.shape[1] // k.shape[1]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    m = dense_mask(q, k, spec, mask)
    kk = k.to(dtype).repeat_interleave(g, dim=1)
    vv = v.to(dtype).repeat_interleave(g, dim=1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.to(dtype), kk) * scale
    s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, vv)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   spec: BlockAttentionSpec | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the dense mask.

    When the spec's mask is all-True (decode without padding, block-aligned, no dense mask)
    no mask is passed, so SDPA may pick its flash kernel. Rows with no visible key are 0.
    Returns ``[batch, n_heads, q_len, head_dim]``.
    """
    _check(q, k, v, spec, mask)
    lq, lk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        lay = spec.layout(lq, lk)
        if (not lay.has_copy and spec.kv_start is None
                and (lay.q_offset - lay.origin_mod) % lay.block_size == 0 and lq <= lay.block_size):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    m = dense_mask(q, k, spec, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)
    return out.masked_fill(~m.any(dim=-1, keepdim=True), 0.0)


_DENSE_FLEX: list = []  # [(mask tensor, version, key, BlockMask)]: one entry, reused across layers


def _dense_flex_block_mask(q: torch.Tensor, k: torch.Tensor, spec: BlockAttentionSpec | None,
                           mask: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    b, hq, lq, _ = q.shape
    lk = k.shape[2]
    key = (b, hq, lq, lk, str(q.device), id(spec))
    if _DENSE_FLEX and _DENSE_FLEX[0][0] is mask and _DENSE_FLEX[0][1] == mask._version \
            and _DENSE_FLEX[0][2] == key:
        return _DENSE_FLEX[0][3]
    m = dense_mask(q, k, spec, mask)
    heads = m.shape[1]

    def mask_mod(bi, h, qi, ki):
        return m[bi, h if heads > 1 else 0, qi, ki]

    bm = create_block_mask(mask_mod, b, hq if heads > 1 else None, lq, lk, device=q.device)
    _DENSE_FLEX[:] = [(mask, mask._version, key, bm)]
    return bm


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   spec: BlockAttentionSpec | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None, compiled: bool | None = None) -> torch.Tensor:
    """FlexAttention with :func:`flex_block_mask` (``torch.compile``-d on CUDA by default).

    With a dense ``mask`` the ``mask_mod`` reads it (the ``BlockMask`` is rebuilt once per
    distinct mask tensor). Returns ``[batch, n_heads, q_len, head_dim]``; rows with no
    visible key are 0.
    """
    _check(q, k, v, spec, mask)
    b, hq, lq, _ = q.shape
    if mask is None:
        bm = flex_block_mask(spec, b, lq, k.shape[2], q.device)
    else:
        bm = _dense_flex_block_mask(q, k, spec, mask)
    fn = _flex_fn(q.is_cuda if compiled is None else compiled)
    return fn(q, k, v, block_mask=bm, scale=scale, enable_gqa=hq != k.shape[1])


def _triton_module():
    """Import the sibling ``triton_attention`` module (also when this file is loaded by path)."""
    try:
        return importlib.import_module("dllm_bench.samplers.triton_attention")
    except ImportError as exc:
        if "triton" in str(exc) and "triton_attention" not in str(exc):
            raise
        name = "_dllm_triton_attention"
        if name in sys.modules:
            return sys.modules[name]
        path = Path(__file__).with_name("triton_attention.py")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     spec: BlockAttentionSpec | None = None, mask: torch.Tensor | None = None,
                     scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """The Triton kernels (differentiable); see ``triton_attention.block_attention``."""
    _check(q, k, v, spec, mask)
    return _triton_module().block_attention(q, k, v, spec=spec, mask=mask, scale=scale,
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
              spec: BlockAttentionSpec | None = None, mask: torch.Tensor | None = None,
              backend: str = "sdpa", scale: float | None = None) -> torch.Tensor:
    """Block-diffusion attention through the chosen backend.

    Args:
        q: ``[batch, n_heads, q_len, head_dim]``.
        k, v: ``[batch, n_kv_heads, kv_len, head_dim]``; the queries are the last ``q_len``
            columns (``q_len == kv_len`` for the staircase layout).
        spec: block structure (module docstring); lets ``triton`` and ``flex`` skip masked tiles.
        mask: a dense mask instead of (or intersected with) ``spec``; see :func:`dense_mask`.
        backend: ``sdpa`` (default), ``triton`` or ``flex``.
        scale: score scale, default ``head_dim ** -0.5``.

    Returns:
        ``[batch, n_heads, q_len, head_dim]`` in ``q.dtype``; rows with no visible key are 0.

    Raises:
        BadInputError: unknown backend. ValueError: inconsistent shapes, or neither spec nor mask.
    """
    return _BACKEND_FNS[validate_attention_backend(backend)](q, k, v, spec=spec, mask=mask, scale=scale)


# ----------------------------------------------------------------------------- transformers


def _make_hf_attention(backend: str) -> Callable:
    fn = _BACKEND_FNS[backend]

    def hf_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
        if dropout:
            raise ValueError(f"{backend} block attention has no dropout; put the model in eval() "
                             "or set attention_dropout=0")
        spec = kwargs.get(SPEC_KWARG)
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        if spec is not None and not isinstance(spec, BlockAttentionSpec):
            raise ValueError(f"{SPEC_KWARG} must be a BlockAttentionSpec, got {type(spec).__name__}")
        if spec is not None:
            mask = None  # the spec is the mask (a 4-D mask built by the caller is redundant)
        elif mask is None:  # no mask from the caller: the module's own causal / full attention
            causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
            spec = BlockAttentionSpec(block_size=1 if causal else max(key.shape[2], 1))
        out = fn(query, key, value, spec=spec, mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    hf_attention.__name__ = f"dllm_{backend}_attention_forward"
    hf_attention.__doc__ = (
        f"transformers ``AttentionInterface`` function for the ``{backend}`` backend.\n\n"
        "Receives ``query [b, n_heads, q_len, d]``, ``key``/``value`` ``[b, n_kv_heads, kv_len, d]`` "
        "(after the KV-cache update, so the current tokens are the last ``q_len`` key columns). "
        f"The mask is, in order: the ``{SPEC_KWARG}`` kwarg of the model forward (a "
        "BlockAttentionSpec; tiles are skipped), else the 4-D ``attention_mask`` the caller "
        "passed (bool or additive), else the module's causal (``is_causal``) or full attention. "
        "Returns ``(out [b, q_len, n_heads, d], None)``.")
    return hf_attention


def register_transformers_attention() -> dict[str, str]:
    """Register ``dllm_sdpa`` / ``dllm_triton`` / ``dllm_flex`` with transformers (idempotent).

    Called when this module is imported (when transformers is installed). Use:
    ``model.set_attn_implementation(TRANSFORMERS_ATTN_NAMES[backend])`` and call the model
    with ``block_attention=spec`` (fast path), or with a 4-D boolean ``attention_mask``.
    These names have no ``AttentionMaskInterface`` entry, so transformers builds no mask
    for them: a 2-D padding mask is dropped (pass a spec or a 4-D mask instead), a 4-D
    mask is forwarded unchanged.

    Returns:
        backend name -> registered ``attn_implementation`` name.
    """
    from transformers import AttentionInterface

    for backend, name in TRANSFORMERS_ATTN_NAMES.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_hf_attention(backend))
    return dict(TRANSFORMERS_ATTN_NAMES)


def backend_attn_implementation(backend: str) -> str:
    """The transformers ``attn_implementation`` for an attention backend (registers it).

    Raises:
        BadInputError: unknown backend.
    """
    register_transformers_attention()
    return TRANSFORMERS_ATTN_NAMES[validate_attention_backend(backend)]


try:  # models.ModelAdapter.set_attn_backend imports this module to get the names registered
    register_transformers_attention()
except ImportError:  # pragma: no cover - transformers absent (kernel benchmark machines)
    pass
