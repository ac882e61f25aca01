"""Per-sample JSONL store: appended and flushed as samples finish, resumable.

A run killed midway (or stopped by a full disk) leaves at most one partial last line;
:class:`SampleStore` ignores it on open and cuts it off before its first append, so re-running into the same directory
neither loses finished samples nor recomputes them (:class:`dllm_bench.jsonl.JsonlStore`).

A data-parallel evaluation (:mod:`dllm_bench.parallel`) writes one ``samples.rank<R>.jsonl`` per
rank; :class:`RunSamples` is a run directory's records as one rank sees them (every file counts
for resuming), and :func:`merge_rank_files` folds the rank files into ``samples.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import BadInputError
from .jsonl import JsonlStore
from .schema import SampleRecord


def _parse(line: str) -> SampleRecord:
    try:
        return SampleRecord.model_validate(json.loads(line))
    except Exception as exc:  # noqa: BLE001 - reported as bad input with the line
        raise BadInputError(f"invalid sample record: {str(exc).splitlines()[0]}") from None


class SampleStore(JsonlStore):
    """Append-only JSONL of :class:`SampleRecord`, keyed by (doc_id, sample_index).

    The file is opened for append only when the first record is written, so reading a
    finished run (every sample present) writes nothing and works in a read-only directory;
    a partial last line is cut off at that point too.

    Args:
        path: the JSONL file (its parent directory is created when the first record is written).

    Raises:
        BadInputError: a complete (newline-terminated) line is not a valid record, or the
            file is not UTF-8 (naming the line of the first bad byte).
        OSError: reading the file, or (from :meth:`append`) writing it, failed.
    """

    records: dict[tuple[str, int], SampleRecord]  # type: ignore[assignment]

    def __init__(self, path: str | Path):
        super().__init__(path, parse=_parse, dump=lambda r: r.model_dump_json(),
                         key=lambda r: (r.doc_id, r.sample_index), what="sample records")

    def __iter__(self) -> Iterator[SampleRecord]:
        return iter(self.records.values())

    def __enter__(self) -> SampleStore:
        return self


RANK_FILE = "samples.rank{rank}.jsonl"
"""Per-rank records of a data-parallel evaluation (:mod:`dllm_bench.parallel`), folded into
``samples.jsonl`` by rank 0 when the evaluation ends (:func:`merge_rank_files`)."""


def rank_files(output: str | Path) -> list[Path]:
    """The ``samples.rank<R>.jsonl`` files in ``output``, by rank."""
    found = []
    for p in Path(output).glob(RANK_FILE.format(rank="*")):
        r = p.name[len("samples.rank"):-len(".jsonl")]
        if r.isdigit():
            found.append((int(r), p))
    return [p for _, p in sorted(found)]


class RunSamples:
    """The sample records of one run directory as one rank sees them: its own file, appended to
    (``samples.jsonl`` in one process, ``samples.rank<R>.jsonl`` on rank R of a launch), and every
    other records file there (``samples.jsonl``, the rank files of this or an earlier launch with
    any number of processes), read once. A sample present in any of them counts as done, so a
    killed run resumes whatever the number of processes before and now.

    Supports what :func:`dllm_bench.evaluate.run_eval` uses of a :class:`SampleStore`:
    ``(doc_id, sample_index) in``, :meth:`append`, iteration (own records first, then the
    others', each key once), ``len`` and the context manager.

    Args:
        output: the run directory.
        rank / world_size: this process's place in the launch (0, 1 without one).

    Raises:
        BadInputError / OSError: as :class:`SampleStore`, for any of the files.
    """

    def __init__(self, output: str | Path, rank: int = 0, world_size: int = 1):
        from .entry_writer import SAMPLES_FILE

        out = Path(output)
        own = out / (SAMPLES_FILE if world_size == 1 else RANK_FILE.format(rank=rank))
        self.own = SampleStore(own)
        others = [out / SAMPLES_FILE, *rank_files(out)]
        self.others = [SampleStore(p) for p in others if p != own and p.exists()]

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.own or any(key in s for s in self.others)

    def append(self, rec: SampleRecord) -> None:
        self.own.append(rec)

    def __iter__(self) -> Iterator[SampleRecord]:
        if not self.others:
            yield from self.own
            return
        seen: set[tuple[str, int]] = set()
        for store in (self.own, *self.others):
            for key, rec in store.records.items():
                if key not in seen:
                    seen.add(key)
                    yield rec

    def __len__(self) -> int:
        return len(self.own) if not self.others else sum(1 for _ in self)

    def close(self) -> None:
        self.own.close()

    def __enter__(self) -> RunSamples:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_rank_files(output: str | Path, order: Sequence[tuple[str, int]]) -> list[SampleRecord] | None:
    """Fold every ``samples.rank<R>.jsonl`` of ``output`` into ``samples.jsonl``, then delete them.

    The new ``samples.jsonl`` (written atomically) holds each (doc_id, sample_index) once: the
    keys of ``order`` first, in that order (the document order of a one-process run), then any
    other record in the order found (``samples.jsonl`` first, then the rank files by rank). A
    crash between the write and the deletions loses nothing: the next run sees the same records
    twice and merges again. Only rank 0 (or a single process) may call this, once every rank has
    closed its file.

    Returns:
        the records of ``order`` that exist, in that order; None when there was no rank file
        (``samples.jsonl`` is then left as it is).

    Raises:
        BadInputError / OSError: a file cannot be read or ``samples.jsonl`` cannot be written.
    """
    from .entry_writer import SAMPLES_FILE
    from .outdir import write_atomic

    out = Path(output)
    shards = rank_files(out)
    if not shards:
        return None
    found: dict[tuple[str, int], SampleRecord] = {}
    for path in [out / SAMPLES_FILE, *shards]:
        if path.exists():
            for key, rec in SampleStore(path).records.items():
                found.setdefault(key, rec)
    wanted = [found[k] for k in order if k in found]
    listed = set(order)
    rest = [r for k, r in found.items() if k not in listed]
    write_atomic(out / SAMPLES_FILE, "".join(r.model_dump_json() + "\n" for r in [*wanted, *rest]))
    for path in shards:
        path.unlink(missing_ok=True)
    return wanted
