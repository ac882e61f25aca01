"""Block-diffusion attention speed: Triton kernels vs SDPA vs FlexAttention (prints JSON).

Shapes (GPU, bf16, GQA like Qwen3-8B: 32 query heads / 8 key-value heads, head dim 128):

* **decode**: the current block's B=4 queries against a committed context of 2k / 4k / 8k
  tokens plus the block (JetEngine's decode attention, dLLM-RL
  ``sample/jetengine_ext/layers/attention.py`` at 10b4fd1), batch 8 / 16 / 32; uniform lengths
  (SDPA then needs no mask) and ragged left padding (``kv_start``; SDPA needs a mask).
* **training**: the staircase layout over ``[prompt ; clean ; masked copy]`` (dLLM-RL
  ``train/rl_trado.py`` at 10b4fd1; DiRL, arXiv 2512.22234, §4.1), forward and
  forward+backward, FlexAttention vs SDPA (the Triton kernels are inference-only).
* **sampler** (optional, when ``dllm_bench`` and pydantic import): ``block-static`` tokens/s
  on a ~45M-parameter ``tiny-block-dlm`` per attention backend.

Reported per backend: median latency (``triton.testing.do_bench`` on CUDA), achieved
TFLOP/s (useful FLOPs: ``4 * head_dim`` per visible (query, key) pair and head; backward
counted as 2.5x forward) and GB/s (Q, K, V read once + O written once; the decode floor).
Each decode result is checked against an fp32 reference on the same inputs first.

Runs without the package installed: the attention modules are loaded from this checkout
by path. On a machine without CUDA it runs a small fp32 configuration (Triton under
``TRITON_INTERPRET=1``), which checks the plumbing, not the speed.

Usage: ``python benchmarks/kernel_speed.py [--out FILE] [--quick] [--no-sampler]``
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import types
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


def _load_package():
    """``dllm_bench.models.attention`` / ``triton_attention``, installed or from this checkout (then
    without running ``dllm_bench.models``' own ``__init__``, which needs transformers)."""
    try:
        import dllm_bench.models  # noqa: F401  (installed package?)
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "dllm_bench", ROOT / "harness" / "__init__.py", submodule_search_locations=[str(ROOT / "harness")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["dllm_bench"] = mod
        spec.loader.exec_module(mod)
        models = types.ModuleType("dllm_bench.models")
        models.__path__ = [str(ROOT / "harness" / "models")]
        sys.modules["dllm_bench.models"] = models
    from dllm_bench.models import attention, layout, triton_attention

    return attention, triton_attention, layout


attn, tattn, lay = _load_package()
CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


# ----------------------------------------------------------------------------- timing


def bench(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn()``."""
    if CUDA:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def bench_graph(fn) -> float | None:
    """Median milliseconds of ``fn()`` replayed from a CUDA graph (no launch overhead)."""
    if not CUDA:
        return None
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception:
        return None


def rotating(make, bytes_per_set: int):
    """Several input sets (together > 4x L2 on GPU) cycled through, so timings miss the cache."""
    n = 1
    if CUDA:
        l2 = getattr(torch.cuda.get_device_properties(DEV), "L2_cache_size", 50 << 20)
        n = max(1, min(8, math.ceil(4 * l2 / max(bytes_per_set, 1))))
    sets = [make() for _ in range(n)]
    return sets, itertools.cycle(sets)


def sig(x: float, n: int = 4) -> float:
    """``x`` rounded to ``n`` significant digits (for the JSON)."""
    return float(f"{x:.{n}g}")


def result(ms: float, flops: float, nbytes: float, **extra) -> dict:
    return {"ms": sig(ms), "TFLOPs": sig(flops / ms / 1e9), "GBps": sig(nbytes / ms / 1e6), **extra}


def try_run(fn):
    try:
        return fn()
    except Exception as exc:  # a backend that cannot run this shape is reported, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def ceilings() -> dict:
    """Measured HBM copy bandwidth and bf16 matmul rate (the two roofline ceilings)."""
    if not CUDA:
        return {}
    bufs = [torch.empty(1 << 30, dtype=torch.uint8, device=DEV) for _ in range(2)]
    ms = bench(lambda: bufs[1].copy_(bufs[0]))
    mats = [torch.randn(8192, 8192, dtype=torch.bfloat16, device=DEV) for _ in range(2)]
    ms2 = bench(lambda: mats[0] @ mats[1])
    bufs.clear()
    mats.clear()
    return {"copy_GBps_read_plus_write": round(2 * (1 << 30) / ms / 1e6, 1),
            "bf16_matmul_TFLOPs": round(2 * 8192 ** 3 / ms2 / 1e9, 1)}


# ----------------------------------------------------------------------------- decode


def sdpa_variants(q, k, v, mask):
    """Every SDPA configuration worth trying for this call: name -> callable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    out = {}
    g = q.shape[1] // k.shape[1]

    def with_backend(backend, qq, kk, vv, gqa):
        def fn():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=gqa)
        return fn

    out["sdpa_default_gqa"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    if CUDA:
        kr = k.repeat_interleave(g, dim=1)
        vr = v.repeat_interleave(g, dim=1)
        for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                         ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            out[f"sdpa_{name}_gqa"] = with_backend(be, q, k, v, True)
            out[f"sdpa_{name}_repeat_kv"] = with_backend(be, q, kr, vr, False)
    return out


def decode_case(batch: int, ctx: int, B: int, hq: int, hkv: int, d: int, dtype, ragged: bool,
                splits_sweep: list[int]) -> dict:
    kv_len = ctx + B
    gen = torch.Generator(device=DEV).manual_seed(batch * 7919 + ctx)
    kv_start = None
    if ragged:  # up to a quarter of the context is left padding, different per row
        kv_start = torch.randint(0, ctx // 4, (batch,), generator=gen, device=DEV, dtype=torch.int32)
    spec = lay.AttentionLayout(block_size=B, kv_start=kv_start)

    def make():
        return (torch.randn(batch, hq, B, d, device=DEV, dtype=dtype, generator=gen),
                torch.randn(batch, hkv, kv_len, d, device=DEV, dtype=dtype, generator=gen),
                torch.randn(batch, hkv, kv_len, d, device=DEV, dtype=dtype, generator=gen))

    esize = torch.finfo(dtype).bits // 8
    valid_keys = batch * kv_len - (int(kv_start.sum()) if ragged else 0)
    nbytes = (2 * valid_keys * hkv * d + 2 * batch * hq * B * d) * esize
    flops = 4.0 * d * hq * B * valid_keys
    sets, cyc = rotating(make, (2 * batch * hkv * kv_len + 2 * batch * hq * B) * d * esize)
    q, k, v = sets[0]
    row = {"batch": batch, "context": ctx, "block_size": B, "kv_len": kv_len, "n_heads": hq,
           "n_kv_heads": hkv, "head_dim": d, "dtype": str(dtype).replace("torch.", ""), "ragged": ragged,
           "input_sets": len(sets), "bytes": nbytes, "flops": flops, "results": {}}
    res = row["results"]
    ref = attn.attention_reference(q.float(), k.float(), v.float(), layout=spec, dtype=torch.float32)

    # Triton: the default heuristic, then a sweep of split counts
    cfg = tattn.default_config(B, kv_len, hq // hkv, d, batch, hkv, DEV)
    out = tattn.block_attention(q, k, v, layout=spec)
    row["triton_rel_err"] = sig(rel_err(out, ref), 3)

    def t_triton(splits):
        def fn():
            qq, kk, vv = next(cyc)
            return tattn.block_attention(qq, kk, vv, layout=spec, num_splits=splits)
        return fn

    res["triton"] = result(bench(t_triton(None)), flops, nbytes, num_splits=cfg["num_splits"])
    sweep = {}
    for s in splits_sweep:
        sweep[s] = bench(t_triton(s))
    if sweep:
        best = min(sweep, key=sweep.get)
        row["triton_splits_ms"] = {str(s): sig(t) for s, t in sweep.items()}
        res["triton_best_splits"] = result(sweep[best], flops, nbytes, num_splits=best)

    # SDPA: no mask when uniform (all keys visible), the dense boolean mask when ragged
    mask = spec.dense(batch, B, kv_len, DEV) if ragged else None
    sd = {}
    for name, fn0 in sdpa_variants(q, k, v, mask).items():
        def run(fn0=fn0):
            o = fn0()
            err = rel_err(o, ref) if not ragged else rel_err(o.nan_to_num(0), ref)
            return result(bench(fn0), flops, nbytes, rel_err=sig(err, 3))
        sd[name] = try_run(run)
    res.update(sd)

    # FlexAttention (compiled on CUDA) with the spec's BlockMask
    def run_flex():
        o = attn.flex_attention(q, k, v, layout=spec)
        err = rel_err(o, ref)

        def fn():
            qq, kk, vv = next(cyc)
            return attn.flex_attention(qq, kk, vv, layout=spec)
        return result(bench(fn), flops, nbytes, rel_err=sig(err, 3))

    res["flex"] = try_run(run_flex)
    base = {n: r["ms"] for n, r in res.items() if not n.startswith("triton") and "ms" in r}
    if base:
        best_name = min(base, key=base.get)
        row["best_baseline"] = best_name
        row["speedup_triton_vs_best_baseline"] = round(base[best_name] / res["triton"]["ms"], 3)
        if "triton_best_splits" in res:
            row["speedup_triton_best_splits_vs_best_baseline"] = round(
                base[best_name] / res["triton_best_splits"]["ms"], 3)
        # the same comparison without launch overhead (CUDA-graph replay, one input set)
        graph_fns = {"triton": lambda: tattn.block_attention(q, k, v, layout=spec),
                     "flex": lambda: attn.flex_attention(q, k, v, layout=spec)}
        sd_best = min((n for n in base if n.startswith("sdpa")), key=base.get, default=None)
        if sd_best is not None:
            graph_fns[sd_best] = sdpa_variants(q, k, v, mask)[sd_best]
        graph = {n: bench_graph(f) for n, f in graph_fns.items() if n == "triton" or n in base}
        row["graph_ms"] = {n: sig(t) for n, t in graph.items() if t is not None}
        gb = {n: t for n, t in row["graph_ms"].items() if n != "triton"}
        if gb and "triton" in row["graph_ms"]:
            row["graph_speedup_triton_vs_best_baseline"] = round(min(gb.values()) / row["graph_ms"]["triton"], 3)
    return row


TUNE_CONFIGS = [dict(BLOCK_N=64, num_warps=4, num_stages=3), dict(BLOCK_N=64, num_warps=4, num_stages=4),
                dict(BLOCK_N=128, num_warps=4, num_stages=2), dict(BLOCK_N=128, num_warps=8, num_stages=3),
                dict(BLOCK_N=32, num_warps=2, num_stages=4)]


def tune_case(batch: int, ctx: int, splits: list[int]) -> dict:
    """Decode-kernel tile / warp / stage / split grid on one shape (to pick the defaults)."""
    B, hq, hkv, d = 4, 32, 8, 128
    kv_len = ctx + B
    q = torch.randn(batch, hq, B, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(batch, hkv, kv_len, d, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(batch, hkv, kv_len, d, device=DEV, dtype=torch.bfloat16)
    spec = lay.AttentionLayout(block_size=B)
    ref = attn.attention_reference(q.float(), k.float(), v.float(), layout=spec, dtype=torch.float32)
    nbytes = (2 * batch * hkv * kv_len * d + 2 * batch * hq * B * d) * 2
    rows = []
    for cfg in TUNE_CONFIGS:
        for s in splits:
            def run(cfg=cfg, s=s):
                out = tattn.block_attention(q, k, v, layout=spec, num_splits=s, config=cfg)
                err = rel_err(out, ref)
                ms = bench_graph(lambda: tattn.block_attention(q, k, v, layout=spec, num_splits=s, config=cfg))
                return {**cfg, "num_splits": s, "graph_ms": sig(ms) if ms else None,
                        "GBps": sig(nbytes / ms / 1e6) if ms else None, "rel_err": sig(err, 3)}
            rows.append(try_run(run))
    ok = [r for r in rows if r.get("graph_ms")]
    best = min(ok, key=lambda r: r["graph_ms"]) if ok else None
    return {"batch": batch, "context": ctx, "grid": rows, "best": best}


# ----------------------------------------------------------------------------- training


def training_case(batch: int, P: int, L: int, B: int, hq: int, hkv: int, d: int, dtype) -> dict:
    T = P + 2 * L
    gen = torch.Generator(device=DEV).manual_seed(P + L + B)
    kv_start = torch.randint(0, max(1, P // 2), (batch,), generator=gen, device=DEV, dtype=torch.int32)
    valid = torch.arange(P, device=DEV)[None, :] >= kv_start[:, None]
    spec = lay.AttentionLayout.staircase(valid, L, B)
    mask = spec.dense(batch, T, T, DEV)
    pairs = float(mask.sum())
    flops = 4.0 * d * hq * pairs
    esize = torch.finfo(dtype).bits // 8
    nbytes = (2 * batch * hkv * T * d + 2 * batch * hq * T * d) * esize
    q = torch.randn(batch, hq, T, d, device=DEV, dtype=dtype, generator=gen)
    k = torch.randn(batch, hkv, T, d, device=DEV, dtype=dtype, generator=gen)
    v = torch.randn(batch, hkv, T, d, device=DEV, dtype=dtype, generator=gen)
    do = torch.randn(batch, hq, T, d, device=DEV, dtype=dtype, generator=gen)
    row = {"batch": batch, "prompt_len": P, "gen_len": L, "seq_len": T, "block_size": B, "n_heads": hq,
           "n_kv_heads": hkv, "head_dim": d, "dtype": str(dtype).replace("torch.", ""),
           "mask_density": round(pairs / (batch * T * T), 4), "flops_fwd": flops, "fwd": {}, "fwd_bwd": {}}

    # reference (fp32) output and gradients
    qr, kr, vr = (t.detach().float().clone().requires_grad_() for t in (q, k, v))
    ref = attn.attention_reference(qr, kr, vr, layout=spec, dtype=torch.float32)
    ref.backward(do.float())
    ref_grads = [t.grad for t in (qr, kr, vr)]
    ref = ref.detach()
    del qr, kr, vr

    g = hq // hkv
    fns = {
        "flex": lambda qq, kk, vv: attn.flex_attention(qq, kk, vv, layout=spec),
        "sdpa_mask_gqa": lambda qq, kk, vv: torch.nn.functional.scaled_dot_product_attention(
            qq, kk, vv, attn_mask=mask, enable_gqa=True),
        "sdpa_mask_repeat_kv": lambda qq, kk, vv: torch.nn.functional.scaled_dot_product_attention(
            qq, kk.repeat_interleave(g, 1), vv.repeat_interleave(g, 1), attn_mask=mask),
    }
    for name, f in fns.items():
        def fwd(f=f):
            with torch.no_grad():
                o = f(q, k, v)
            err = rel_err(o.nan_to_num(0), ref)
            return result(bench(lambda: f(q, k, v)), flops, nbytes, rel_err=sig(err, 3))

        def fwd_bwd(f=f):
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o = f(qq, kk, vv)
            o.backward(do)
            errs = [sig(rel_err(a.grad.nan_to_num(0), r), 3) for a, r in zip((qq, kk, vv), ref_grads)]

            def step():
                for t in (qq, kk, vv):
                    t.grad = None
                f(qq, kk, vv).backward(do)
            return result(bench(step), 3.5 * flops, 2 * nbytes, grad_rel_err_qkv=errs)

        with torch.no_grad():
            row["fwd"][name] = try_run(fwd)
        row["fwd_bwd"][name] = try_run(fwd_bwd)
    for phase in ("fwd", "fwd_bwd"):
        sd = {n: r["ms"] for n, r in row[phase].items() if n.startswith("sdpa") and "ms" in r}
        if sd and "ms" in row[phase].get("flex", {}):
            bn = min(sd, key=sd.get)
            row[f"{phase}_speedup_flex_vs_{bn}"] = round(sd[bn] / row[phase]["flex"]["ms"], 3)
    return row


# ----------------------------------------------------------------------------- sampler


def sampler_case(quick: bool) -> dict:
    """``block-static`` tokens/s per attention backend (needs the package and pydantic)."""
    from dllm_bench.models import load_model
    from dllm_bench.samplers.block import BlockStatic

    sizes = (dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
             if quick else dict(hidden_size=1024, num_layers=4, num_heads=8, num_kv_heads=2,
                                intermediate_size=2816))
    prompt_len, batch, gen_len, B = (24, 2, 8, 4) if quick else (1024, 16, 128, 4)
    prompts = [[(7 * i + j) % 250 for j in range(prompt_len - 3 * i)] for i in range(batch)]
    out = {"model": "tiny-block-dlm", "sizes": sizes, "prompt_len": prompt_len, "batch": batch,
           "max_new_tokens": gen_len, "block_size": B, "sampler": "block-static", "cache_mode": "exact",
           "backends": {}}
    tokens = {}
    for be in ("sdpa", "triton", "flex"):
        def run(be=be):
            ad = load_model("tiny-block-dlm", block_size=B, **sizes)
            out["num_parameters"] = ad.num_parameters
            s = BlockStatic(BlockStatic.Config(attention_backend=be, max_new_tokens=gen_len, block_size=B))
            s.generate(ad, prompts[:2], seed=0)  # warm-up (compilation, autotuning)
            if CUDA:
                torch.cuda.synchronize()
            t = time.perf_counter()
            g = s.generate(ad, prompts, seed=0)
            if CUDA:
                torch.cuda.synchronize()
            sec = time.perf_counter() - t
            tokens[be] = [x.raw_token_ids for x in g]
            n = sum(len(x.raw_token_ids) for x in g)
            return {"seconds": round(sec, 3), "tokens": n, "tokens_per_s": round(n / sec, 1),
                    "nfe": sum(x.nfe for x in g)}
        out["backends"][be] = try_run(run)
    if "sdpa" in tokens:
        out["same_tokens_as_sdpa"] = {be: tokens[be] == tokens["sdpa"] for be in tokens}
    return out


# ----------------------------------------------------------------------------- main


def fresh_compile() -> None:
    """Drop compiled FlexAttention graphs so each shape gets its own static compile."""
    if CUDA:
        torch._dynamo.reset()
        attn._FLEX_COMPILED = None


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "transformers"):
        try:
            v[name] = importlib.import_module(name).__version__
        except ImportError:
            v[name] = None
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--quick", action="store_true", help="small configuration (always on without CUDA)")
    ap.add_argument("--no-sampler", action="store_true", help="skip the sampler tokens/s section")
    ap.add_argument("--no-training", action="store_true", help="skip the training-mask section")
    ap.add_argument("--sweep", default="1,2,4,8,16", help="split counts tried for the Triton decode kernel")
    ap.add_argument("--tune", action="store_true", help="also grid-search decode tiles / warps / stages")
    args = ap.parse_args(argv)
    quick = args.quick or not CUDA
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name(DEV) if CUDA else f"cpu ({platform.processor() or platform.machine()})"
    report = {"benchmark": "kernel_speed", "device": dev_name, "versions": versions(),
              "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "ceilings": ceilings(), "decode": [], "training": []}
    t0 = time.time()
    if quick:
        dtype = torch.bfloat16 if CUDA else torch.float32
        decode = [(2, 256, 4, 8, 2, 64, dtype, r, [1, 2]) for r in (False, True)]
        training = [(1, 32, 64, 8, 4, 2, 64, dtype)]
    else:
        sweep = [int(s) for s in args.sweep.split(",") if s]
        decode = [(b, c, 4, 32, 8, 128, torch.bfloat16, False, sweep)
                  for c in (2048, 4096, 8192) for b in (8, 16, 32)]
        decode += [(16, c, 4, 32, 8, 128, torch.bfloat16, True, []) for c in (2048, 8192)]
        training = [(2, 512, 1024, B, 32, 8, 128, torch.bfloat16) for B in (4, 32)]
    def save():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")

    if args.tune and CUDA:
        report["tune"] = [try_run(lambda b=b, c=c: tune_case(b, c, [1, 2, 4, 8]))
                          for b, c in ((8, 8192), (32, 2048))]
        save()
        print(f"[kernel_speed] tune done at {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    for case in decode:
        fresh_compile()
        report["decode"].append(try_run(lambda case=case: decode_case(*case)))
        save()
        print(f"[kernel_speed] decode {case[:3]} ragged={case[7]} done at {time.time() - t0:.0f}s",
              file=sys.stderr, flush=True)
    if not args.no_training:
        for case in training:
            fresh_compile()
            report["training"].append(try_run(lambda case=case: training_case(*case)))
            save()
            print(f"[kernel_speed] training {case[:4]} done at {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    if not args.no_sampler:
        try:
            report["sampler"] = sampler_case(quick)
        except ImportError as exc:
            report["sampler"] = {"skipped": f"package not importable here: {exc}"}
        except Exception:
            report["sampler"] = {"error": traceback.format_exc(limit=3)[-600:]}
    # the target: Triton decode >= 1.0x the best of SDPA / Flex at B=4, context 2k-8k
    fresh_compile()
    sp = [r.get("speedup_triton_vs_best_baseline") for r in report["decode"]
          if isinstance(r, dict) and r.get("block_size") == 4 and 2048 <= r.get("context", 0) <= 8192]
    sp = [s for s in sp if s is not None]
    if sp:
        report["summary"] = {"decode_B4_2k_8k_min_speedup": min(sp),
                             "decode_B4_2k_8k_geomean_speedup": round(math.exp(sum(map(math.log, sp)) / len(sp)), 3),
                             "target_met": min(sp) >= 1.0}
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
