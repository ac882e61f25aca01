"""RL objectives shared by the trainers: group advantages, step-level GAE, the clipped
policy surrogate with a k3 KL term, and the clipped value loss.

Notation (TraceRL, arXiv 2509.06949, as coded in dLLM-RL ``train/rl_trado.py`` and
``train/train_trado_value.py`` at 10b4fd1; DiPO, arXiv 2512.22234, §3.2). Every tensor is
laid out per response token:

* ``b`` responses, ``L`` padded response length (tokens); ``[b, L]`` tensors are indexed by
  the response position ``j``;
* ``mask`` ``[b, L]`` bool: the *trainable* tokens (response tokens through EOS plus
  ``post_num`` tokens after it); everything else contributes nothing;
* ``steps`` ``[b, L]`` long: the (shrunk) denoising step at which token ``j`` was unmasked
  (its trajectory step); only read where ``mask`` is True.

Each trainable token is the target of exactly one trajectory step, so sums over
"all rounds, all targets" are sums over the trainable tokens of a response.

This module is pure tensor code (no model, no I/O) and imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Normalisation = Literal["round_row", "response", "tokens", "row_mean"]


# ------------------------------------------------------------------ advantages
def group_zscore(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages: ``(r - mean_g) / std_g`` within each prompt's group.

    The standard deviation is the population std (dLLM-RL ``rl_reward.py``, DiRL
    ``z_score_normalize``); a group whose std is ``< eps`` gets advantage 0 for every sample.

    Args:
        rewards: ``[n]`` float, one reward per response.
        groups: ``[n]`` long, the group (prompt) id of each response.
        eps: std floor (reward units).

    Returns:
        ``[n]`` float32 advantages.
    """
    rewards = rewards.to(torch.float64)
    out = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        std = r.std(unbiased=False) if r.numel() > 1 else r.new_zeros(())
        if float(std) >= eps:
            out[idx] = (r - r.mean()) / std
    return out.to(torch.float32)


GroupFilter = Literal["none", "acc_range", "nonzero_std"]


def keep_groups(rewards: Sequence[float], groups: Sequence[int], mode: GroupFilter,
                acc_range: tuple[float, float] = (0.2, 0.8), eps: float = 1e-6) -> list[bool]:
    """Which responses survive group filtering (one bool per response).

    Modes:
        ``none``: keep everything.
        ``acc_range``: keep a group iff ``lo <= mean reward <= hi`` (TraceRL math default
            ``[0.2, 0.8]``, dLLM-RL ``rl_reward.py``).
        ``nonzero_std``: keep a group iff its rewards are not all equal (DAPO dynamic
            sampling, DiPO; for binary rewards this is ``0 < mean < 1``).
    """
    if mode == "none":
        return [True] * len(rewards)
    by: dict[int, list[float]] = {}
    for r, g in zip(rewards, groups):
        by.setdefault(int(g), []).append(float(r))
    keep_g: dict[int, bool] = {}
    for g, rs in by.items():
        mean = sum(rs) / len(rs)
        if mode == "acc_range":
            keep_g[g] = acc_range[0] <= mean <= acc_range[1]
        elif mode == "nonzero_std":
            keep_g[g] = (max(rs) - min(rs)) > eps
        else:
            raise ValueError(f"unknown group filter {mode!r}")
    return [keep_g[int(g)] for g in groups]


