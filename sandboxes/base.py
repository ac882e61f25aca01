"""The sandbox contract (:class:`Sandbox`): limits, outcomes, and the pieces both backends
share. Choosing and opening a backend: :mod:`dllm_bench.sandboxes.backends`.

A *sandbox* runs one untrusted Python program (source text, optional stdin) under
:class:`Limits` and returns an :class:`Outcome`. Backends (``dllm_bench.sandboxes`` entry
points): ``process`` (bubblewrap + rlimits, :mod:`dllm_bench.sandboxes.process`) and
``docker`` (warm pool of locked-down containers, :mod:`dllm_bench.sandboxes.docker`).

Both backends execute the same in-sandbox runner (:mod:`dllm_bench.sandboxes.runner`) so
a program sees the same world either way: a fresh ``__main__``, a writable work dir, its
stdin on fd 0, a clean environment and the rlimits below.

Success marker (anti reward-hacking, see dLLM-RL reward/rl_execute.py at 10b4fd1: ``SystemExit`` counted
as a pass in TraceRL's executor). When ``run(..., success_marker=m)`` is given, ``m`` is a
fresh random nonce (:func:`new_marker`) that the runner prints only after the program —
the candidate code *and* the test harness appended to it — returned normally. ``passed``
then requires exit code 0 **and** the marker line. ``sys.exit(0)``, ``os._exit(0)``,
``SystemExit`` raised inside a test, a killed or timed-out process and a skipped test never
pass. :func:`build_test_program` makes such test-harness programs with per-test outcomes.
"""

from __future__ import annotations

import json
import math
import secrets
import signal
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import runner as _runner

RunStatus = Literal["passed", "failed", "timeout", "memory", "runtime-error", "output-limit"]
"""Outcome of one run.

``passed``: exit 0 (and, with a success marker, the marker printed after the tests).
``failed``: a test failed, or the program exited/was cut short before the harness finished.
``timeout``: wall-clock or CPU-time limit. ``memory``: memory limit (``MemoryError`` or an
OOM kill). ``runtime-error``: any other non-zero exit or signal, including syntax errors.
``output-limit``: stdout + stderr exceeded ``max_output_bytes`` (the program is killed).
"""

RUNNER_SOURCE = Path(_runner.__file__).read_text(encoding="utf-8")
"""Source of the in-sandbox runner, passed with ``python3 -c``."""

PYTHON_FLAGS = ("-S", "-s", "-B")
"""Interpreter flags in the sandbox: no ``site`` (saves ~8 ms per run; the runner restores
``exit``/``quit``), no user site, no bytecode writes."""

TEST_LINE_PREFIX = "__dllm_test__ "
"""Prefix of the per-test result lines written by :func:`build_test_program` programs."""


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here (message says why and how to fix it)."""


class Limits(BaseModel):
    """Resource limits for one sandboxed run (every field has a unit in its name or doc).

    Enforcement per backend (``process`` / ``docker``):

    - ``wall_time_s``: host-side deadline from launch to exit; the sandbox is killed
      (both). Includes interpreter start-up (~20-50 ms).
    - ``cpu_time_s``: ``RLIMIT_CPU`` per process, rounded up to whole seconds; SIGXCPU at
      the limit, SIGKILL one second later (both).
    - ``memory_mb``: MiB of address space per process (``RLIMIT_AS``, both) and, for
      docker, the container's memory cgroup (memory + swap = this + the tmpfs sizes).
    - ``max_processes``: processes + threads the program may have at once
      (``RLIMIT_NPROC`` inside a private user namespace / the pids cgroup).
    - ``max_file_size_mb``: largest file the program may write (``RLIMIT_FSIZE``).
    - ``tmpfs_mb``: size of each writable tmpfs (``/work``, ``/tmp``, ``/dev/shm``); every
      other path is read-only.
    - ``max_output_bytes``: stdout + stderr bytes kept; one byte more kills the program
      with status ``output-limit``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_time_s: float = Field(10.0, gt=0, description="wall-clock seconds for the whole run")
    cpu_time_s: float = Field(10.0, gt=0, description="CPU seconds per process (RLIMIT_CPU)")
    memory_mb: int = Field(1024, ge=64, description="MiB of address space / container memory")
    max_processes: int = Field(16, ge=1, description="processes + threads at once")
    max_file_size_mb: int = Field(16, ge=1, description="MiB, largest file written")
    tmpfs_mb: int = Field(64, ge=1, description="MiB, size of each writable tmpfs")
    max_output_bytes: int = Field(4 << 20, ge=1024, description="bytes of stdout+stderr")

    def scaled(self, wall_time_s: float | None = None, cpu_time_s: float | None = None) -> Limits:
        """A copy with new time limits (e.g. per-test budgets times the number of tests)."""
        upd: dict[str, Any] = {}
        if wall_time_s is not None:
            upd["wall_time_s"] = wall_time_s
        if cpu_time_s is not None:
            upd["cpu_time_s"] = cpu_time_s
        return self.model_copy(update=upd)


