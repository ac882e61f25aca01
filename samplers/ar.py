"""``ar``: autoregressive decoding with transformers ``generate`` (AR baselines).

Greedy when ``temperature == 0``; otherwise each step samples from the filtered
distribution of :mod:`dllm_bench.samplers.base` (temperature, then top-k, then top-p)
with a per-sequence ``torch.Generator``, so a sequence's tokens depend only on its own
seed, not on its batch mates (the draw is done in a logits processor and ``generate`` runs
greedy on the result). Prompts are left-padded; generation of a sequence stops at EOS, a
stop string (``generate(stop_strings=...)``) or ``max_new_tokens``.

Cost: NFE = forward calls. ``generate`` runs one forward per decoding step for the whole
batch (the prompt prefill yields the first token); a sequence's ``nfe`` is the number of
forwards while it was unfinished, i.e. its generated tokens (EOS included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .base import Generation, SamplerBase, SamplingConfig, Timer, filter_logits, finish, make_generators, row_seeds

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter


class ARConfig(SamplingConfig):
    """``ar`` knobs: temperature, top-k, top-p, max new tokens, stop strings, attention backend."""


class _RowSampler:
    """Logits processor: draw each row's next token with its own generator; return logits that
    make greedy selection pick it (0 for the drawn token, -inf elsewhere)."""

    def __init__(self, cfg: ARConfig, generators: list[torch.Generator]):
        self.cfg, self.generators = cfg, generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(filter_logits(scores, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p), dim=-1)
        nxt = torch.stack([torch.multinomial(probs[i], 1, generator=g).squeeze(0)
                           for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, nxt[:, None], 0.0)


class AR(SamplerBase):
    """Autoregressive baseline sampler (transformers ``generate``). See the module docstring."""

    name = "ar"
    version = "1"
    Config = ARConfig
    config: ARConfig
    families = ("ar",)

    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Decode a batch of prompts (token-id lists) with an ``ar`` model adapter.

        Returns one :class:`~dllm_bench.samplers.base.Generation` per prompt (no trajectory).

        Raises:
            BadInputError: a model of another family.
        """
        from transformers import GenerationConfig, LogitsProcessorList

        self.check_model(model)
        cfg = self.config
        model.set_attn_backend(cfg.attention_backend)
        dev = model.device
        seeds = row_seeds(seed, len(prompts))
        b, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, P), model.pad_token_id, dtype=torch.long)
        att = torch.zeros((b, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.as_tensor(list(p))
            att[i, P - len(p):] = 1
        gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=False, num_beams=1,
                                   eos_token_id=list(model.eos_token_ids), pad_token_id=model.pad_token_id,
                                   stop_strings=list(cfg.stop) or None, temperature=None, top_k=None, top_p=None)
        procs = LogitsProcessorList()
        if cfg.temperature > 0:
            procs.append(_RowSampler(cfg, make_generators(seeds, dev)))
        calls = [0]
        hook = model.model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        try:
            with torch.no_grad(), Timer(dev) as timer:
                out = model.model.generate(input_ids=ids.to(dev), attention_mask=att.to(dev), generation_config=gen_cfg,
                                           logits_processor=procs, tokenizer=model.tokenizer if cfg.stop else None)
        finally:
            hook.remove()
        new = out[:, P:].tolist()
        share = timer.seconds / max(1, b)
        eos = set(model.eos_token_ids)
        gens = []
        for r in range(b):
            raw = new[r]
            n = len(raw)
            for i, t in enumerate(raw):  # generate pads finished rows after their EOS
                if t in eos:
                    n = i + 1
                    break
            if n == len(raw):
                while n > 0 and raw[n - 1] == model.pad_token_id and model.pad_token_id not in eos:
                    n -= 1
            raw = raw[:n]
            tok_ids, text, reason = finish(raw, tokenizer=model.tokenizer, eos_ids=model.eos_token_ids, stop=cfg.stop,
                                           max_new_tokens=cfg.max_new_tokens)
            gens.append(Generation(token_ids=tok_ids, text=text, finish_reason=reason, nfe=max(1, len(raw)),
                                   wall_s=share, raw_token_ids=raw, seed=seeds[r]))
        self.last_forward_calls = calls[0]
        return gens