# ------------------------------------------------------------------------- GAE
def step_index(steps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each token's trajectory step among its response's distinct trainable steps.

    Args:
        steps: ``[b, L]`` long step ids.
        mask: ``[b, L]`` bool trainable tokens.

    Returns:
        ``(idx, n_steps)``: ``idx`` ``[b, L]`` long in ``[0, S_b)`` (0 where not trainable),
        ``n_steps`` ``[b]`` long, S_b = the number of distinct trainable steps of response b.
    """
    b, L = steps.shape
    idx = torch.zeros_like(steps)
    n = torch.zeros(b, dtype=torch.long, device=steps.device)
    for i in range(b):
        s = steps[i][mask[i]]
        if s.numel() == 0:
            continue
        uniq, inv = torch.unique(s, sorted=True, return_inverse=True)
        idx[i][mask[i]] = inv
        n[i] = uniq.numel()
    return idx, n


@dataclass
class GAEResult:
    """Token-level returns and advantages from step-level GAE.

    Attributes:
        returns: ``[b, L]`` R_j (value targets).
        advantages: ``[b, L]`` A_j (policy advantages).
        step_values: ``[b, S]`` V*_i (mean value of the tokens decoded at step i).
        n_steps: ``[b]`` S_b.
    """

    returns: torch.Tensor
    advantages: torch.Tensor
    step_values: torch.Tensor
    n_steps: torch.Tensor


def step_gae(values: torch.Tensor, reward: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
             gamma: float = 1.0, lam: float = 1.0) -> GAEResult:
    """Step-level GAE over trajectory steps (dLLM-RL ``train/train_trado_value.py`` at 10b4fd1).

    Order the distinct trainable steps of response b as t_1 < ... < t_S. With V*_i the mean of
    ``values`` over the tokens decoded at t_i, and the sequence reward R paid at the last
    step (r_j = R iff step(j) = t_S, r*_i = mean r_j at t_i)::

        R*_i = r*_i + γ R*_{i+1}                 δ*_i = r*_i − V*_i + γ V*_{i+1}
        A*_i = δ*_i + γλ A*_{i+1}                (R*_{S+1} = V*_{S+1} = A*_{S+1} = 0)
        token j at step i:  R_j = r_j + γ R*_{i+1}
                            A_j = (r_j − V_j) + γ V*_{i+1} + γλ A*_{i+1}

    With γ = λ = 1: R_j = R and A_j = R − V_j.

    Args:
        values: ``[b, L]`` float V_j (read at the token's trajectory step).
        reward: ``[b]`` float sequence reward R (z-scored in TraceRL).
        steps: ``[b, L]`` long step ids; mask: ``[b, L]`` bool trainable tokens.
        gamma, lam: discount γ and GAE λ (dimensionless, per trajectory step).

    Returns:
        :class:`GAEResult`; entries where ``mask`` is False are 0.
    """
    values = values.detach().to(torch.float32)
    b, L = values.shape
    idx, n = step_index(steps, mask)
    S = int(n.max()) if b else 0
    S = max(S, 1)
    m = mask.to(torch.float32)
    cnt = torch.zeros(b, S + 1, device=values.device).scatter_add_(1, idx, m)
    vsum = torch.zeros(b, S + 1, device=values.device).scatter_add_(1, idx, values * m)
    vstar = torch.where(cnt > 0, vsum / cnt.clamp_min(1.0), torch.zeros_like(cnt))
    # per-token reward: R on the tokens of the last step
    last = (n - 1).clamp_min(0)
    r_tok = torch.where(mask & (idx == last[:, None]), reward.to(torch.float32)[:, None].expand(b, L),
                        torch.zeros_like(values))
    rsum = torch.zeros(b, S + 1, device=values.device).scatter_add_(1, idx, r_tok * m)
    rstar = torch.where(cnt > 0, rsum / cnt.clamp_min(1.0), torch.zeros_like(cnt))
    Rstar = torch.zeros(b, S + 2, device=values.device)
    Astar = torch.zeros(b, S + 2, device=values.device)
    Vnext = torch.zeros(b, S + 2, device=values.device)
    Vnext[:, :S] = vstar[:, 1:S + 1]  # V*_{i+1}; column S stays 0
    # zero the "next value" past each response's last step
    col = torch.arange(S + 2, device=values.device)[None, :]
    Vnext = torch.where(col < (n[:, None] - 1), Vnext, torch.zeros_like(Vnext))
    for i in range(S - 1, -1, -1):
        live = (i < n).to(torch.float32)
        Rstar[:, i] = live * (rstar[:, i] + gamma * Rstar[:, i + 1])
        delta = rstar[:, i] - vstar[:, i] + gamma * Vnext[:, i]
        Astar[:, i] = live * (delta + gamma * lam * Astar[:, i + 1])
    nxt = idx + 1
    R_next = torch.gather(Rstar, 1, nxt)
    A_next = torch.gather(Astar, 1, nxt)
    V_next = torch.gather(Vnext, 1, idx)
    returns = (r_tok + gamma * R_next) * m
    adv = ((r_tok - values) + gamma * V_next + gamma * lam * A_next) * m
    return GAEResult(returns, adv, vstar[:, :S], n)


# ------------------------------------------------------------------ policy loss
@dataclass
class PolicyLossStats:
    """Diagnostics of one surrogate evaluation (plain floats; token means over ``mask``)."""

    clip_frac: float
    ratio_mean: float
    ratio_max_dev: float
    kl: float
    pg: float
    n_tokens: int


def clipped_policy_terms(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                         mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.2,
                         log_ratio_clamp: float = 10.0, anchor_logp: torch.Tensor | None = None,
                         kl_beta: float = 0.0, weights: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, PolicyLossStats]:
    """Per-token PPO clipped surrogate + k3 KL, summed over ``mask`` (weighted by ``weights``).

    For each trainable token (dLLM-RL ``train/rl_trado.py`` at 10b4fd1)::

        d_j = clamp(log π_θ(y_j) − log π_old(y_j), −c, c)     ρ_j = exp(d_j)
        ℓ_j = − min(ρ_j A_j, clip(ρ_j, 1 − ε_low, 1 + ε_high) A_j)
              + β (exp(−k_j) − 1 + k_j),   k_j = log π_θ(y_j) − log π_anchor(y_j)

    where the anchor is π_old (TraceRL's trust-region "KL") or a frozen reference (DiRL).

    Args:
        logp: ``[b, L]`` log-probs under the current policy (with grad).
        old_logp: ``[b, L]`` log-probs under the rollout policy (no grad); pass
            ``logp.detach()`` for strictly on-policy updates (ratio exactly 1).
        adv: ``[b, L]`` per-token advantages (a sequence advantage broadcast over L, or GAE).
        mask: ``[b, L]`` bool trainable tokens.
        clip_low, clip_high: ε_low, ε_high (dimensionless).
        log_ratio_clamp: c (nats).
        anchor_logp: ``[b, L]`` anchor log-probs for the KL, or None for no KL term.
        kl_beta: β (dimensionless).
        weights: ``[b, L]`` per-token weights w_j (:func:`token_weights`), or None for w = 1.

    Returns:
        ``(loss, stats)``: the scalar Σ_j w_j ℓ_j over ``mask`` (with ``weights=None`` the plain
        sum, which the caller divides by its normaliser) and unweighted token-mean diagnostics.
    """
    m = mask.to(logp.dtype)
    wm = m if weights is None else m * weights.to(device=logp.device, dtype=logp.dtype)
    d = torch.clamp(logp - old_logp.detach(), -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(d)
    adv = adv.detach().to(logp.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    pg = -torch.minimum(unclipped, clipped)
    loss = (pg * wm).sum()
    kl_val = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if anchor_logp is not None:
        k = torch.clamp(logp - anchor_logp.detach(), -log_ratio_clamp, log_ratio_clamp)
        kl_tok = torch.exp(-k) - 1.0 + k
        kl_val = (kl_tok * m).sum()
        if kl_beta:
            loss = loss + kl_beta * (kl_tok * wm).sum()
    with torch.no_grad():
        n_tok = int(mask.sum())
        denom = max(n_tok, 1)
        is_clipped = ((ratio > 1.0 + clip_high) & (adv > 0)) | ((ratio < 1.0 - clip_low) & (adv < 0))
        stats = PolicyLossStats(
            clip_frac=float((is_clipped & mask).sum()) / denom,
            ratio_mean=float((ratio * m).sum()) / denom,
            ratio_max_dev=float(((ratio - 1.0).abs() * m).max()) if n_tok else 0.0,
            kl=float(kl_val) / denom,
            pg=float((pg * m).sum()) / denom,
            n_tokens=n_tok,
        )
    return loss, stats


def token_weights(mask: torch.Tensor, rounds: torch.Tensor | None, mode: Normalisation, gen_len: int,
                  rows_per_response: int | None = None) -> torch.Tensor:
    """Per-token weights ``w`` of one optimizer step: its loss is ``Σ_j w_j ℓ_j`` over ``mask``.

    ``mask`` holds the tokens of the step's mini-batch (``b`` responses, some possibly with
    only a few of their rounds); ``rounds`` their round rows (:func:`.trajectory.round_ids`).
    With ``R`` = number of round rows (distinct (response, round) pairs in ``mask``), ``N`` =
    responses with a token in ``mask``, ``L1`` = ``gen_len``:

    * ``round_row`` — ``w = 1/(R·L1)``: each row's summed loss over L1, averaged over the
      rows (TraceRL, dLLM-RL ``train/rl_trado.py`` @10b4fd1 lines 741-744 and 754-755: sum
      over the row / L1, mean over the batch_size_lm rows of a forward; line 807: / the
      gradient_accumulation_steps rows of an optimizer step).
    * ``response`` — ``w = 1/(N·L1)``: per response instead of per row (this project's
      former default; Dr.GRPO-like constant length; equals ``round_row`` scaled by R/N).
    * ``tokens`` — ``w = 1/Σ mask``: one token mean over the step (``1/Σ_i |τ_i|``).
    * ``row_mean`` — ``w_j = 1/(n_row(j)·D)``: a token mean inside each round row, then the
      mean over ``D`` rows, ``D = N·rows_per_response`` when given (DiRL counts every response
      as ``block_size/shrink`` rows, padding short ones with empty rows: OpenMOSS/DiRL
      ``train/grpo.py`` @ec4bfb3 lines 163-168, 773-792 and 1437, ``models/sdar/modeling_sdar.py``
      lines 1260-1264 with ``loss_mean`` True), else ``D = R``.

    Args:
        mask: ``[b, L]`` bool.
        rounds: ``[b, L]`` long round ids (read where ``mask``); None = one row per response.
        mode: one of the four above.
        gen_len: L1 in tokens (``round_row`` / ``response``).
        rows_per_response: rows each response counts for under ``row_mean`` (None = actual).

    Returns:
        ``[b, L]`` float64 weights (0 outside ``mask``).

    Raises:
        ValueError: unknown ``mode``.
    """
    m = mask.to(torch.bool)
    w = torch.zeros(m.shape, dtype=torch.float64, device=m.device)
    if not bool(m.any()):
        if mode not in ("round_row", "response", "tokens", "row_mean"):
            raise ValueError(f"unknown normalisation {mode!r}")
        return w
    if mode != "row_mean":
        w[m] = 1.0 / loss_normaliser(m, rounds, mode, gen_len)
        return w
    key, n_rows = _row_keys(m, rounds)
    _, inv, cnt = torch.unique(key[m], return_inverse=True, return_counts=True)
    d = int(m.any(1).sum()) * rows_per_response if rows_per_response else n_rows
    w[m] = 1.0 / (cnt[inv].to(torch.float64) * d)
    return w


def _row_keys(mask: torch.Tensor, rounds: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """``[b, L]`` long key of each token's (response, round) row, and the number of rows in ``mask``."""
    b, L = mask.shape
    rid = rounds.to(mask.device) if rounds is not None else torch.zeros((b, L), dtype=torch.long,
                                                                         device=mask.device)
    rid = torch.where(mask, rid, torch.zeros_like(rid)).clamp_min(0)
    key = torch.arange(b, device=mask.device)[:, None] * (int(rid.max()) + 1) + rid
    return key, int(torch.unique(key[mask]).numel())


def loss_normaliser(mask: torch.Tensor, rounds: torch.Tensor | None, mode: Normalisation, gen_len: int) -> float:
    """The constant a summed loss over ``mask`` is divided by for the uniform normalisers of
    :func:`token_weights`: ``round_row`` R·L1, ``response`` N·L1, ``tokens`` Σ mask (each at
    least 1). The trainers divide by it (rather than multiply by :func:`token_weights`) so the
    arithmetic stays that of a plain sum over the step.

    Raises:
        ValueError: ``row_mean`` (not uniform) or an unknown ``mode``.
    """
    m = mask.to(torch.bool)
    if mode == "round_row":
        return float(max(_row_keys(m, rounds)[1], 1) * max(gen_len, 1))
    if mode == "response":
        return float(max(int(m.any(1).sum()), 1) * max(gen_len, 1))
    if mode == "tokens":
        return float(max(int(m.sum()), 1))
    raise ValueError(f"normalisation {mode!r} has no single constant (use token_weights)")


# ------------------------------------------------------------------- value loss
def clipped_value_terms(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                        mask: torch.Tensor, clip: float = 0.2, weights: torch.Tensor | None = None) -> torch.Tensor:
    """PPO clipped value loss summed over ``mask`` (dLLM-RL ``train/train_trado_value.py`` at
    10b4fd1)::

        0.5 · max((V_j − R_j)², (V_old,j + clip(V_j − V_old,j, −ε, ε) − R_j)²)

    Args:
        values: ``[b, L]`` current values (with grad); old_values: ``[b, L]`` values before
            this update (no grad); returns: ``[b, L]`` R_j; mask: ``[b, L]`` bool.
        clip: ε in value units (reward units); ``clip <= 0`` disables clipping.
        weights: ``[b, L]`` per-token weights (:func:`token_weights`), or None for w = 1.

    Returns:
        Scalar Σ_j w_j (...) over ``mask`` (with ``weights=None`` the plain sum, which the
        caller divides by its normaliser).
    """
    returns = returns.detach().to(values.dtype)
    err = (values - returns) ** 2
    if clip > 0:
        v_clip = old_values.detach() + torch.clamp(values - old_values.detach(), -clip, clip)
        err = torch.maximum(err, (v_clip - returns) ** 2)
    m = mask.to(values.dtype)
    if weights is not None:
        m = m * weights.to(device=values.device, dtype=values.dtype)
    return 0.5 * (err * m).sum()
