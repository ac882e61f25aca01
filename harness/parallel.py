"""Data-parallel evaluation: one evaluation shared by the processes of a distributed launch.

Two ways to start N processes on one machine (each process is a *rank*)::

    accelerate launch --multi_gpu --num_processes N -m dllm_bench eval ...   (also without CUDA;
                                                    accelerate's --cpu starts one process)
    dllm-bench eval --num-processes N ...

The second form (:func:`spawn`) starts N copies of the same command itself, with the
``torch.distributed`` environment (``MASTER_ADDR`` 127.0.0.1, a free ``MASTER_PORT``,
``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``), and CPU runs get ``ACCELERATE_USE_CPU=true``:
either way every rank joins one process group through accelerate's
:class:`~accelerate.PartialState` (:func:`ranks`): NCCL with device ``cuda:LOCAL_RANK`` on
GPUs, gloo on CPUs.

How the work is shared (:func:`dllm_bench.evaluate.run_eval`): the (document, sample) list is
cut into the same fixed batches of ``batch_size`` as in one process, and batch ``b`` runs on
rank ``b % world_size`` (:meth:`Ranks.owns`). Every batch therefore has the composition it has
in one process and every sample keeps its seed (``sample_seed(seed, doc, sample)``), so the
completions are those of a one-process run. Each rank appends its records to
``samples.rank<R>.jsonl``; after the last batch the ranks meet (:meth:`Ranks.gather`), rank 0
alone folds the rank files into ``samples.jsonl`` in document order and writes ``entry.json``,
and the other ranks read that entry back.

Nothing here imports torch or accelerate at module level; a single process (no launch) never
imports them from here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import BadInputError, RunFailedError

PROCESS_GROUP_TIMEOUT = timedelta(hours=12)
"""How long a rank waits for the others at a meeting point (the end of an evaluation, a recipe
step). Ranks that finish their batches early wait there for the slowest one, which after a
resume can be far behind; a rank that dies ends the launch at once (the launcher stops the
others), so the timeout only bounds a hang."""

FAILURE_GRACE_S = 5.0
"""After one rank of :func:`spawn` fails, the others get this long to end on their own (rank 0
reports the error) before they are killed (their finished records are already on disk)."""


def env_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``, else ``LOCAL_RANK``); 0 outside a launch."""
    rank = os.environ.get("RANK")
    if rank is None:
        rank = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(rank)
    except ValueError:
        return 0


