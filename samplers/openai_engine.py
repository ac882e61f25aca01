"""``openai``: decoding on a serving engine through an OpenAI-compatible completions endpoint
(SGLang, LMDeploy, vLLM, ``dllm-bench serve``), with the ``openai`` SDK (the optional ``openai``
extra: ``pip install 'dllm-bench[openai]'``, imported only when the sampler is built).

**Requests.** One ``POST <base_url>/completions`` per prompt, ``concurrency`` at a time (a
thread pool), each with ``n = 1``, ``max_tokens = max_new_tokens``, ``temperature``,
``top_p``, ``stop``, ``top_k`` (only when > 0) and ``seed`` = the sample's seed (eval's
``sample_seed(seed, doc, sample)``; ``dllm-bench serve`` decodes a one-row request with
exactly that row seed, so a sampled decode equals the in-process one). With
``batch_requests`` (``dllm-bench serve`` only) each ``generate`` batch goes as one request
instead: its prompts as a list, one seed per row in the extra field ``seeds``, so the server
decodes exactly the batches an in-process run decodes, whatever the timing. The prompt goes as
token ids by default (``prompt_format=tokens``), so the server sees exactly the tokens our
task rendered; ``prompt_format=text`` sends their decoded text instead, for servers that
only take text (the server re-tokenizes it). ``request_fields`` are sent as extra request
parameters with every request (``dllm-bench serve``'s per-request dLLM fields: block_size,
denoising_steps, confidence_threshold, ...). The SDK retries connection errors, timeouts,
408 / 409 / 429 and 5xx answers ``max_retries`` times with exponential backoff; ``timeout``
bounds each attempt.

**Results.** Text and finish reason from the server; token ids from the choice's
``token_ids`` (asked for with ``return_token_ids``, vLLM's and ``dllm-bench serve``'s field),
else the text re-encoded locally. ``dllm-bench serve`` also reports each sample's cost (NFE,
forward calls) and our finish reason (``eos`` | ``stop`` | ``length``); other servers report
no NFE: it is the generated tokens for an ``ar`` model (one forward per token, as
``ar-vllm`` counts) and 0 (not reported) for a diffusion model; OpenAI's ``stop`` is read as
``stop`` when the server names a matched stop string (``stop_reason`` / ``matched_stop``),
else ``eos``. ``wall_s``: the client's wall time of the ``generate`` call shared over its
prompts (so ``tokens_per_s`` is the throughput the evaluation saw).

**Key.** The sampler part of the entry's key holds every setting that can change outputs:
the sampling knobs, the served model name, ``prompt_format``, ``request_fields``, the
``server`` dict (decoding settings the user declares for the server: algorithm, block
size, threshold, ... — engines such as SGLang take them as launch flags, which no route
reports) and ``reported``: what the server says about itself — ``GET /version``, ``GET
<base_url>/models`` (ids, owner, root, max length; not ``created``), SGLang's ``GET
/get_server_info`` (volatile and address fields dropped: :data:`VOLATILE`) and, from
``dllm-bench serve``, ``POST /sampler_key``: the effective sampler key of ``request_fields``
(which also validates them before any sample is generated). Absent routes are left out.
``base_url``, ``api_key``, ``concurrency``, ``timeout``, ``max_retries`` and
``return_token_ids`` are transport settings, not in the key: the same server on another
host or port is the same system.

**Model.** The harness still loads ``--model`` for the tokenizer (prompt rendering, chat
template) and the model identity in the key; load it with ``--model-arg weights=false`` to
skip the weights (:func:`dllm_bench.models.load_model`). When the server is ``dllm-bench
serve`` its reported model (family, dtype, weights / config sha256) must match the local
one, else the entry would name the wrong model (bad input). For other servers, pass the
served checkpoint and its dtype (``--model-arg dtype=bfloat16``) yourself.

**Errors.** A 4xx answer (bad settings, unknown model) is bad input (exit 2), one line with
the status and the server's message; an unreachable server when the sampler is checked
(before any sample) is a failed run (exit 1); a 5xx or transport error during a batch fails
that batch (eval records it and goes on; re-running resumes).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from dllm_bench.errors import BadInputError, RunFailedError

from .base import Generation, SamplerBase, SamplingConfig, Timer, first_stop, row_seeds

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter

INSTALL_HINT = "pip install 'dllm-bench[openai]'"
TRANSPORT_FIELDS = ("base_url", "api_key", "concurrency", "timeout", "max_retries", "return_token_ids",
                    "attention_backend")
"""Config fields that are not part of the key (how to reach the server, not what it decodes)."""
VOLATILE = ("host", "port", "url", "created", "timestamp", "time", "throughput", "pid", "api_key", "uptime",
            "internal_states", "memory_usage", "num_running", "num_queue", "load", "token_usage")
"""Substrings of server-reported field names that are dropped before the key (addresses and
load statistics change from one server start to the next without changing outputs)."""
IDENTITY_FIELDS = ("family", "dtype", "weights_sha256", "config_sha256")


class OpenAIConfig(SamplingConfig):
    """``openai`` knobs: the sampling knobs of every sampler plus the server and transport."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="The server's OpenAI base URL (ending in /v1); "
                          "not part of the key")
    model: str | None = Field(None, description="Served model name; None = the first id in <base_url>/models")
    api_key: str | None = Field(None, description="Bearer token; None = $OPENAI_API_KEY, else 'EMPTY'; not in the key")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (threads)")
    timeout: float = Field(600.0, gt=0, description="Seconds per request attempt")
    max_retries: int = Field(3, ge=0, description="Retries of transient errors (exponential backoff, by the SDK)")
    prompt_format: Literal["tokens", "text"] = Field("tokens", description="Send prompts as token ids (exactly "
                                                     "what the task rendered) or as text")
    return_token_ids: bool = Field(True, description="Ask for the choice's token_ids (vLLM, dllm-bench serve)")
    batch_requests: bool = Field(False, description="Send each generate() batch as one request (a list of prompts "
                                 "with per-row 'seeds'; dllm-bench serve only): the server decodes exactly eval's "
                                 "batches")
    request_fields: dict[str, Any] = Field(default_factory=dict, description="Extra request parameters sent with "
                                           "every request (dllm-bench serve: block_size, confidence_threshold, ...)")
    server: dict[str, Any] = Field(default_factory=dict, description="Decoding settings declared for the server "
                                   "(e.g. algorithm, block size, threshold of its launch flags); recorded in the key")