class Outcome(BaseModel):
    """What one sandboxed run did.

    ``stdout``/``stderr`` are decoded UTF-8 (invalid bytes replaced), at most
    ``max_output_bytes`` together, with the success-marker line removed.
    ``exit_code``: the program's exit status, 128+N for signal N, None when the harness
    killed it before it exited. ``wall_s``: seconds from launch to exit as seen by the host.
    ``details``: one human-readable line on why the status was given.
    """

    model_config = ConfigDict(extra="forbid")

    status: RunStatus
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    wall_s: float
    details: str = ""
    marker_seen: bool = False
    output_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def brief(self, max_chars: int = 2000) -> dict[str, Any]:
        """A small dict for per-sample records: status, exit code, wall time, output tails."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "wall_s": round(self.wall_s, 4),
            "details": self.details,
            "stdout_tail": self.stdout[-max_chars:],
            "stderr_tail": self.stderr[-max_chars:],
        }


class Sandbox(ABC):
    """The sandbox contract: a backend that runs untrusted programs (entry-point group
    ``dllm_bench.sandboxes``). Class attributes ``name``, ``version`` (bump when behaviour that
    can change a verdict changes; recorded in entries) and ``Config`` (pydantic); built as
    ``cls(config)``, raising :class:`SandboxUnavailable` when it cannot run here.

    The harness calls :meth:`available` to choose a backend (``dllm-bench sandbox check``,
    the default backend), :meth:`run` from several worker threads at once per scored program,
    :meth:`describe` once for the entry's key, and :meth:`close` when the task closes (also
    on ``with`` exit); a closed sandbox has ``closed`` True and is not reused. A plugin
    implements :meth:`available`, :meth:`run` and :meth:`describe`.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    closed: bool = False

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """``(True, what)`` if this backend can run here, else ``(False, why not)``."""

    @abstractmethod
    def run(self, program: str, *, stdin: str | bytes | None = None, limits: Limits | None = None,
            success_marker: str | None = None) -> Outcome:
        """Run ``program`` (Python source) with ``stdin`` under ``limits`` (default :class:`Limits`).

        With ``success_marker`` (from :func:`new_marker`), ``passed`` needs exit 0 and the
        marker printed by the runner after the program returned normally. Never raises for
        anything the program does; raises ``RuntimeError`` only if the sandbox itself broke.
        """

    @abstractmethod
    def describe(self, limits: Limits | None = None) -> dict[str, Any]:
        """Backend name + version, ``isolation`` summary, ``python_version`` and interpreter
        (``python``) or image (``image_id``) identity; recorded in entries next to the limits."""

    def close(self) -> None:
        """Release resources (warm containers, ...). Idempotent. Default: nothing to release."""
        return None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def new_marker() -> str:
    """A fresh random success marker (a 128-bit nonce, hex; one per run)."""
    return "__dllm_ok_" + secrets.token_hex(16) + "__"


