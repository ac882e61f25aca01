"""The run directory: what a training run writes there and reads back to resume.

Run directory layout::

    run_dir/
      config.json          the validated config (what this run was started with)
      metrics.jsonl        one JSON object per logged step: {"step", "time_s", <metrics>}
      checkpoints/step-000010/   accelerate state: model(s), optimizer(s), scheduler(s),
                                 RNG states (python, numpy, torch, cuda), trainer state
      final/               Hugging Face weights + tokenizer + dllm_bench.json sidecar,
                           loadable by ``dllm_bench.models.load_model(run_dir / "final")``
      result.json          :class:`TrainResult` once training finished

Re-running into the same directory resumes from the newest complete checkpoint (or returns
at once when ``result.json`` says the run finished); a directory holding trained state of a
run with another config is refused (:func:`check_config`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from dllm_bench.errors import BadInputError, RunFailedError, interrupt_in
from dllm_bench.jsonl import JsonlStore, parse_object
from dllm_bench.plugins import StrictModel

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from .config import TrainConfig

log = logging.getLogger("dllm_bench.trainers")


# --------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What a finished training run produced.

    Attributes:
        trainer: trainer name.
        run_dir: the run directory.
        final_dir: Hugging Face weights loadable by ``load_model(final_dir)``.
        metrics_path: the JSONL metrics log.
        steps: steps completed.
        last_metrics: the last logged metrics line.
        extra_dirs: other saved artefacts (e.g. ``{"value": <dir>}``).
    """

    trainer: str
    run_dir: Path
    final_dir: Path
    metrics_path: Path
    steps: int
    last_metrics: dict[str, Any] = field(default_factory=dict)
    extra_dirs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("run_dir", "final_dir", "metrics_path"):
            d[k] = str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(trainer=d["trainer"], run_dir=Path(d["run_dir"]), final_dir=Path(d["final_dir"]),
                   metrics_path=Path(d["metrics_path"]), steps=int(d["steps"]),
                   last_metrics=d.get("last_metrics", {}), extra_dirs=d.get("extra_dirs", {}))

class TrainerState:
    """Checkpointed trainer counters (registered with accelerate for save/load)."""

    def __init__(self) -> None:
        self.step = 0
        self.samples = 0
        self.extra: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "extra": json.dumps(self.extra)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step, self.samples = int(d["step"]), int(d["samples"])
        self.extra = json.loads(d.get("extra", "{}"))


