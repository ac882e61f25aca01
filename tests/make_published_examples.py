"""Generate the *synthetic* example entries in ``tests/fixtures/published-examples/`` that
exercise the published-vs-reproduced view and the accuracy-vs-parallelism (AUP) curve.

    .venv/bin/python tests/make_published_examples.py     # rewrite the committed examples

These are not measurements. The released checkpoints they name (TraDo-4B-Instruct,
Qwen2.5-7B-Instruct) cannot run on a CPU test machine, so each entry is built from fixed
per-sample outcome patterns over the first 40 GSM8K test problems (like
``make_fixture_entries.py``), with the model ids and sampler settings of the TraceRL paper's
Table 2 (arXiv 2509.06949) so that they match its published rows. Every label says
"synthetic". Rows:

* ``TraDo-4B-Instruct`` static (block-static, top_k 1): 3 samples, NFE 16 per sample (1 token
  per forward), correct where ``(i + j) % 10 != 0``.
* ``TraDo-4B-Instruct`` dynamic at confidence thresholds 0.9 / 0.7 / 0.5 (a sweep: one
  accuracy-parallelism curve), NFE 8 / 5 / 4 per sample, accuracy falling with the threshold
  (the 0.5 point falls more than 5 points below the first and is left out of AUP).
* ``Qwen2.5-7B-Instruct`` AR baseline (T = 1.0), 1 token per forward.
"""

from __future__ import annotations

from pathlib import Path

from .make_fixture_entries import _entry, _key, _records, gsm8k_docs, main

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "published-examples"
TRADO = "Gen-Verse/TraDo-4B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
BUDGET = 2000


def _block(**kw) -> dict:
    return {"block_size": 4, "denoising_steps": 4, "temperature": 1.0, "top_k": 0, "max_new_tokens": BUDGET, **kw}


def build(out: Path = OUT) -> list[Path]:
    """Write every example entry + per-sample JSONL under ``out``; returns the entry paths."""
    docs = gsm8k_docs()
    n = len(docs)

    def pattern(miss_every: int, shift: int = 0) -> list[list[bool]]:
        return [[(i + j + shift) % miss_every != 0 for j in range(3)] for i in range(n)]

    paths = [
        _entry(out, _key("gsm8k", "block-static", _block(top_k=1), k=3), "TraDo-4B-Instruct · static (synthetic)",
               "block-diffusion", _records(docs, pattern(10), 16), wall_s=6.0, ks=(1, 3), model_id=TRADO),
        _entry(out, _key("gsm8k", "ar", {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": BUDGET}, k=3),
               "Qwen2.5-7B-Instruct (synthetic)", "ar", _records(docs, pattern(9, 1), 16), wall_s=5.0, ks=(1, 3),
               baseline=True, model_id=QWEN),
    ]
    for threshold, nfe, miss in ((0.9, 8, 9), (0.7, 5, 8), (0.5, 4, 4)):
        paths.append(_entry(out, _key("gsm8k", "block-dynamic", _block(confidence_threshold=threshold), k=3),
                            f"TraDo-4B-Instruct · dynamic {threshold} (synthetic)", "block-diffusion",
                            _records(docs, pattern(miss, 2), nfe), wall_s=6.0 * nfe / 16, ks=(1, 3),
                            model_id=TRADO))
    return paths


if __name__ == "__main__":
    main(build, OUT)
