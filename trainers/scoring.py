"""Per-token log-probabilities and values of a :class:`.trajectory.RolloutBatch`: every
trainable token is scored in the state the sampler was in just before the token's step
(the rows and forwards are :func:`.trajectory.forward_plan`'s)."""

from __future__ import annotations

import torch

from .trajectory import Family, ForwardInputs, RolloutBatch, forward_plan, scatter_tokens


def token_logprobs(net: torch.nn.Module, batch: RolloutBatch, family: Family, *, layout: str,
                   rows_per_forward: int, temperature: float, shift: int, device: torch.device,
                   banned: int | None = None) -> torch.Tensor:
    """``[b, L]`` log π(y_j | state before y_j's step) for every trainable token (0 elsewhere).

    π is the sampler's distribution: ``softmax(logits / temperature)`` with the ``banned``
    token (the MASK id of diffusion models, never proposed by the samplers) removed, so at
    temperature 1 with no top-k/top-p, ``exp(logp)`` is the confidence the sampler recorded.
    Differentiable when called with grad enabled. ``shift`` = 1 for models whose logits at
    column i predict token i+1 (Dream; never with the packed block layout).
    """

    def fn(inp: ForwardInputs) -> torch.Tensor:
        gi = (inp.gather_index - shift).clamp_min(0)
        tgt = batch.response_ids[inp.rows[:, None], inp.cols.clamp_min(0)]
        return net(inp.input_ids.to(device), inp.layout.to(device), inp.position_ids.to(device),
                   gi.to(device), targets=tgt.to(device), temperature=temperature, banned=banned)

    return scatter_tokens(batch, forward_plan(batch, family, layout=layout, rows_per_forward=rows_per_forward), fn)


def token_values(vnet: torch.nn.Module, batch: RolloutBatch, family: Family, *, layout: str, rows_per_forward: int,
                 device: torch.device) -> torch.Tensor:
    """``[b, L]`` values V_j read at each trainable token's trajectory step (same rows as the policy)."""

    def fn(inp: ForwardInputs) -> torch.Tensor:
        return vnet(inp.input_ids.to(device), inp.layout.to(device), inp.position_ids.to(device),
                    inp.gather_index.to(device))

    return scatter_tokens(batch, forward_plan(batch, family, layout=layout, rows_per_forward=rows_per_forward), fn)

