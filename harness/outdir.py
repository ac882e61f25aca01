"""Output directories: one writer per directory, a pre-flight write check, atomic files,
and OS errors as one line.

Every command that writes a directory (``eval``, ``train``, ``run``, ``leaderboard build``)
calls :func:`claim_output` on the directory it was given before loading anything heavy:

- the directory is created (parents too) and a throw-away file is created in it, so a path
  that is a file, lies under a file, is read-only or not writable fails at once as bad
  input (exit code 2) instead of after a model load;
- an exclusive ``flock`` on ``<dir>/.dllm-bench.lock`` (:class:`filelock.UnixFileLock`) is
  taken for the rest of the process's life and the holder's PID is written into the lock
  file. The kernel drops the lock when the process dies (even by SIGKILL), so resuming a
  crashed run needs no manual unlock; a second writer fails with exit code 2 naming the
  directory and the PID. Claiming a directory this process already holds, or one inside it
  (a recipe's stage and eval directories), is a no-op;
- a directory the claim created and the command then left empty (it failed validation after
  the claim) is removed when the process exits, so bad input writes nothing.

:func:`write_atomic` writes a file through a temporary sibling and ``os.replace``, and
removes the temporary file when the write fails (a full disk leaves no empty ``.tmp``).
:func:`pin_run` / :func:`check_run` pin a run's identity in a run file and refuse a directory
that holds a different run (naming the differing fields).
:func:`describe_os_error` renders an :class:`OSError` as one line naming the path and the
errno's meaning (:func:`os.strerror`).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import BadInputError

LOCK_FILE = ".dllm-bench.lock"
"""Name of the lock file inside every claimed output directory (holds the writer's PID)."""

_held: dict[Path, object] = {}  # resolved directory -> its held filelock (kept for the process's life)


class OutputLockedError(BadInputError):
    """Another live process is writing the output directory. Exit code 2.

    Args:
        directory: the claimed directory.
        pid: the holder's PID as written in the lock file (None if it could not be read).
    """

    def __init__(self, directory: str | Path, pid: int | None):
        self.directory, self.pid = str(directory), pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"output directory is in use by {who}; wait for it to finish or use another --output",
                         path=directory)


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """One line for ``exc``: ``<path>: <strerror of its errno>`` (the path is the error's own
    file name when it has one, else ``path``)."""
    where = exc.filename if exc.filename is not None else path
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {reason}" if where is not None else reason


def unusable_output(exc: OSError, directory: str | Path) -> BadInputError:
    """A :class:`BadInputError` (exit 2) saying why ``directory`` cannot be an output directory."""
    code = exc.errno
    if isinstance(exc, FileExistsError) or code == errno.EEXIST:  # mkdir(exist_ok=True) on a file
        code = errno.ENOTDIR
    reason = os.strerror(code) if code else (exc.strerror or str(exc))
    where = exc.filename if exc.filename is not None and code != errno.ENOTDIR else directory
    return BadInputError(f"cannot write output directory: {reason}"
                         + (f" ({where})" if str(where) != str(directory) else ""), path=directory)


def _rank0() -> bool:
    """True in a single process and on the global rank 0 of a distributed launch."""
    from .parallel import env_rank

    return env_rank() == 0


