"""Error types that the CLI maps to exit codes.

Exit codes (the CLI contract):
    0  ok
    1  the run failed, or the regression gate found a regression (:class:`RunFailedError`)
    2  bad input or usage (:class:`BadInputError`): one clear line, never a traceback;
       also an output directory that cannot be written or is in use by another process
    130 / 143  interrupted by SIGINT (Ctrl-C) / SIGTERM (:class:`Interrupted`); re-running resumes
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


class DllmBenchError(Exception):
    """Base class for errors the CLI turns into one line on stderr."""

    exit_code = 1


class BadInputError(DllmBenchError):
    """Bad input: a file, a line in it, or an option is wrong. Exit code 2.

    Args:
        message: what is wrong, in one line.
        path: the offending file, if any.
        line: the 1-based line number in ``path``, if known.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        return where + self.message


class RunFailedError(DllmBenchError):
    """A run failed (model crash, all samples failed, ...). Exit code 1."""

    exit_code = 1


class PluginError(BadInputError):
    """A plugin cannot be selected: unknown name, duplicate name, or failed import. Exit code 2."""


class LocatedValueError(ValueError):
    """A ``ValueError`` raised by a pydantic model validator that knows which field is at fault:
    :func:`dllm_bench.registry.validate_config` reports it at ``loc`` (e.g. the file line of
    ``("evaluations", 1, "model")``) instead of at the model's root.

    Args:
        message: what is wrong.
        loc: the field's location (mapping keys / sequence indices).
    """

    def __init__(self, message: str, loc: tuple):
        self.loc = tuple(loc)
        super().__init__(message)


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM) turned into the same unwinding as Ctrl-C (SIGINT).

    The CLI exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).

    Args:
        signum: the signal received.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signum}")


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C / SIGTERM (:class:`KeyboardInterrupt`) that ``exc`` is, or that it was raised
    while unwinding (its ``__cause__`` / ``__context__`` chain), else None: an error raised by a
    cleanup that the interrupt started is reported as the interrupt."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


_received: list[int] = []  # SIGINT / SIGTERM numbers this process received (note_signal)


def note_signal(signum: int) -> None:
    """Record that this process received ``signum`` (see :func:`signal_received`)."""
    _received.append(int(signum))


def signal_received() -> int | None:
    """The first SIGINT / SIGTERM this process received through the CLI's handlers, else None:
    a library that swallows the resulting exception cannot make an interrupted run look
    finished or failed for another reason."""
    return _received[0] if _received else None


def exit_on_signal(signum: int, frame: object = None) -> None:
    """Signal handler for SIGINT / SIGTERM outside a command body (imports, argument parsing):
    one ``interrupted`` line on stderr, then exit ``128 + signum`` (130 / 143).

    Raises:
        SystemExit: always, with code ``128 + signum``.
    """
    note_signal(signum)
    os.write(2, b"interrupted\n")  # async-signal-safe: no buffered stream is re-entered
    raise SystemExit(128 + signum)


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the names in ``choices`` close to ``name`` (difflib),
    else ``""``. Shared by every unknown-name error (plugins, model specs, recipes, backends)."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
