"""``ar-vllm``: autoregressive decoding with vLLM (an optional extra: ``pip install 'dllm-bench[vllm]'``).

vLLM is imported lazily, only when this sampler generates. Sampling knobs match ``ar``
(temperature, top-k, top-p, max new tokens, stop strings; a per-sequence seed). vLLM reads
the checkpoint from disk: a local directory or hub id is passed through; built-in models
are saved to a temporary directory first; a GGUF file is passed with its tokenizer.

Cost: vLLM does not expose forward counts; a sequence's ``nfe`` is its generated tokens
(one forward per token, the prefill producing the first), as for ``ar``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dllm_bench.errors import BadInputError

from .base import Generation, SamplerBase, SamplingConfig, Timer, finish, row_seeds

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class ARVLLMConfig(SamplingConfig):
    """``ar-vllm`` knobs (as ``ar``) plus vLLM engine settings."""

    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True


def import_vllm() -> Any:
    """Import vLLM or raise a one-line BadInputError saying how to install it."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise BadInputError(f"sampler 'ar-vllm' needs vLLM ({exc.__class__.__name__}: {exc}); "
                            "install it with: pip install 'dllm-bench[vllm]' (a CUDA machine is required)") from None
    return vllm


class ARvLLM(SamplerBase):
    """vLLM-backed AR baseline sampler. See the module docstring."""

    name = "ar-vllm"
    version = "1"
    Config = ARVLLMConfig
    config: ARVLLMConfig
    families = ("ar",)

    def __init__(self, config=None):
        super().__init__(config)
        self._engines: dict[str, Any] = {}

    def _engine(self, model: ModelAdapter) -> Any:
        """The ``vllm.LLM`` engine for ``model`` (built once per model spec)."""
        vllm = import_vllm()
        key = model.spec
        if key not in self._engines:
            src = Path(model.spec)
            kw: dict[str, Any] = {}
            if model.gguf_file:
                path = model.gguf_file
                kw["tokenizer"] = model.extra.get("source_dir") or str(Path(path).parent)
            elif src.is_dir() or "/" in model.spec:
                path = model.spec
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="dllm-bench-vllm-")
                path = str(model.save(self._tmp.name))
            self._engines[key] = vllm.LLM(model=path, dtype=str(model.dtype).replace("torch.", ""),
                                          gpu_memory_utilization=self.config.gpu_memory_utilization,
                                          enforce_eager=self.config.enforce_eager, **kw)
        return self._engines[key]

    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Decode token-id prompts with vLLM; one Generation per prompt.

        Raises:
            BadInputError: vLLM is not installed, or a model of another family.
        """
        self.check_model(model)
        vllm = import_vllm()
        cfg = self.config
        llm = self._engine(model)
        seeds = row_seeds(seed, len(prompts))
        params = [vllm.SamplingParams(n=1, temperature=cfg.temperature, top_k=cfg.top_k or -1, top_p=cfg.top_p,
                                      max_tokens=cfg.max_new_tokens, stop=list(cfg.stop) or None,
                                      seed=s % (2 ** 31)) for s in seeds]
        with Timer(model.device) as timer:
            outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        share = timer.seconds / max(1, len(prompts))
        gens = []
        for o, s in zip(outs, seeds):
            raw = list(o.outputs[0].token_ids)
            ids, text, reason = finish(raw, tokenizer=model.tokenizer, eos_ids=model.eos_token_ids, stop=cfg.stop,
                                       max_new_tokens=cfg.max_new_tokens)
            gens.append(Generation(token_ids=ids, text=text, finish_reason=reason, nfe=max(1, len(raw)), wall_s=share,
                                   raw_token_ids=raw, seed=s))
        return gens
