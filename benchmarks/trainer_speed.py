"""Trainer speed (JSON on stdout): TraceRL packed single forward vs per-step forwards, and
SFT samples/s.

**TraceRL training step** (block-diffusion models). The same batch of ``--batch``
responses of ``--gen`` tokens (block size ``--block-size``) is scored and back-propagated
through the TraceRL surrogate (``clipped_policy_terms`` with a KL term) with three layouts
of :mod:`dllm_bench.trainers.trajectory`:

* ``packed``: one forward over ``[prompt ; clean ; one B-token segment per (block, step)]``
  for the whole batch (what ``tracerl`` does);
* ``rounds``: TraceRL's published layout, one ``[prompt ; clean ; masked copy]`` row per
  round (one forward over all rows);
* ``per_step``: the naive reference, one forward (and its backward) per trajectory step
  over the sampler's state ``[prompt ; response so far]``, all responses' i-th steps
  batched together.

All three compute the same loss and gradients (``tests/test_trainer_packing.py``). Two step
structures are timed: ``static`` (one token per denoising step, the step order inside each
block a random permutation) and ``dynamic`` (1-3 tokens per step, ~2 on average, the regime
DiRL Table 1 reports for trained models at τ = 0.9, B = 4). Cost depends on the step
structure only, not on token values, so response tokens are random ids without EOS (a
random-init model's rollouts would stop at random EOS tokens). Timing: median of
``--repeats`` after one untimed warm-up; each timed step is forward + backward (gradients
zeroed in between). Target: packed >= 3x faster than per-step at B = 4, 256
response tokens.

**SFT samples/s**: the real ``sft`` trainer for ``--sft-steps`` optimizer steps on
``gsm8k_calc_train`` pairs (short: ~6-token prompts, ~4-token responses) and on synthetic
256-token responses, for the three modes (block, random-mask, AR); median over steps after
the first.

Usage::

    python benchmarks/trainer_speed.py [--models tiny,small,50m] [--gen 256] [--batch 4]
        [--block-size 4] [--repeats 3] [--threads N] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": {},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 1024},
    "50m": {"hidden_size": 512, "num_layers": 12, "num_heads": 8, "num_kv_heads": 8, "intermediate_size": 2048},
}
PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May?")


def step_maps(kind: str, gen: int, B: int, batch: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(batch):
        sm, t = [0] * gen, 0
        for b0 in range(0, gen, B):
            order = torch.randperm(B, generator=g).tolist()
            i = 0
            while i < B:
                n = 1 if kind == "static" else int(torch.randint(1, 4, (1,), generator=g))
                t += 1
                for q in order[i:i + n]:
                    sm[b0 + q] = t
                i += n
        maps.append(sm)
    return maps


def time_layouts(model_name: str, sizes: dict, args, device) -> list[dict]:
    import torch

    from dllm_bench.models import load_model
    from dllm_bench.trainers.networks import PolicyNet
    from dllm_bench.trainers.objectives import clipped_policy_terms
    from dllm_bench.trainers.scoring import token_logprobs
    from dllm_bench.trainers.trajectory import Rollout, collate, forward_plan, scatter_tokens

    ad = load_model("tiny-block-dlm", dtype=args.dtype, device=str(device), block_size=args.block_size, **sizes)
    net = PolicyNet(ad.model).train()
    prompt = ad.encode(PROMPT)
    g = torch.Generator().manual_seed(0)
    out = []
    for kind in ("static", "dynamic"):
        maps = step_maps(kind, args.gen, args.block_size, args.batch, seed=1)
        trajs = [Rollout(prompt, torch.randint(0, 250, (args.gen,), generator=g).tolist(), m, args.gen)
                 for m in maps]
        batch = collate(trajs, family="block", block_size=args.block_size, shrink=1, mask_id=ad.mask_token_id,
                        pad_id=ad.pad_token_id)
        adv = torch.randn(batch.size, 1, generator=g).expand(batch.size, batch.gen_len)
        with torch.no_grad():
            old = token_logprobs(net, batch, "block", layout="packed", rows_per_forward=8, temperature=1.0, shift=0,
                                 device=device, banned=ad.mask_token_id).cpu()
        res = {"model": model_name, "params": ad.num_parameters, "steps": kind, "batch": args.batch,
               "gen": args.gen, "block_size": args.block_size,
               "denoise_steps_per_response": statistics.mean(max(m) for m in maps),
               "trainable_tokens": int(batch.mask.sum())}
        for layout in ("packed", "rounds", "per_step"):
            plans = list(forward_plan(batch, "block", layout=layout))

            def run(layout=layout, plans=plans, batch=batch, old=old, adv=adv):
                net.zero_grad(set_to_none=True)
                if layout == "per_step":  # backward per forward: the reference never holds all graphs
                    for inp in plans:
                        lp = scatter_tokens(batch, iter([inp]), _lp_fn(net, batch, device, ad.mask_token_id))
                        m = torch.zeros_like(batch.mask)
                        ok = inp.cols >= 0
                        m[inp.rows[:, None].expand_as(inp.cols)[ok], inp.cols[ok]] = True
                        loss, _ = clipped_policy_terms(lp, old.to(lp.device), adv.to(lp.device), m.to(lp.device),
                                                       anchor_logp=old.to(lp.device), kl_beta=0.01)
                        loss.backward()
                else:
                    lp = scatter_tokens(batch, iter(plans), _lp_fn(net, batch, device, ad.mask_token_id))
                    loss, _ = clipped_policy_terms(lp, old.to(lp.device), adv.to(lp.device),
                                                   batch.mask.to(lp.device), anchor_logp=old.to(lp.device),
                                                   kl_beta=0.01)
                    loss.backward()
                _sync(device)

            run()  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            res[layout] = {"forwards": len(plans), "tokens_forwarded": sum(p.tokens for p in plans),
                           "step_s": statistics.median(times),
                           "trained_tokens_per_s": res["trainable_tokens"] / statistics.median(times)}
            print(f"[trainer_speed] {model_name} {kind} {layout}: {statistics.median(times):.3f} s",
                  file=sys.stderr)
        res["speedup_packed_vs_per_step"] = res["per_step"]["step_s"] / res["packed"]["step_s"]
        res["speedup_packed_vs_rounds"] = res["rounds"]["step_s"] / res["packed"]["step_s"]
        out.append(res)
    return out


def _lp_fn(net, batch, device, mask_id):
    import torch

    def fn(inp):
        tgt = batch.response_ids[inp.rows[:, None], inp.cols.clamp_min(0)]
        logits = net(inp.input_ids.to(device), inp.layout.to(device), inp.position_ids.to(device),
                     inp.gather_index.to(device))
        logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
        return torch.log_softmax(logits, -1).gather(-1, tgt.to(device)[..., None]).squeeze(-1)

    return fn


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sft_speed(args, device) -> list[dict]:
    from dllm_bench.trainers.sft import SFT

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="sft_speed_"))
    long = tmp / "long.jsonl"
    long.write_text("".join(json.dumps({"prompt": PROMPT, "response": ("0123456789 " * 30)[:255]}) + "\n"
                            for _ in range(64)))
    try:
        for data, label, bs in (("gsm8k_calc_train", "gsm8k_calc (short)", 64), (str(long), "256-token responses", 8)):
            for model in ("tiny-block-dlm", "tiny-full-dlm", "tiny-ar"):
                run = tmp / f"{model}-{bs}"
                cfg = {"model": model, "model_args": {"device": str(device), "dtype": args.dtype},
                       "max_steps": args.sft_steps, "batch_size": bs, "micro_batch_size": bs, "lr": 1e-3,
                       "max_response_tokens": 512, "tensorboard": False}
                cfg["task" if data == "gsm8k_calc_train" else "data_file"] = data
                res = SFT(cfg).train(run)
                lines = [json.loads(x) for x in res.metrics_path.read_text().splitlines()][1:]
                out.append({"data": label, "model": model, "mode": json.loads((res.final_dir / "dllm_bench.json")
                                                                               .read_text())["training"]["mode"],
                            "batch_size": bs, "samples_per_s": statistics.median(x["samples_per_s"] for x in lines),
                            "tokens_per_s": statistics.median(x["tokens_per_s"] for x in lines)})
                print(f"[trainer_speed] sft {label} {model}: {out[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sft-steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-sft", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    import dllm_bench
    from dllm_bench.models import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "trainer_speed",
        "dllm_bench_version": dllm_bench.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dtype": args.dtype, "target": "packed >= 3x per_step at block size 4, 256 response tokens, batch 4",
        "tracerl_step": [], "sft": [],
    }
    for name in args.models.split(","):
        result["tracerl_step"] += time_layouts(name, MODELS[name], args, device)
    if not args.skip_sft:
        result["sft"] = sft_speed(args, device)
    if load0 is not None:  # a shared CPU makes absolute times noisy; the ratios are within one run
        result["load_average_at_start"] = [round(x, 2) for x in load0]
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