def _holder_pid(lock_path: Path) -> int | None:
    try:
        return int(lock_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def held_by_us(directory: str | Path) -> bool:
    """True when this process holds the claim on ``directory`` or on a directory above it."""
    d = Path(directory).resolve()
    return any(d == h or h in d.parents for h in _held)


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` (with parents) and a throw-away file in it.

    Raises:
        BadInputError: the path is a file or lies under a file (ENOTDIR), is read-only
            (EROFS), not writable (EACCES / EPERM), or its file system is full (ENOSPC);
            one line naming the path and the errno's meaning.
    """
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):  # O_TMPFILE where supported: nothing is left behind
            pass
    except OSError as exc:
        raise unusable_output(exc, d) from None


def claim_output(directory: str | Path, *, read_only_if: str | None = None, own_lock: bool = False) -> bool:
    """Make ``directory`` this process's output directory for the rest of its life.

    Checks that it can be created and written (:func:`check_writable`), then takes the
    exclusive lock on ``<directory>/.dllm-bench.lock`` and writes this process's PID into
    it. Re-entrant: a directory this process already holds, or one inside it, is returned
    as is. Ranks other than 0 of a distributed launch only run the write check (rank 0
    holds the lock for all of them).

    Args:
        directory: the output directory.
        read_only_if: a file name: when ``directory`` exists but cannot be written and holds
            this file (a finished result), return False instead of raising, so the command
            can report that result without writing (no lock is needed: nobody can write).
        own_lock: lock ``directory`` itself even when this process already holds a directory
            above it (the points of ``eval --sweep``: each is an ordinary eval output directory
            that another process could be pointed at).

    Returns:
        True when claimed; False for a read-only directory holding ``read_only_if``.

    Raises:
        OutputLockedError: another live process holds the lock (exit code 2).
        BadInputError: the directory cannot be created or written (:func:`check_writable`).
    """
    d = Path(directory)
    fresh = not d.exists()
    try:
        check_writable(d)
    except BadInputError:
        if read_only_if is not None and d.is_dir() and (d / read_only_if).is_file():
            return False
        raise
    if (d.resolve() in _held if own_lock else held_by_us(d)) or not _rank0():
        return True
    from filelock import Timeout, UnixFileLock

    lock_path = d / LOCK_FILE
    lock = UnixFileLock(str(lock_path), timeout=0, on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLockedError(d, _holder_pid(lock_path)) from None
    except OSError as exc:
        raise unusable_output(exc, d) from None
    _held[d.resolve()] = lock
    if fresh:
        _created.append(d.resolve())
        if len(_created) == 1:
            atexit.register(_remove_unused)
    return True


_created: list[Path] = []  # directories claim_output created in this process


def _remove_unused() -> None:
    """At exit: a directory this process created but wrote nothing into (the command failed
    validation after claiming it) is removed again, so bad input leaves nothing behind
    (innermost first, so a parent emptied by removing its children goes too)."""
    for d in reversed(_created):
        try:
            if {p.name for p in d.iterdir()} <= {LOCK_FILE}:
                lock = _held.pop(d, None)
                if lock is not None:
                    lock.release(force=True)  # type: ignore[attr-defined]
                (d / LOCK_FILE).unlink(missing_ok=True)
                d.rmdir()
        except OSError:
            pass


def claimed() -> list[Path]:
    """The directories this process holds (resolved paths)."""
    return list(_held)


def release_all() -> None:
    """Release every claim of this process (tests and in-process callers; the OS releases
    them anyway when the process ends)."""
    while _held:
        _, lock = _held.popitem()
        lock.release(force=True)  # type: ignore[attr-defined]


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary sibling, fsync, ``os.replace``.

    On failure the temporary file is removed and ``path`` keeps its former content.

    Raises:
        OSError: the write failed (ENOSPC, EROFS, EACCES, ...); its ``filename`` is ``path``.
    """
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name it
            raise OSError(exc.errno, exc.strerror, str(p)) from None
        raise


# --------------------------------------------------------------------------- run identity
def pin_run(path: str | Path, ident: dict[str, Any]) -> None:
    """Record ``ident`` (a small JSON identity of a run: digests, model, seed, config) in the
    run file ``path`` (atomically; sorted keys, two-space indent)."""
    write_atomic(path, json.dumps(ident, indent=2, sort_keys=True) + "\n")


def check_run(path: str | Path, ident: dict[str, Any], *, conflict: str, under: str | None = None,
              lenient: bool = False, located: bool = True) -> bool:
    """Refuse a directory whose run file ``path`` pins a run other than ``ident``.

    Args:
        path: the run file (:func:`pin_run` wrote it).
        ident: this run's identity.
        conflict: the message on a mismatch; ``{fields}`` is replaced by the differing fields
            (comma-separated).
        under: compare the fields of ``ident[under]`` (e.g. a config) rather than the top-level
            keys; when none of those differ, the differing top-level keys are named.
        lenient: an unreadable or empty run file counts as absent instead of bad input.
        located: name ``path`` in the error.

    Returns:
        True when ``path`` pins ``ident``; False when there is no (lenient: no usable) run file.

    Raises:
        BadInputError: the run file pins a different run (``conflict``), or it is not valid
            JSON (``invalid run file``; not when ``lenient``).
    """
    p = Path(path)
    if not p.is_file():
        return False
    try:
        old = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if lenient:
            return False
        raise BadInputError(f"invalid run file: {exc}", path=p) from None
    if lenient and not (old and isinstance(old, dict)):
        return False
    if old == ident:
        return True

    def differing(a: Any, b: Any) -> list[str]:
        a, b = (a if isinstance(a, dict) else {}), (b if isinstance(b, dict) else {})
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    diff = (differing(old.get(under), ident.get(under)) if under is not None else []) or differing(old, ident)
    raise BadInputError(conflict.replace("{fields}", ", ".join(diff)), path=p if located else None)
