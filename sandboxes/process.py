"""``process`` sandbox: bubblewrap namespaces + rlimits around the system ``python3``.

Each run starts ``bwrap`` with::

    --unshare-all --die-with-parent --new-session --cap-drop ALL
    --ro-bind <only the interpreter, its stdlib and the shared libraries it loads>
    --dev /dev --proc /proc (fresh, for a new PID namespace) --remount-ro /dev
    --tmpfs /work, /tmp, /dev/shm (each --size tmpfs_mb)   --remount-ro /
    --uid 65534 --gid 65534 --clearenv (+ a fixed, minimal environment)

so the program has no network (a private, empty network namespace: even 127.0.0.1 is its
own), sees no host file outside the read-only interpreter files, cannot write anywhere but
three size-capped tmpfs mounts, cannot see or signal host processes (PID namespace), and
has no capabilities. When the harness runs as root, ``bwrap`` itself is started as uid/gid
65534 (nobody), so the sandbox maps to an unprivileged host user and ``RLIMIT_NPROC`` is
enforced (the kernel exempts uid 0 from it). The in-sandbox runner then sets
``RLIMIT_AS/CPU/FSIZE/NPROC/CORE`` (:class:`~dllm_bench.sandboxes.base.Limits`) and the
host enforces the wall-clock and output limits by killing the process group.

Not protected (use the ``docker`` backend when these matter): memory is capped per
process, not per sandbox (``max_processes`` x ``memory_mb`` in the worst case); CPU is
not shared fairly between sandboxes; kernel exploits are out of scope for both backends.

``unsafe_no_isolation=True`` (CLI ``--unsafe-no-isolation``) runs the runner directly with
rlimits only — no namespaces, same user, full network and file access. It is never a
default, logs a warning on every construction and is recorded in :meth:`describe`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .base import (
    PYTHON_FLAGS,
    RUNNER_SOURCE,
    Limits,
    Outcome,
    OutputCap,
    Sandbox,
    SandboxUnavailable,
    classify,
    make_payload,
    sandbox_env,
)

SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
_TOP_LEVEL_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def resolve_python(python: str = SYSTEM_PYTHON) -> str:
    """The real interpreter binary behind ``python`` (symlinks resolved).

    Raises :class:`SandboxUnavailable` for a missing path, a script (pyenv shim) or an
    interpreter inside a virtual environment.
    """
    path = shutil.which(python) or python
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise SandboxUnavailable(f"python interpreter {python!r} not found")
    with open(real, "rb") as fh:
        if fh.read(4) != b"\x7fELF":
            raise SandboxUnavailable(f"{python!r} resolves to {real}, which is a script (a pyenv or "
                                     "venv shim?), not an interpreter binary; use the system /usr/bin/python3")
    if (Path(real).parent.parent / "pyvenv.cfg").exists():
        raise SandboxUnavailable(f"{real} is inside a virtual environment; use the system python3")
    return real


def _symlink_chain(path: str, _depth: int = 0) -> tuple[list[tuple[str, str]], str]:
    """Symlinks met while resolving ``path`` as ``(target, link)`` pairs, and the real path."""
    links: list[tuple[str, str]] = []
    cur = "/"
    for part in Path(os.path.normpath(path)).parts[1:]:
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt) and _depth < 40:
            target = os.readlink(nxt)
            links.append((target, nxt))
            # the target may itself run through symlinked directories: resolve it fully
            sub_links, nxt = _symlink_chain(os.path.normpath(os.path.join(cur, target)), _depth + 1)
            links += sub_links
        cur = nxt
    return links, cur


@functools.lru_cache(maxsize=8)
def python_layout(real_python: str) -> dict[str, Any]:
    """What the interpreter needs inside the sandbox: read-only paths and symlinks.

    Asks the interpreter for its ``sys.path`` without site-packages (``-S -s -E``: stdlib
    and lib-dynload only), then ``ldd`` for the shared libraries of the interpreter and its
    extension modules. Returns ``{"version", "binds": [real paths], "links": [(target,
    link)]}``; cached per interpreter.
    """
    probe = ("import json, sys, sysconfig; print(json.dumps({'path': [p for p in sys.path if p], "
             "'version': sys.version.split()[0], 'dynload': sysconfig.get_path('platstdlib') + "
             "'/lib-dynload'}))")
    info = json.loads(subprocess.run([real_python, "-S", "-s", "-E", "-c", probe], check=True,
                                     capture_output=True, text=True, timeout=30).stdout)
    roots = [p for p in info["path"] if os.path.exists(p)]
    objects = [real_python]
    dyn = info["dynload"]
    if os.path.isdir(dyn):
        objects += sorted(str(p) for p in Path(dyn).glob("*.so"))
    libs: set[str] = set()
    ldd = shutil.which("ldd")
    if ldd:
        res = subprocess.run([ldd, *objects], capture_output=True, text=True, timeout=60)
        for m in re.finditer(r"(?:=>\s*)?(/[^\s]+)\s+\(0x", res.stdout):
            libs.add(m.group(1))
    else:  # no ldd: fall back to the standard library directories
        libs.update(p for p in ("/lib64/ld-linux-x86-64.so.2",) if os.path.exists(p))
        roots += [p for p in ("/usr/lib", "/lib") if os.path.isdir(p)]
    binds: set[str] = set()
    links: dict[str, str] = {}
    for p in [real_python, *roots, *libs]:
        chain, real = _symlink_chain(p)
        for target, link in chain:
            links[link] = target
        binds.add(real if os.path.isdir(real) or p == real_python else os.path.dirname(real))
        if p in libs:  # the directory as written (it may hold the symlink we resolve through)
            d_chain, d_real = _symlink_chain(os.path.dirname(p))
            for target, link in d_chain:
                links[link] = target
            binds.add(d_real)
    # drop binds covered by a parent bind, and links that live inside a bind
    final = sorted(b for b in binds if not any(b != o and b.startswith(o.rstrip("/") + "/") for o in binds))
    keep = {link: t for link, t in links.items()
            if not any(link == b or link.startswith(b.rstrip("/") + "/") for b in final)}
    return {"version": info["version"], "binds": final, "links": sorted((t, link) for link, t in keep.items())}


def _bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown"
    return out.strip().split()[-1] if out.strip() else "unknown"


class ProcessConfig(BaseModel):
    """Options of the process sandbox."""

    model_config = ConfigDict(extra="forbid")

    python: str = Field(SYSTEM_PYTHON, description="Interpreter run in the sandbox (resolved to the real "
                                                   "binary; never a venv or pyenv shim)")
    unsafe_no_isolation: bool = Field(False, description="DANGEROUS: run generated code without bubblewrap "
                                                         "(rlimits only). Never a default.")


class ProcessSandbox(Sandbox):
    """bubblewrap + rlimits around the system python3 (see module docstring).

    Args:
        config: :class:`ProcessConfig` (or a dict), plus keyword overrides:
            ``python`` (default ``/usr/bin/python3``) and ``unsafe_no_isolation``
            (skip bubblewrap entirely, rlimits only; never a default).
    Raises:
        SandboxUnavailable: bubblewrap (or the interpreter) is missing; the message says
            how to install it.
    """

    name = "process"
    version = "1"
    Config = ProcessConfig

    def __init__(self, config: ProcessConfig | dict | None = None, **overrides: Any):
        cfg = config if isinstance(config, ProcessConfig) else ProcessConfig(**(config or {}))
        self.config = cfg.model_copy(update=overrides) if overrides else cfg
        self.python = resolve_python(self.config.python)
        self.unsafe_no_isolation = bool(self.config.unsafe_no_isolation)
        self.layout = python_layout(self.python)
        self._as_nobody = os.geteuid() == 0
        self._setpriv = shutil.which("setpriv") if self._as_nobody else None
        if self.unsafe_no_isolation:
            from dllm_bench.console import console  # lazy: keep the sandbox importable alone

            console.print("[bold red]WARNING: --unsafe-no-isolation: generated code runs WITHOUT a sandbox "
                          "(same user, network and files as the harness; rlimits only).[/]")
            self.bwrap: str | None = None
        else:
            self.bwrap = shutil.which("bwrap")
            if self.bwrap is None:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: `apt-get install "
                    "bubblewrap`), use --sandbox docker, or pass --unsafe-no-isolation to run generated "
                    "code without any isolation (not recommended)")

    @property
    def _bwrap(self) -> str:
        """The bubblewrap binary of an isolated sandbox (``__init__`` found it or raised)."""
        assert self.bwrap is not None, "no bubblewrap: this sandbox runs with --unsafe-no-isolation"
        return self.bwrap

    # ---------------------------------------------------------------- protocol
    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Probe: build a sandbox and run ``print(1+1)`` in it."""
        try:
            sb = cls()
            out = sb.run("print(1+1)", limits=Limits(wall_time_s=20))
        except SandboxUnavailable as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - report any probe failure as "unavailable"
            return False, f"process sandbox probe failed: {exc}"
        if out.status != "passed" or out.stdout.strip() != "2":
            return False, f"process sandbox probe failed: {out.status} {out.details} {out.stderr[-300:]}"
        return True, (f"bubblewrap {_bwrap_version(sb._bwrap)}, python {sb.layout['version']} "
                      f"({sb.python}), probe ran in {out.wall_s * 1000:.0f} ms")

    def describe(self, limits: Limits | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "backend": self.name,
            "version": self.version,
            "python": self.python,
            "python_version": self.layout["version"],
        }
        if self.unsafe_no_isolation:
            d["isolation"] = "NONE (--unsafe-no-isolation): rlimits only"
            d["unsafe_no_isolation"] = True
        else:
            d["isolation"] = ("bubblewrap: user/pid/net/ipc/uts/cgroup namespaces, no capabilities, "
                              "read-only interpreter files, tmpfs /work /tmp /dev/shm, uid 65534"
                              + (", bwrap run as uid 65534" if self._as_nobody else ""))
            d["bwrap_version"] = _bwrap_version(self._bwrap)
        if limits is not None:
            d["limits"] = limits.model_dump()
        return d

    def close(self) -> None:
        return None

    def run(self, program: str, *, stdin: str | bytes | None = None, limits: Limits | None = None,
            success_marker: str | None = None) -> Outcome:
        """Run ``program`` in a fresh sandbox (see :meth:`Sandbox.run`)."""
        limits = limits or Limits()
        if self.unsafe_no_isolation:
            with tempfile.TemporaryDirectory(prefix="dllm-unsafe-") as tmp:
                payload = make_payload(program, stdin, limits, success_marker, workdir=os.path.join(tmp, "work"))
                env = sandbox_env() | {"TMPDIR": tmp, "HOME": os.path.join(tmp, "work")}
                cmd = [self.python, *PYTHON_FLAGS, "-c", RUNNER_SOURCE]
                return self._execute(cmd, payload, limits, success_marker, env=env, cwd=tmp, as_nobody=False)
        payload = make_payload(program, stdin, limits, success_marker, workdir="/work",
                               nproc=True)
        return self._execute(self._bwrap_cmd(limits), payload, limits, success_marker, env={},
                             cwd="/", as_nobody=self._as_nobody)

    # ---------------------------------------------------------------- internals
    def _bwrap_cmd(self, limits: Limits) -> list[str]:
        size = str(limits.tmpfs_mb << 20)
        cmd = [self._bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        for b in self.layout["binds"]:
            cmd += ["--ro-bind", b, b]
        for name in _TOP_LEVEL_LINKS:  # usr-merged systems: /lib -> usr/lib etc.
            p = "/" + name
            if os.path.islink(p) and not any(link == p for _, link in self.layout["links"]):
                cmd += ["--symlink", os.readlink(p), p]
        for target, link in self.layout["links"]:
            cmd += ["--symlink", target, link]
        cmd += ["--dev", "/dev", "--proc", "/proc", "--remount-ro", "/dev",
                "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm",
                "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
                "--size", size, "--perms", "0755", "--tmpfs", "/work",
                "--remount-ro", "/",
                "--chdir", "/", "--hostname", "sandbox",
                "--uid", str(NOBODY), "--gid", str(NOBODY), "--clearenv"]
        for k, v in sandbox_env().items():
            cmd += ["--setenv", k, v]
        cmd += [self.python, *PYTHON_FLAGS, "-c", RUNNER_SOURCE]
        return cmd

    def _execute(self, cmd: list[str], payload: bytes, limits: Limits, marker: str | None, *,
                 env: dict[str, str], cwd: str, as_nobody: bool) -> Outcome:
        extra: dict[str, Any] = {}
        if as_nobody:
            if self._setpriv:  # exec-time uid switch: lets Popen use vfork (a fork of a process
                # holding torch costs ~40 ms, which would dominate every run)
                cmd = [self._setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *cmd]
            else:
                extra = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        t0 = time.monotonic()
        deadline = t0 + limits.wall_time_s
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=cwd, start_new_session=True, close_fds=True, **extra)
        cap = OutputCap(limits.max_output_bytes)
        killed = _pump(proc, payload, cap, deadline)
        if killed is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = "timeout"
        if killed is not None:
            _kill_group(proc)
        rc = proc.wait()
        wall = time.monotonic() - t0
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        err = cap.stderr()
        if killed is None and rc == 1 and err.startswith(b"bwrap: ") and not cap.stdout():
            out = classify(exit_code=rc, stdout=b"", stderr=err, wall_s=wall, marker=marker,
                           killed=None, truncated=False)
            out.details = "sandbox setup failed (bwrap): " + err.decode("utf-8", "replace").strip()[:300]
            return out
        return classify(exit_code=None if killed else _exit_status(rc), stdout=cap.stdout(), stderr=err,
                        wall_s=wall, marker=marker, killed=killed, truncated=cap.exceeded)


