"""lm-evaluation-harness integration, both ways (no fork of lm-eval).

**Our samplers as an lm-eval model.** :class:`DllmBenchLM` is an ``lm_eval.api.model.LM``
registered as ``dllm-bench`` in lm-eval's model registry when this module is imported::

    import dllm_bench.lmeval, lm_eval
    lm_eval.simple_evaluate(model="dllm-bench",
                            model_args="model=tiny-block-dlm,sampler=block-dynamic,threshold=0.9",
                            tasks=["gsm8k"])

lm-eval 0.4.13 finds models only in its in-process registry: it reads no entry-point
group and loads no plugins, so the plain ``lm_eval`` command cannot see a model that no
imported module registered. Three ways to run lm-eval's own CLI with ``dllm-bench``:

* ``dllm-bench-lm-eval --model dllm-bench --model_args ... --tasks gsm8k`` (console
  script) or ``python -m dllm_bench.lmeval ...``: lm-eval's unmodified CLI
  (``lm_eval.__main__.cli_evaluate``) after registering the model;
* ``dllm-bench-lm-eval --install-hook`` (opt-in, once per environment) writes
  ``dllm_bench_lmeval.pth`` into site-packages: at interpreter start it adds a one-shot
  import hook (:mod:`dllm_bench.lmeval_hook`) that registers ``dllm-bench`` as a *lazy*
  placeholder the moment ``lm_eval.api.registry`` is imported, so plain
  ``lm_eval --model dllm-bench`` and ``simple_evaluate(model="dllm-bench")`` work without
  importing anything first; nothing (not even lm-eval) is imported at start-up;
  ``--uninstall-hook`` removes it.

Model args (``--model_args k=v,...``): ``model`` (a :func:`dllm_bench.models.load_model`
spec), ``sampler`` (a sampler plugin name, default ``block-dynamic``), ``seed``, any field
of the sampler's ``Config`` (aliases: ``threshold`` -> ``confidence_threshold``,
``gen_length`` -> ``max_new_tokens``, ``block_length`` -> ``block_size``; ``steps`` is the
total over all blocks, as in LLaDA's ``generate.py`` and the dllm library, and becomes
``denoising_steps = steps / (gen_length / block_length)`` per block), and model args
(``dtype``, ``device``, ``family``, ``mask_token``, ``attn_backend``, ``trust_remote_code``,
tiny-model sizes, or any model arg prefixed ``model_``: ``model_block_size`` is the model's own block size). A task's
``generation_kwargs`` override the sampler config per request: ``until`` -> ``stop``,
``max_gen_toks`` -> ``max_new_tokens``, ``temperature`` / ``top_p`` / ``top_k``
(``do_sample: false`` -> temperature 0).

``generate_until`` is implemented. ``loglikelihood`` and ``loglikelihood_rolling`` raise
:class:`NotImplementedError`: a masked diffusion LM has no exact left-to-right
likelihood; what exists is a Monte-Carlo ELBO (LLaDA's ``eval_llada.py`` uses 128 mask
samples per continuation), a bound whose value depends on the estimator and its sample
count, so its numbers are not comparable with AR log-likelihoods (LLaDA, arXiv 2502.09992;
ML-GSAI/LLaDA ``eval_llada.py`` at b7e6c35).

**lm-eval tasks through our samplers.** :func:`run_lmeval_task` (``dllm-bench eval --task
lm-eval:<task>``) runs one lm-eval task with :class:`DllmBenchLM` and writes a normal
leaderboard entry: metrics from lm-eval's own scoring (named ``<metric>,<filter>``, as
lm-eval names them, e.g. ``exact_match,strict-match``), per-sample records, cost (NFE,
tokens, tokens/s from our samplers) and the comparability key (task name + lm-eval task
version, sha256 of the task's evaluation documents, sha256 of the prompt-shaping task
config, scorer ``lm-eval`` + version + sha of the metric/filter config, the effective
sampler config).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError, RunFailedError
from .schema import Entry, canonical_json, sha256_text

if TYPE_CHECKING:
    from .jsonl import JsonlStore
    from .samplers.base import Sampler

log = logging.getLogger(__name__)

NAME = "dllm-bench"
"""The model name in lm-eval's registry."""

