"""Block-diffusion sampler speed: exact KV cache vs none, static vs dynamic (JSON on stdout).

For each model config (``tiny`` = tiny-block-dlm defaults, ~91k parameters; ``50m`` =
tiny-block-dlm with hidden 512, 12 layers, 8 heads, MLP 2048, ~50M parameters) and each
generation length (256, 512 by default), it decodes the same batch of prompts (GSM8K-style
questions, batch 4, block size B = 4) with

* ``block-static`` (B / denoising_steps = 1 token per step), and
* ``block-dynamic`` (confidence threshold, at least 1 token per step),

each with ``exact`` (the default exact KV cache: read-only denoise forwards, the clean
prompt / previous block written by the next block's first denoise forward),
``exact-separate`` (``fuse_commit=false``: a prefill forward and one commit forward per
block, the JetEngine way) and ``none`` (recompute prompt + decoded blocks every step),
and reports per
configuration: NFE per sequence (model forward calls), denoise steps, tokens per forward,
wall seconds, tokens/s; and side by side the ratios cached / uncached (tokens/s) and
dynamic / static. Target: cached >= 5x uncached at gen 512.

Measurement notes:

* EOS is disabled (the models are random-init), so every sequence decodes exactly
  ``gen`` tokens and all configurations do the same amount of work per token.
* A random-init model's next-token distributions are nearly flat (confidence ~1/V), so a
  usual threshold such as 0.9 would never fire and dynamic would equal static. The
  dynamic threshold is therefore *calibrated* per model (bisection on a short run) to
  unmask ~2 tokens per denoise step, the regime DiRL Table 1 reports for trained models
  (1.7-2.8 tokens/step at tau = 0.9, B = 4); the threshold and the measured tokens/step are
  in the JSON. Tokens are greedy (temperature 0).
* One untimed short warm-up generation per model; each configuration is timed
  ``--repeats`` times and the fastest is reported (default 2 on CUDA, where the first pass
  over new sequence lengths pays one-time per-shape setup of the attention kernels, and 1
  on CPU). Wall time includes CUDA synchronisation.
* ``--max-uncached-tokens`` skips uncached runs whose cost would be prohibitive on a CPU
  (they are listed under ``skipped`` with the reason).

Usage::

    python benchmarks/sampler_speed.py [--models tiny,50m] [--gen 256,512] [--batch 4]
        [--block-size 4] [--device auto] [--dtype auto] [--out FILE]

Needs torch, transformers, pydantic (dllm-bench's samplers). Prints the JSON and writes it
to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

MODELS = {
    "tiny": {},
    "50m": {"hidden_size": 512, "num_layers": 12, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 2048},
}
PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


def _prompt_ids(model, batch: int) -> list[list[int]]:
    tok = model.tokenizer
    out = []
    for i in range(batch):
        msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) if tok.chat_template \
            else PROMPTS[i % len(PROMPTS)]
        out.append(model.encode(text))
    return out


def _sampler(mode: str, cache: str, block_size: int, gen: int, threshold: float | None, backend: str = "sdpa"):
    from dllm_bench.samplers.block import BlockDynamic, BlockStatic

    common = dict(block_size=block_size, max_new_tokens=gen, cache_mode="exact" if cache.startswith("exact") else cache,
                  fuse_commit=cache != "exact-separate", attention_backend=backend)
    if mode == "static":
        return BlockStatic(BlockStatic.Config(**common))
    return BlockDynamic(BlockDynamic.Config(confidence_threshold=threshold, **common))


def calibrate_threshold(model, prompts, block_size: int, target: float = 2.0, gen: int = 32) -> tuple[float, float]:
    """Bisection for the confidence threshold giving ~``target`` tokens per denoise step."""
    lo, hi = 0.0, 1.0
    best = (1.0, 1.0)
    for _ in range(12):
        mid = (lo + hi) / 2
        gens = _sampler("dynamic", "exact", block_size, gen, mid).generate(model, prompts, seed=0,
                                                                           record_trajectory=True)
        tps = sum(len(g.raw_token_ids) for g in gens) / sum(g.trajectory.denoise_steps for g in gens)
        best = (mid, tps)
        if abs(tps - target) < 0.1:
            break
        if tps > target:  # too many tokens per step -> raise the threshold
            lo = mid
        else:
            hi = mid
    return best


def run_config(model, prompts, mode, cache, block_size, gen, threshold, repeats, backend="sdpa") -> dict:
    walls, gens = [], None
    for _ in range(repeats):
        gens = _sampler(mode, cache, block_size, gen, threshold, backend).generate(model, prompts, seed=0,
                                                                                  record_trajectory=True)
        walls.append(sum(g.wall_s for g in gens))
    wall = min(walls)
    tokens = sum(g.generated_tokens for g in gens)
    nfe = sum(g.nfe for g in gens)
    steps = sum(g.trajectory.denoise_steps for g in gens)
    return {"mode": mode, "cache": cache, "gen_len": gen, "threshold": threshold, "attention_backend": backend,
            "nfe_per_seq": nfe / len(gens), "denoise_steps_per_seq": steps / len(gens),
            "tokens_per_denoise_step": tokens / steps, "tokens_per_forward": tokens / nfe,
            "wall_s": round(wall, 4), "tokens_per_s": round(tokens / wall, 2), "generated_tokens": tokens,
            "tokens": [g.raw_token_ids for g in gens]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,50m")
    ap.add_argument("--gen", default="256,512")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=0,
                    help="timed generations per configuration, the fastest reported (0 = 2 on CUDA, 1 on CPU): "
                         "on a GPU the first pass over new sequence lengths pays one-time per-shape setup")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--max-uncached-tokens", type=float, default=0,
                    help="skip uncached runs when params x gen^2 x batch exceeds this (0 = never skip)")
    ap.add_argument("--backends", default="", help="extra attention backends (e.g. triton,flex) timed on the "
                    "cached static config and compared token for token with sdpa")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    import transformers

    from dllm_bench.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.repeats:
        args.repeats = 2 if (torch.cuda.is_available() and args.device != "cpu") else 1
    device_name = torch.cuda.get_device_name(0) if (torch.cuda.is_available() and args.device != "cpu") else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    import subprocess

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        sha = None
    report: dict = {"benchmark": "sampler_speed", "device": device_name, "python": sys.version.split()[0],
                    "git_sha": sha,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "batch": args.batch, "block_size": args.block_size, "temperature": 0.0, "repeats": args.repeats,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": [], "ratios": [], "skipped": []}
    for name in args.models.split(","):
        model = load_model("tiny-block-dlm", device=args.device, dtype=args.dtype, block_size=args.block_size,
                           **MODELS[name])
        model.eos_token_ids = (-1,)  # never produced: every sequence decodes the full length
        prompts = _prompt_ids(model, args.batch)
        params = model.num_parameters
        _sampler("static", "exact", args.block_size, 16, None).generate(model, prompts, seed=0)  # warm-up
        _sampler("static", "none", args.block_size, 16, None).generate(model, prompts, seed=0)
        thr, tps = calibrate_threshold(model, prompts, args.block_size)
        info = {"model": name, "params": params, "dtype": str(model.dtype).replace("torch.", ""),
                "prompt_tokens": [len(p) for p in prompts], "dynamic_threshold": thr,
                "calibration_tokens_per_step": round(tps, 3)}
        report.setdefault("models", []).append(info)
        for gen in [int(g) for g in args.gen.split(",")]:
            rows = {}
            for mode in ("static", "dynamic"):
                for cache in ("exact", "exact-separate", "none"):
                    cost = params * gen * gen * args.batch
                    if cache == "none" and args.max_uncached_tokens and cost > args.max_uncached_tokens:
                        report["skipped"].append({"model": name, "gen_len": gen, "mode": mode, "cache": cache,
                                                  "reason": f"params*gen^2*batch = {cost:.2e} > "
                                                            f"--max-uncached-tokens {args.max_uncached_tokens:.2e}"})
                        continue
                    r = run_config(model, prompts, mode, cache, args.block_size, gen,
                                   thr if mode == "dynamic" else None, args.repeats)
                    rows[(mode, cache)] = r
                    print(f"[sampler_speed] {name} gen={gen} {mode:7s} {cache:5s} {r['tokens_per_s']:9.1f} tok/s "
                          f"nfe/seq={r['nfe_per_seq']:.0f} wall={r['wall_s']:.2f}s", file=sys.stderr, flush=True)
            ratio = {"model": name, "gen_len": gen}
            for mode in ("static", "dynamic"):
                c, u = rows.get((mode, "exact")), rows.get((mode, "none"))
                if c and u:
                    ratio[f"{mode}_cached_over_uncached_tokens_per_s"] = round(c["tokens_per_s"] / u["tokens_per_s"], 2)
                    ratio[f"{mode}_uncached_over_cached_nfe"] = round(u["nfe_per_seq"] / c["nfe_per_seq"], 3)
                    ratio[f"{mode}_cached_tokens_equal_uncached"] = c["tokens"] == u["tokens"]
                sep = rows.get((mode, "exact-separate"))
                if c and sep:
                    ratio[f"{mode}_fused_over_separate_commit_tokens_per_s"] = round(
                        c["tokens_per_s"] / sep["tokens_per_s"], 2)
            for cache in ("exact", "none"):
                s, d = rows.get(("static", cache)), rows.get(("dynamic", cache))
                if s and d:
                    ratio[f"dynamic_over_static_tokens_per_s_{cache}"] = round(d["tokens_per_s"] / s["tokens_per_s"], 2)
            ref = rows.get(("static", "exact"))
            for be in [b for b in args.backends.split(",") if b]:
                try:
                    r = run_config(model, prompts, "static", "exact", args.block_size, gen, None, args.repeats, be)
                except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is reported
                    report["skipped"].append({"model": name, "gen_len": gen, "attention_backend": be,
                                              "reason": f"{type(exc).__name__}: {exc}"[:300]})
                    continue
                rows[("static", f"exact-{be}")] = r
                if ref:
                    ratio[f"{be}_over_sdpa_tokens_per_s"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
                    ratio[f"{be}_tokens_equal_sdpa"] = r["tokens"] == ref["tokens"]
            report["ratios"].append(ratio)
            for r in rows.values():
                r = {k: v for k, v in r.items() if k != "tokens"}
                report["results"].append({"model": name, "params": params, **r})
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    at512 = [r for r in report["ratios"] if r["gen_len"] == 512 and "static_cached_over_uncached_tokens_per_s" in r]
    report["target"] = {"cached_over_uncached_at_gen_512": 5.0,
                        "measured": {r["model"]: r["static_cached_over_uncached_tokens_per_s"] for r in at512},
                        "met": {r["model"]: r["static_cached_over_uncached_tokens_per_s"] >= 5.0 for r in at512}}
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
