"""Who may attend to whom: one layout description (:class:`AttentionLayout`), one visibility
predicate (:func:`visible`), and what every attention backend needs derived from it.

Samplers and trainers describe a forward with an :class:`AttentionLayout`;
:meth:`dllm_bench.models.ModelAdapter.forward` derives the dense mask for ``sdpa`` / ``eager``
(:func:`forward_mask_kwargs`), and the ``flex`` / ``triton`` backends of
:mod:`dllm_bench.models.attention` derive a FlexAttention ``mask_mod``
(:meth:`AttentionLayout.mask_mod`) or the Triton kernels' per-row key bounds
(:meth:`AttentionLayout.kernel_params`). All are tested against :func:`visible` exhaustively
on small shapes.

**Columns.** A forward has ``kv_len`` key columns (0-based sequence columns, pads included:
the cache's read length with a KV cache) and ``q_len`` query columns
``q_start .. q_start + q_len - 1`` (by default the *last* ``q_len`` key columns, the queries
of a forward against a cache). The first ``n_clean = kv_len - n_seg * B`` columns are
*clean*; the rest are ``n_seg`` *copy segments* of ``B`` columns (training layouts only).

**Blocks** (block-diffusion; :mod:`dllm_bench.blocks` places the prompt so that both block
alignments give blocks ``[origin + cB, origin + (c+1)B)``): clean column ``j`` is in block
``floor((j - block_origin) / B)``. ``block_size=None`` is full (bidirectional) attention (one
block), ``block_size=1`` causal attention.

**The predicate** ``visible(q, k)`` for a sequence ``b`` (True = query column ``q`` may attend
key column ``k``):

* clean key ``k`` is *real* iff ``kv_start[b] <= k < kv_end[b]`` (left pads before, right
  pads after; defaults: no pads); a key of a padding segment (block ``-1``) is never real;
* clean query: real clean keys of blocks ``<= block(q)`` (block-causal: bidirectional
  inside the block, causal across blocks; SDAR, arXiv 2510.06303; BD3-LM, arXiv 2503.09573);
* query in a copy segment that copies clean block ``c`` (``segments[b, s]``): real clean keys
  of blocks ``< c`` and the keys of its own segment (bidirectionally) — never its own or
  later clean blocks, never another segment (the staircase training mask of dLLM-RL
  ``train/rl_trado.py`` at 10b4fd1, one masked copy per round; DiRL, arXiv 2512.22234, §4.1;
  this package's packed layout puts one segment per (block, step) state in one row, see
  :mod:`dllm_bench.trainers.trajectory`);
* **pad rule**: every query sees its own column (``k == q``), so no row is ever empty
  (softmax over no key is NaN in SDPA and NaN values would reach real rows through
  ``0 * NaN``); pads are never keys of another column, so a pad row's output is never read
  by a real row, and no caller reads a pad row's logits.

Layouts built by :meth:`AttentionLayout.staircase` (``[prompt (P) ; clean x0 (L) ; masked
copy xt (L)]``, the copy being ``L / B`` segments of blocks ``0 .. L/B - 1`` counted from
the response start) and :meth:`AttentionLayout.packed` (segments per row) are the training
layouts; every other layout is block-causal / full / causal over clean columns only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

PAD_SEGMENT = -1
"""Block of a padding copy segment (a packed row with fewer segments than the batch's longest)."""


class KernelParams(NamedTuple):
    """Scalar parameters of the Triton kernels' per-row bounds (block-causal layouts with
    queries at the end and left padding only). Row of query column ``q``: visible keys are
    ``[kv_start[b], bound(q))`` and ``q`` itself, with ``bound(q) = min(end of q's block, kv_len)``.

    Attributes:
        block_size: B (``kv_len`` for full attention).
        q_offset: column of query 0 (``kv_len - q_len``).
        origin_mod: ``block_origin mod B`` (>= 0): blocks start at columns ``= origin_mod (mod B)``.
        kv_len: number of key columns.
    """

    block_size: int
    q_offset: int
    origin_mod: int
    kv_len: int


@dataclass(eq=False)
class AttentionLayout:
    """The attention layout of one forward (module docstring for the rule).

    Attributes:
        block_size: B (>= 1); None = full attention (one block); 1 = causal.
        kv_start: ``[batch]`` integer tensor, first real key column of each sequence (its
            number of left pads), or None (no left padding).
        kv_end: ``[batch]`` integer tensor, end (exclusive) of the real clean keys (right
            padding), or None (every clean column from ``kv_start`` on is real).
        block_origin: a column where a block starts (blocks are counted from it in both
            directions).
        q_start: column of query 0, or None for the last ``q_len`` key columns.
        segments: ``[batch, n_seg]`` long, the clean block (counted from ``block_origin``)
            each copy segment copies, :data:`PAD_SEGMENT` for padding segments; None for a
            layout without copies. Needs a ``block_size``.

    Raises:
        ValueError: ``block_size < 1``, or ``segments`` without a block size.
    """

    block_size: int | None = None
    kv_start: torch.Tensor | None = None
    kv_end: torch.Tensor | None = None
    block_origin: int = 0
    q_start: int | None = None
    segments: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.block_size is not None and int(self.block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.segments is not None and self.block_size is None:
            raise ValueError("copy segments need a block size")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_prompt_lens(cls, prompt_lens: list[int] | torch.Tensor, padded_prompt_len: int,
                         block_size: int | None, *, device: torch.device | str | None = None) -> AttentionLayout:
        """Block-causal layout for prompts left-padded to ``padded_prompt_len`` columns.

        Raises:
            ValueError: a prompt longer than ``padded_prompt_len``.
        """
        lens = torch.as_tensor(prompt_lens, dtype=torch.long)
        if bool((lens > padded_prompt_len).any()):
            raise ValueError(f"prompt lengths {lens.tolist()} exceed padded length {padded_prompt_len}")
        return cls(block_size=block_size, kv_start=(padded_prompt_len - lens).to(device))

    @classmethod
    def staircase(cls, prompt_valid: torch.Tensor, gen_len: int, block_size: int) -> AttentionLayout:
        """The training layout ``[prompt (P) ; clean x0 (L) ; masked copy xt (L)]`` (dLLM-RL
        ``train/rl_trado.py`` at 10b4fd1): blocks counted from the response start ``P``, the
        masked copy one segment per response block.

        Args:
            prompt_valid: ``[b, P]`` bool, left padding (:func:`dllm_bench.blocks.left_pad_prompts`).
            gen_len: L, a multiple of B.
            block_size: B.

        Raises:
            ValueError: L not a multiple of B, or ``prompt_valid`` not left padding.
        """
        if gen_len % block_size:
            raise ValueError(f"gen length {gen_len} must be a multiple of block size {block_size}")
        b, P = prompt_valid.shape
        segs = torch.arange(gen_len // block_size, device=prompt_valid.device).expand(b, -1)
        return cls(block_size=block_size, kv_start=left_pads(prompt_valid), block_origin=P, segments=segs)

    # ------------------------------------------------------------------ views
    def select(self, rows: torch.Tensor) -> AttentionLayout:
        """The layout of batch rows ``rows`` (``[n]`` long)."""
        def pick(t):
            return None if t is None else t[rows.to(t.device)]

        return replace(self, kv_start=pick(self.kv_start), kv_end=pick(self.kv_end),
                       segments=pick(self.segments), _cache={})

    def to(self, device: torch.device | str) -> AttentionLayout:
        def move(t):
            return None if t is None else t.to(device)

        return replace(self, kv_start=move(self.kv_start), kv_end=move(self.kv_end),
                       segments=move(self.segments), _cache={})

    @property
    def n_segments(self) -> int:
        return 0 if self.segments is None else int(self.segments.shape[1])

    def q_offset(self, q_len: int, kv_len: int) -> int:
        """Column of query 0.

        Raises:
            ValueError: the queries do not fit in ``[0, kv_len)``, or a copy layout whose
                ``kv_len`` is shorter than its segments.
        """
        q0 = kv_len - q_len if self.q_start is None else int(self.q_start)
        if q0 < 0 or q0 + q_len > kv_len:
            raise ValueError(f"queries [{q0}, {q0 + q_len}) outside the {kv_len} key columns")
        if self.n_segments * (self.block_size or 0) > kv_len:
            raise ValueError(f"kv_len {kv_len} < {self.n_segments} copy segments of {self.block_size}")
        return q0

    def batch_size(self, default: int) -> int:
        for t in (self.kv_start, self.kv_end, self.segments):
            if t is not None:
                return int(t.shape[0])
        return default

    # ------------------------------------------------------------------ derivations
    def dense(self, batch: int, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense boolean mask from :func:`visible`, ``True`` = may attend.

        Returns:
            ``[batch, 1, q_len, kv_len]`` bool (cached per shape and device).

        Raises:
            ValueError: see :meth:`q_offset`; per-row tensors of another batch size.
        """
        device = torch.device(device)
        key = ("dense", batch, q_len, kv_len, str(device))
        m = self._cache.get(key)
        if m is None:
            q0 = self.q_offset(q_len, kv_len)
            bi = torch.arange(batch, device=device)[:, None, None]
            qi = torch.arange(q0, q0 + q_len, device=device)[None, :, None]
            ki = torch.arange(kv_len, device=device)[None, None, :]
            m = self._cache[key] = visible(self.to(device), bi, qi, ki, kv_len)[:, None]
        return m

    def mask_mod(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Callable:
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``: :func:`visible` with
        ``q_idx`` over ``0 .. q_len - 1`` (query column ``q_offset + q_idx``)."""
        q0 = self.q_offset(q_len, kv_len)
        lay = self.to(device)

        def mask_mod(b, h, q_idx, kv_idx):
            return visible(lay, b, q_idx + q0, kv_idx, kv_len)

        return mask_mod

    def kernel_params(self, q_len: int, kv_len: int) -> KernelParams | None:
        """Scalars of the Triton kernels' row bounds (:class:`KernelParams`), or None when the
        kernels cannot express this layout (copy segments, right padding, queries not at the
        end): the backend then reads the dense mask instead.

        Raises:
            ValueError: see :meth:`q_offset`.
        """
        q0 = self.q_offset(q_len, kv_len)
        if self.segments is not None or self.kv_end is not None or q0 != kv_len - q_len:
            return None
        if self.block_size is None:  # one block over every column
            return KernelParams(max(kv_len, 1), q0, 0, kv_len)
        B = int(self.block_size)
        return KernelParams(B, q0, int(self.block_origin) % B, kv_len)

    def kv_start_for(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[batch]`` int32 ``kv_start`` on ``device`` (zeros without left padding).

        Raises:
            ValueError: ``kv_start`` has the wrong length.
        """
        key = ("kv_start", batch, str(device))
        ks = self._cache.get(key)
        if ks is None:
            if self.kv_start is None:
                ks = torch.zeros(batch, dtype=torch.int32, device=device)
            else:
                ks = self.kv_start.to(device=device, dtype=torch.int32).reshape(-1)
                if ks.numel() == 1 and batch > 1:
                    ks = ks.expand(batch)
                if ks.numel() != batch:
                    raise ValueError(f"kv_start has {ks.numel()} entries for batch {batch}")
            ks = self._cache[key] = ks.contiguous()
        return ks


LAYOUT_BACKENDS = ("triton", "flex")
"""Attention backends that read the :class:`AttentionLayout` itself instead of a dense mask."""

LAYOUT_KWARG = "attention_layout"
"""Name of the model-forward kwarg that carries the :class:`AttentionLayout` to those backends."""


def forward_mask_kwargs(attention: AttentionLayout | torch.Tensor | None, attn_backend: str,
                        input_ids: torch.Tensor, dtype: torch.dtype, kv_len: int | None = None) -> dict:
    """The model-forward kwargs that carry the mask, derived for the attention backend.

    Args:
        attention: a layout, an explicit ``[b, 1, t, kv_len]`` bool mask, or None.
        attn_backend: ``sdpa`` / ``eager`` / ``flex`` / ``triton`` / a registered name.
        input_ids: ``[b, t]`` (the queries).
        dtype: the model dtype (additive masks for ``eager``).
        kv_len: key columns (the cache's read length), default ``t``.

    Returns:
        ``{"attention_mask": None, LAYOUT_KWARG: layout}`` for :data:`LAYOUT_BACKENDS`, else
        ``{"attention_mask": <the dense mask as the backend reads it, or None>}``.
    """
    if isinstance(attention, AttentionLayout):
        if attn_backend in LAYOUT_BACKENDS:
            return {"attention_mask": None, LAYOUT_KWARG: attention}
        b, t = input_ids.shape
        attention = attention.dense(b, t, t if kv_len is None else kv_len, input_ids.device)
    return {"attention_mask": None if attention is None else backend_mask(attention, attn_backend, dtype)}


def backend_mask(mask: torch.Tensor, attn_backend: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = may attend) as the attention backend reads it: additive (0 where
    allowed, ``dtype`` min elsewhere) for ``eager``, unchanged for every other backend."""
    if attn_backend != "eager" or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def left_pads(valid: torch.Tensor) -> torch.Tensor:
    """``[b]`` long number of left pads of a ``[b, n]`` left-padded validity mask.

    Raises:
        ValueError: the mask is not left padding (a pad after a real token).
    """
    valid = valid.to(torch.bool)
    n_pad = (~valid).sum(dim=1)
    cols = torch.arange(valid.shape[1], device=valid.device)
    if not bool(torch.equal(valid, cols[None, :] >= n_pad[:, None])):
        raise ValueError("the validity mask must describe left padding (pads first, then real tokens)")
    return n_pad


def _row_value(t: torch.Tensor | None, b: torch.Tensor, default: int | torch.Tensor) -> torch.Tensor | int:
    if t is None:
        return default
    t = t.reshape(-1).long()
    return t[b] if t.numel() > 1 else t[0]


def visible(layout: AttentionLayout, b: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
            kv_len: int) -> torch.Tensor:
    """The visibility predicate (module docstring) on broadcastable integer tensors.

    Args:
        layout: the layout (its tensors on the device of ``b``).
        b: batch row(s); q: query column(s); k: key column(s) (0-based sequence columns).
        kv_len: number of key columns of the forward.

    Returns:
        bool tensor of the broadcast shape, True = ``q`` may attend ``k``.
    """
    B = layout.block_size
    n_clean = kv_len - layout.n_segments * (B or 0)
    kv_start = _row_value(layout.kv_start, b, 0)
    kv_end = _row_value(layout.kv_end, b, n_clean)
    real = (k >= kv_start) & (k < kv_end)
    if B is None:
        return real | (k == q)
    B, origin = int(B), int(layout.block_origin)
    q_blk = torch.div(q - origin, B, rounding_mode="floor")
    k_blk = torch.div(k - origin, B, rounding_mode="floor")
    if layout.segments is None:
        return (real & (k_blk <= q_blk)) | (k == q)
    segs = layout.segments.long()
    n_seg = segs.shape[1]
    q_clean, k_clean = q < n_clean, k < n_clean
    q_seg = torch.clamp(torch.div(q - n_clean, B, rounding_mode="floor"), 0, n_seg - 1)
    k_seg = torch.clamp(torch.div(k - n_clean, B, rounding_mode="floor"), 0, n_seg - 1)
    q_copies = segs[b, q_seg]  # the clean block a copy query's segment copies
    clean_row = q_clean & k_clean & real & (k_blk <= q_blk)
    copy_row = (~q_clean) & ((k_clean & real & (k_blk < q_copies))
                             | ((~k_clean) & (k_seg == q_seg) & (q_copies != PAD_SEGMENT)))
    return clean_row | copy_row | (k == q)


def row_bounds(params: KernelParams, kv_start: torch.Tensor, q_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernels' per-row key ranges (``_row_bounds`` there), in PyTorch for tests.

    Returns:
        ``lo [b, 1]`` and ``hi [1, q_len]``: row ``i`` of sequence ``b`` sees keys
        ``[lo[b], hi[i])`` and its own column ``q_offset + i``.
    """
    B = params.block_size
    qpos = torch.arange(q_len, device=kv_start.device) + params.q_offset
    q_end = qpos - torch.remainder(qpos + B - params.origin_mod, B) + B
    return kv_start.long()[:, None], torch.clamp(q_end, max=params.kv_len)[None, :]