def _exit_status(rc: int) -> int:
    """Popen's returncode -> shell convention (128+N for signal N)."""
    return 128 - rc if rc < 0 else rc


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _pump(proc: subprocess.Popen, payload: bytes, cap: OutputCap, deadline: float) -> str | None:
    """Feed ``payload`` to stdin and collect stdout/stderr until EOF or a limit.

    Returns None at EOF on both outputs, ``"timeout"`` or ``"output-limit"`` otherwise.
    """
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None and stdout is not None and stderr is not None, "Popen with three PIPEs"
    sel = selectors.DefaultSelector()
    os.set_blocking(stdin.fileno(), False)
    sel.register(stdin, selectors.EVENT_WRITE, 0)
    sel.register(stdout, selectors.EVENT_READ, 1)
    sel.register(stderr, selectors.EVENT_READ, 2)
    view = memoryview(payload)
    sent = 0
    open_reads = 2
    try:
        while open_reads:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in sel.select(remaining):
                if key.data == 0:
                    try:
                        sent += os.write(key.fd, view[sent:sent + (1 << 16)])
                    except (BrokenPipeError, OSError):
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(key.fileobj)
                        stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_reads -= 1
                elif not cap.add(key.data, chunk):
                    return "output-limit"
        return None
    finally:
        sel.close()
