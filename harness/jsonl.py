"""Reading input files (JSONL, YAML, any UTF-8 text) with one-line, file-and-line errors (exit code 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BadInputError


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


def iter_jsonl_objects(text: str, path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, object)`` for every non-blank line of JSONL ``text``.

    Raises:
        BadInputError: malformed JSON or a line that is not a JSON object, naming ``path``
            and the line.
    """
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise BadInputError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
        yield lineno, obj
