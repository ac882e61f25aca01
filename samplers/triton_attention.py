"""Triton kernels for block-diffusion attention (forward, split-K decode, backward).

The masks are defined in :mod:`dllm_bench.samplers.attention` (module docstring there); this
module computes attention under them without materialising a mask. It needs only ``torch``
and ``triton`` and can be loaded by file path (``benchmarks/kernel_speed.py`` does that on
machines without the package).

Design (FlashAttention-2 online softmax, exp2 with ``log2 e`` folded into the scale, like
JetEngine's ``sparse_attn_varlen_v2`` / ``fused_kv_cache_attention`` in dLLM-RL
``sample/jetengine_ext/kernels/triton/attention/`` at 10b4fd1):

* **GQA packing.** One program handles one key/value head and a tile of ``BLOCK_M`` *rows*,
  where row ``r`` is (query token ``r // G``, query head ``kv_head * G + r % G``) and
  ``G = n_heads // n_kv_heads``. Each K/V tile is read once for all ``G`` heads: at decode
  time (``q_len = B = 4``, ``G = 4``) a 16-row tile covers the whole block.
* **Tile skipping.** Per query tile the key loop runs over ``[kv_start, max row bound)`` of
  clean keys (the staircase / block-causal bound) and, in the staircase layout, over the
  masked-copy block(s) of the tile's masked rows only; the mask is applied per element
  inside those ranges (never built in memory).
* **Split-K (flash-decoding).** For inference calls with few query tiles the clean key range
  is cut into ``num_splits`` chunks run by separate programs (about one program per SM);
  the last program of a tile to finish (atomic ticket) merges the partial results with
  their log-sum-exps in the same launch, so a decode call is one kernel launch.
* **Measured** (H100 SXM, bf16, 32/8 heads, d=128, B=4, batch 8-32, context 2k-8k;
  ``leaderboards/benchmarks/kernel_speed-nvidia-h100-80gb-hbm3.json``): 2.6-2.9 TB/s of K/V
  reads (copy ceiling 3.0 TB/s), 1.18-1.38x the best of SDPA / FlexAttention per kernel
  (CUDA-graph replay). The staircase training kernels are correct but slower than
  FlexAttention there (fwd ~3x, fwd+bwd ~2x).
* **Backward.** ``dK/dV`` per key tile (looping over the query rows that can see it, all
  heads of the group) and ``dQ`` per query tile; no atomics. ``softmax`` statistics are kept
  in the log2 domain.

Under ``TRITON_INTERPRET=1`` (CPU) half-precision ``tl.dot`` is not emulated correctly by
Triton 3.x's interpreter, so bf16/fp16 operands are upcast to fp32 right before each dot
(``UPCAST``; the probabilities are still rounded to the value dtype first, as on GPU).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

_BIG = tl.constexpr(1 << 30)
# integer scalars that must not be specialised to constexpr when they happen to equal 1
_SCALARS = ["n_kv_heads", "n_heads", "q_len", "kv_len", "q_offset", "block_size", "origin_mod",
            "resp_start", "clean_len"]


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
def _rmin(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@triton.jit
def _rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _row_bounds(qpos, row_ok, kv_len, block_size, origin_mod, resp_start, clean_len,
                HAS_COPY: tl.constexpr):
    """Per query row: exclusive bound on visible clean keys, and masked-copy block (-1 if none)."""
    # end column (exclusive) of the clean block holding column qpos (qpos >= 0, no negative %)
    q_end = qpos - (qpos + block_size - origin_mod) % block_size + block_size
    if HAS_COPY:
        is_masked = qpos >= clean_len
        m_blk = tl.where(is_masked, tl.maximum(qpos - clean_len, 0) // block_size, -1)
        bound = tl.where(is_masked, resp_start + m_blk * block_size, tl.minimum(q_end, clean_len))
    else:
        m_blk = qpos * 0 - 1
        bound = tl.minimum(q_end, kv_len)
    bound = tl.where(row_ok, bound, 0)
    m_blk = tl.where(row_ok, m_blk, -1)
    return bound, m_blk


@triton.jit
def _visible(kpos, k_ok, kv_lo, bound, m_blk, clean_len, block_size, mrow, smk,
             HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr):
    """[rows, keys] visibility (see attention.py): clean keys below the row bound, or own masked
    block; with HAS_MASK also the caller's dense boolean mask (``mrow``: per-row pointers)."""
    vis = (k_ok & (kpos >= kv_lo))[None, :] & (kpos[None, :] < bound[:, None])
    if HAS_COPY:
        k_blk = tl.maximum(kpos - clean_len, 0) // block_size
        k_blk = tl.where(k_ok & (kpos >= clean_len), k_blk, -2)
        vis = vis | (k_blk[None, :] == m_blk[:, None])
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
def _load_rows(Q, DO, LSE, DELTA, b, kvh, rows, row_ok, sqb, sqh, sqm, sdob, sdoh, sdom,
               n_heads, q_len, offs_d, d_ok, GROUP: tl.constexpr):
    """q, dO, lse, delta of packed (token, head) rows, for the backward kernels."""
    tok = rows // GROUP
    head = (kvh * GROUP + rows % GROUP).to(tl.int64)
    tok64 = tok.to(tl.int64)
    msk = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + head[:, None] * sqh + tok64[:, None] * sqm + offs_d[None, :],
                mask=msk, other=0.0)
    do = tl.load(DO + b * sdob + head[:, None] * sdoh + tok64[:, None] * sdom + offs_d[None, :],
                 mask=msk, other=0.0)
    stat = (b * n_heads + head) * q_len + tok64
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    return q, do, lse, delta, tok, head


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, start_n, end, offs_d, d_ok,
              kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow, smk,
              BLOCK_N: tl.constexpr, HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr,
              UPCAST: tl.constexpr, PREC: tl.constexpr):
    kpos = start_n + tl.arange(0, BLOCK_N)
    k_ok = kpos < end
    k = _load_tile(k_base, kpos, k_ok, skn, offs_d, d_ok)
    s = _dot(q, tl.trans(k), UPCAST, PREC) * qk_scale
    vis = _visible(kpos, k_ok, kv_lo, bound, m_blk, clean_len, block_size, mrow, smk, HAS_COPY,
                   HAS_MASK)
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
    block_size, origin_mod, resp_start, clean_len, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr,
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
    bound, m_blk = _row_bounds(qpos, row_ok, kv_len, block_size, origin_mod, resp_start,
                               clean_len, HAS_COPY)
    k_base = K + b * skb + kvh.to(tl.int64) * skh
    v_base = V + b * svb + kvh.to(tl.int64) * svh
    mrow = MASK + b * smb + head * smh + tok.to(tl.int64) * smq

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)

    # clean keys: [lo, hi), split across NUM_SPLITS programs
    lo = (kv_lo // BLOCK_N) * BLOCK_N
    hi = _rmax(bound, 0)
    n_tiles = (tl.maximum(hi - lo, 0) + BLOCK_N - 1) // BLOCK_N
    per = ((n_tiles + NUM_SPLITS - 1) // NUM_SPLITS)
    start = lo + pid_s * per * BLOCK_N
    end = tl.minimum(start + per * BLOCK_N, hi)
    for start_n in range(start, end, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, start_n, end, offs_d,
                                  d_ok, kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow,
                                  smk, BLOCK_N, HAS_COPY, HAS_MASK, UPCAST, PREC)
    if HAS_COPY:
        # masked-copy keys of the tile's masked rows' own blocks (never split)
        has_m = m_blk >= 0
        lo2 = _rmin(tl.where(has_m, clean_len + m_blk * block_size, _BIG), 0)
        hi2 = tl.minimum(_rmax(tl.where(has_m, clean_len + (m_blk + 1) * block_size, 0), 0), kv_len)
        for start_n in range(lo2, hi2, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, start_n, hi2, offs_d,
                                      d_ok, kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow,
                                      smk, BLOCK_N, HAS_COPY, HAS_MASK, UPCAST, PREC)

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


@triton.jit
def _dkdv_rows(dk, dv, k, v, kpos, k_ok, r_lo, r_hi, Q, DO, LSE, DELTA, b, kvh,
               sqb, sqh, sqm, sdob, sdoh, sdom, n_heads, q_len, kv_len, q_offset, kv_lo,
               block_size, origin_mod, resp_start, clean_len, qk_scale, offs_d, d_ok,
               MASK, smb, smh, smq, smk,
               GROUP: tl.constexpr, BLOCK_M: tl.constexpr, HAS_COPY: tl.constexpr,
               HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Accumulate dK, dV of one key tile over packed query rows [r_lo, r_hi)."""
    for r0 in range(r_lo, r_hi, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < r_hi
        q, do, lse, delta, tok, head = _load_rows(Q, DO, LSE, DELTA, b, kvh, rows, row_ok, sqb, sqh,
                                                  sqm, sdob, sdoh, sdom, n_heads, q_len, offs_d,
                                                  d_ok, GROUP)
        mrow = MASK + b * smb + head * smh + tok.to(tl.int64) * smq
        bound, m_blk = _row_bounds(q_offset + tok, row_ok, kv_len, block_size, origin_mod,
                                   resp_start, clean_len, HAS_COPY)
        vis = _visible(kpos, k_ok, kv_lo, bound, m_blk, clean_len, block_size, mrow, smk, HAS_COPY,
                   HAS_MASK)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * qk_scale
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST, PREC)
        dp = _dot(do, tl.trans(v), UPCAST, PREC)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PREC)
    return dk, dv


@triton.jit(do_not_specialize=_SCALARS)
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KV_START, MASK,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    sdob, sdoh, sdom, sdkb, sdkh, sdkn, sdvb, sdvh, sdvn, smb, smh, smq, smk,
    n_kv_heads, n_heads, q_len, kv_len, q_offset,
    block_size, origin_mod, resp_start, clean_len, qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kvh = pid_bh % n_kv_heads
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    k_lo = pid_n * BLOCK_N
    kpos = k_lo + tl.arange(0, BLOCK_N)
    k_ok = kpos < kv_len
    kv_lo = tl.load(KV_START + b)
    kvh64 = kvh.to(tl.int64)
    k = _load_tile(K + b * skb + kvh64 * skh, kpos, k_ok, skn, offs_d, d_ok)
    v = _load_tile(V + b * svb + kvh64 * svh, kpos, k_ok, svn, offs_d, d_ok)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    k_hi = tl.minimum(k_lo + BLOCK_N, kv_len) - 1
    clean_keys = (k_lo < clean_len) & (k_hi >= kv_lo)
    # end column (exclusive) of the clean block holding k_lo
    k_end = k_lo - (k_lo + block_size - origin_mod) % block_size + block_size
    # clean query columns [k_end - B, clean_len) can see this tile's clean keys
    c_lo = tl.maximum(k_end - block_size - q_offset, 0)
    c_hi = tl.where(clean_keys, tl.minimum(clean_len, kv_len) - q_offset, 0)
    dk, dv = _dkdv_rows(dk, dv, k, v, kpos, k_ok, c_lo * GROUP, c_hi * GROUP, Q, DO, LSE, DELTA,
                        b, kvh, sqb, sqh, sqm, sdob, sdoh, sdom, n_heads, q_len, kv_len, q_offset,
                        kv_lo, block_size, origin_mod, resp_start, clean_len, qk_scale, offs_d, d_ok,
                        MASK, smb, smh, smq, smk, GROUP, BLOCK_M, HAS_COPY, HAS_MASK, UPCAST, PREC)
    if HAS_COPY:
        # masked-copy query columns: those whose clean view includes k_lo's block, and those in
        # the masked blocks of this tile's masked keys
        a_lo = tl.where(clean_keys, clean_len + tl.maximum(k_end - resp_start, 0), _BIG)
        a_hi = tl.where(clean_keys, kv_len, 0)
        has_mk = k_hi >= clean_len
        m_lo = (tl.maximum(k_lo, clean_len) - clean_len) // block_size
        m_hi = tl.maximum(k_hi - clean_len, 0) // block_size
        b_lo = tl.where(has_mk, clean_len + m_lo * block_size, _BIG)
        b_hi = tl.where(has_mk, tl.minimum(clean_len + (m_hi + 1) * block_size, kv_len), 0)
        t_hi = tl.maximum(a_hi, b_hi) - q_offset
        t_lo = tl.minimum(tl.maximum(tl.minimum(a_lo, b_lo) - q_offset, 0), t_hi)  # no _BIG * GROUP overflow
        dk, dv = _dkdv_rows(dk, dv, k, v, kpos, k_ok, t_lo * GROUP, t_hi * GROUP, Q, DO, LSE, DELTA,
                            b, kvh, sqb, sqh, sqm, sdob, sdoh, sdom, n_heads, q_len, kv_len, q_offset,
                            kv_lo, block_size, origin_mod, resp_start, clean_len, qk_scale, offs_d,
                            d_ok, MASK, smb, smh, smq, smk, GROUP, BLOCK_M, HAS_COPY, HAS_MASK,
                            UPCAST, PREC)
    dk = dk * sm_scale
    tl.store(DK + b * sdkb + kvh64 * sdkh + kpos[:, None].to(tl.int64) * sdkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=k_ok[:, None] & d_ok[None, :])
    tl.store(DV + b * sdvb + kvh64 * sdvh + kpos[:, None].to(tl.int64) * sdvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=k_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_dq_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, start_n, end, offs_d, d_ok,
                 kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow, smk,
                 BLOCK_N: tl.constexpr, HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    kpos = start_n + tl.arange(0, BLOCK_N)
    k_ok = kpos < end
    k = _load_tile(k_base, kpos, k_ok, skn, offs_d, d_ok)
    v = _load_tile(v_base, kpos, k_ok, svn, offs_d, d_ok)
    vis = _visible(kpos, k_ok, kv_lo, bound, m_blk, clean_len, block_size, mrow, smk, HAS_COPY,
                   HAS_MASK)
    s = _dot(q, tl.trans(k), UPCAST, PREC) * qk_scale
    p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
    dp = _dot(do, tl.trans(v), UPCAST, PREC)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k, UPCAST, PREC)


@triton.jit(do_not_specialize=_SCALARS)
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KV_START, MASK,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    sdob, sdoh, sdom, sdqb, sdqh, sdqm, smb, smh, smq, smk,
    n_kv_heads, n_heads, q_len, kv_len, q_offset,
    block_size, origin_mod, resp_start, clean_len, qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_COPY: tl.constexpr, HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    kvh = pid_bh % n_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows // GROUP < q_len
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q, do, lse, delta, tok, head = _load_rows(Q, DO, LSE, DELTA, b, kvh, rows, row_ok, sqb, sqh, sqm,
                                              sdob, sdoh, sdom, n_heads, q_len, offs_d, d_ok, GROUP)
    kv_lo = tl.load(KV_START + b)
    bound, m_blk = _row_bounds(q_offset + tok, row_ok, kv_len, block_size, origin_mod, resp_start,
                               clean_len, HAS_COPY)
    k_base = K + b * skb + kvh.to(tl.int64) * skh
    v_base = V + b * svb + kvh.to(tl.int64) * svh
    mrow = MASK + b * smb + head * smh + tok.to(tl.int64) * smq
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    lo = (kv_lo // BLOCK_N) * BLOCK_N
    hi = _rmax(bound, 0)
    for start_n in range(lo, hi, BLOCK_N):
        dq = _bwd_dq_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, start_n, hi, offs_d, d_ok,
                          kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow, smk,
                          BLOCK_N, HAS_COPY, HAS_MASK, UPCAST, PREC)
    if HAS_COPY:
        has_m = m_blk >= 0
        lo2 = _rmin(tl.where(has_m, clean_len + m_blk * block_size, _BIG), 0)
        hi2 = tl.minimum(_rmax(tl.where(has_m, clean_len + (m_blk + 1) * block_size, 0), 0), kv_len)
        for start_n in range(lo2, hi2, BLOCK_N):
            dq = _bwd_dq_tile(dq, q, do, lse, delta, k_base, v_base, skn, svn, start_n, hi2, offs_d,
                              d_ok, kv_lo, bound, m_blk, clean_len, block_size, qk_scale, mrow,
                              smk, BLOCK_N, HAS_COPY, HAS_MASK, UPCAST, PREC)
    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + head[:, None] * sdqh + tok[:, None].to(tl.int64) * sdqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


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
                   device: torch.device, training: bool, has_copy: bool) -> dict[str, int]:
    """Tiles, warps, pipeline stages and K splits for one call (tuned on an H100, bf16, d=128).

    * Decode (``q_len * group <= 32`` rows): ``BLOCK_M`` = the rows rounded up to 16,
      ``BLOCK_N`` 64, 4 warps, 3 stages; K splits so that the grid has about one program
      per SM (each split >= 4 key tiles). H100, 32/8 heads, B=4: ~2.8 TB/s of K/V reads.
    * Otherwise (prefill, staircase training): 64x64 tiles, 8 warps (no register spills),
      2 stages; backward 32x64 tiles, 8 warps (``BWD_*`` keys).

    Returns a new dict each call (callers may update it).
    """
    rows = q_len * group
    if rows <= 32:
        block_m, block_n, warps, stages = max(16, _pow2(rows)), 64, 4, 3
    else:
        block_m, block_n, warps, stages = 64, 64, 8, 2
    splits = 1
    if not training and not has_copy and device.type == "cuda":
        base = _cdiv(rows, block_m) * batch * n_kv_heads
        want = max(1, round(_sm_count(device) / base))
        splits = max(1, min(want, _cdiv(kv_len, 4 * block_n), 64))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_splits": splits, "num_warps": warps,
            "num_stages": stages, "BWD_BLOCK_M": 32, "BWD_BLOCK_N": 64, "bwd_num_warps": 8,
            "bwd_num_stages": 2}


def _prep(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_device(q: torch.Tensor) -> None:
    if not q.is_cuda and not _INTERPRET:
        raise RuntimeError("the triton attention backend needs a CUDA device "
                           "(or TRITON_INTERPRET=1 to run the kernels on the CPU interpreter)")


class _Layout(NamedTuple):
    """Scalar mask parameters (same fields as ``attention.MaskLayout``)."""

    block_size: int
    q_offset: int
    origin_mod: int
    resp_start: int
    clean_len: int
    has_copy: bool


@functools.lru_cache(maxsize=1024)
def _constexprs(dtype: torch.dtype, group: int, d: int, block_m: int, block_n: int, has_copy: bool,
                has_mask: bool, warps: int, stages: int) -> dict[str, Any]:
    return dict(GROUP=group, HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK_M=block_m, BLOCK_N=block_n,
                HAS_COPY=has_copy, HAS_MASK=has_mask, UPCAST=_INTERPRET and dtype != torch.float32,
                PREC="ieee" if dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages)


def _scalars(lay, hkv: int, lq: int, lk: int) -> tuple[int, ...]:
    return (hkv, lq, lk, lay.q_offset, lay.block_size, lay.origin_mod, lay.resp_start, lay.clean_len)


def _forward(q, k, v, kv_start, mask, lay, scale, cfg, store_lse: bool):
    """Returns ``out [b, hq, lq, d]`` (q.dtype) and ``lse`` (log2 domain) ``[b, hq, lq]`` fp32
    (None unless ``store_lse``)."""
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    splits = int(cfg["num_splits"])
    ce = _constexprs(q.dtype, hq // hkv, d, int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), bool(lay.has_copy),
                     mask is not None, int(cfg["num_warps"]), int(cfg["num_stages"]))
    qk_scale = scale * 1.4426950408889634  # log2(e)
    m_tiles = _cdiv(lq * ce["GROUP"], ce["BLOCK_M"])
    out = torch.empty_like(q)
    lse = torch.empty((b, hq, lq), dtype=torch.float32, device=q.device) if store_lse else None
    if splits == 1:
        o_buf, l_buf, sem, sos, sls = out, (lse if store_lse else out), kv_start, 0, 0
        l_strides = lse.stride() if store_lse else (0, 0, 0)
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
        *_scalars(lay, hkv, lq, lk), qk_scale,
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


def _backward(do, q, k, v, out, lse, kv_start, mask, lay, scale, cfg):
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    ce = _constexprs(q.dtype, hq // hkv, d, int(cfg["BWD_BLOCK_M"]), int(cfg["BWD_BLOCK_N"]),
                     bool(lay.has_copy), mask is not None, int(cfg["bwd_num_warps"]), int(cfg["bwd_num_stages"]))
    qk_scale = scale * 1.4426950408889634
    do = do.contiguous()
    delta = (do.float() * out.float()).sum(-1).contiguous()  # [b, hq, lq]
    lse = lse.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    m_ptr, m_strides = (kv_start, (0, 0, 0, 0)) if mask is None else (mask, mask.stride())
    hkv_, lq_, lk_, *rest = _scalars(lay, hkv, lq, lk)
    scal = (hkv_, hq, lq_, lk_, *rest, qk_scale, scale)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    _bwd_dkdv_kernel[(_cdiv(lk, ce["BLOCK_N"]), b * hkv)](
        q, k, v, do, lse, delta, dk, dv, kv_start, m_ptr, *strides,
        *dk.stride()[:3], *dv.stride()[:3], *m_strides, *scal, **ce)
    _bwd_dq_kernel[(_cdiv(lq * ce["GROUP"], ce["BLOCK_M"]), b * hkv)](
        q, k, v, do, lse, delta, dq, kv_start, m_ptr, *strides,
        *dq.stride()[:3], *m_strides, *scal, **ce)
    return dq, dk, dv


class _BlockAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kv_start, mask, lay, scale, cfg):
        out, lse = _forward(q, k, v, kv_start, mask, lay, scale, dict(cfg, num_splits=1), True)
        ctx.save_for_backward(q, k, v, out, lse, kv_start, mask)
        ctx.lay, ctx.scale, ctx.cfg = lay, scale, cfg
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, kv_start, mask = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, out, lse, kv_start, mask, ctx.lay, ctx.scale, ctx.cfg)
        return dq, dk, dv, None, None, None, None, None


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


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, spec: Any = None,
                    mask: torch.Tensor | None = None, scale: float | None = None,
                    num_splits: int | None = None, config: dict[str, int] | None = None,
                    return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-diffusion attention with the Triton kernels (differentiable).

    Args:
        q: ``[batch, n_heads, q_len, head_dim]`` (fp32, bf16 or fp16; last dim contiguous).
        k, v: ``[batch, n_kv_heads, kv_len, head_dim]``; the queries are the last ``q_len`` key
            columns (see ``dllm_bench.samplers.attention``). Within one head,
            ``kv_len * k.stride(2)`` must stay below 2**31.
        spec: a ``BlockAttentionSpec`` (``block_size``, ``kv_start``, ``block_origin``,
            ``copy_len``): the mask is computed in the kernel and masked tiles are skipped.
        mask: optional dense boolean mask (True = attend) broadcastable to
            ``[batch, n_heads, q_len, kv_len]`` (see :func:`dense_mask_view`); read tile by
            tile. Alone it allows any pattern (no tile skipping except leading all-masked key
            columns); with ``spec`` the two are intersected.
        scale: score scale (default ``head_dim ** -0.5``).
        num_splits: split-K factor for inference (default: :func:`default_config`); ignored
            when a gradient is needed or in the staircase layout.
        config: override ``BLOCK_M`` / ``BLOCK_N`` / ``num_warps`` / ``num_stages`` (and the
            ``BWD_*`` / ``bwd_*`` backward keys).
        return_lse: also return the natural-log log-sum-exp ``[batch, n_heads, q_len]`` fp32
            (``-inf`` for rows with no visible key); forward only.

    Returns:
        ``out [batch, n_heads, q_len, head_dim]`` in ``q.dtype`` (rows with no visible key are 0).

    Raises:
        RuntimeError: not on CUDA and not under ``TRITON_INTERPRET=1``.
        ValueError: neither ``spec`` nor ``mask``; inconsistent shapes (see
            ``BlockAttentionSpec.layout``).
    """
    _check_device(q)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"n_heads {hq} is not a multiple of n_kv_heads {hkv}")
    if lq > lk:
        raise ValueError(f"q_len {lq} > kv_len {lk}: queries must be the last key columns")
    if spec is None and mask is None:
        raise ValueError("block_attention needs a spec, a mask, or both")
    if mask is not None:
        mask = dense_mask_view(mask.to(q.device), b, hq, lq, lk)
    if spec is not None:
        lay = spec.layout(lq, lk)
        kv_start = spec.kv_start_for(b, q.device)
    else:  # one block covering everything; the dense mask decides
        lay = _Layout(max(lk, 1), lk - lq, 0, 0, lk, False)
        col_any = mask.any(dim=2).any(dim=1)  # [b, lk]
        kv_start = torch.where(col_any.any(dim=1), col_any.int().argmax(dim=1), lk).to(torch.int32)
    scale = d ** -0.5 if scale is None else float(scale)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = _prep(q), _prep(k), _prep(v)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    cfg = default_config(lq, lk, hq // hkv, d, b, hkv, q.device, needs_grad, bool(lay.has_copy))
    if config or num_splits is not None or lay.has_copy or needs_grad:
        cfg = dict(cfg, **(config or {}))
        if num_splits is not None:
            cfg["num_splits"] = int(num_splits)
        if lay.has_copy or needs_grad:
            cfg["num_splits"] = 1
    if needs_grad:
        if return_lse:
            raise ValueError("return_lse is forward-only")
        return _BlockAttentionFn.apply(q, k, v, kv_start, mask, lay, scale, cfg)
    out, lse = _forward(q, k, v, kv_start, mask, lay, scale, cfg, return_lse)
    if return_lse:
        return out, lse * math.log(2.0)
    return out
