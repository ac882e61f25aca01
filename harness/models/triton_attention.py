"""Triton kernels for block-diffusion attention at inference (forward, split-K decode).

Who sees whom is defined once, in :mod:`dllm_bench.models.layout`; this module computes
attention under a layout's per-row key bounds (:meth:`AttentionLayout.kernel_params`:
block-causal / full / causal layouts, left padding, queries at the end) without materialising
a mask, or under a dense boolean mask read tile by tile (any other layout). It needs only
``torch`` and ``triton`` and can be loaded without the package's other modules
(``benchmarks/kernel_speed.py`` does that on machines without the package).

There is no backward pass: no trainer calls these kernels (trainers use SDPA), so the
staircase-training and backward kernels were removed until one does.

Design (FlashAttention-2 online softmax, exp2 with ``log2 e`` folded into the scale, like
JetEngine's ``sparse_attn_varlen_v2`` / ``fused_kv_cache_attention`` in dLLM-RL
``sample/jetengine_ext/kernels/triton/attention/`` at 10b4fd1):

* **GQA packing.** One program handles one key/value head and a tile of ``BLOCK_M`` *rows*,
  where row ``r`` is (query token ``r // G``, query head ``kv_head * G + r % G``) and
  ``G = n_heads // n_kv_heads``. Each K/V tile is read once for all ``G`` heads: at decode
  time (``q_len = B = 4``, ``G = 4``) a 16-row tile covers the whole block.
* **Tile skipping.** Per query tile the key loop runs over ``[min(kv_start, first query
  column), max row bound)`` (the block-causal bound; the first query column so that a pad
  query sees itself, the layout's pad rule); the mask is applied per element inside that
  range (never built in memory).
* **Split-K (flash-decoding).** For calls with few query tiles the key range is cut into
  ``num_splits`` chunks run by separate programs (about one program per SM); the last program
  of a tile to finish (atomic ticket) merges the partial results with their log-sum-exps in
  the same launch, so a decode call is one kernel launch.
* **Measured** (H100 SXM, bf16, 32/8 heads, d=128, B=4, batch 8-32, context 2k-8k;
  ``leaderboards/benchmarks/kernel_speed-nvidia-h100-80gb-hbm3.json``): 2.6-2.9 TB/s of K/V
  reads (copy ceiling 3.0 TB/s), 1.18-1.38x the best of SDPA / FlexAttention per kernel
  (CUDA-graph replay).

Under ``TRITON_INTERPRET=1`` (CPU) half-precision ``tl.dot`` is not emulated correctly by
Triton 3.x's interpreter, so bf16/fp16 operands are upcast to fp32 right before each dot
(``UPCAST``; the probabilities are still rounded to the value dtype first, as on GPU).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
import triton
import triton.language as tl

# integer scalars that must not be specialised to constexpr when they happen to equal 1
_SCALARS = ["n_kv_heads", "q_len", "kv_len", "q_offset", "block_size", "origin_mod"]


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once: triton.jit decides at import


def interpreting() -> bool:
    """True when this module's kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``
    when the module was imported)."""
    return _INTERPRET


# ----------------------------------------------------------------------------- device helpers


# Reductions as tl.reduce with triton's own combine functions: tl.max / tl.sum / tl.zeros /
# tl.cdiv are @jit functions bound to the interpreter mode of the first `import triton`, so
# calling them breaks TRITON_INTERPRET=1 when triton was imported earlier in the process (e.g.
# by transformers); the interpreter maps these combine functions to numpy reductions.
@triton.jit
def _rmax(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def _rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _row_bounds(qpos, row_ok, kv_len, block_size, origin_mod):
    """Per query row (column ``qpos``): exclusive bound on visible keys, the end of its block
    (``dllm_bench.models.layout.row_bounds``; 0 for rows past ``q_len``)."""
    # end column (exclusive) of the block holding column qpos (qpos >= 0, no negative %)
    q_end = qpos - (qpos + block_size - origin_mod) % block_size + block_size
    return tl.where(row_ok, tl.minimum(q_end, kv_len), 0)


@triton.jit
def _visible(kpos, k_ok, kv_lo, bound, qpos, mrow, smk, HAS_MASK: tl.constexpr):
    """[rows, keys] visibility (``dllm_bench.models.layout.visible``): keys in ``[kv_lo, bound)``
    and the row's own column; with HAS_MASK also the caller's dense boolean mask (``mrow``:
    per-row pointers)."""
    vis = ((k_ok & (kpos >= kv_lo))[None, :] & (kpos[None, :] < bound[:, None])) | \
        (k_ok[None, :] & (kpos[None, :] == qpos[:, None]))
    if HAS_MASK:
        dense = tl.load(mrow[:, None] + kpos[None, :].to(tl.int64) * smk, mask=vis, other=0)
        vis = vis & (dense != 0)
    return vis


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _load_tile(base, pos, ok, stride, offs_d, d_ok):
    """[len(pos), BLOCK_D] rows ``pos`` of one head's K or V (zeros where not ``ok``)."""
    # 32-bit offsets inside one head (kv_len * stride < 2**31); the head's base is 64-bit
    return tl.load(base + (pos[:, None] * stride + offs_d[None, :]),
                   mask=ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, start_n, end, offs_d, d_ok,
              kv_lo, bound, qpos, qk_scale, mrow, smk,
              BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    kpos = start_n + tl.arange(0, BLOCK_N)
    k_ok = kpos < end
    k = _load_tile(k_base, kpos, k_ok, skn, offs_d, d_ok)
    s = _dot(q, tl.trans(k), UPCAST, PREC) * qk_scale
    vis = _visible(kpos, k_ok, kv_lo, bound, qpos, mrow, smk, HAS_MASK)
    s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, _rmax(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + _rsum(p, 1)
    v = _load_tile(v_base, kpos, k_ok, svn, offs_d, d_ok)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PREC)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=_SCALARS)
