"""``docker`` sandbox: a warm pool of locked-down containers, one ``exec`` per run.

Containers (one pool per container-level limits, ``pool_size`` containers each)::

    image dllm-bench-sandbox:bookworm (debootstrap minbase + python3, no registry)
    network none, read-only root, tmpfs /work /tmp (+ /dev/shm) of tmpfs_mb each,
    memory = memswap = memory_mb + 3 x tmpfs_mb + 64 MiB (no swap), pids limit,
    cap_drop ALL, no-new-privileges, user 65534:65534, docker-init as PID 1

Each run is ``exec python3 -S -s -B -c <runner>`` as uid 65534 in an idle container, with the
payload on the exec's stdin (:mod:`dllm_bench.sandboxes.runner`); the runner first wipes
``/work``, ``/tmp`` and ``/dev/shm`` so no file survives from the previous run. The host
enforces wall time and output size by killing the whole container, which is then replaced.
After every run the container's pids cgroup is read: a run that left any process behind
(a daemonised child) also gets its container replaced, so nothing carries over between
samples. Throughput is therefore bound by ``exec`` (~40 ms), not container start (~0.6 s).

The engine must run with ``--bridge=none --iptables=false --ip6tables=false``
(``scripts/start-dockerd.sh``); containers never join a network either way.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
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

IMAGE = "dllm-bench-sandbox:bookworm"
LABEL = "dllm-bench.sandbox"
OWNER_LABEL = "dllm-bench.owner"
"""``<hostname>:<pid>`` of the harness process that started a container (see :func:`prune_stale`)."""
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_WIPE = ["/work", "/tmp", "/dev/shm"]


def cache_dir() -> Path:
    """Where the debootstrap root-fs tarball is cached (``$DLLM_BENCH_CACHE/sandbox`` or
    ``~/.cache/dllm-bench/sandbox``)."""
    base = os.environ.get("DLLM_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dllm-bench")
    return Path(base) / "sandbox"


def _client():
    import docker  # lazy: `dllm-bench list` must not need the docker SDK

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any connection problem means "no engine"
        raise SandboxUnavailable(
            f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:200]}); start one with "
            "scripts/start-dockerd.sh (dockerd --bridge=none --iptables=false --ip6tables=false)") from None
    return client


def apt_mirror() -> str | None:
    """The Debian mirror apt already uses (``/etc/apt/sources.list[.d]``), or None.

    debootstrap then fetches from the same package registry as ``apt-get``.
    """
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            texts.append(Path(path).read_text(errors="replace"))
        except OSError:
            continue
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"^URIs:\s*(\S+)", line) or re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m and m.group(1).rstrip("/").endswith("/debian") and "security" not in m.group(1):
                return m.group(1)
    return None


def apt_proxy() -> str | None:
    """apt's configured HTTP proxy (``Acquire::http::Proxy``), which debootstrap ignores."""
    if shutil.which("apt-config") is None:
        return None
    try:
        out = subprocess.run(["apt-config", "dump", "Acquire::http::Proxy"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'Acquire::http::Proxy\s+"([^"]+)"', out)
    return m.group(1) if m and m.group(1).lower() not in ("direct", "false") else None


def build_rootfs_tarball(*, suite: str = "bookworm", mirror: str | None = None, dest: Path | None = None,
                         rebuild: bool = False) -> Path:
    """``debootstrap --variant=minbase --include=python3 SUITE DIR`` packed as ``.tar.gz``.

    Cached at ``dest`` (default ``cache_dir()/<suite>-minbase-python3.tar.gz``); reused
    unless ``rebuild``. Documentation, man pages, locales and apt lists are removed.

    Raises:
        SandboxUnavailable: debootstrap is missing or we are not root (and nothing is cached).
    """
    dest = dest or cache_dir() / f"{suite}-minbase-python3.tar.gz"
    if dest.exists() and not rebuild:
        return dest
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailable("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise SandboxUnavailable(f"building the sandbox root fs needs root (debootstrap); no cached {dest}")
    mirror = mirror or os.environ.get("DLLM_BENCH_DEBIAN_MIRROR") or apt_mirror() or DEFAULT_MIRROR
    env = dict(os.environ)
    proxy = apt_proxy()
    if proxy and not env.get("http_proxy"):
        env["http_proxy"] = proxy
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dllm-rootfs-") as tmp:
        root = Path(tmp) / "root"
        res = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", suite, str(root), mirror],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise SandboxUnavailable(f"debootstrap failed ({res.returncode}): {' | '.join(tail)}")
        for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                    "var/lib/apt/lists", "var/cache/apt", "var/log"):
            shutil.rmtree(root / rel, ignore_errors=True)
        partial = dest.with_suffix(".partial")
        with open(partial, "wb") as fh:
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            gz = subprocess.run(["gzip", "-1"], stdin=tar.stdout, stdout=fh)
            if tar.stdout is not None:  # always (stdout=PIPE)
                tar.stdout.close()
            if tar.wait() != 0 or gz.returncode != 0:
                raise SandboxUnavailable("packing the root fs failed (tar | gzip)")
        os.replace(partial, dest)
    return dest


def build_image(tag: str = IMAGE, *, suite: str = "bookworm", mirror: str | None = None,
                rebuild: bool = False, log: Callable[[str], None] | None = None) -> str:
    """Build the sandbox image without any registry; return its id (``sha256:...``).

    ``debootstrap`` -> cached tarball (:func:`build_rootfs_tarball`) -> ``docker import``.
    Does nothing if ``tag`` exists already (unless ``rebuild``). The CLI exposes this as
    ``dllm-bench sandbox build-image``.
    """
    say = log or (lambda msg: None)
    client = _client()
    if not rebuild:
        try:
            return client.images.get(tag).id
        except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
            pass
    cached = (cache_dir() / f"{suite}-minbase-python3.tar.gz")
    say(f"{'using cached' if cached.exists() and not rebuild else 'debootstrapping'} root fs {cached}")
    tarball = build_rootfs_tarball(suite=suite, mirror=mirror, rebuild=rebuild)
    repo, _, tg = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    say(f"docker import {tarball} {tag}")
    client.api.import_image_from_file(str(tarball), repository=repo, tag=tg,
                                      changes=[f"LABEL {LABEL}=1", "ENV PATH=/usr/local/bin:/usr/bin:/bin"])
    return client.images.get(tag).id


def prune_stale(client: Any = None) -> list[str]:
    """Remove sandbox containers whose owning harness process (same host) is gone.

    A harness killed with SIGKILL cannot run its ``atexit`` cleanup; its warm containers
    would otherwise idle forever. Containers of live processes are left alone.
    """
    client = client or _client()
    removed = []
    host = socket.gethostname()
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        owner = (c.labels or {}).get(OWNER_LABEL, "")
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # the owner is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            c.remove(force=True)
            removed.append(c.id)
        except Exception:  # noqa: BLE001 - raced with another pruner
            pass
    return removed


class DockerConfig(BaseModel):
    """Options of the docker sandbox."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(IMAGE, description="Image tag (built by `dllm-bench sandbox build-image`)")
    pool_size: int = Field(2, ge=1, le=64, description="Warm containers per limits (= concurrent runs)")


IDLE_PIDS = 2
"""Tasks in an idle sandbox container: docker-init (pid 1) and ``sleep infinity``, by
construction. (Counted right after start, the number can still include the runtime's own
transient task on a loaded machine, which would let a leftover process pass as idle.)"""


class _ContainerGone(Exception):
    """The container stopped between runs (e.g. a program killed its init); replace it."""


class _Container:
    __slots__ = ("id", "pids_file", "oom_file", "oom_count", "runs")

    def __init__(self, cid: str):
        self.id = cid
        self.pids_file: str | None = None
        self.oom_file: str | None = None
        self.oom_count = 0
        self.runs = 0


def _cgroup_file(cid: str, controller: str, name: str) -> str | None:
    for pattern in (f"/sys/fs/cgroup/{controller}/docker/{cid}/{name}",
                    f"/sys/fs/cgroup/{controller}/system.slice/docker-{cid}.scope/{name}",
                    f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/{name}",
                    f"/sys/fs/cgroup/docker/{cid}/{name}",
                    f"/sys/fs/cgroup/{controller}/*/docker/{cid}/{name}"):
        hits = glob.glob(pattern)
        if hits:
            return hits[0]
    return None


def _read_int(path: str | None, key: str | None = None) -> int | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if key is None:
        return int(text.strip() or 0)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


class _Pool:
    """Warm containers for one set of container-level limits (thread-safe)."""

    def __init__(self, owner: DockerSandbox, limits: Limits, size: int):
        self.owner, self.limits, self.size = owner, limits, size
        self.idle: list[_Container] = []
        self.count = 0
        self.cond = threading.Condition()

    def acquire(self) -> _Container:
        with self.cond:
            while True:
                if self.owner.closed:
                    raise RuntimeError("docker sandbox is closed")
                if self.idle:
                    return self.idle.pop()
                if self.count < self.size:
                    self.count += 1
                    break
                self.cond.wait()
        try:
            return self.owner._start_container(self.limits)
        except BaseException:
            with self.cond:
                self.count -= 1
                self.cond.notify()
            raise

    def release(self, c: _Container, healthy: bool) -> None:
        if healthy and not self.owner.closed:
            with self.cond:
                self.idle.append(c)
                self.cond.notify()
            return
        with self.cond:
            self.count -= 1
            self.cond.notify()
        threading.Thread(target=self.owner._remove, args=(c.id,), daemon=True).start()

    def warm(self) -> None:
        """Start containers until ``size`` exist (in parallel)."""
        got: list[_Container] = []
        lock = threading.Lock()

        def one():
            c = self.acquire()
            with lock:
                got.append(c)

        with self.cond:
            missing = self.size - self.count
        threads = [threading.Thread(target=one) for _ in range(max(0, missing))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in got:
            self.release(c, True)

    def drain(self) -> list[str]:
        with self.cond:
            ids = [c.id for c in self.idle]
            self.count -= len(self.idle)
            self.idle.clear()
            self.cond.notify_all()
        return ids


class DockerSandbox(Sandbox):
    """Warm-pool Docker backend (see module docstring).

    Args:
        config: :class:`DockerConfig` (image tag, pool size).
    Raises:
        SandboxUnavailable: no engine, or the image is missing (message: how to build it).
    """

    name = "docker"
    version = "1"
    Config = DockerConfig

    def __init__(self, config: DockerConfig | dict | None = None, **overrides: Any):
        cfg = config if isinstance(config, DockerConfig) else DockerConfig(**(config or {}))
        self.config = cfg.model_copy(update=overrides) if overrides else cfg
        self.closed = False
        self._local = threading.local()
        client = self._api_client()
        try:
            image = client.images.get(self.config.image)
        except Exception:  # noqa: BLE001 - ImageNotFound or API error
            raise SandboxUnavailable(f"docker image {self.config.image} is missing; build it with "
                                     "`dllm-bench sandbox build-image` (debootstrap, no registry)") from None
        self.image_id = image.id
        prune_stale(client)
        self._python_version: str | None = None
        self._pools: dict[tuple, _Pool] = {}
        self._pools_lock = threading.Lock()
        self._all: set[str] = set()
        atexit.register(self.close)

    # ---------------------------------------------------------------- protocol
    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Engine reachable and image present (no container is started)."""
        try:
            client = _client()
        except SandboxUnavailable as exc:
            return False, str(exc)
        try:
            img = client.images.get(IMAGE)
        except Exception:  # noqa: BLE001
            return False, f"docker engine is up but image {IMAGE} is missing: run `dllm-bench sandbox build-image`"
        ver = client.version().get("Version", "?")
        return True, f"docker engine {ver}, image {IMAGE} ({img.id[:19]})"

    def describe(self, limits: Limits | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "backend": self.name,
            "version": self.version,
            "image": self.config.image,
            "image_id": self.image_id,
            "python_version": self.python_version(),
            "isolation": ("docker: network none, read-only root, tmpfs work dirs, memory+swap and pids "
                          "cgroup limits, cap_drop ALL, no-new-privileges, uid 65534, warm pool + exec"),
            "pool_size": self.config.pool_size,
        }
        if limits is not None:
            d["limits"] = limits.model_dump()
        return d

    def python_version(self) -> str:
        """The image's python3 version (one probe run, cached)."""
        if self._python_version is None:
            out = self.run("import sys; print(sys.version.split()[0])", limits=Limits(wall_time_s=30))
            self._python_version = out.stdout.strip() if out.passed else "unknown"
        return self._python_version

    def warm(self, limits: Limits | None = None) -> None:
        """Start ``pool_size`` containers for ``limits`` now (otherwise they start on demand)."""
        self._pool(limits or Limits()).warm()

    def close(self) -> None:
        """Remove every container this sandbox started. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for pool in list(self._pools.values()):
            pool.drain()
        for cid in list(self._all):
            self._remove(cid)

    def run(self, program: str, *, stdin: str | bytes | None = None, limits: Limits | None = None,
            success_marker: str | None = None) -> Outcome:
        """Run ``program`` via ``exec`` in a warm container (see :meth:`Sandbox.run`)."""
        limits = limits or Limits()
        pool = self._pool(limits)
        for attempt in range(3):
            c = pool.acquire()
            healthy = False
            try:
                outcome, healthy = self._exec(c, program, stdin, limits, success_marker)
                return outcome
            except _ContainerGone:
                if attempt == 2:
                    raise RuntimeError("docker sandbox: containers keep dying before exec") from None
            finally:
                pool.release(c, healthy)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- internals
    def _api_client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = _client()
            self._local.client = client
        return client

    def _pool(self, limits: Limits) -> _Pool:
        key = (limits.memory_mb, limits.max_processes, limits.tmpfs_mb)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(self, limits, self.config.pool_size)
            return pool

    def _start_container(self, limits: Limits) -> _Container:
        client = self._api_client()
        tmpfs_opt = f"rw,nosuid,nodev,size={limits.tmpfs_mb}m,uid=65534,gid=65534,mode=0755"
        mem = f"{limits.memory_mb + 3 * limits.tmpfs_mb + 64}m"
        ctr = client.containers.run(
            self.config.image, ["sleep", "infinity"], detach=True,
            network_mode="none", network_disabled=True,
            mem_limit=mem, memswap_limit=mem, pids_limit=limits.max_processes + 3,
            read_only=True, tmpfs={"/work": tmpfs_opt, "/tmp": tmpfs_opt}, shm_size=f"{limits.tmpfs_mb}m",
            cap_drop=["ALL"], security_opt=["no-new-privileges"], user="65534:65534", init=True,
            working_dir="/work", environment=sandbox_env(), hostname="sandbox",
            labels={LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
            ulimits=[], auto_remove=False,
        )
        self._all.add(ctr.id)
        c = _Container(ctr.id)
        c.pids_file = _cgroup_file(ctr.id, "pids", "pids.current")
        c.oom_file = (_cgroup_file(ctr.id, "memory", "memory.oom_control")
                      or _cgroup_file(ctr.id, "memory", "memory.events"))
        c.oom_count = _read_int(c.oom_file, "oom_kill") or 0
        return c

    def _pids(self, c: _Container) -> int | None:
        n = _read_int(c.pids_file)
        if n is not None:
            return n
        try:
            return len(self._api_client().api.top(c.id).get("Processes") or [])
        except Exception:  # noqa: BLE001
            return None

    def _remove(self, cid: str) -> None:
        try:
            self._api_client().api.remove_container(cid, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._all.discard(cid)

    def _exec(self, c: _Container, program: str, stdin: str | bytes | None, limits: Limits,
              marker: str | None) -> tuple[Outcome, bool]:
        api = self._api_client().api
        payload = make_payload(program, stdin, limits, marker, workdir="/work", wipe=_WIPE, nproc=False)
        t0 = time.monotonic()
        deadline = t0 + limits.wall_time_s
        try:
            eid = api.exec_create(c.id, ["python3", *PYTHON_FLAGS, "-c", RUNNER_SOURCE], stdin=True, stdout=True,
                                  stderr=True, user="65534:65534", workdir="/work",
                                  environment=sandbox_env())["Id"]
            sock = api.exec_start(eid, socket=True)
        except Exception as exc:  # noqa: BLE001 - the previous run killed its container
            raise _ContainerGone(str(exc)) from None
        raw: socket.socket = getattr(sock, "_sock", sock)
        cap = OutputCap(limits.max_output_bytes)
        killed = _pump_socket(raw, payload, cap, deadline)
        for closer in (lambda: raw.shutdown(socket.SHUT_RDWR), raw.close, sock.close):
            try:
                closer()
            except OSError:
                pass
        rc: int | None = None
        if killed is None:
            while True:
                info = api.exec_inspect(eid)
                if not info.get("Running"):
                    rc = info.get("ExitCode")
                    break
                if time.monotonic() > deadline:
                    killed = "timeout"
                    break
                time.sleep(0.002)
        wall = time.monotonic() - t0
        healthy = killed is None
        if killed is not None:
            try:
                api.kill(c.id)
            except Exception:  # noqa: BLE001 - already dead
                pass
        oom = False
        if healthy:
            c.runs += 1
            if rc == 137:
                n = _read_int(c.oom_file, "oom_kill") or 0
                oom, c.oom_count = n > c.oom_count, n
                healthy = not oom
            pids = self._pids(c)
            if pids is None or pids > IDLE_PIDS:  # something was left running: replace
                time.sleep(0.01)
                pids = self._pids(c)
                healthy = healthy and pids is not None and pids <= IDLE_PIDS
        out = classify(exit_code=rc, stdout=cap.stdout(), stderr=cap.stderr(), wall_s=wall, marker=marker,
                       killed=killed, truncated=cap.exceeded, oom_killed=oom)
        return out, healthy


def _pump_socket(raw: socket.socket, payload: bytes, cap: OutputCap, deadline: float) -> str | None:
    """Send ``payload`` then demultiplex Docker's stdout/stderr frames until EOF or a limit."""
    raw.setblocking(False)
    view = memoryview(payload)
    sent = 0
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        want_write = sent < len(payload)
        r, w, _ = select.select([raw], [raw] if want_write else [], [], remaining)
        if w:
            try:
                sent += raw.send(view[sent:sent + (1 << 16)])
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                sent = len(payload)
            if sent >= len(payload):
                try:
                    raw.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if r:
            try:
                chunk = raw.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 8:
                stream, size = struct.unpack(">BxxxL", buf[:8])
                if len(buf) < 8 + size:
                    break
                data, buf = buf[8:8 + size], buf[8 + size:]
                if stream in (1, 2) and not cap.add(stream, data):
                    return "output-limit"
