"""Per-sample JSONL store: appended and flushed as samples finish, resumable.

A run killed midway leaves at most one partial last line; :class:`SampleStore` drops it
on open (and rewrites the file without it), so re-running into the same directory
neither loses finished samples nor recomputes them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from .errors import BadInputError
from .schema import SampleRecord


class SampleStore:
    """Append-only JSONL of :class:`SampleRecord`, keyed by (doc_id, sample_index).

    Args:
        path: the JSONL file (created with its parent directory if missing).

    Raises:
        BadInputError: a complete (newline-terminated) line is not a valid record, or the
            file is not UTF-8 (naming the line of the first bad byte).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[tuple[str, int], SampleRecord] = {}
        if self.path.exists():
            self._load()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw
        if raw and not raw.endswith(b"\n"):  # a run was killed while writing the last line
            keep = raw[: raw.rfind(b"\n") + 1]
            self.path.write_bytes(keep)
        from .jsonl import decode_utf8

        for i, line in enumerate(decode_utf8(keep, self.path, "sample records").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = SampleRecord.model_validate(json.loads(line))
            except Exception as exc:  # noqa: BLE001 - reported as bad input with the line
                raise BadInputError(f"invalid sample record: {str(exc).splitlines()[0]}",
                                    path=self.path, line=i) from None
            self.records[(rec.doc_id, rec.sample_index)] = rec

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, rec: SampleRecord) -> None:
        """Write one record and flush it to disk (fsync) before returning."""
        self._fh.write(rec.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records[(rec.doc_id, rec.sample_index)] = rec

    def extend(self, recs: Iterable[SampleRecord]) -> None:
        for r in recs:
            self.append(r)

    def __iter__(self) -> Iterator[SampleRecord]:
        return iter(self.records.values())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