def import_openai():
    """Import the ``openai`` SDK or raise a one-line BadInputError with the install hint."""
    try:
        import openai
    except ImportError as exc:
        raise BadInputError(f"sampler 'openai' needs the openai SDK ({exc}); install it with: {INSTALL_HINT}") from None
    return openai


def stable(obj: Any) -> Any:
    """``obj`` without the fields named in :data:`VOLATILE` (recursively)."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if not any(w in str(k).lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


class OpenAIEngine(SamplerBase):
    """Engine-backed sampler over an OpenAI-compatible completions API. See the module docstring."""

    name = "openai"
    version = "1"
    Config = OpenAIConfig
    config: OpenAIConfig
    needs_weights = False

    def __init__(self, config=None):
        super().__init__(config)
        self._openai = import_openai()
        cfg = self.config
        key = cfg.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = self._openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout,
                                          max_retries=cfg.max_retries)
        self._reported: dict[str, Any] | None = None
        self._served: str | None = cfg.model

    # ------------------------------------------------------------------ server discovery
    @property
    def root(self) -> str:
        """The server's address without the ``/v1`` suffix (where ``/version`` etc. live)."""
        url = self.config.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def describe(self, exc: Exception) -> str:
        """One line for an SDK error: the status and the server's own message."""
        o = self._openai
        if isinstance(exc, o.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            msg = (err.get("message") if isinstance(err, dict) else None) or body.get("detail") or exc.message
            return f"HTTP {exc.status_code}: {' '.join(str(msg).split())}"
        cause = exc.__cause__ or exc.__context__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        return f"{type(exc).__name__} ({' '.join(why.split())[:300]})"

    def _get(self, path: str, *, post: dict[str, Any] | None = None) -> Any:
        """JSON of ``GET``/``POST`` ``path`` (absolute URL or relative to ``base_url``); None on 404 / 405."""
        o = self._openai
        try:
            if post is not None:
                return self.client.post(path, body=post, cast_to=object)
            return self.client.get(path, cast_to=object)
        except o.APIStatusError as exc:
            if exc.status_code in (404, 405, 501):
                return None
            if 400 <= exc.status_code < 500:
                raise BadInputError(f"the server at {self.config.base_url} refused {path.rsplit('/', 1)[-1]} "
                                    f"({self.describe(exc)})") from None
            raise RunFailedError(f"the server at {self.config.base_url} failed ({self.describe(exc)}); no sample was "
                                 "generated") from None
        except (o.APIConnectionError, o.APITimeoutError) as exc:
            raise RunFailedError(f"cannot reach the server at {self.config.base_url} ({self.describe(exc)}); no "
                                 "sample was generated") from None

    def reported(self) -> dict[str, Any]:
        """What the server reports about itself (see the module docstring, "Key"); fetched once.

        Raises:
            RunFailedError: the server cannot be reached or answers 5xx.
            BadInputError: the server refuses ``request_fields`` (``/sampler_key``), or no model
                name is given and ``/models`` lists none.
        """
        if self._reported is not None:
            return self._reported
        out: dict[str, Any] = {}
        models = self._get("models")
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            out["models"] = [{k: m.get(k) for k in ("id", "owned_by", "root", "parent", "max_model_len") if k in m}
                             for m in models["data"] if isinstance(m, dict)]
        for name, path in (("version", "/version"), ("server_info", "/get_server_info")):
            got = self._get(self.root + path)
            if isinstance(got, dict):
                out[name] = stable(got)
        if isinstance(out.get("version"), dict) and out["version"].get("server") == "dllm-bench serve":
            body = {**self.config.request_fields, **self._sampling_fields()}
            got = self._get(self.root + "/sampler_key", post=body)
            if isinstance(got, dict) and "sampler" in got:
                out["sampler"] = got["sampler"]
        if self._served is None:
            ids = [m["id"] for m in out.get("models", []) if m.get("id")]
            if not ids:
                raise BadInputError(f"the server at {self.config.base_url} lists no model; give "
                                    "--sampler-arg model=<served model name>")
            self._served = str(ids[0])
        self._reported = out
        return out

    def _sampling_fields(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                               "stop": list(cfg.stop)}
        if cfg.top_k > 0:
            out["top_k"] = cfg.top_k
        return out

    # ------------------------------------------------------------------ contract
    def check_model(self, model: ModelAdapter) -> None:
        """Contact the server (what it reports goes into the key); when it reports its model
        (``dllm-bench serve``), that model must be the local one.

        Raises:
            BadInputError: the server serves another model (names the differing fields), or
                refuses the request fields.
            RunFailedError: the server cannot be reached.
        """
        super().check_model(model)
        rep = self.reported()
        theirs = (rep.get("version") or {}).get("model") if isinstance(rep.get("version"), dict) else None
        if isinstance(theirs, dict):
            mine = model.model_info()
            diff = [k for k in IDENTITY_FIELDS if theirs.get(k) is not None and mine.get(k) is not None
                    and theirs[k] != mine[k]]
            diff += [k for k in ("weights_sha256", "config_sha256") if (theirs.get(k) is None) != (mine.get(k) is None)
                     and k not in diff]
            if diff:
                parts = ", ".join(f"{k} {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in diff)
                raise BadInputError(f"the server at {self.config.base_url} serves another model than --model "
                                    f"{model.spec!r} ({parts}); pass the served checkpoint (and its dtype with "
                                    "--model-arg dtype=...) so the entry names the model that generated")

    def key(self) -> dict[str, Any]:
        """``{name, version, config}``: the config without transport fields, plus the served
        model name and ``reported`` (module docstring, "Key")."""
        cfg = self.config.model_dump(mode="json")
        for k in TRANSPORT_FIELDS:
            cfg.pop(k, None)
        cfg["reported"] = self.reported()
        cfg["model"] = self._served
        return {"name": self.name, "version": self.version, "config": cfg}

    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Send each prompt as one request, ``concurrency`` at a time; one Generation per prompt,
        in order (no trajectory: engines do not report one).

        Raises:
            BadInputError: the server answers 4xx (status and its message in one line).
            RuntimeError: a 5xx answer or a transport error after the SDK's retries (one line).
        """
        self.reported()
        seeds = row_seeds(seed, len(prompts))
        with Timer() as timer:
            if self.config.batch_requests:
                done = self._request(model, [list(p) for p in prompts], {"seeds": seeds}, seeds)
            else:
                workers = min(self.config.concurrency, max(1, len(prompts)))
                pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
                try:
                    futs = [pool.submit(self._one, model, list(p), s) for p, s in zip(prompts, seeds)]
                    done = [f.result() for f in futs]
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
        share = timer.seconds / max(1, len(prompts))
        for g in done:
            g.wall_s = share
        return done

    def _one(self, model: ModelAdapter, prompt: list[int], seed: int) -> Generation:
        return self._request(model, prompt, {"seed": seed}, [seed])[0]

    def _request(self, model: ModelAdapter, prompt: list[int] | list[list[int]], seeding: dict[str, Any],
                 seeds: list[int]) -> list[Generation]:
        """One completions request (a prompt, or a list of prompts); one Generation per choice."""
        o, cfg = self._openai, self.config
        extra = dict(cfg.request_fields)
        if cfg.top_k > 0:
            extra["top_k"] = cfg.top_k
        if cfg.return_token_ids:
            extra["return_token_ids"] = True
        batch = bool(prompt) and isinstance(prompt[0], list)
        if "seeds" in seeding:
            extra["seeds"] = seeding["seeds"]

        def text(p: Any) -> str:  # one prompt's token ids
            return model.tokenizer.decode(p)

        sent: Any = prompt if cfg.prompt_format == "tokens" else [text(p) for p in prompt] if batch else text(prompt)
        try:
            resp = self.client.completions.create(model=self._served, prompt=sent, max_tokens=cfg.max_new_tokens,
                                                  temperature=cfg.temperature, top_p=cfg.top_p, n=1,
                                                  seed=seeding.get("seed", self._openai.NOT_GIVEN),
                                                  stop=list(cfg.stop) or None, extra_body=extra)
        except o.APIStatusError as exc:
            if 400 <= exc.status_code < 500:
                raise BadInputError(f"the server at {cfg.base_url} refused the request ({self.describe(exc)})") \
                    from None
            raise RuntimeError(f"the server at {cfg.base_url} failed ({self.describe(exc)})") from None
        except (o.APIConnectionError, o.APITimeoutError) as exc:
            raise RuntimeError(f"cannot reach the server at {cfg.base_url} ({self.describe(exc)})") from None
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(seeds):
            raise RuntimeError(f"the server at {cfg.base_url} answered {len(choices)} choices for {len(seeds)} prompts")
        return [self._generation(model, c, s) for c, s in zip(choices, seeds)]

    def _generation(self, model: ModelAdapter, choice: Any, seed: int) -> Generation:
        extra = dict(getattr(choice, "model_extra", None) or {})
        found = extra.get("dllm_bench")
        ours: dict[str, Any] = found if isinstance(found, dict) else {}
        text = choice.text or ""
        cut = first_stop(text, self.config.stop)
        if cut >= 0:  # a server that does not honour stop strings
            text = text[:cut]
        ids = extra.get("token_ids")
        ids = [int(t) for t in ids] if isinstance(ids, list) else model.encode(text)
        reason = ours.get("finish_reason")
        if reason not in ("eos", "stop", "length"):
            matched = extra.get("stop_reason", extra.get("matched_stop"))
            reason = "length" if choice.finish_reason == "length" else "stop" if isinstance(matched, str) or cut >= 0 \
                else "eos"
        found_cost = ours.get("cost")
        cost: dict[str, Any] = found_cost if isinstance(found_cost, dict) else {}
        nfe = cost.get("nfe")
        if nfe is None:
            nfe = len(ids) if model.family == "ar" else 0
        calls = cost.get("forward_calls")
        return Generation(token_ids=ids, text=text, finish_reason=reason, nfe=int(nfe), wall_s=0.0, raw_token_ids=ids,
                          seed=seed, forward_calls=float(calls) if calls is not None else None)
