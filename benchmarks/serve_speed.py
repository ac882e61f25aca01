"""``dllm-bench serve`` throughput with and without request batching (prints JSON).

Starts ``dllm-bench serve`` on 127.0.0.1 (a ``tiny-block-dlm`` saved to a temporary directory,
``block-dynamic``) once per ``--max-batch-size``, then decodes the first ``--prompts`` GSM8K
prompts through the ``openai`` sampler with ``--concurrency`` requests in flight. Reported per
setting: wall seconds of the client's ``generate`` call, requests/s, generated tokens/s, the
mean and max rows per server ``generate`` call, and whether the completions equal those of
``--max-batch-size 1`` (greedy).

Usage: ``python benchmarks/serve_speed.py [--prompts 32] [--concurrency 8] [--max-new-tokens 32]
[--batch-sizes 1,8] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--window", type=float, default=0.01)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from dllm_bench import registry
    from dllm_bench.models import load_model
    from dllm_bench.scoring import build_task
    from dllm_bench.serve import get_json, start_process

    tmp = tempfile.TemporaryDirectory(prefix="serve-speed-")
    ckpt = load_model("tiny-block-dlm").save(Path(tmp.name) / "ckpt")
    client_model = load_model(str(ckpt), weights=False)
    task = build_task("gsm8k", {"limit": args.prompts})
    prompts = [client_model.encode(task.prompt(d, client_model.tokenizer)) for d in task.docs()][: args.prompts]
    results, reference = [], None
    for mb in [int(x) for x in args.batch_sizes.split(",")]:
        proc, root = start_process(str(ckpt), "block-dynamic", "--max-batch-size", str(mb), "--batch-window",
                                   str(args.window), env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            sampler = registry.create("samplers", "openai", {"base_url": root + "/v1", "concurrency": args.concurrency,
                                                             "max_new_tokens": args.max_new_tokens})
            sampler.check_model(client_model)
            t0 = time.perf_counter()
            gens = sampler.generate(client_model, prompts, seed=0)
            wall = time.perf_counter() - t0
            rows = get_json(root + "/stats")["rows_per_call"]
        finally:
            proc.terminate()
            proc.wait()
        texts = [g.text for g in gens]
        reference = texts if reference is None else reference
        results.append({"max_batch_size": mb, "wall_s": round(wall, 3), "requests_per_s": round(len(prompts) / wall, 2),
                        "tokens_per_s": round(sum(g.generated_tokens for g in gens) / wall, 1),
                        "rows_per_call_mean": round(sum(rows) / len(rows), 2), "rows_per_call_max": max(rows),
                        "same_completions_as_first": texts == reference})
    out = {"benchmark": "serve_speed", "model": "tiny-block-dlm", "sampler": "block-dynamic",
           "prompts": len(prompts), "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens,
           "batch_window_s": args.window, "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
