"""From generations to an entry: the one place a leaderboard :class:`~dllm_bench.schema.Entry`
is assembled and written, for our tasks (:func:`dllm_bench.evaluate.run_eval`) and lm-eval
tasks (:func:`dllm_bench.lmeval.run_lmeval_task`) alike.

The caller brings what only it knows: the protocol / system keys, the model, the seeds, the
metrics (from the task's aggregation or lm-eval's), the per-sample costs and the sample counts.
:func:`write_entry` adds the rest (harness version and git state, libraries, device, platform,
the summed cost and peak memory, the status, the reference to ``samples.jsonl`` with its
sha256), and writes ``<output>/entry.json`` atomically.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .schema import (
    Cost,
    Entry,
    HarnessInfo,
    Metric,
    ModelInfo,
    ProtocolKey,
    Repro,
    RunState,
    SamplesRef,
    Status,
    SystemKey,
)

log = logging.getLogger("dllm_bench.evaluate")

SAMPLES_FILE = "samples.jsonl"
ENTRY_FILE = "entry.json"


def peak_memory_mb(device: Any) -> float | None:
    """Peak memory of this process in MiB: CUDA's allocator peak on a GPU, else the peak RSS."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return None


def sum_cost(costs: Iterable[Mapping[str, Any]], device: Any, peak_mb: float | None = None) -> Cost:
    """The entry's cost block: per-sample costs (``nfe``, ``generated_tokens``, ``wall_s``,
    optional ``forward_calls``) summed, with the peak memory on ``device`` (MiB), or ``peak_mb``
    when given (the largest of the ranks of a data-parallel run)."""
    from .samplers.base import CostMeter

    meter = CostMeter(peak_memory_mb=peak_mb if peak_mb is not None else peak_memory_mb(device))
    for c in costs:
        meter.add(c.get("nfe", 0), c.get("generated_tokens", 0), c.get("wall_s", 0.0), c.get("forward_calls"))
    return Cost(**meter.to_cost())


def _unchanged_entry(path: Path, new: Entry) -> Entry | None:
    """The entry stored at ``path`` when it records the same finished run as ``new`` (same key,
    model, seeds, samples file and status), else None."""
    if not path.is_file():
        return None
    try:
        old = Entry.load(path)
    except BadInputError:
        return None
    same = (old.pair_digest == new.pair_digest and old.entry_id == new.entry_id and old.samples == new.samples
            and old.status.state == new.status.state == "complete")
    return old if same else None


def write_entry(output: str | Path, *, protocol: ProtocolKey, system: SystemKey, model: ModelInfo,
                seeds: dict[str, int], metrics: dict[str, Metric], costs: Iterable[Mapping[str, Any]],
                device: Any, n_expected: int, n_done: int, n_failed: int = 0, errors: Sequence[str] = (),
                state: RunState | None = None, label: str | None = None, reference: str | None = None,
                keep_unchanged: bool = False, peak_mb: float | None = None) -> Entry:
    """Assemble the entry of a finished (or partly failed) run and write ``<output>/entry.json``.

    Args:
        output: the run directory; its ``samples.jsonl`` is already written (its sha256 and
            ``n_done`` records are referenced).
        protocol / system: the comparability keys (:func:`dllm_bench.schema.split_keys`).
        model / seeds: the run's identity (with the keys, the entry id).
        metrics: name -> metric, the primary one first.
        costs: per-sample (or per-generation) cost dicts, summed (:func:`sum_cost`).
        device: where the model ran (for the peak memory).
        n_expected / n_done / n_failed / errors: sample counts and the failed batches' errors
            (the first 20 are kept).
        state: the status; default ``complete`` when every expected sample is done, ``failed``
            when none is, else ``partial``.
        label / reference: the row label and the label of the row this one is compared against.
        keep_unchanged: when writing fails (a read-only ``output``) but the stored entry records
            this same finished run, return that entry instead of failing.
        peak_mb: the run's peak memory in MiB when this process does not know it alone
            (the largest over the ranks of a data-parallel evaluation); default: this process's.

    Returns:
        the written entry (or, see ``keep_unchanged``, the stored one).

    Raises:
        OSError: ``entry.json`` could not be written.
    """
    from . import __version__
    from .envinfo import device_string, git_info, library_versions
    from .schema import sha256_file

    out = Path(output)
    if state is None:
        state = "complete" if n_done == n_expected else ("failed" if n_done == 0 else "partial")
    from .determinism import report as determinism_report
    from .envinfo import device_info

    # every entry, ours or lm-eval's, says precisely where and how it ran
    extra: dict[str, Any] = {"device_info": device_info(), "determinism": determinism_report()}
    sha, dirty = git_info()
    entry = Entry.create(
        protocol=protocol, system=system, label=label, reference=reference,
        repro=Repro(model=model, seeds=seeds, harness=HarnessInfo(version=__version__, git_sha=sha, git_dirty=dirty),
                    libraries=library_versions(), device=device_string(), platform=platform.platform(), **extra),
        metrics=metrics, cost=sum_cost(costs, device, peak_mb),
        status=Status(state=state, n_expected=n_expected, n_done=n_done, n_failed=n_failed, errors=list(errors)[:20]),
        samples=SamplesRef(path=SAMPLES_FILE, sha256=sha256_file(out / SAMPLES_FILE), n_records=n_done))
    try:
        entry.write(out / ENTRY_FILE)
    except OSError:
        kept = _unchanged_entry(out / ENTRY_FILE, entry) if keep_unchanged else None
        if kept is None:
            raise
        log.warning("%s is not writable; it already holds this finished run's entry", out)
        return kept
    return entry
