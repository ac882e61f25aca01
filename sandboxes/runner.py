"""The sandbox-side runner: the only harness code that executes inside a sandbox.

It is stdlib-only and runs under the sandbox's own interpreter (the system ``python3`` for
the ``process`` backend, the image's ``python3`` for ``docker``), never the harness venv.
Both backends start it as ``python3 -S -s -B -c <this file's source>`` and write one payload
to its stdin; it reads the payload to EOF before the program runs.

Payload (bytes on fd 0)::

    <JSON header>\\n<program: program_len bytes, UTF-8><stdin: stdin_len bytes>

Header keys: ``marker`` (str or null), ``program_len``, ``stdin_len``, ``workdir`` (created
if missing, becomes the cwd, ``HOME`` and ``TMPDIR``), ``wipe`` (directories whose contents
are removed first: the docker backend reuses a warm container), ``rlimits`` (``AS``,
``FSIZE`` in bytes, ``CPU`` in seconds, ``NPROC`` processes or null = unchanged).

Order of operations: read payload -> wipe -> make workdir -> put the program's stdin on
fd 0 (an anonymous memfd, so it is a real file descriptor, not a mocked ``sys.stdin``) ->
apply the rlimits -> run the program as a fresh ``__main__`` module.

Success marker (``marker`` not null, used by test harness programs): the runner writes
``\\n<marker>\\n`` to fd 1 only after the program returned normally, then exits 0 at once.
The marker is never in the program text, argv, the environment or a file. A program that
raises ``SystemExit`` (any code), calls ``os._exit``, is killed, or fails a test never
prints it. Exit codes in this mode (:data:`EXIT_TESTS_FAILED` etc.) let the host classify
failures; only the marker can make a pass. Without a marker the program's own exit
semantics are kept (``sys.exit(0)`` after printing an answer is a normal end).
"""

import json
import os
import sys
import traceback
import types

EXIT_TESTS_FAILED = 101
"""An ``AssertionError`` escaped the program (a test failed)."""
EXIT_MEMORY = 102
"""A ``MemoryError`` escaped the program (the address-space rlimit was hit)."""
EXIT_PREMATURE = 103
"""The program raised ``SystemExit`` before the harness finished (marker mode only)."""
EXIT_BAD_PAYLOAD = 104
"""The payload could not be parsed (a harness bug, never the program's fault)."""


class _Quitter:
    """``exit`` / ``quit`` as ``site`` defines them (raise SystemExit(code))."""

    def __repr__(self):
        return "Use exit() or Ctrl-D (i.e. EOF) to exit"

    def __call__(self, code=None):
        try:
            sys.stdin.close()
        except Exception:
            pass
        raise SystemExit(code)


def _read_all(fd):
    chunks: list[bytes] = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _wipe(directory):
    """Remove everything inside ``directory`` (best effort; fixes modes first)."""
    import shutil

    def _onerror(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path) or path, 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                shutil.rmtree(path, onerror=_onerror)
            else:
                os.unlink(path)
        except OSError:
            pass


def _set_rlimits(limits):
    import resource

    def _set(which, soft, hard=None):
        hard = soft if hard is None else hard
        cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))

    _set(resource.RLIMIT_CORE, 0)
    if limits.get("AS"):
        _set(resource.RLIMIT_AS, int(limits["AS"]))
    if limits.get("FSIZE"):
        _set(resource.RLIMIT_FSIZE, int(limits["FSIZE"]))
    if limits.get("CPU"):
        # soft limit -> SIGXCPU (the process dies, exit 128+24); hard limit 1 s later -> SIGKILL
        _set(resource.RLIMIT_CPU, int(limits["CPU"]), int(limits["CPU"]) + 1)
    if limits.get("NPROC"):
        _set(resource.RLIMIT_NPROC, int(limits["NPROC"]))


def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:  # no such stream (e.g. started without a console)
            continue
        try:
            stream.flush()
        except Exception:
            pass


def _say(msg):
    try:
        os.write(2, ("\ndllm-bench sandbox: " + msg + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def main():
    try:
        data = _read_all(0)
        nl = data.index(b"\n")
        header = json.loads(data[:nl].decode("utf-8"))
        p0 = nl + 1
        p1 = p0 + int(header["program_len"])
        program = data[p0:p1].decode("utf-8")
        stdin_data = data[p1:p1 + int(header["stdin_len"])]
        del data
    except Exception as exc:  # pragma: no cover - harness bug
        _say(f"bad payload: {exc!r}")
        os._exit(EXIT_BAD_PAYLOAD)
    marker = header.pop("marker", None)

    for directory in header.get("wipe") or ():
        _wipe(directory)
    workdir = header.get("workdir") or os.getcwd()
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    os.chdir(workdir)
    os.environ["HOME"] = workdir

    fd = os.memfd_create("stdin")
    os.write(fd, stdin_data)
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)
    del stdin_data

    _set_rlimits(header.get("rlimits") or {})

    import builtins

    if not hasattr(builtins, "exit"):  # started with -S (no site): keep exit()/quit() working
        builtins.exit = builtins.quit = _Quitter()  # type: ignore[assignment]  # site's Quitter is private
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = __builtins__
    module.__dict__["__file__"] = os.path.join(workdir, "main.py")
    sys.modules["__main__"] = module
    sys.argv = ["main.py"]
    sys.path[0] = workdir
    header = None

    try:
        code = compile(program, "main.py", "exec")
        del program
        exec(code, module.__dict__)
    except SystemExit as exc:
        if marker is None:
            raise
        _flush()
        _say(f"the program raised SystemExit({exc.code!r}) before the test harness finished; "
             "scored as a failure")
        os._exit(EXIT_PREMATURE)
    except MemoryError:
        _flush()
        _say("MemoryError: the program exceeded its memory limit")
        os._exit(EXIT_MEMORY)
    except AssertionError:
        try:
            traceback.print_exc()
        finally:
            _flush()
        os._exit(EXIT_TESTS_FAILED if marker is not None else 1)
    except BaseException:
        try:
            traceback.print_exc()
        finally:
            _flush()
        os._exit(1)

    if marker is not None:
        _flush()
        os.write(1, ("\n" + marker + "\n").encode("ascii"))
        os._exit(0)
    # no marker: return, so the interpreter ends as it would for `python3 main.py`
    # (non-daemon threads are joined, atexit handlers run, buffers are flushed).


if __name__ == "__main__":
    main()