def make_payload(program: str, stdin: str | bytes | None, limits: Limits, marker: str | None, *,
                 workdir: str, wipe: list[str] | None = None, nproc: bool = True) -> bytes:
    """The runner's stdin payload (see :mod:`dllm_bench.sandboxes.runner`)."""
    prog = program.encode("utf-8")
    data = stdin.encode("utf-8") if isinstance(stdin, str) else (stdin or b"")
    rl = {
        "AS": limits.memory_mb << 20,
        "FSIZE": limits.max_file_size_mb << 20,
        "CPU": max(1, math.ceil(limits.cpu_time_s)),
        "NPROC": limits.max_processes if nproc else None,
    }
    header = {"marker": marker, "program_len": len(prog), "stdin_len": len(data),
              "workdir": workdir, "wipe": wipe or [], "rlimits": rl}
    return json.dumps(header).encode() + b"\n" + prog + data


def sandbox_env() -> dict[str, str]:
    """The whole environment a sandboxed program sees (nothing from the harness)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": "/tmp",
        "HOME": "/work",
    }


def classify(*, exit_code: int | None, stdout: bytes, stderr: bytes, wall_s: float,
             marker: str | None, killed: str | None, truncated: bool,
             oom_killed: bool = False) -> Outcome:
    """Turn raw results into an :class:`Outcome` (shared by both backends).

    Args:
        exit_code: exit status (128+N for signal N), None if killed by the harness.
        killed: why the harness killed the program (``"timeout"``/``"output-limit"``) or None.
        oom_killed: the backend saw a kernel OOM kill.
    """
    out = stdout.decode("utf-8", "replace")
    err = stderr.decode("utf-8", "replace")
    seen = False
    if marker is not None:
        token = "\n" + marker + "\n"  # exactly what the runner writes
        pos = out.rfind(token)
        if pos >= 0:
            seen = True
            out = out[:pos] + out[pos + len(token):]
    kw = dict(exit_code=exit_code, stdout=out, stderr=err, wall_s=wall_s, marker_seen=seen,
              output_truncated=truncated)
    if killed == "output-limit":
        return Outcome(status="output-limit", details="stdout+stderr exceeded max_output_bytes; killed", **kw)
    if killed == "timeout":
        return Outcome(status="timeout", details="wall-clock limit reached; killed", **kw)
    if oom_killed:
        return Outcome(status="memory", details="killed by the out-of-memory killer", **kw)
    if exit_code == 0:
        if marker is None or seen:
            return Outcome(status="passed", details="", **kw)
        return Outcome(status="failed",
                       details="exit 0 without the harness's success marker (exited before the tests finished)",
                       **kw)
    if exit_code == 128 + signal.SIGXCPU or exit_code == -signal.SIGXCPU:
        return Outcome(status="timeout", details="CPU-time limit reached (SIGXCPU)", **kw)
    if exit_code == _runner.EXIT_MEMORY:
        return Outcome(status="memory", details="MemoryError (address-space limit)", **kw)
    if marker is not None and exit_code == _runner.EXIT_TESTS_FAILED:
        return Outcome(status="failed", details="a test failed (AssertionError)", **kw)
    if marker is not None and exit_code == _runner.EXIT_PREMATURE:
        return Outcome(status="failed", details="SystemExit raised before the tests finished", **kw)
    if exit_code == 128 + signal.SIGKILL:
        return Outcome(status="runtime-error",
                       details="killed by SIGKILL (CPU hard limit or memory pressure)", **kw)
    if exit_code is not None and exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return Outcome(status="runtime-error", details=f"killed by {name}", **kw)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return Outcome(status="runtime-error", details=f"exit code {exit_code}: {last[:200]}", **kw)


class OutputCap:
    """Collects stdout/stderr chunks up to a combined byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.parts: dict[int, list[bytes]] = {1: [], 2: []}
        self.total = 0
        self.exceeded = False

    def add(self, stream: int, chunk: bytes) -> bool:
        """Append ``chunk`` to stream 1 (stdout) or 2 (stderr); False once over budget."""
        room = self.max_bytes - self.total
        if len(chunk) > room:
            self.parts[stream].append(chunk[:max(room, 0)])
            self.total = self.max_bytes
            self.exceeded = True
            return False
        self.parts[stream].append(chunk)
        self.total += len(chunk)
        return True

    def stdout(self) -> bytes:
        return b"".join(self.parts[1])

    def stderr(self) -> bytes:
        return b"".join(self.parts[2])


# --------------------------------------------------------------------------------------
# Test-harness programs (function-call / assert tests with per-test outcomes)
# --------------------------------------------------------------------------------------