class RunFiles:
    """The :class:`dllm_bench.trainers.engine.Engine` methods that write and read the run
    directory: checkpoints with exact resume, the metrics log, the final weights and the
    result. (Uses the engine's ``accelerator``, ``state``, ``cfg``, ``run_dir``,
    ``metrics_path``, ``trainer`` and ``is_main``.)"""

    if TYPE_CHECKING:  # set by Engine.__init__
        accelerator: Any  # accelerate.Accelerator
        state: TrainerState
        cfg: TrainConfig
        run_dir: Path
        metrics_path: Path
        trainer: str
        _t0: float  # time.time() at the start (seconds)
        _metrics: JsonlStore | None  # the metrics log, opened on first use (main process)
        _tb: SummaryWriter | Literal[False] | None  # False: tensorboard is not installed

        @property
        def is_main(self) -> bool: ...

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint directory with a ``COMPLETE`` marker, or None."""
        if not self.ckpt_root.is_dir():
            return None
        done = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "COMPLETE").is_file())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Save everything needed for exact resume at the current step.

        Raises:
            RunFailedError: the checkpoint could not be written (a full disk, a read-only or
                unwritable run directory); the partial checkpoint is removed and the earlier
                complete ones are kept, so re-running the same command resumes from the last.
        """
        d = self.ckpt_root / f"step-{self.state.step:06d}"
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(d), safe_serialization=False)
        except BaseException as exc:
            shutil.rmtree(d, ignore_errors=True)  # never a COMPLETE marker: resume ignores it anyway
            # torch.save reports a short write as RuntimeError; an interrupt stays an interrupt
            if isinstance(exc, (OSError, RuntimeError)) and interrupt_in(exc) is None:
                raise RunFailedError(self._checkpoint_failure(d, exc)) from None
            raise
        self.accelerator.wait_for_everyone()
        if self.is_main:
            (d / "COMPLETE").write_text(json.dumps({"step": self.state.step, "time": time.time()}) + "\n")
            old = sorted(p for p in self.ckpt_root.glob("step-*") if (p / "COMPLETE").is_file())
            for p in old[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return d

    def _checkpoint_failure(self, d: Path, exc: BaseException, what: str = "the checkpoint") -> str:
        """One line: which checkpoint failed, why (the errno's meaning; no space when the disk is
        full), and what a re-run resumes from."""
        if isinstance(exc, OSError) and exc.errno:
            reason = os.strerror(exc.errno)
        else:
            try:
                full = shutil.disk_usage(self.run_dir).free < 16 * 2 ** 20
            except OSError:
                full = False
            reason = os.strerror(errno.ENOSPC) if full else str(exc).strip().splitlines()[0]
        last = self.latest_checkpoint()
        kept = f"checkpoint {last.name} is kept" if last is not None else "no checkpoint was saved yet"
        return f"{d}: cannot write {what}: {reason}; {kept}; fix this and re-run the same command to resume"

    def resume(self) -> int:
        """Record the config (:func:`write_config`: the trainer calls this after its checks that
        need the loaded model), then load the newest complete checkpoint (if any); returns the
        step to continue from.

        Raises:
            BadInputError: the run directory holds trained state of a run with another config.
        """
        if self.is_main:
            write_config(self.run_dir, self.trainer, self.cfg)
        ck = self.latest_checkpoint()
        if ck is None:  # a run killed before its first checkpoint starts over: drop its log lines
            self._truncate_metrics(0)
            return 0
        self.accelerator.load_state(str(ck))
        log.info("resumed %s from %s (step %d)", self.trainer, ck, self.state.step)
        self._truncate_metrics(self.state.step)
        return self.state.step

    def _truncate_metrics(self, step: int) -> None:
        """Drop the metrics log's lines after ``step`` (and unreadable ones: a torn last line)."""
        if self.is_main:
            self._metrics_log().retain(lambda line: line["step"] <= step)

    def _metrics_log(self) -> JsonlStore:
        if self._metrics is None:
            self._metrics = JsonlStore(self.metrics_path, parse=_metrics_line,
                                       dump=lambda r: json.dumps(r, default=float), lenient=True)
        return self._metrics

    # -- logging
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Append one JSONL line, flushed to disk (main process), and mirror scalars to TensorBoard."""
        line = {"step": step, "time_s": round(time.time() - self._t0, 3), **metrics}
        if self.is_main:
            self._metrics_log().append(line)
            tb = self._tensorboard()
            if tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        tb.add_scalar(k, v, step)
                tb.flush()
        return line

    def _tensorboard(self) -> SummaryWriter | None:
        if not self.cfg.tensorboard:
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
                return None
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb or None

    # -- final weights
    def save_final(self, model: torch.nn.Module, adapter: Any, directory: Path,
                   training: dict[str, Any], submodule: str = "lm") -> Path:
        """Write the trained weights in Hugging Face format with the adapter's tokenizer and
        ``dllm_bench.json`` sidecar (``load_model(directory)`` loads them).

        Raises:
            RunFailedError: the weights could not be written (a full disk, a read-only run
                directory); the half-written directory is removed, the checkpoints are kept.
        """
        self.accelerator.wait_for_everyone()
        state = self.accelerator.get_state_dict(model)
        if self.is_main:
            prefix = submodule + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            d = Path(directory)
            try:
                from dllm_bench.determinism import report

                det = report()
                adapter.save(d, training={**training, "determinism": {
                    k: det[k] for k in ("mode", "pinned", "aten_cpu_capability")}}, state_dict=sub)
            except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors as its own type
                if interrupt_in(exc) is not None or not (isinstance(exc, (OSError, RuntimeError))
                                                         or type(exc).__name__ == "SafetensorError"):
                    raise
                shutil.rmtree(d, ignore_errors=True)  # a half-written final directory is never loaded
                raise RunFailedError(self._checkpoint_failure(d, exc, what="the final weights")) from None
        self.accelerator.wait_for_everyone()
        return Path(directory)

    def finish(self, result: TrainResult) -> TrainResult:
        if self._metrics is not None:
            self._metrics.close()
            (self.run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        if self._tb:
            self._tb.close()
        self.accelerator.wait_for_everyone()
        return result


def _metrics_line(text: str) -> dict[str, Any]:
    """A metrics log line; its ``step`` read as an int (0 when absent)."""
    rec = parse_object(text)
    try:
        rec["step"] = int(rec.get("step", 0))
    except (TypeError, ValueError):
        raise BadInputError(f"metrics line with a step that is not an integer: {rec.get('step')!r}") from None
    return rec


def _has_trained_state(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds something a re-run resumes from: a complete checkpoint or final weights."""
    d = Path(run_dir)
    return (d / "final").is_dir() or any((d / "checkpoints").glob("step-*/COMPLETE"))


def check_config(run_dir: Path, trainer: str, cfg: StrictModel) -> None:
    """Refuse to resume a run started with another config (checked before the model loads).

    A ``config.json`` that differs is only a conflict when ``run_dir`` holds trained state (a
    complete checkpoint or final weights): resuming from it would mix two configs. Without
    any (the earlier attempt stopped before its first checkpoint, e.g. its config failed a
    check that needs the loaded model) there is nothing to resume and the new config is
    accepted: :func:`write_config` replaces the old one and training starts over.

    Raises:
        BadInputError: ``run_dir`` holds trained state of a run with a different config
            (naming the differing fields).
    """
    if not _has_trained_state(run_dir):
        return
    from dllm_bench.outdir import check_run

    check_run(Path(run_dir) / "config.json", {"trainer": trainer, "config": cfg.model_dump(mode="json")},
              conflict=f"run directory {run_dir} holds a run with a different config (fields: "
                       "{fields}); use another --output or delete it", under="config", lenient=True, located=False)


def write_config(run_dir: Path, trainer: str, cfg: StrictModel) -> None:
    """Record the validated config in ``run_dir/config.json``.

    :meth:`Engine.resume` calls it, i.e. only after the trainer loaded the model and passed
    its checks that need it (a mode the model's family cannot train, no example fitting
    the token limits, ...): a config failing them leaves nothing in ``run_dir``, and the
    corrected re-run starts cleanly. A differing config is accepted when ``run_dir`` holds
    no trained state (:func:`check_config`).

    Raises:
        BadInputError: ``run_dir`` holds trained state of a run with a different config.
        OSError: the file could not be written.
    """
    check_config(run_dir, trainer, cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    from dllm_bench.outdir import pin_run

    pin_run(Path(run_dir) / "config.json", {"trainer": trainer, "config": cfg.model_dump(mode="json")})


def finished_result(run_dir: Path) -> TrainResult | None:
    """The stored result of a finished run in ``run_dir`` (None if not finished)."""
    p = Path(run_dir) / "result.json"
    if p.is_file() and (Path(run_dir) / "final").is_dir():
        try:
            return TrainResult.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, KeyError):
            return None
    return None