def _fwd_kernel(
    Q, K, V, O, LSE, KV_START, MASK, OUT, LSE_OUT, SEM,  # noqa: E741 - Q, K, V, O: the attention operands' names
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    sob, soh, som, sos, slb, slh, sls, smb, smh, smq, smk, sfb, sfh, sfm,
    n_kv_heads, q_len, kv_len, q_offset,
    block_size, origin_mod, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """One (query tile, kv head, K split) program. With NUM_SPLITS > 1, O / LSE are the fp32
    partial buffers ``[b, hq, splits, lq, (d)]``; the last split to finish a tile (atomic
    ticket on SEM) merges them into OUT / LSE_OUT and resets its SEM counter to 0."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kvh = pid_bh % n_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = (kvh * GROUP + rows % GROUP).to(tl.int64)
    row_ok = tok < q_len
    qpos = q_offset + tok
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + head[:, None] * sqh + tok[:, None].to(tl.int64) * sqm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    kv_lo = tl.load(KV_START + b)
    bound = _row_bounds(qpos, row_ok, kv_len, block_size, origin_mod)
    k_base = K + b * skb + kvh.to(tl.int64) * skh
    v_base = V + b * svb + kvh.to(tl.int64) * svh
    mrow = MASK + b * smb + head * smh + tok.to(tl.int64) * smq

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    # keys [lo, hi), split across NUM_SPLITS programs; lo <= the tile's first query column (pad rule)
    lo = (tl.minimum(kv_lo, q_offset + (pid_m * BLOCK_M) // GROUP) // BLOCK_N) * BLOCK_N
    hi = _rmax(bound, 0)
    n_tiles = (tl.maximum(hi - lo, 0) + BLOCK_N - 1) // BLOCK_N
    per = ((n_tiles + NUM_SPLITS - 1) // NUM_SPLITS)
    start = lo + pid_s * per * BLOCK_N
    end = tl.minimum(start + per * BLOCK_N, hi)
    for start_n in range(start, end, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, start_n, end, offs_d,
                                  d_ok, kv_lo, bound, qpos, qk_scale, mrow, smk, BLOCK_N, HAS_MASK,
                                  UPCAST, PREC)

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))
    tok64 = tok.to(tl.int64)
    o_rows = O + b * sob + head[:, None] * soh + tok64[:, None] * som + offs_d[None, :]
    l_rows = LSE + b * slb + head * slh + tok
    rd_ok = row_ok[:, None] & d_ok[None, :]
    tl.store(o_rows + pid_s * sos, out.to(O.dtype.element_ty), mask=rd_ok)
    if STORE_LSE or NUM_SPLITS > 1:
        tl.store(l_rows + pid_s * sls, lse, mask=row_ok)
    if NUM_SPLITS > 1:
        # flash-decoding merge inside the same launch: the last split of this tile combines
        tl.debug_barrier()
        sem = SEM + pid_bh * tl.num_programs(0) + pid_m
        ticket = tl.atomic_add(sem, 1, sem="acq_rel", scope="gpu")
        if ticket == NUM_SPLITS - 1:
            offs_s = tl.arange(0, BLOCK_S)
            lse_all = tl.load(l_rows[:, None] + offs_s[None, :] * sls,
                              mask=row_ok[:, None] & (offs_s < NUM_SPLITS)[None, :],
                              other=float("-inf"), cache_modifier=".cg")
            m_all = _rmax(lse_all, 1)
            m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
            w = tl.exp2(lse_all - m_all[:, None])  # [BLOCK_M, BLOCK_S]
            tot = _rsum(w, 1)
            merged = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
            for sp in tl.static_range(NUM_SPLITS):
                w_s = _rsum(tl.where(offs_s[None, :] == sp, w, 0.0), 1)
                o_s = tl.load(o_rows + sp * sos, mask=rd_ok, other=0.0, cache_modifier=".cg")
                merged += w_s[:, None] * o_s
            has = tot > 0.0
            merged = merged / tl.where(has, tot, 1.0)[:, None]
            tl.store(OUT + b * sfb + head[:, None] * sfh + tok64[:, None] * sfm + offs_d[None, :],
                     merged.to(OUT.dtype.element_ty), mask=rd_ok)
            if STORE_LSE:
                # LSE_OUT is a contiguous [b, n_heads, q_len]
                tl.store(LSE_OUT + (b * (n_kv_heads * GROUP) + head) * q_len + tok,
                         tl.where(has, m_all + tl.log2(tl.where(has, tot, 1.0)), float("-inf")), mask=row_ok)
            tl.atomic_xchg(sem, 0)


# ----------------------------------------------------------------------------- host side


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


@functools.lru_cache(maxsize=4096)
def default_config(q_len: int, kv_len: int, group: int, head_dim: int, batch: int, n_kv_heads: int,
                   device: torch.device) -> dict[str, int]:
    """Tiles, warps, pipeline stages and K splits for one call (tuned on an H100, bf16, d=128).

    * Decode (``q_len * group <= 32`` rows): ``BLOCK_M`` = the rows rounded up to 16,
      ``BLOCK_N`` 64, 4 warps, 3 stages; K splits so that the grid has about one program
      per SM (each split >= 4 key tiles). H100, 32/8 heads, B=4: ~2.8 TB/s of K/V reads.
    * Otherwise (prefill): 64x64 tiles, 8 warps (no register spills), 2 stages.

    Returns a new dict each call (callers may update it).
    """
    rows = q_len * group
    if rows <= 32:
        block_m, block_n, warps, stages = max(16, _pow2(rows)), 64, 4, 3
    else:
        block_m, block_n, warps, stages = 64, 64, 8, 2
    splits = 1
    if device.type == "cuda":
        base = _cdiv(rows, block_m) * batch * n_kv_heads
        want = max(1, round(_sm_count(device) / base))
        splits = max(1, min(want, _cdiv(kv_len, 4 * block_n), 64))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_splits": splits, "num_warps": warps,
            "num_stages": stages}


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_device(q: torch.Tensor) -> None:
    if not q.is_cuda and not _INTERPRET:
        raise RuntimeError("the triton attention backend needs a CUDA device "
                           "(or TRITON_INTERPRET=1 to run the kernels on the CPU interpreter)")


@functools.lru_cache(maxsize=1024)
def _constexprs(dtype: torch.dtype, group: int, d: int, block_m: int, block_n: int, has_mask: bool,
                warps: int, stages: int) -> dict[str, Any]:
    return dict(GROUP=group, HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK_M=block_m, BLOCK_N=block_n,
                HAS_MASK=has_mask, UPCAST=_INTERPRET and dtype != torch.float32,
                PREC="ieee" if dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages)


def _forward(q, k, v, kv_start, mask, params, scale, cfg, store_lse: bool):
    """``params``: (block_size, q_offset, origin_mod, kv_len) (``layout.KernelParams``). Returns
    ``out [b, hq, lq, d]`` (q.dtype) and ``lse`` (log2 domain) ``[b, hq, lq]`` fp32 (None unless
    ``store_lse``)."""
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    block_size, q_offset, origin_mod, _ = params
    splits = int(cfg["num_splits"])
    ce = _constexprs(q.dtype, hq // hkv, d, int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), mask is not None,
                     int(cfg["num_warps"]), int(cfg["num_stages"]))
    qk_scale = scale * 1.4426950408889634  # log2(e)
    m_tiles = _cdiv(lq * ce["GROUP"], ce["BLOCK_M"])
    out = torch.empty_like(q)
    lse = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device) if store_lse else None
    if splits == 1:
        o_buf, l_buf, sem, sos, sls = out, (lse if lse is not None else out), kv_start, 0, 0
        l_strides = lse.stride() if lse is not None else (0, 0, 0)
    else:
        o_buf, l_buf, sem = _split_workspace(q.device, (b, hq, splits, lq, d), b * hkv * m_tiles)
        sos, sls = o_buf.stride(2), l_buf.stride(2)
        l_strides = l_buf.stride()
    m_ptr, m_strides = (kv_start, (0, 0, 0, 0)) if mask is None else (mask, mask.stride())
    qs, ks, vs, os_, fs = q.stride(), k.stride(), v.stride(), o_buf.stride(), out.stride()
    _fwd_kernel[(m_tiles, b * hkv, splits)](
        q, k, v, o_buf, l_buf, kv_start, m_ptr, out, lse if store_lse else out, sem,
        qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2],
        os_[0], os_[1], os_[-2], sos, l_strides[0], l_strides[1], sls, *m_strides, fs[0], fs[1], fs[2],
        hkv, lq, lk, q_offset, block_size, origin_mod, qk_scale,
        NUM_SPLITS=splits, BLOCK_S=_pow2(splits), STORE_LSE=store_lse, **ce,
    )
    return out, lse


_WORKSPACE: dict = {}


def _split_workspace(device: torch.device, shape: tuple[int, ...], n_sem: int):
    """Cached fp32 partial-output / partial-LSE buffers and the zeroed split counters.

    Reused across calls: launches on one stream run in order, and every call leaves the
    counters at 0. (Concurrent calls on different streams get different buffers.)
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream, shape)
    ws = _WORKSPACE.get(key)
    if ws is None or ws[2].numel() < n_sem:
        if len(_WORKSPACE) > 64:
            _WORKSPACE.clear()
        ws = (torch.empty(shape, dtype=torch.float32, device=device),
              torch.empty(shape[:-1], dtype=torch.float32, device=device),
              torch.zeros(max(n_sem, 1), dtype=torch.int32, device=device))
        _WORKSPACE[key] = ws
    return ws


