"""Per-sample JSONL store: appended and flushed as samples finish, resumable.

A run killed midway (or stopped by a full disk) leaves at most one partial last line;
:class:`SampleStore` ignores it on open and cuts it off before its first append, so re-running into the same directory
neither loses finished samples nor recomputes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import BadInputError
from .schema import SampleRecord


class SampleStore:
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

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[tuple[str, int], SampleRecord] = {}
        self._fh = None
        self._failed = False  # an append failed (its record may be half written)
        self._keep: int | None = None  # length to cut the file to before the first append
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw
        if raw and not raw.endswith(b"\n"):  # a run was killed while writing the last line
            keep = raw[: raw.rfind(b"\n") + 1]
            self._keep = len(keep)
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

    def _open(self):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a", encoding="utf-8")
            if self._keep is not None:
                fh.truncate(self._keep)
                self._keep = None
            self._fh = fh
        return self._fh

    def append(self, rec: SampleRecord) -> None:
        """Write one record and flush it to disk (fsync) before returning.

        Raises:
            OSError: the write failed (no space, read-only, ...); earlier records are intact.
        """
        try:
            fh = self._open()
            fh.write(rec.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            self._failed = True
            if exc.filename is None:  # a failed write names no file: name it
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            raise
        self.records[(rec.doc_id, rec.sample_index)] = rec

    def extend(self, recs: Iterable[SampleRecord]) -> None:
        for r in recs:
            self.append(r)

    def __iter__(self) -> Iterator[SampleRecord]:
        return iter(self.records.values())

    def close(self) -> None:
        """Close the file. After a failed :meth:`append` the unwritten rest of that record is
        dropped (a re-run cuts the partial line) instead of failing again."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:
                if not self._failed:
                    raise

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
