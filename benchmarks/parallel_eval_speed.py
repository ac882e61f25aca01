"""Data-parallel evaluation: one process vs N processes on the same evaluation (prints JSON).

Runs the real CLI twice on the same work, side by side in one invocation:

* ``dllm-bench eval --deterministic ...`` (one process), and
* ``dllm-bench eval --deterministic ... --num-processes N`` (N ranks),

both in deterministic mode, which pins one intra-op thread per process: each process plays
the part of one device (one GPU of a multi-GPU launch is one CPU core here), and the two
runs use the same kernels, so their records must be identical. The work: ``gsm8k_calc`` with
a ``tiny-block-dlm`` (random init, EOS reachable; ``block-dynamic``, T = 1, a fixed seed).
Reported per run: wall seconds of the whole command (process start-up and model load
included), wall seconds of generation (the entry's summed ``wall_s`` divided by the ranks),
samples/s; and side by side the speed-up (one process's command wall / N processes' command
wall) and whether the two runs' records are identical (completion, seed, verdict, NFE) and
their entry ids equal.

The speed-up is bounded by N and by the cores (N <= cores for it to mean anything), and
the command wall includes each process's start-up and model load.

Usage: ``python benchmarks/parallel_eval_speed.py [--processes 2] [--limit 267]
[--samples 4] [--batch-size 8] [--max-new-tokens 32] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(out: Path, args: argparse.Namespace, processes: int) -> dict:
    exe = Path(sys.executable).with_name("dllm-bench")
    argv = [str(exe), "--no-progress", "eval", "--deterministic", "--model", "tiny-block-dlm", "--task", "gsm8k_calc",
            "--sampler", "block-dynamic", "--sampler-arg", f"max_new_tokens={args.max_new_tokens}",
            "--sampler-arg", "temperature=1.0", "--limit", str(args.limit), "--samples", str(args.samples),
            "--batch-size", str(args.batch_size), "--seed", "0", "--output", str(out)]
    if processes > 1:
        argv += ["--num-processes", str(processes)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(CI="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval with {processes} process(es) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    entry = json.loads((out / "entry.json").read_text())
    from dllm_bench.jsonl import iter_jsonl_objects

    samples = out / "samples.jsonl"
    records = [obj for _, obj in iter_jsonl_objects(samples.read_text(encoding="utf-8"), samples)]
    gen_s = sum(r["cost"]["wall_s"] for r in records) / processes
    return {
        "processes": processes, "command_wall_s": round(wall, 2), "generate_wall_s": round(gen_s, 2),
        "samples": len(records), "samples_per_s": round(len(records) / wall, 2), "entry_id": entry["entry_id"],
        "outcomes": [(r["doc_id"], r["sample_index"], r["completion"], r["seed"], r["correct"], r["cost"]["nfe"])
                     for r in records],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--limit", type=int, default=267)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parallel-eval-") as tmp:
        one = _run(Path(tmp) / "one", args, 1)
        many = _run(Path(tmp) / "many", args, args.processes)
    same = one.pop("outcomes") == many.pop("outcomes")
    result = {
        "benchmark": "parallel_eval_speed", "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": [one, many],
        "speedup_command": round(one["command_wall_s"] / many["command_wall_s"], 3),
        "speedup_generate": round(one["generate_wall_s"] / max(many["generate_wall_s"], 1e-9), 3),
        "records_identical": same, "entry_ids_equal": one["entry_id"] == many["entry_id"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
