"""Reading input files (JSONL, YAML, any UTF-8 text) with one-line, file-and-line errors (exit code 2),
and :class:`JsonlStore`, the resumable append-only JSONL file every run writes (per-sample records,
lm-eval's generation cache, a trainer's metrics log)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import BadInputError
from .outdir import write_atomic


def decode_utf8(raw: bytes, path: str | Path, what: str = "file") -> str:
    """``raw`` decoded as UTF-8 (a leading BOM dropped).

    Raises:
        BadInputError: the bytes are not UTF-8, naming ``path``, the 1-based line and the
            byte offset of the first bad byte.
    """
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        raise BadInputError(f"{what} is not UTF-8 text (byte 0x{bad} at offset {exc.start}); "
                            "re-save it as UTF-8", path=path, line=line) from None


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        BadInputError: the file is missing or unreadable (the OS reason), or not UTF-8 (with
            the line of the first bad byte); ``what`` names the file's role in the message.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {what}: {exc.strerror or exc}", path=path) from None
    return decode_utf8(raw, path, what)


def load_yaml(path: str | Path, what: str = "YAML file") -> tuple[Any, Any]:
    """Parse a YAML file; returns ``(data, node)`` where ``node`` is the composed node tree
    (for :func:`yaml_line`), or ``(None, None)`` for an empty file.

    Raises:
        BadInputError: unreadable or non-UTF-8 file, or a YAML syntax error (with its line).
    """
    import yaml

    text = read_text(path, what)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise BadInputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", path=path,
                            line=mark.line + 1 if mark is not None else None) from None
    return data, node


def yaml_line(node: Any, loc: tuple | list) -> int | None:
    """1-based line of the deepest node along ``loc`` (mapping keys / sequence indices) that
    exists in the composed YAML ``node``; None when ``node`` is None."""
    import yaml

    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v if isinstance(v, (yaml.MappingNode, yaml.SequenceNode)) else k
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL ``text``: split at ``\n`` only (a trailing ``\r`` dropped).

    Not ``str.splitlines()``: that also splits at U+0085, U+2028, U+2029 (and \\x1c-\\x1e),
    which JSON strings may hold unescaped (``json.dumps(..., ensure_ascii=False)`` writes them
    as they are), e.g. a completion whose bytes decode to U+0085.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def iter_jsonl_objects(text: str, path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, object)`` for every non-blank line of JSONL ``text``.

    Raises:
        BadInputError: malformed JSON or a line that is not a JSON object, naming ``path``
            and the line.
    """
    for lineno, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, parse_object(line)
        except BadInputError as exc:
            raise BadInputError(exc.message, path=path, line=lineno) from None


def parse_object(line: str) -> dict[str, Any]:
    """One JSONL line as a JSON object.

    Raises:
        BadInputError: malformed JSON or not an object (no file or line: the caller adds them).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BadInputError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


class JsonlStore:
    """An append-only JSONL file of records, read back on open, resumable.

    A run killed midway (or stopped by a full disk) leaves at most one partial last line: it is
    ignored on open and cut off before the first append, so re-running into the same directory
    neither loses finished records nor recomputes them. The file is opened for append only when
    the first record is written, so reading a finished run writes nothing (a read-only directory
    works). Records are kept in file order, keyed by ``key`` (a later record with the same key
    replaces the earlier one).

    Args:
        path: the JSONL file (its parent directory is created when the first record is written).
        parse: a complete line -> a record; raises :class:`BadInputError` (its message is kept,
            the file and line are added). Default: the line's JSON object (:func:`parse_object`).
        dump: a record -> its line (no newline). Default: ``json.dumps``.
        key: a record -> its key. Default: the record's position.
        what: the file's role in a non-UTF-8 error.
        lenient: skip lines ``parse`` rejects instead of failing (a log, not data).

    Raises:
        BadInputError: a complete (newline-terminated) line ``parse`` rejects (not when
            ``lenient``), or the file is not UTF-8 (naming the line of the first bad byte).
        OSError: reading the file, or (from :meth:`append`) writing it, failed.
    """

    def __init__(self, path: str | Path, *, parse: Callable[[str], Any] = parse_object,
                 dump: Callable[[Any], str] = json.dumps, key: Callable[[Any], Hashable] | None = None,
                 what: str = "records", lenient: bool = False):
        self.path = Path(path)
        self.records: dict[Hashable, Any] = {}
        self._parse, self._dump, self._key, self._what, self._lenient = parse, dump, key, what, lenient
        self._fh: IO[str] | None = None
        self._failed = False  # an append failed (its record may be half written)
        self._keep: int | None = None  # length to cut the file to before the first append
        if self.path.exists():
            self._load()

    def _lines(self) -> Iterator[tuple[int, str, Any]]:
        """``(1-based line, text, record)`` of every complete, non-blank line (rejected ones
        skipped when lenient); notes a partial last line for cutting."""
        raw = self.path.read_bytes()
        keep = raw
        if raw and not raw.endswith(b"\n"):  # a run was killed while writing the last line
            keep = raw[: raw.rfind(b"\n") + 1]
            self._keep = len(keep)
        for i, line in enumerate(jsonl_lines(decode_utf8(keep, self.path, self._what)), start=1):
            if not line.strip():
                continue
            try:
                rec = self._parse(line)
            except BadInputError as exc:
                if self._lenient:
                    continue
                raise BadInputError(exc.message, path=self.path, line=i) from None
            yield i, line, rec

    def _load(self) -> None:
        for _, _, rec in self._lines():
            self.records[self._key_of(rec)] = rec

    def _key_of(self, rec: Any) -> Hashable:
        return self._key(rec) if self._key is not None else len(self.records)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.records

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self.records.get(key, default)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.records.values())

    def _open(self):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a", encoding="utf-8")
            if self._keep is not None:
                fh.truncate(self._keep)
                self._keep = None
            self._fh = fh
        return self._fh

    def extend(self, recs: Iterable[Any]) -> None:
        """Write records and flush them to disk (one fsync) before returning.

        Raises:
            OSError: the write failed (no space, read-only, ...), naming the file; earlier
                records are intact.
        """
        recs = list(recs)
        try:
            fh = self._open()
            for r in recs:
                fh.write(self._dump(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            self._failed = True
            if exc.filename is None:  # a failed write names no file: name it
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            raise
        for r in recs:
            self.records[self._key_of(r)] = r

    def append(self, rec: Any) -> None:
        """Write one record and flush it to disk (fsync) before returning (see :meth:`extend`)."""
        self.extend([rec])

    def retain(self, keep: Callable[[Any], bool]) -> None:
        """Rewrite the file (atomically) with only the complete lines whose record ``keep``
        accepts, each as it was written; a partial last line goes too."""
        self.close()
        if not self.path.exists():
            return
        kept = [(line, rec) for _, line, rec in self._lines() if keep(rec)]
        write_atomic(self.path, "".join(line + "\n" for line, _ in kept))
        self._keep = None
        self.records = {}
        for _, rec in kept:
            self.records[self._key_of(rec)] = rec

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

    def __enter__(self) -> JsonlStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
