"""The one rich Console (stderr) shared by logging and progress bars.

stdout is reserved for results (``--json`` output, final tables); everything else —
logs, warnings, progress — goes to stderr through :data:`console`. Progress bars are
shown only when stderr is a TTY, ``CI`` is unset, and the process is rank 0.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)
"""Shared stderr console for logs and progress."""

stdout_console = Console(soft_wrap=True)
"""Console for final tables on stdout (results only)."""

_configured = False
_progress_forced_off = False


def setup_logging(level: str | int = "INFO") -> None:
    """Attach one RichHandler on :data:`console` to the ``dllm_bench`` logger (idempotent)."""
    global _configured
    from rich.logging import RichHandler

    logger = logging.getLogger("dllm_bench")
    logger.setLevel(level if isinstance(level, int) else level.upper())
    if not _configured:
        handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        _configured = True


def disable_progress() -> None:
    """Force progress bars off (``--no-progress``)."""
    global _progress_forced_off
    _progress_forced_off = True


def progress_enabled() -> bool:
    """True when progress bars should be drawn: a TTY, not under CI, rank 0, not disabled."""
    if _progress_forced_off or os.environ.get("CI"):
        return False
    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        return False
    return console.is_terminal


@contextmanager
def progress(description: str, total: int | None) -> Iterator[_Advance]:
    """Context manager yielding ``advance(n=1, **fields)``; draws a bar only when enabled."""
    if not progress_enabled():
        yield _Advance(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=console, transient=False) as bar:
        task_id = bar.add_task(description, total=total, info="")
        yield _Advance(bar, task_id)


class _Advance:
    def __init__(self, bar, task_id):
        self._bar, self._task = bar, task_id

    def __call__(self, n: int = 1, info: str | None = None) -> None:
        if self._bar is not None:
            kw = {"info": info} if info is not None else {}
            self._bar.update(self._task, advance=n, **kw)


def print_line(label: str, text: str, style: str = "bold red") -> None:
    """Print ``<label> <text>`` on stderr as one line; ``text`` (exception text, paths, task
    names: user values) is never parsed as rich markup nor highlighted."""
    from rich.text import Text

    line = Text.assemble((label, style), " " + str(text) if text else "")
    console.print(line, highlight=False, soft_wrap=True)


def results_console() -> Console:
    """The stdout console for final tables; when stdout is not a terminal (CI logs, pipes)
    a 160-column one, so that wide tables are not truncated to rich's 80-column default."""
    return stdout_console if stdout_console.is_terminal else Console(soft_wrap=True, width=160)


def fmt_number(x: float | None, nd: int = 4) -> str:
    """``x`` with ``nd`` decimals for tables and messages; ``-`` for None and NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"