_HARNESS = r"""
def __dllm_main(__preamble, __solution, __tests, __stop, __prefix, __exec=exec, __compile=compile,
                __globals=globals, __Base=BaseException, __Assert=AssertionError, __TypeError=TypeError,
                __type=type, __getattr=getattr, __enumerate=enumerate, __len=len, __dict=dict, __str=str,
                __callable=callable, __isinstance=isinstance, __any=any,
                __plain=(int, float, complex, bool, str, bytes, type(None)), __seqs=(list, tuple, set, frozenset)):
    import builtins as __b, sys as __sys, time as __time
    __g = __globals()
    __write, __flush, __clock = __sys.__stdout__.write, __sys.__stdout__.flush, __time.perf_counter
    __FT = __type(__dllm_main)
    __tainted = ("solution.py", "main.py", "<preamble>")

    def __untrusted(x, depth=0):
        # an object of a class the solution defined, or whose __eq__ the solution wrote
        t = __type(x)
        if t in __plain:
            return False
        for c in t.__mro__:
            if c.__module__ == "__main__":
                return True
            code = __getattr(c.__dict__.get("__eq__"), "__code__", None)
            if code is not None and code.co_filename in __tainted:
                return True
        if depth < 20 and t in __seqs:
            for e in x:
                if __untrusted(e, depth + 1):
                    return True
        elif depth < 20 and t is __dict:
            for k, v in __dict.items(x):
                if __untrusted(k, depth + 1) or __untrusted(v, depth + 1):
                    return True
        return False

    def __checked(r):
        if __untrusted(r):
            raise __TypeError("the solution returned a %s object (a class it defined): results must be "
                              "plain values" % (__type(r).__name__,))
        return r

    def __guard(f):
        def __guarded(*a, **k):
            return __checked(f(*a, **k))
        return __guarded

    _ga, _gd, _ck, _cl = __getattr, __guard, __checked, __callable  # (no name mangling in the class)

    class __Proxy:
        def __init__(self, obj):
            self.__dict__["_obj"] = obj

        def __getattr__(self, name):
            v = _ga(self.__dict__["_obj"], name)
            return _gd(v) if _cl(v) else _ck(v)

    __exec(__compile(__preamble, "<preamble>", "exec"), __g)
    __clean_builtins = __dict(__b.__dict__)  # tests see these even if the solution patches builtins
    __exec(__compile(__solution, "solution.py", "exec"), __g)
    # tests call the solution's functions / objects through guards that reject results of
    # solution-defined classes (an always-equal __eq__ must not pass `assert f(x) == y`)
    __overlay = {}
    for __k, __v in __dict.items(__g):
        if __k.startswith("__dllm") or __k.startswith("__"):
            continue
        __t = __type(__v)
        if __t is __FT and __getattr(__v, "__module__", None) == "__main__":
            __overlay[__k] = __guard(__v)
        elif (__t.__module__ == "__main__" and not __isinstance(__v, type)
              and __any(__type(m) is __FT and not n.startswith("_") for n, m in __t.__dict__.items())):
            __overlay[__k] = __Proxy(__v)  # e.g. my_solution = Solution(); plain data objects stay as they are
    __failed = 0
    for __i, (__name, __src) in __enumerate(__tests):
        __t0 = __clock()
        __tg = __dict(__g)
        __tg.update(__overlay)
        __tg["__builtins__"] = __clean_builtins
        try:
            __exec(__compile(__src, "<test %d: %s>" % (__i, __name), "exec"), __tg)
            __st, __msg = "passed", ""
        except __Assert as __e:
            __st, __msg = "failed", "AssertionError: " + __str(__e)[:300]
        except __Base as __e:  # SystemExit, KeyboardInterrupt, ... never pass a test
            __st, __msg = "error", (__type(__e).__name__ + ": " + __str(__e))[:300]
        if __st != "passed":
            __failed += 1
        __line = f"\n{__prefix}{__i}\t{__st}\t{__clock() - __t0:.6f}\t{__msg!r}\n"
        __flush()
        __write(__line)
        __flush()
        if __st != "passed" and __stop:
            break
    if __failed or __len(__tests) == 0:
        raise __Assert("%d of %d tests did not pass" % (__failed, __len(__tests)))
"""