def env_world_size() -> int:
    """The number of processes of this launch (``WORLD_SIZE``); 1 outside a launch."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def quiet_rank() -> bool:
    """True on ranks other than 0 of a launch: every rank validates the same input, so only rank 0
    prints bad-input and interrupt lines and results on stdout (one line, not one per rank)."""
    return env_world_size() > 1 and env_rank() != 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a process group's rendezvous, a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_import_accelerate() -> None:
    """Import accelerate (and DeepSpeed, which it imports when installed) with stdout sent
    to stderr: DeepSpeed's logger binds stdout at import time and would print there, and
    stdout carries only results."""
    import importlib
    import importlib.util
    from contextlib import redirect_stdout

    with redirect_stdout(sys.stderr):
        for name in ("deepspeed", "accelerate"):
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


@dataclass(frozen=True)
class Ranks:
    """The processes of this launch, seen from one of them.

    Attributes:
        rank: this process's global rank, 0 .. world_size - 1.
        world_size: number of processes (1 without a launch).
        device: the device this rank evaluates on (``cuda:LOCAL_RANK`` or ``cpu``); None
            without a launch (the model's own default).
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes shared files (``samples.jsonl``, ``entry.json``, recipe markers)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def owns(self, batch_index: int) -> bool:
        """Batch ``batch_index`` (0-based, of the fixed batching) runs on this rank: ``b % world_size == rank``."""
        return batch_index % self.world_size == self.rank

    def model_args(self, args: dict[str, Any] | None) -> dict[str, Any]:
        """``args`` with ``device`` set to this rank's device unless the caller chose one."""
        out = dict(args or {})
        if self.device is not None and out.get("device") in (None, "auto"):
            out["device"] = self.device
        return out

    def barrier(self) -> None:
        """Wait until every rank is here (nothing in one process).

        Raises:
            RunFailedError: another rank of the launch died (its connection closed) or the wait
                passed :data:`PROCESS_GROUP_TIMEOUT`.
        """
        if self.sharded:
            import torch.distributed as dist

            with self._lost_peer():
                dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank; a meeting point like
        :meth:`barrier` (and raising as it does). ``[obj]`` in one process."""
        if not self.sharded:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with self._lost_peer():
            dist.all_gather_object(out, obj)
        return out

    @contextmanager
    def _lost_peer(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:  # torch.distributed.DistBackendError and gloo / NCCL errors
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RunFailedError(f"rank {self.rank} of {self.world_size} lost the other processes ({reason}); "
                                 "finished samples are saved; re-run the same command to resume") from None


def ranks() -> Ranks:
    """This process's place in the launch. Outside a launch (``WORLD_SIZE`` unset or 1):
    ``Ranks()`` without importing anything. Under one: joins the process group through
    accelerate's ``PartialState`` on first use (gloo on CPU, i.e. without CUDA or with
    ``ACCELERATE_USE_CPU``; NCCL and ``cuda:LOCAL_RANK`` on GPUs), with
    :data:`PROCESS_GROUP_TIMEOUT`."""
    if env_world_size() <= 1:
        return Ranks()
    import torch
    from accelerate.state import PartialState  # (without DeepSpeed, which training imports when it needs it)
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=PROCESS_GROUP_TIMEOUT)
    return Ranks(rank=state.process_index, world_size=state.num_processes, device=str(state.device))


# --------------------------------------------------------------------------- launching
def parse_num_processes(text: str) -> int:
    """The value of ``--num-processes``: an integer >= 1; on a machine with CUDA at most its GPU count.

    Raises:
        BadInputError: not an integer, < 1, more processes than GPUs, or given inside a launch
            that already started several processes.
    """
    try:
        n = int(text.strip())
    except ValueError:
        raise BadInputError(f"--num-processes expects a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise BadInputError(f"--num-processes must be >= 1, got {n}")
    if n > 1 and env_world_size() > 1:
        raise BadInputError("--num-processes cannot be used inside a distributed launch (accelerate launch, "
                            "torchrun); give the process count to the launcher instead")
    if n > 1:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and n > gpus:
            raise BadInputError(f"--num-processes {n} exceeds the {gpus} visible GPU(s); one process per GPU")
    return n


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt V`` or ``--opt=V``, every occurrence)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def spawn(num_processes: int, argv: Sequence[str]) -> int:
    """Run ``python -m dllm_bench *argv`` as ``num_processes`` ranks of one process group on this
    machine and wait for them; their output goes straight to this process's stdout / stderr.

    Rendezvous by environment (``env://``): ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``,
    ``RANK`` = ``LOCAL_RANK`` = r, ``WORLD_SIZE`` = ``LOCAL_WORLD_SIZE`` = N; without CUDA
    ``ACCELERATE_USE_CPU=true`` (gloo) and, unless set, ``OMP_NUM_THREADS`` = cores / N. The
    ranks stay in this process group: Ctrl-C reaches them directly (this process ignores it
    and waits), SIGTERM is forwarded. When a rank fails the others get
    :data:`FAILURE_GRACE_S` to end, then are killed.

    Returns:
        the exit code: 0 when every rank succeeded, else rank 0's code when it failed (it
        reports errors for all), else the first failed rank's (with one line naming it).

    Raises:
        RunFailedError: the first rank to fail was killed by a signal (it could not say why itself).
    """
    import torch

    n = num_processes
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n),
               LOCAL_WORLD_SIZE=str(n))
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    sys.stdout.flush()
    sys.stderr.flush()
    procs = [subprocess.Popen([sys.executable, "-m", "dllm_bench", *argv],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, forward))}
    killed: set[int] = set()
    try:
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            elif failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
                for r, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        killed.add(r)
            time.sleep(0.05)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = {r: p.returncode for r, p in enumerate(procs) if p.returncode != 0 and r not in killed}
    if not codes:
        return 0
    # a rank killed by a signal first (its peers' errors follow from it); else rank 0, which
    # reports errors for all; else the first failed rank
    r = next((r for r, c in codes.items() if c < 0), 0 if 0 in codes else min(codes))
    c = codes[r]
    if c < 0:
        raise RunFailedError(f"rank {r} of {n} was killed by {signal.Signals(-c).name}; finished samples are "
                             "saved; re-run the same command to resume")
    if r != 0:  # rank 0, waiting for it, said nothing
        from .console import print_line

        print_line("error:", f"rank {r} of {n} stopped with exit code {c} (its message, if any, is above)")
    return c
