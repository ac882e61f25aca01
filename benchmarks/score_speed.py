"""Scoring speed of ``dllm-bench score`` with math-verify (prints JSON).

Cases, each scored end to end by :func:`dllm_bench.scoring.score_predictions` (read the
JSONL, build the task, parse gold and prediction, verify, aggregate) in a fresh Python
process, so the figure includes the worker-pool start and math-verify's warm-up:

* ``math500/reference``: the 500 MATH-500 reference solutions (all correct);
* ``math500/shuffled``: each problem given another problem's solution (almost all wrong:
  the expensive case, since unequal answers go through symbolic comparison);
* ``gsm8k/reference`` and ``gsm8k/shuffled``: the 1319 GSM8K test problems with the
  reference reasoning ending in ``\\boxed{N}``, own or another problem's.

Each case runs with the default worker count (``DLLM_BENCH_SCORE_WORKERS`` or min(4, CPUs))
and, for comparison, in-process (1 worker). Reported per case: ``seconds`` (wall time of
the scoring call), ``cpu_s`` (CPU seconds of the process and its scoring workers),
``predictions_per_s`` (wall), ``accuracy``, ``import_s`` (importing dllm_bench.scoring).
The load average at the start and end is recorded: on a shared machine wall time inflates,
while the in-process ``cpu_s`` stays an upper bound for the wall time on an idle machine.

Target: all 500 MATH-500 predictions in under 5 s on 2 cores.

Usage: ``python benchmarks/score_speed.py [--out FILE] [--workers N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
t0 = time.perf_counter()
from dllm_bench.scoring import score_predictions
t1, c1 = time.perf_counter(), cpu()
res = score_predictions(task=sys.argv[1], predictions=sys.argv[2])
t2, c2 = time.perf_counter(), cpu()
print(json.dumps({"import_s": t1 - t0, "seconds": t2 - t1, "cpu_s": c2 - c1, "n_samples": res["n_samples"],
                  "accuracy": res["metrics"]["accuracy"]}))
"""


def build_cases(tmp: Path) -> list[tuple[str, str, Path]]:
    from dllm_bench.tasks.math import Gsm8k, Math500

    cases = []
    rng = random.Random(0)
    for task, make in (("math500", lambda d: d.meta["solution"]),
                       ("gsm8k", lambda d: Gsm8k().worked_solution(d))):
        docs = (Math500() if task == "math500" else Gsm8k()).docs()
        texts = [make(d) for d in docs]
        perm = list(range(len(docs)))
        rng.shuffle(perm)
        for case, order in (("reference", range(len(docs))), ("shuffled", perm)):
            path = tmp / f"{task}-{case}.jsonl"
            path.write_text("".join(json.dumps({"id": d.id, "completion": texts[j]}) + "\n"
                                    for d, j in zip(docs, order)))
            cases.append((f"{task}/{case}", task, path))
    return cases


def run_case(task: str, path: Path, workers: int | None) -> dict:
    env = dict(os.environ)
    if workers is not None:
        env["DLLM_BENCH_SCORE_WORKERS"] = str(workers)
    out = subprocess.run([sys.executable, "-c", CHILD, task, str(path)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="Also write the JSON here")
    ap.add_argument("--workers", type=int, default=None, help="Scoring processes (default: the scorer's default)")
    args = ap.parse_args()

    from dllm_bench.tasks.math import default_workers

    workers = args.workers or default_workers()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for case, task, path in build_cases(Path(tmpdir)):
            for w in sorted({workers, 1}, reverse=True):
                r = run_case(task, path, w)
                results.append({"case": case, "task": task, "workers": w, "n": r["n_samples"],
                                "seconds": round(r["seconds"], 3), "cpu_s": round(r["cpu_s"], 3),
                                "predictions_per_s": round(r["n_samples"] / r["seconds"], 1),
                                "accuracy": r["accuracy"], "import_s": round(r["import_s"], 3)})
                print(f"{case} workers={w}: {r['seconds']:.2f} s wall, {r['cpu_s']:.2f} s cpu", file=sys.stderr)
    report = {
        "benchmark": "score_speed",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if load else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "math_verify": metadata.version("math-verify"),
        "target": "math500: 500 predictions in < 5 s on 2 cores",
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