def dense_mask_view(mask: torch.Tensor, b: int, hq: int, lq: int, lk: int) -> torch.Tensor:
    """Broadcast a boolean (or additive float) mask to a ``[b, hq, lq, lk]`` bool view.

    Accepts ``[lq, lk]``, ``[b or 1, lq, lk]`` or ``[b or 1, hq or 1, lq, lk]``; an additive
    float mask counts ``> finfo.min / 2`` as attend. Columns beyond ``lk`` are dropped
    (transformers may pass a mask wider than the keys).

    Raises:
        ValueError: the mask does not broadcast.
    """
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[-1] > lk:
        mask = mask[..., :lk]
    try:
        return mask.expand(b, hq, lq, lk)
    except RuntimeError as exc:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to {(b, hq, lq, lk)}") from exc


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: Any = None,
                    mask: torch.Tensor | None = None, scale: float | None = None,
                    num_splits: int | None = None, config: dict[str, int] | None = None,
                    return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-diffusion attention with the Triton kernels (inference: no gradient).

    Args:
        q: ``[batch, n_heads, q_len, head_dim]`` (fp32, bf16 or fp16; last dim contiguous).
        k, v: ``[batch, n_kv_heads, kv_len, head_dim]``. Within one head,
            ``kv_len * k.stride(2)`` must stay below 2**31.
        layout: an ``AttentionLayout`` (:mod:`dllm_bench.models.layout`). When its
            :meth:`~AttentionLayout.kernel_params` exist the mask is computed in the kernel
            and masked tiles are skipped; otherwise its dense mask is read tile by tile.
        mask: optional dense boolean mask (True = attend) broadcastable to
            ``[batch, n_heads, q_len, kv_len]`` (see :func:`dense_mask_view`); read tile by
            tile. Alone it allows any pattern (no tile skipping except leading all-masked key
            columns); with ``layout`` the two are intersected.
        scale: score scale (default ``head_dim ** -0.5``).
        num_splits: split-K factor (default: :func:`default_config`).
        config: override ``BLOCK_M`` / ``BLOCK_N`` / ``num_warps`` / ``num_stages``.
        return_lse: also return the natural-log log-sum-exp ``[batch, n_heads, q_len]`` fp32
            (``-inf`` for rows with no visible key).

    Returns:
        ``out [batch, n_heads, q_len, head_dim]`` in ``q.dtype`` (rows with no visible key are 0).

    Raises:
        RuntimeError: not on CUDA and not under ``TRITON_INTERPRET=1``, or a gradient is
            required (no backward kernels).
        ValueError: neither ``layout`` nor ``mask``; inconsistent shapes (see
            ``AttentionLayout.q_offset``).
    """
    _check_device(q)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"n_heads {hq} is not a multiple of n_kv_heads {hkv}")
    if lq > lk:
        raise ValueError(f"q_len {lq} > kv_len {lk}: queries must be the last key columns")
    if layout is None and mask is None:
        raise ValueError("block_attention needs a layout, a mask, or both")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError("the triton attention kernels have no backward pass (inference only); "
                           "train with the sdpa or flex backend")
    params = None if layout is None else layout.kernel_params(lq, lk)
    if layout is not None and params is None:  # not expressible by row bounds: read its dense mask
        dense = layout.dense(b, lq, lk, q.device)
        mask = dense if mask is None else dense & dense_mask_view(mask.to(q.device), b, hq, lq, lk)
        layout = None
    if mask is not None:
        mask = dense_mask_view(mask.to(q.device), b, hq, lq, lk)
    if layout is not None:
        kv_start = layout.kv_start_for(b, q.device)
    else:  # one block covering everything; the dense mask decides
        assert mask is not None, "checked above: a layout or a mask"
        params = (max(lk, 1), lk - lq, 0, lk)
        col_any = mask.any(dim=2).any(dim=1)  # [b, lk]
        kv_start = torch.where(col_any.any(dim=1), col_any.int().argmax(dim=1), lk).to(torch.int32)
    scale = d ** -0.5 if scale is None else float(scale)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = _prep(q), _prep(k), _prep(v)
    cfg = default_config(lq, lk, hq // hkv, d, b, hkv, q.device)
    if config or num_splits is not None:
        cfg = dict(cfg, **(config or {}))
        if num_splits is not None:
            cfg["num_splits"] = int(num_splits)
    out, lse = _forward(q, k, v, kv_start, mask, params, scale, cfg, return_lse)
    if return_lse:
        return out, lse * math.log(2.0)
    return out
