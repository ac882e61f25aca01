"""Per-sample JSONL store: appended and flushed as samples finish, resumable.

A run killed midway (or stopped by a full disk) leaves at most one partial last line;
:class:`SampleStore` ignores it on open and cuts it off before its first append, so re-running into the same directory
neither loses finished samples nor recomputes them (:class:`dllm_bench.jsonl.JsonlStore`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
