"""``dllm-bench serve``: an OpenAI-compatible HTTP server around a dllm-bench sampler.

One model is loaded once (:func:`dllm_bench.models.load_model`) and one default sampler
built as ``dllm-bench eval`` builds it (its ``block_size`` / ``block_alignment`` default to
the model's). Routes (fastapi + uvicorn, the optional ``serve`` extra):

* ``POST /v1/completions``: ``prompt`` a string, a list of token ids, or a list of either
  (one row per prompt and per ``n``); OpenAI fields ``max_tokens`` (default: the default
  sampler's ``max_new_tokens``), ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, and
  ``top_k``; any field of the sampler's pydantic ``Config`` as an extra request parameter
  (``block_size``, ``denoising_steps``, ``confidence_threshold``, ``block_alignment``,
  ``remasking``, ...). The request's config is validated by that ``Config``; an invalid one,
  an unknown field, a non-neutral unsupported OpenAI field (``stream``, ``echo``,
  ``logprobs``, penalties, ``logit_bias``, ``suffix``, ``best_of`` > ``n``) or a token id
  outside the vocabulary is HTTP 400 with a one-line message (OpenAI's ``{"error": {...}}``
  shape).
* ``POST /v1/chat/completions``: ``messages`` rendered with the model's chat template
  (``add_generation_prompt``), then as a completion; ``max_completion_tokens`` is an alias
  of ``max_tokens``.
* ``GET /v1/models``, ``GET /health``; ``GET /version``: dllm-bench version, the default
  sampler key (name, version, config), the model identity (id, family, dtype, weights /
  config sha256, parameters, block size) and the batching settings, for a client to record;
  ``POST /sampler_key``: the effective sampler key of a request's decoding fields (400 when
  they are invalid) without generating; ``GET /stats``: rows per ``generate`` call.

**Seeds.** A request with one row (one prompt, ``n = 1``) decodes that row with ``seed``
itself as its row seed (what the ``openai`` sampler sends per sample, so a sampled decode
equals the in-process one); a request with several rows gives row i ``sample_seed(seed, i)``
(:func:`dllm_bench.samplers.base.row_seeds`). Without ``seed`` a random one is drawn and
reported per choice. The extra field ``seeds`` (one integer per row, rows ordered prompt by
prompt) sets every row's seed instead (the ``openai`` sampler's ``batch_requests`` mode).

**Batching.** One worker thread runs every ``sampler.generate`` call. It takes the oldest
queued request, then for up to ``batch_window_s`` seconds adds queued requests whose
sampler config is the same (canonical JSON of the validated config) until ``max_batch_size``
rows; requests with another config wait for a later call, in arrival order. A request is
never split (a request with more rows than ``max_batch_size`` is decoded alone). Our
samplers draw with per-row generators, so a row's tokens do not depend on its batch mates
in exact arithmetic; in floating point a different batch (other padding, other matrix
shapes) can change logits in the last bits and, at a near-tie, a greedy token (measured: the
built-in tiny models decode the same tokens one at a time and batched;
``tests/test_serve.py`` asserts it through the server). Use ``--max-batch-size 1`` where
bit-exact independence from concurrent traffic matters.

**Responses** carry ``usage`` (``prompt_tokens`` counted once per prompt,
``completion_tokens`` over all rows), OpenAI's ``finish_reason`` (``stop`` for EOS or a stop
string, ``length``), ``token_ids`` per choice when ``return_token_ids`` is true (vLLM's
field), and per choice an extra ``dllm_bench`` object: our finish reason (``eos`` | ``stop``
| ``length``), the per-sample cost (``nfe``, ``generated_tokens``, ``wall_s``,
``forward_calls``; :meth:`dllm_bench.samplers.base.Generation.cost`), the row seed and
``batch_rows`` (rows in the ``generate`` call that decoded it).

:func:`start_process` starts the server as a child process and waits for ``/health`` (tests,
benchmarks, scripts that evaluate through it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BadInputError
from .schema import canonical_json

try:  # the optional serve extra: routes annotate their argument with it (fastapi injects by annotation)
    from starlette.requests import Request
except ImportError:  # reported by import_serve_deps when serving
    Request = Any  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from .models import ModelAdapter
    from .samplers.base import Generation, Sampler

log = logging.getLogger("dllm_bench.serve")

INSTALL_HINT = "pip install 'dllm-bench[serve]'"
MAX_N = 128
"""Most rows (``n``) per prompt."""
OPENAI_FIELDS = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                 "top_k", "stop", "n", "seed", "seeds", "return_token_ids", "user"}
NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {
    "stream": (None, False), "echo": (None, False), "logprobs": (None, False, 0),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}), "suffix": (None, ""), "stream_options": (None,), "best_of": (None, 1)}
"""OpenAI fields dllm-bench serve accepts only at these (neutral) values."""


def import_serve_deps() -> tuple[Any, Any]:
    """``(fastapi, uvicorn)`` or a one-line BadInputError with the install hint."""
    try:
        import fastapi
        import uvicorn
    except ImportError as exc:
        raise BadInputError(f"dllm-bench serve needs fastapi and uvicorn ({exc}); install them with: "
                            f"{INSTALL_HINT}") from None
    return fastapi, uvicorn


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``; `` (error messages sent as HTTP bodies)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ------------------------------------------------------------------------------ batching
@dataclass
class _Job:
    cfg_key: str
    sampler: Sampler
    prompts: list[list[int]]
    seeds: list[int]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class BatchWorker:
    """The one thread that calls ``sampler.generate`` (see the module docstring, "Batching").

    Args:
        adapter: the loaded model.
        max_batch_size: most rows per ``generate`` call (>= 1).
        batch_window_s: seconds (>= 0) to wait for more requests of the same config after
            the first one of a call.
    """

    def __init__(self, adapter: ModelAdapter, max_batch_size: int, batch_window_s: float):
        self.adapter, self.max_batch_size, self.batch_window_s = adapter, max_batch_size, batch_window_s
        self.rows_per_call: deque[int] = deque(maxlen=10000)
        self.requests = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dllm-bench-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, cfg_key: str, sampler: Sampler, prompts: list[list[int]],
               seeds: list[int]) -> concurrent.futures.Future:
        """Queue rows; the future gives ``(generations, batch_rows)``."""
        job = _Job(cfg_key, sampler, prompts, seeds)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _fits(self, batch: list[_Job], job: _Job) -> bool:
        """``job`` may join ``batch``: the same sampler config, and its rows fit the call."""
        rows = sum(len(j.prompts) for j in batch)
        return job.cfg_key == batch[0].cfg_key and rows + len(job.prompts) <= self.max_batch_size

    def _run(self) -> None:
        waiting: deque[_Job] = deque()
        while True:
            first = waiting.popleft() if waiting else self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            kept: deque[_Job] = deque()
            for job in waiting:
                (batch if self._fits(batch, job) else kept).append(job)
            waiting = kept
            deadline = time.monotonic() + self.batch_window_s
            while sum(len(j.prompts) for j in batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    late = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if late is None:
                    stop = True
                    break
                (batch if self._fits(batch, late) else waiting).append(late)
            self._generate(batch)
            if stop:
                for job in waiting:
                    job.future.set_exception(RuntimeError("the server is shutting down"))
                return

    def _generate(self, batch: list[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        rows = len(prompts)
        seeds = [s for job in batch for s in job.seeds]
        try:
            gens = batch[0].sampler.generate(self.adapter, prompts, seed=seeds)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for job in batch:
                job.future.set_exception(exc)
            return
        self.rows_per_call.append(rows)
        self.requests += len(batch)
        i = 0
        for job in batch:
            job.future.set_result((gens[i:i + len(job.prompts)], rows))
            i += len(job.prompts)


# ------------------------------------------------------------------------------ the app
class Server:
    """The state behind the routes: the model, the default sampler, the sampler cache, the worker.

    Args:
        adapter: the loaded model.
        sampler: sampler plugin name; ``sampler_args`` its default config (``--sampler-arg``).
        served_model_name: the name in ``/v1/models`` and responses (default: the model spec).
        max_batch_size / batch_window_s: :class:`BatchWorker`.

    Raises:
        BadInputError: unknown sampler, invalid default config, a sampler that does not fit
            the model, ``max_batch_size`` < 1 or ``batch_window_s`` < 0.
    """

    def __init__(self, adapter: ModelAdapter, sampler: str, sampler_args: dict[str, Any] | None = None, *,
                 served_model_name: str | None = None, max_batch_size: int = 8, batch_window_s: float = 0.01):
        from . import __version__
        from .evaluate import _build_sampler

        if max_batch_size < 1:
            raise BadInputError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        if batch_window_s < 0:
            raise BadInputError(f"--batch-window must be >= 0 seconds, got {batch_window_s}")
        self.adapter, self.sampler_name = adapter, sampler
        self.default_args = dict(sampler_args or {})
        self.default = _build_sampler(sampler, self.default_args, adapter)
        self.served_model_name = served_model_name or adapter.spec
        self.version = __version__
        self.created = int(time.time())
        self._samplers: dict[str, Sampler] = {canonical_json(self.default.key()): self.default}
        self.worker = BatchWorker(adapter, max_batch_size, batch_window_s)

    # -------------------------------------------------------------- identity
    def model_identity(self) -> dict[str, Any]:
        """The model's key fields (as :meth:`ModelAdapter.model_info` reports them) and block size."""
        info = self.adapter.model_info()
        keep = ("id", "family", "dtype", "weights_sha256", "config_sha256", "num_parameters", "tokenizer", "training")
        return {**{k: info[k] for k in keep}, "block_size": self.adapter.block_size,
                "block_alignment": self.adapter.block_alignment}

    def version_info(self) -> dict[str, Any]:
        return {"server": "dllm-bench serve", "dllm_bench": self.version, "served_model_name": self.served_model_name,
                "model": self.model_identity(), "sampler": self.default.key(),
                "batching": {"max_batch_size": self.worker.max_batch_size,
                             "batch_window_s": self.worker.batch_window_s}}

    # -------------------------------------------------------------- requests
    def sampler_for(self, body: dict[str, Any], *, decoding_only: bool = False) -> Sampler:
        """The sampler for a request's decoding fields: the default config with the request's
        OpenAI fields (``max_tokens`` -> ``max_new_tokens``, ...) and sampler-config fields applied.

        Raises:
            BadInputError: unknown or unsupported field, or a config the sampler's ``Config`` refuses.
        """
        from . import registry
        from .evaluate import _build_sampler

        fields = set(registry.load("samplers", self.sampler_name).Config.model_fields)
        args = dict(self.default_args)
        for k, v in body.items():
            if k in NEUTRAL_FIELDS:
                if v not in NEUTRAL_FIELDS[k]:
                    raise BadInputError(f"{k}={v!r} is not supported by dllm-bench serve")
            elif k in ("max_tokens", "max_completion_tokens"):
                if v is not None:
                    args["max_new_tokens"] = v
            elif k == "stop":
                args["stop"] = [] if v is None else [v] if isinstance(v, str) else v
            elif k in ("temperature", "top_p", "top_k"):
                if v is not None:
                    args[k] = v
            elif k in fields:
                args[k] = v
            elif k not in OPENAI_FIELDS:
                known = sorted(fields | OPENAI_FIELDS)
                raise BadInputError(f"unknown request field {k!r}: not an OpenAI field nor a {self.sampler_name!r} "
                                    f"config field ({', '.join(known)})")
        if decoding_only and ("prompt" in body or "messages" in body):
            raise BadInputError("/sampler_key takes decoding fields only (no prompt or messages)")
        try:
            obj = _build_sampler(self.sampler_name, args, self.adapter, source="request")
        except BadInputError as exc:
            raise BadInputError(one_line(exc.message)) from None
        key = canonical_json(obj.key())
        if key not in self._samplers:
            if len(self._samplers) >= 64:  # bounded: the oldest config other than the default goes
                self._samplers.pop(next(k for k in self._samplers if self._samplers[k] is not self.default))
            self._samplers[key] = obj
        return self._samplers[key]

    def prompts(self, prompt: Any) -> list[list[int]]:
        """Token-id prompts from OpenAI's ``prompt`` (a string, token ids, or a list of either).

        Raises:
            BadInputError: an empty or malformed prompt, a token id outside the vocabulary.
        """
        items = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        out = []
        vocab = len(self.adapter.tokenizer)
        for p in items:
            if isinstance(p, str):
                ids = self.adapter.encode(p)
            elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                bad = [t for t in p if not 0 <= t < vocab]
                if bad:
                    raise BadInputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
                ids = list(p)
            else:
                raise BadInputError("prompt must be a string, a list of token ids, or a list of either")
            if not ids:
                raise BadInputError("empty prompt")
            out.append(ids)
        return out

    def chat_prompt(self, messages: Any) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template.

        Raises:
            BadInputError: malformed messages, a tokenizer without a chat template.
        """
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise BadInputError("messages must be a non-empty list of {role, content} objects with string content")
        tok = self.adapter.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadInputError(f"{self.adapter.spec!r} has no chat template; use /v1/completions")
        text = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                       tokenize=False, add_generation_prompt=True)
        return self.adapter.encode(text)

    async def generate(self, body: dict[str, Any], prompts: list[list[int]]) -> tuple[list[Generation], list[int], int]:
        """Decode ``n`` rows per prompt through the worker: (generations, row seeds, batch rows).

        Raises:
            BadInputError: invalid fields (see :meth:`sampler_for`), ``n`` or ``seed`` not integers.
        """
        from .samplers.base import row_seeds

        sampler = self.sampler_for({k: v for k, v in body.items() if k not in ("prompt", "messages")})
        n, seed = body.get("n") or 1, body.get("seed")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise BadInputError(f"n must be an integer in 1..{MAX_N}, got {n!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadInputError(f"seed must be an integer, got {seed!r}")
        if seed is None:
            seed = secrets.randbits(63)
        rows = [p for p in prompts for _ in range(n)]
        seeds = [int(seed)] if len(rows) == 1 else row_seeds(int(seed), len(rows))
        given = body.get("seeds")
        if given is not None:
            if not isinstance(given, list) or len(given) != len(rows) or not all(
                    isinstance(s, int) and not isinstance(s, bool) for s in given):
                raise BadInputError(f"seeds must be a list of {len(rows)} integers (one per row: prompts x n)")
            seeds = [int(s) for s in given]
        fut = self.worker.submit(canonical_json(sampler.key()), sampler, rows, seeds)
        gens, batch_rows = await asyncio.wrap_future(fut)
        return gens, seeds, batch_rows

    def response(self, kind: str, body: dict[str, Any], prompts: list[list[int]], gens: list[Generation],
                 seeds: list[int], batch_rows: int) -> dict[str, Any]:
        """The OpenAI response body (``text_completion`` or ``chat.completion``)."""
        choices = []
        for i, (g, s) in enumerate(zip(gens, seeds)):
            extra = {"finish_reason": g.finish_reason, "cost": g.cost(), "seed": s, "batch_rows": batch_rows}
            reason = "length" if g.finish_reason == "length" else "stop"
            c: dict[str, Any] = {"index": i, "finish_reason": reason, "logprobs": None}
            if kind == "chat":
                c["message"] = {"role": "assistant", "content": g.text}
            else:
                c["text"] = g.text
            if body.get("return_token_ids"):
                c["token_ids"] = list(g.token_ids)
            c["dllm_bench"] = extra
            choices.append(c)
        completion = sum(g.generated_tokens for g in gens)
        prompt_tokens = sum(len(p) for p in prompts)
        return {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if kind == "chat" else "text_completion", "created": int(time.time()),
                "model": self.served_model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}


def create_app(server: Server) -> Any:
    """The fastapi application for ``server`` (routes in the module docstring)."""
    fastapi, _ = import_serve_deps()
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI(title="dllm-bench serve", version=server.version)

    def error(status: int, message: str) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": one_line(message), "type": kind, "param": None, "code": status}},
                            status_code=status)

    async def read_body(request: Any) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadInputError(f"the request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadInputError("the request body must be a JSON object")
        return body

    async def complete(request: Any, kind: str) -> JSONResponse:
        try:
            body = await read_body(request)
            if kind == "chat":
                prompts = [server.chat_prompt(body.get("messages"))]
            else:
                if "prompt" not in body:
                    raise BadInputError("missing field 'prompt'")
                prompts = server.prompts(body["prompt"])
            gens, seeds, rows = await server.generate(body, prompts)
        except BadInputError as exc:
            return error(400, exc.message)
        except Exception as exc:  # noqa: BLE001 - reported to the client in one line
            log.error("generation failed: %s: %s", type(exc).__name__, exc)
            return error(500, f"generation failed: {type(exc).__name__}: {exc}")
        return JSONResponse(server.response(kind, body, prompts, gens, seeds, rows))

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        return await complete(request, "text")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        return await complete(request, "chat")

    @app.post("/sampler_key")
    async def sampler_key(request: Request) -> Any:
        try:
            body = await read_body(request)
            return {"sampler": server.sampler_for(body, decoding_only=True).key()}
        except BadInputError as exc:
            return error(400, exc.message)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.served_model_name, "object": "model",
                                            "created": server.created, "owned_by": "dllm-bench",
                                            "root": server.adapter.spec}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return server.version_info()

    @app.get("/stats")
    async def stats():
        return {"requests": server.worker.requests, "rows_per_call": list(server.worker.rows_per_call)}

    return app


def serve(*, model: str, model_args: dict[str, Any] | None, sampler: str, sampler_args: dict[str, Any] | None,
          host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None, max_batch_size: int = 8,
          batch_window_s: float = 0.01) -> None:
    """Load the model, build the default sampler and serve until interrupted (``dllm-bench serve``).

    The listening socket is bound first, before the model loads, so an address in use (or
    one this machine does not have) is refused at once; ``--port 0`` takes a free port, and
    the line on stderr names the one bound.

    Raises:
        BadInputError: fastapi / uvicorn missing (install hint), a bad model, sampler or
            batching option, a port outside 0..65535, an address that cannot be bound (in
            use, not on this machine, a privileged port).
    """
    import os
    import socket

    _, uvicorn = import_serve_deps()
    if not 0 <= port <= 65535:
        raise BadInputError(f"--port must be in 0..65535, got {port}")
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except (OSError, OverflowError) as exc:
        errno = getattr(exc, "errno", None)
        why = os.strerror(errno) if errno else str(exc)
        raise BadInputError(f"cannot listen on {host}:{port}: {why}") from None
    from .console import console
    from .models import load_model

    try:
        adapter = load_model(model, arg_source="--model-arg", **dict(model_args or {}))
        srv = Server(adapter, sampler, sampler_args, served_model_name=served_model_name,
                     max_batch_size=max_batch_size, batch_window_s=batch_window_s)
        app = create_app(srv)
        port = sock.getsockname()[1]
        console.print(f"serving {srv.served_model_name} ({adapter.family}) with {sampler} on http://{host}:{port}/v1 "
                      f"(max batch {max_batch_size} rows, window {batch_window_s:g} s)", markup=False,
                      highlight=False, soft_wrap=True)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        finally:
            srv.worker.close()
    finally:
        sock.close()


# ------------------------------------------------------------------------------ a server process
def get_json(url: str, timeout: float = 10.0) -> Any:
    """The JSON body of ``GET url`` (urllib; raises OSError when nothing answers)."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def start_process(model: str, sampler: str, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                  timeout: float = 240.0) -> tuple[Any, str]:
    """Start ``dllm-bench serve --model MODEL --sampler SAMPLER ARGS`` on 127.0.0.1 as a child
    process and wait until ``/health`` answers; returns ``(Popen, root URL)`` (stderr piped).

    Raises:
        RuntimeError: the process exited first (its stderr tail in the message) or did not
            answer within ``timeout`` seconds (it is killed).
    """
    import subprocess
    import sys
    from pathlib import Path

    from .parallel import free_port

    port = port or free_port()
    exe = Path(sys.executable).parent / "dllm-bench"
    proc = subprocess.Popen([str(exe), "--no-progress", "serve", "--model", model, "--sampler", sampler,
                             "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr is not None else ""
            raise RuntimeError(f"dllm-bench serve exited ({proc.returncode}): {err[-2000:]}")
        try:
            if get_json(root + "/health").get("status") == "ok":
                return proc, root
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"dllm-bench serve did not answer {root}/health within {timeout:g} s")