try:
    import lm_eval.models  # noqa: F401  (built-ins first: lm-eval imports them only into an empty registry)
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import model_registry as _registry
except ImportError:  # lm-eval is the optional [lmeval] extra
    _LMBase = object
    _registry = None

ALIASES = {"threshold": "confidence_threshold", "gen_length": "max_new_tokens", "block_length": "block_size"}
MODEL_ARGS = {"dtype", "device", "family", "mask_token", "attn_backend", "trust_remote_code", "hidden_size",
              "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_position_embeddings",
              "rope_theta", "init_seed"}
CACHE_FILE = "lmeval_generations.jsonl"


def _require_lmeval() -> None:
    if _registry is None:
        raise BadInputError("lm-eval is not installed: pip install 'dllm-bench[lmeval]'")


def split_args(sampler_cls: type[Sampler], args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route flat ``k=v`` args to (sampler config, model args); aliases applied.

    ``steps`` is LLaDA's total number of denoising steps over the whole generation
    (``generate.py``: ``steps_per_block = steps // num_blocks``, with ``num_blocks =
    gen_length // block_length``); it becomes the per-block ``denoising_steps``.

    Raises:
        BadInputError: an arg that is neither a sampler config field nor a model arg;
            ``steps`` without ``gen_length`` and ``block_length``, or not a multiple of the
            number of blocks (LLaDA requires both divisions to be exact).
    """
    fields = set(sampler_cls.Config.model_fields)
    sampler_args: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    args = dict(args)
    total_steps = args.pop("steps", None)
    for k, v in args.items():
        k2 = ALIASES.get(k, k)
        if k2 in fields:
            sampler_args[k2] = v
        elif k.startswith("model_"):
            model_args[k[len("model_"):]] = v
        elif k in MODEL_ARGS:
            model_args[k] = v
        else:
            raise BadInputError(f"unknown dllm-bench model_args key {k!r}: not a {sampler_cls.name!r} config field "
                                f"({', '.join(sorted(fields))}) nor a model arg ({', '.join(sorted(MODEL_ARGS))}, "
                                "model_<arg>)")
    if total_steps is not None:
        sampler_args["denoising_steps"] = _per_block_steps(total_steps, sampler_args)
    return sampler_args, model_args


def _per_block_steps(total: Any, sampler_args: dict[str, Any]) -> int:
    gen, block = sampler_args.get("max_new_tokens"), sampler_args.get("block_size")
    if gen is None or block is None:
        raise BadInputError("steps is the total over all blocks (as in LLaDA): give gen_length and block_length "
                            "with it, or denoising_steps (per block) instead")
    gen, block, total = int(gen), int(block), int(total)
    if block <= 0 or gen % block or total % (gen // block):
        raise BadInputError(f"steps={total} over gen_length={gen} / block_length={block}: gen_length must be a "
                            "multiple of block_length and steps a multiple of the number of blocks "
                            f"({gen / block:g})")
    return total // (gen // block)


class DllmBenchLM(_LMBase):
    """An lm-eval ``LM`` that generates with a dllm-bench sampler plugin.

    Args:
        model: model spec for :func:`dllm_bench.models.load_model` (default ``tiny-block-dlm``),
            or an already loaded ``ModelAdapter``.
        sampler: sampler plugin name (default ``block-dynamic``).
        batch_size: prompts per ``generate`` call (lm-eval's ``--batch_size``; ``auto`` = 8).
        seed: base seed; request r of document d (its k-th repeat) uses
            ``sample_seed(seed, hash(task), d, k)`` whatever the batching.
        sampler_args / model_args: explicit dicts (used by :func:`run_lmeval_task`).
        cache_dir: when set, finished generations are appended to ``<cache_dir>/
            lmeval_generations.jsonl`` (flushed per batch) and reused on a re-run, so an
            interrupted run resumes without regenerating.
        **kwargs: flat ``--model_args`` (see the module docstring for the routing).

    Attributes:
        generations: ``{(task_name, doc_id, repeat): record}`` of this run: text, nfe,
            generated_tokens, wall_s, seed, finish_reason, prompt_sha256.
    """

    def __init__(self, model: Any = "tiny-block-dlm", sampler: str = "block-dynamic", batch_size: Any = 8,
                 seed: int = 0, sampler_args: dict[str, Any] | None = None,
                 model_args: dict[str, Any] | None = None, cache_dir: str | Path | None = None,
                 max_batch_size: Any = None, **kwargs: Any):
        _require_lmeval()
        super().__init__()
        from . import registry
        from .models import load_model

        cls = registry.load("samplers", sampler)
        flat_s, flat_m = split_args(cls, kwargs)
        self.sampler_name = sampler
        self.sampler_cls = cls
        self.sampler_args = {**flat_s, **(sampler_args or {})}
        m_args = {**flat_m, **(model_args or {})}
        if str(m_args.get("device") or "").startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # lm-eval's CLI passes --device cuda by default
                log.warning("device %r requested but CUDA is not available; using cpu", m_args["device"])
                m_args["device"] = "cpu"
        if isinstance(model, (str, os.PathLike)):
            self.adapter = load_model(str(model), **m_args)
        else:  # an already loaded dllm_bench.models.ModelAdapter
            if m_args:
                raise BadInputError(f"model args {sorted(m_args)} given with an already loaded model")
            self.adapter = model
        if "block_size" in cls.Config.model_fields and self.sampler_args.get("block_size") is None \
                and self.adapter.block_size is not None:  # as dllm-bench eval: the model's, recorded in the key
            self.sampler_args["block_size"] = self.adapter.block_size
        self.base_sampler = registry.create("samplers", sampler, self.sampler_args, source="lm-eval model_args")
        self.base_sampler.check_model(self.adapter)
        self.model_spec = self.adapter.spec
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.seed = int(seed)
        self.generations: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.configs_used: dict[str, dict[str, Any]] = {}
        self._cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self._cache = self._load_cache()
        self._device = self.adapter.device

    # ------------------------------------------------------------------ lm-eval API
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "dllm-bench does not compute log-likelihoods: a masked diffusion LM has no exact likelihood, only a "
            "Monte-Carlo ELBO (a bound whose value depends on the estimator and its sample count) that is not "
            "comparable with autoregressive log-likelihoods. Use generate_until tasks (e.g. gsm8k).")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "dllm-bench does not compute rolling log-likelihoods (perplexity): masked diffusion LMs have no exact "
            "likelihood, only a non-comparable ELBO bound. Use generate_until tasks.")

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.adapter.tokenizer, "name_or_path", "") or self.model_spec).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.adapter.tokenizer, "chat_template", None) or None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.adapter.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                          add_generation_prompt=add_generation_prompt)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate for each request ``(context, gen_kwargs)``; returns the response texts.

        Requests are grouped by their generation kwargs (one sampler config per group) and
        decoded ``batch_size`` prompts at a time. Prompts longer than the model's context
        minus ``max_new_tokens`` are cut on the left (lm-eval's HF convention).
        """
        from .console import progress

        seen: Counter = Counter()
        jobs = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            rid = (str(req.task_name), int(req.doc_id if req.doc_id is not None else i), seen[id(req)])
            seen[id(req)] += 1
            jobs.append((i, rid, context, dict(gen_kwargs or {})))
        out: list[str | None] = [None] * len(jobs)
        groups: dict[str, list] = {}
        for job in jobs:
            groups.setdefault(canonical_json(job[3]), []).append(job)
        with progress(f"lm-eval / {self.sampler_name}", total=len(jobs)) as advance:
            for gk, group in groups.items():
                sampler, cfg = self._sampler_for(group[0][3])
                cfg_key = sha256_text(canonical_json({"cfg": cfg, "model": self._model_ident()}))
                self.configs_used[gk] = cfg
                todo = []
                for job in group:
                    i, rid, context, _ = job
                    seed = self._seed(rid)
                    h = sha256_text(canonical_json([cfg_key, context, seed]))
                    hit = self._cache.get(h) if self._cache is not None else None
                    if hit is not None:
                        out[i] = hit["text"]
                        self.generations[rid] = hit
                        advance(1)
                    else:
                        todo.append((job, seed, h))
                for b in range(0, len(todo), self.batch_size):
                    batch = todo[b:b + self.batch_size]
                    ids = [self._encode(job[2], cfg["max_new_tokens"]) for job, _, _ in batch]
                    gens = sampler.generate(self.adapter, ids, seed=[s for _, s, _ in batch])
                    recs = []
                    for (job, seed, h), g in zip(batch, gens):
                        i, rid, context, _ = job
                        rec = {"hash": h, "text": g.text, "nfe": g.nfe, "generated_tokens": g.generated_tokens,
                               "wall_s": g.wall_s, "seed": seed, "finish_reason": g.finish_reason,
                               "prompt_sha256": sha256_text(context)}
                        out[i] = g.text
                        self.generations[rid] = rec
                        recs.append(rec)
                    self._append_cache(recs)
                    advance(len(batch))
        return [o if o is not None else "" for o in out]

    # ------------------------------------------------------------------ helpers
    def _model_ident(self) -> dict[str, Any]:
        info = self.adapter.model_info()
        return {k: info[k] for k in ("id", "family", "weights_sha256", "config_sha256", "dtype")}

    def _seed(self, rid: tuple[str, int, int]) -> int:
        from dllm_bench.samplers.base import sample_seed

        return sample_seed(self.seed, int(sha256_text(rid[0])[:8], 16), rid[1], rid[2])

    def _encode(self, context: str, max_new_tokens: int) -> list[int]:
        ids = self.adapter.encode(context)
        limit = getattr(self.adapter.model.config, "max_position_embeddings", None)
        if limit:
            keep = max(1, int(limit) - int(max_new_tokens) - (self.adapter.block_size or 0))
            ids = ids[-keep:]
        return ids

    def _sampler_for(self, gen_kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """A sampler whose config is the base config with the request's generation kwargs applied."""
        from . import registry

        cfg = dict(self.base_sampler.config.model_dump(mode="json"))
        fields = set(self.sampler_cls.Config.model_fields)
        until = gen_kwargs.get("until")
        if until is not None:
            until = [until] if isinstance(until, str) else list(until)
            cfg["stop"] = list(dict.fromkeys([*cfg.get("stop", []), *until]))
        if "max_gen_toks" in gen_kwargs:
            cfg["max_new_tokens"] = int(gen_kwargs["max_gen_toks"])
        if gen_kwargs.get("do_sample") is False:
            cfg["temperature"] = 0.0
        elif "temperature" in gen_kwargs:
            cfg["temperature"] = float(gen_kwargs["temperature"])
        for k in ("top_p", "top_k"):
            if k in gen_kwargs and k in fields:
                cfg[k] = gen_kwargs[k]
        cfg = {k: v for k, v in cfg.items() if k in fields}
        if cfg == self.base_sampler.config.model_dump(mode="json"):
            return self.base_sampler, cfg
        return registry.create("samplers", self.sampler_name, cfg, source="lm-eval generation_kwargs"), cfg

    def _load_cache(self) -> JsonlStore | None:
        """Finished generations from ``lmeval_generations.jsonl``, keyed by ``hash`` (a torn last
        line is ignored and cut off before the next append); None without a ``cache_dir``.

        Raises:
            BadInputError: a non-UTF-8 file, or a line that is not a JSON object with a
                ``hash``, naming the file and line.
        """
        if self._cache_path is None:
            return None
        from .jsonl import JsonlStore, parse_object

        def parse(line: str) -> dict[str, Any]:
            rec = parse_object(line)
            if "hash" not in rec:
                raise BadInputError("generation cache record without 'hash'")
            return rec

        return JsonlStore(self._cache_path, parse=parse, key=lambda r: r["hash"], what="generation cache")

    def _append_cache(self, recs: list[dict[str, Any]]) -> None:
        if self._cache is not None:
            with self._cache:  # flushed to disk per batch, closed until the next
                self._cache.extend(recs)


def register() -> None:
    """Register :class:`DllmBenchLM` as ``dllm-bench`` in lm-eval's model registry (idempotent).

    A lazy placeholder ``"dllm_bench.lmeval:DllmBenchLM"`` left by the import hook is
    upgraded to the class (lm-eval's registry allows exactly that).
    """
    if _registry is None:
        return
    if _registry._objs.get(NAME) is not DllmBenchLM:
        _registry.register(NAME)(DllmBenchLM)


if __name__ != "__main__":
    register()


# ---------------------------------------------------------------- lm-eval CLI wrapper
def _site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


HOOK_FILE = "dllm_bench_lmeval.pth"
HOOK_LINE = ("import sys; exec('try:\\n import dllm_bench.lmeval_hook as _h; _h.install()\\n"
             "except Exception:\\n pass')\n")


def install_hook(site_dir: str | Path | None = None) -> Path:
    """Write the opt-in ``.pth`` (see the module docstring); returns its path."""
    p = Path(site_dir or _site_packages()) / HOOK_FILE
    p.write_text("# dllm-bench: register the 'dllm-bench' lm-eval model when lm-eval is imported\n" + HOOK_LINE)
    return p


def uninstall_hook(site_dir: str | Path | None = None) -> Path:
    p = Path(site_dir or _site_packages()) / HOOK_FILE
    p.unlink(missing_ok=True)
    return p


def cli_main(argv: Sequence[str] | None = None) -> None:
    """``dllm-bench-lm-eval``: lm-eval's own CLI with the ``dllm-bench`` model registered.

    ``--install-hook`` / ``--uninstall-hook`` manage the opt-in ``.pth`` instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--install-hook", "--uninstall-hook"):
        p = install_hook() if args[0] == "--install-hook" else uninstall_hook()
        sys.stderr.write(f"{'wrote' if args[0] == '--install-hook' else 'removed'} {p}\n")
        return
    _require_lmeval()
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *args]
    cli_evaluate()


# ---------------------------------------------------------------- lm-eval task -> Entry
TASK_ARGS = {"include_path", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn", "system_instruction",
             "primary_metric", "bootstrap_iters", "fewshot_seed"}
LMEVAL_FEWSHOT_SEED = 1234
"""lm-eval's own default ``fewshot_random_seed`` (``simple_evaluate``): few-shot examples are
chosen with it unless ``--task-arg fewshot_seed=N`` says otherwise, independent of ``--seed``."""


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None) -> Any:
    """lm-eval's TaskManager (indexing every task YAML takes seconds: built once per path)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _doc_sha(task: Any) -> tuple[str, int]:
    docs = list(task.eval_docs)
    return sha256_text(canonical_json(docs)), len(docs)


def _task_config(task: Any) -> dict[str, Any]:
    cfg = task.dump_config() if hasattr(task, "dump_config") else dict(task.config)
    return json.loads(json.dumps(cfg, default=str))


def run_lmeval_task(*, model: Any, task: str, sampler: str, sampler_args: dict[str, Any] | None = None,
                    model_args: dict[str, Any] | None = None, task_args: dict[str, Any] | None = None,
                    limit: int | None = None, samples: int = 1, batch_size: int = 8, seed: int = 0,
                    output: str | Path = "runs/eval", sandbox: str | None = None, data_source: str = "packaged",
                    record_trajectory: bool = False, label: str | None = None,
                    reference: str | None = None) -> Entry:
    """Run the lm-eval task ``task`` (``lm-eval:<name>`` or ``<name>``) through a dllm-bench
    sampler and write ``<output>/entry.json`` + ``<output>/samples.jsonl``.

    Same keyword arguments as :func:`dllm_bench.evaluate.run_eval`. ``task_args``:
    ``include_path`` (a directory of lm-eval task YAMLs), ``num_fewshot``,
    ``apply_chat_template``, ``fewshot_as_multiturn``, ``system_instruction``,
    ``primary_metric`` (``<metric>,<filter>`` listed first), ``bootstrap_iters`` (lm-eval's
    stderr bootstrap for metrics without a closed form; 0 = no stderr), ``fewshot_seed`` (the
    seed that picks few-shot examples; default lm-eval's own, :data:`LMEVAL_FEWSHOT_SEED`,
    not ``seed``; recorded in the key's ``task.prompt.fewshot_seed`` when examples are used).
    ``samples`` must equal the task's own ``repeats`` (lm-eval scores the repeats of a
    document together). Re-running into the same ``output`` reuses finished generations
    (``lmeval_generations.jsonl``).

    Returns:
        the written :class:`~dllm_bench.schema.Entry` (metric names ``<metric>,<filter>``,
        values and stderrs from lm-eval's aggregation; ``n`` = documents evaluated).

    Raises:
        BadInputError: lm-eval missing, unknown task or task arg, a ``fewshot_seed`` that is
            not an integer, a sandbox or hub data source given, ``samples`` != the task's
            repeats, a loglikelihood task, a task whose dataset needs the (unreachable) hub.
        RunFailedError: lm-eval returned no results.
    """
    _require_lmeval()
    import lm_eval

    from .entry_writer import SAMPLES_FILE, write_entry
    from .results import SampleStore
    from .schema import (
        DatasetKey,
        Metric,
        ModelInfo,
        PromptKey,
        SampleRecord,
        SamplerKey,
        ScorerKey,
        TaskKey,
        split_keys,
    )

    name = task.split(":", 1)[1] if task.startswith("lm-eval:") else task
    targs = dict(task_args or {})
    bad = sorted(set(targs) - TASK_ARGS)
    if bad:
        raise BadInputError(f"unknown lm-eval task arg(s) {', '.join(bad)}; known: {', '.join(sorted(TASK_ARGS))}")
    if sandbox:
        raise BadInputError("--sandbox does not apply to lm-eval tasks (lm-eval runs its own scoring)")
    if data_source != "packaged":
        raise BadInputError("--data-source does not apply to lm-eval tasks (the task YAML names its dataset)")
    if record_trajectory:
        log.warning("--record-trajectory is ignored for lm-eval tasks")
    from . import registry

    registry.load("samplers", sampler)  # an unknown sampler fails before lm-eval indexes its tasks
    include = targs.get("include_path")
    tm = _task_manager(str(Path(include).resolve()) if include else None)
    if name not in tm.all_tasks:
        import difflib

        close = difflib.get_close_matches(name, tm.all_tasks, n=3)
        raise BadInputError(f"unknown lm-eval task {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    fewshot_seed = targs.get("fewshot_seed", LMEVAL_FEWSHOT_SEED)
    if isinstance(fewshot_seed, bool) or not isinstance(fewshot_seed, int):
        raise BadInputError(f"--task-arg fewshot_seed={fewshot_seed!r}: expected an integer")
    try:
        loaded = tm.load([name])
    except OSError as exc:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise BadInputError(f"lm-eval task {name!r} needs its dataset from the Hugging Face hub, which cannot be "
                            f"reached ({why}); run it once online to fill the datasets cache, or give a local task "
                            "YAML with --task-arg include_path=<dir>") from None
    if name not in loaded["tasks"]:
        raise BadInputError(f"lm-eval {name!r} is a group of tasks ({', '.join(sorted(loaded['tasks']))}); "
                            "run one task per entry")
    tobj = loaded["tasks"][name]
    cfg = _task_config(tobj)
    if cfg.get("output_type") != "generate_until":
        raise BadInputError(f"lm-eval task {name!r} is a {cfg.get('output_type')} task; dllm-bench runs only "
                            "generate_until tasks (no exact likelihoods for diffusion LMs)")
    repeats = int(cfg.get("repeats") or 1)
    if samples != repeats:
        raise BadInputError(f"--samples {samples} but lm-eval task {name!r} has repeats={repeats}; "
                            "lm-eval scores a document's repeats together, so they must match")

    out = Path(output)
    lm = DllmBenchLM(model=model, sampler=sampler, batch_size=batch_size, seed=seed,
                     sampler_args=dict(sampler_args or {}), model_args=dict(model_args or {}), cache_dir=out)
    out.mkdir(parents=True, exist_ok=True)  # after the model and sampler are checked
    fewshot = targs.get("num_fewshot")
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[tobj], task_manager=tm, limit=limit, log_samples=True,
        num_fewshot=fewshot, apply_chat_template=bool(targs.get("apply_chat_template", False)),
        fewshot_as_multiturn=bool(targs.get("fewshot_as_multiturn", False)),
        system_instruction=targs.get("system_instruction"),
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=fewshot_seed,
        bootstrap_iters=int(targs.get("bootstrap_iters", 100000)))  # lm-eval's default; mean uses the closed form
    if not results or name not in results.get("results", {}):
        raise RunFailedError(f"lm-eval returned no results for task {name!r}")
    res = results["results"][name]
    n_eff = int(results["n-samples"][name]["effective"])
    n_orig = int(results["n-samples"][name]["original"])
    hib = results.get("higher_is_better", {}).get(name, {})

    metrics: dict[str, Metric] = {}
    for k, v in res.items():
        if "," not in k or "_stderr," in k or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        se = res.get(k.replace(",", "_stderr,", 1))
        metrics[k] = Metric(value=float(v), stderr=float(se) if isinstance(se, (int, float)) else None, n=n_eff,
                            higher_is_better=bool(hib.get(k.split(",")[0], True)), k=repeats)
    if not metrics:
        raise RunFailedError(f"lm-eval reported no numeric metric for task {name!r}: {sorted(res)}")
    primary = targs.get("primary_metric") or next(iter(metrics))
    if primary not in metrics:
        raise BadInputError(f"primary_metric {primary!r} not among {', '.join(metrics)}")
    metrics = {primary: metrics[primary], **{k: v for k, v in metrics.items() if k != primary}}

    # per-sample records: one per (document, repeat); verdicts from lm-eval's per-document metrics
    per_doc: dict[int, dict[str, Any]] = {}
    for s in results.get("samples", {}).get(name, []):
        d = per_doc.setdefault(int(s["doc_id"]), {"sample": s, "metrics": {}, "filtered": {}})
        for m in s.get("metrics", []):
            if isinstance(s.get(m), (int, float)):
                d["metrics"][f"{m},{s['filter']}"] = float(s[m])
        d["filtered"][s["filter"]] = s["filtered_resps"][0] if s.get("filtered_resps") else None
    samples_path = out / SAMPLES_FILE
    samples_path.unlink(missing_ok=True)
    pm, pf = primary.split(",", 1) if "," in primary else (primary, "none")
    with SampleStore(samples_path) as store:
        for doc_id in sorted(per_doc):
            d = per_doc[doc_id]
            s = d["sample"]
            value = d["metrics"].get(primary, 0.0)
            resps = s["resps"][0] if s.get("resps") else []
            extracted = d["filtered"].get(pf)
            for j, text in enumerate(resps):
                g = lm.generations.get((name, doc_id, j), {})
                store.append(SampleRecord(
                    doc_id=f"{name}/{doc_id}", sample_index=j, prompt_sha256=sha256_text(s["arguments"][0][0]),
                    completion=str(text), extracted=None if extracted is None else str(extracted),
                    correct=value >= 1.0, score=value,
                    details={"metrics": d["metrics"], "target": str(s.get("target")), "doc_hash": s.get("doc_hash"),
                             "finish_reason": g.get("finish_reason")},
                    cost={"nfe": float(g.get("nfe", 0)), "generated_tokens": float(g.get("generated_tokens", 0)),
                          "wall_s": float(g.get("wall_s", 0.0))},
                    seed=g.get("seed")))

    used = list({canonical_json(c): c for c in lm.configs_used.values()}.values())
    s_cfg = dict(used[0]) if len(used) == 1 else {"base": lm.base_sampler.config.model_dump(mode="json"),
                                                  "per_generation_kwargs": used}
    docs_sha, n_docs = _doc_sha(tobj)
    n_shot = int(results.get("n-shot", {}).get(name, fewshot or 0) or 0)
    prompt_cfg = {k: cfg.get(k) for k in ("doc_to_text", "doc_to_target", "doc_to_choice", "description",
                                          "target_delimiter", "fewshot_delimiter", "fewshot_config",
                                          "generation_kwargs", "fewshot_split")}
    prompt_cfg["system_instruction"] = targs.get("system_instruction")
    scorer_cfg = {k: cfg.get(k) for k in ("metric_list", "filter_list")}
    chat = bool(targs.get("apply_chat_template", False))
    tmpl = lm.chat_template() if chat else None
    task_key = TaskKey(name=f"lm-eval:{name}", version=str(results.get("versions", {}).get(name)),
                   dataset=DatasetKey(source=f"lm-eval:{cfg.get('dataset_path') or 'custom_dataset'}",
                                      split=str(cfg.get("test_split") or cfg.get("validation_split")),
                                      sha256=docs_sha, n_original=n_orig or n_docs, n_effective=n_eff),
                   prompt=PromptKey(template_sha256=sha256_text(canonical_json(prompt_cfg)),
                                    chat_template_sha256=sha256_text(tmpl) if tmpl else None,
                                    num_fewshot=n_shot, fewshot_seed=fewshot_seed if n_shot else None),
                   scorer=ScorerKey(name="lm-eval", version=f"{lm_eval.__version__}+"
                                                            f"{sha256_text(canonical_json(scorer_cfg))[:12]}"),
                   notes=f"lm-eval task {name}; metrics named <metric>,<filter>")
    info = lm.adapter.model_info()
    mi = ModelInfo(**info)
    protocol, system = split_keys(task_key, repeats, SamplerKey(name=sampler, version=str(getattr(
        lm.sampler_cls, "version", "?")), config=s_cfg), None, mi)
    seeds = {"python": seed, "numpy": seed, "torch": seed, "sampler": seed, "fewshot": fewshot_seed}
    raw = {k: v for k, v in results.items() if k != "samples"}
    (out / "lmeval_results.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return write_entry(out, protocol=protocol, system=system, model=mi, seeds=seeds, metrics=metrics,
                       costs=list(lm.generations.values()), device=lm.adapter.device, n_expected=n_eff * repeats,
                       n_done=sum(len(d["sample"].get("resps", [[]])[0]) for d in per_doc.values()),
                       state="complete" if n_eff == len(per_doc) else "partial", label=label, reference=reference)


if __name__ == "__main__":  # python -m dllm_bench.lmeval <lm-eval args>: register via the real module
    from dllm_bench.lmeval import cli_main as _main

    _main()