def build_test_program(solution: str, tests: list[tuple[str, str]], *, preamble: str = "",
                       stop_on_failure: bool = False, line_key: str = "") -> str:
    """A Python program that runs ``solution`` then each test, reporting per-test outcomes.

    Args:
        solution: the candidate code (executed first, as module-level code of ``__main__``).
        tests: ``(name, source)`` pairs; each source runs in the solution's globals and passes
            when it raises nothing. Assert-style tests (HumanEval ``check(f)``, MBPP asserts,
            LeetCode ``assert my_solution.f(...) == ...``).
        preamble: code run before the solution (benchmark-standard imports).
        stop_on_failure: stop at the first test that does not pass (remaining: not run).
        line_key: a per-run secret written into every per-test line (``__dllm_test__<key> ``),
            so :func:`parse_test_lines` ignores lines printed by the solution itself.

    The program raises ``AssertionError`` at the end unless every test passed, so with a
    success marker a run passes only if all tests ran and passed. A solution that fails to
    compile or raises at import is a ``runtime-error`` with no per-test lines.

    Hardening (best effort; an in-process harness cannot be airtight): the harness keeps its
    own references to ``exec``, ``compile``, the exception classes and stdout, captured
    before the solution runs, and is already running when the solution runs (redefining its
    name changes nothing); each test runs with a copy of the solution's globals whose
    builtins are a snapshot taken before the solution ran (patching ``builtins.abs`` or
    ``builtins.exec`` does not reach the tests); per-test lines are built without ``json``.
    Tests call the solution's top-level functions and objects (``my_solution``) through
    guards that reject results containing an object of a class the solution defined, or
    of a class whose ``__eq__`` the solution wrote (an always-equal ``__eq__`` must not pass
    ``assert f(x) == y``). Not defended: patched stdlib modules used by tests (``math``),
    solution classes the tests instantiate themselves, and deliberate introspection of the
    interpreter's frames.
    """
    return (
        _HARNESS
        + f"__dllm_main({preamble!r}, {solution!r}, {[(str(n), str(s)) for n, s in tests]!r}, "
          f"{bool(stop_on_failure)!r}, {_line_prefix(line_key)!r})\n"
    )


def _line_prefix(line_key: str) -> str:
    return TEST_LINE_PREFIX.rstrip() + line_key + " "


def parse_test_lines(stdout: str, line_key: str = "") -> tuple[list[dict[str, Any]], str]:
    """Split per-test result lines out of ``stdout``: ``(records, remaining stdout)``.

    Records are ``{"i", "status": passed|failed|error, "s", "msg"?}`` in run order. Only
    lines carrying ``line_key`` count: a solution cannot forge them without the per-run key
    (it never sees it unless it deliberately introspects the interpreter). The pass verdict
    itself comes from the success marker and the exit code.
    """
    import ast

    prefix = _line_prefix(line_key)
    records: list[dict[str, Any]] = []
    rest: list[str] = []
    for line in stdout.split("\n"):
        if line.startswith(prefix):
            parts = line[len(prefix):].split("\t", 3)
            if len(parts) == 4 and parts[0].isdigit():
                try:
                    msg = ast.literal_eval(parts[3])
                    rec: dict[str, Any] = {"i": int(parts[0]), "status": parts[1], "s": float(parts[2])}
                except (ValueError, SyntaxError):
                    rest.append(line)
                    continue
                if msg:
                    rec["msg"] = str(msg)
                records.append(rec)
                continue
        rest.append(line)
    return records, "\n".join(rest)


def sandbox_key(sandbox: Sandbox, limits: Limits) -> dict[str, Any]:
    """The ``sandbox`` part of an entry's comparability key (:class:`dllm_bench.schema.SandboxKey`)."""
    d = sandbox.describe()
    iso = d.get("isolation", "")
    ident = d.get("image_id") or d.get("python")
    return {"name": sandbox.name, "version": sandbox.version,
            "isolation": f"{iso} [python {d.get('python_version', '?')}, {ident}]",
            "limits": limits.model_dump()}
