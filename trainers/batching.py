"""Batching: which examples an optimizer step (SFT) or RL step takes, micro-batches, and
how one RL update cuts its rollout batch into optimizer steps (:func:`update_plan`).

No state is kept between calls: every batch is a function of ``(seed, step)``, so resume is
exact.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .seeding import train_seed
from .trajectory import round_rows


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices (into ``n`` examples) of step ``step``'s batch: consecutive slices of per-epoch
    permutations seeded by ``(seed, epoch)`` (deterministic, so resume is exact). Used for
    SFT's examples and the RL trainers' prompts."""
    perms: dict[int, list[int]] = {}
    out = []
    start = step * batch_size
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(train_seed(seed, 7, epoch))
            perms[epoch] = torch.randperm(n, generator=g).tolist()
        out.append(perms[epoch][i])
    return out


def chunks(idx: list[int], n: int) -> list[list[int]]:
    """``idx`` cut into consecutive pieces of ``n`` (the last may be shorter): micro-batches."""
    return [idx[i:i + n] for i in range(0, len(idx), n)]


@dataclasses.dataclass
class MiniBatch:
    """One optimizer step's share of a rollout batch.

    Attributes:
        responses: batch indices of the responses it touches, in first-row order.
        mask: ``[len(responses), L]`` bool — the tokens trained in this step (a response's
            trainable tokens restricted to the step's round rows).
        rows: its round rows ``(response index, round id)`` in plan order.
    """

    responses: list[int]
    mask: torch.Tensor
    rows: list[tuple[int, int]]


def update_plan(rid: torch.Tensor, mask: torch.Tensor, *, minibatch: str, rows_per_update: int,
                partial_update: str, updates_per_step: int, epochs: int, shuffle: bool,
                g: torch.Generator) -> tuple[list[list[MiniBatch]], int]:
    """The sequence of optimizer steps of one RL step's update.

    ``minibatch='round_rows'`` (TraceRL as published; dLLM-RL ``train/rl_trado.py`` @10b4fd1
    lines 514-576 build the rows, 600-606 the DataLoader, 769-820 the loop): the round rows
    (:func:`.trajectory.round_rows`: response by response, rounds ascending) are, per pass,
    taken in that order (or a permutation drawn from ``g`` when ``shuffle``) and cut into
    consecutive mini-batches of ``rows_per_update`` rows, one optimizer step each; a last,
    shorter mini-batch is dropped (``partial_update='drop'``; in dLLM-RL its gradients are
    accumulated but never applied) or stepped (``'step'``). ``minibatch='responses'``: the
    responses (permuted when ``shuffle``) are cut into ``updates_per_step`` mini-batches of
    ``ceil(n / updates_per_step)`` whole responses. ``epochs`` passes either way.

    Args:
        rid: ``[b, L]`` long round ids (-1 = not trainable); mask: ``[b, L]`` bool trainable.
        g: CPU generator (the RL step's; only drawn from when ``shuffle``).

    Returns:
        ``(passes, dropped_rows)``: per pass the list of :class:`MiniBatch`, and the number of
        round rows (over all passes) that got no optimizer step.

    Raises:
        ValueError: unknown ``minibatch`` / ``partial_update``.
    """
    rows = round_rows(rid)
    passes: list[list[MiniBatch]] = []
    dropped = 0

    def make(chunk: list[tuple[int, int]]) -> MiniBatch:
        resp: list[int] = []
        rounds: dict[int, list[int]] = {}
        for i, r in chunk:
            if i not in rounds:
                resp.append(i)
                rounds[i] = []
            rounds[i].append(r)
        m = torch.stack([mask[i] & torch.isin(rid[i], torch.as_tensor(rounds[i], dtype=rid.dtype))
                         for i in resp]) if resp else mask[:0]
        return MiniBatch(resp, m, list(chunk))

    if minibatch == "round_rows":
        if partial_update not in ("drop", "step"):
            raise ValueError(f"unknown partial_update {partial_update!r}")
        for _ in range(epochs):
            order = torch.randperm(len(rows), generator=g).tolist() if shuffle else list(range(len(rows)))
            seq = [rows[k] for k in order]
            chunks = [seq[k:k + rows_per_update] for k in range(0, len(seq), rows_per_update)]
            if chunks and len(chunks[-1]) < rows_per_update and partial_update == "drop":
                dropped += len(chunks.pop())
            passes.append([make(c) for c in chunks])
    elif minibatch == "responses":
        n = rid.shape[0]
        by_resp: dict[int, list[tuple[int, int]]] = {}
        for i, r in rows:
            by_resp.setdefault(i, []).append((i, r))
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
            size = math.ceil(n / updates_per_step) if n else 1
            mbs = [make([row for i in perm[k:k + size] for row in by_resp.get(i, [])]) for k in range(0, n, size)]
            passes.append([mb for mb in mbs if mb.responses])
    else:
        raise ValueError(f"unknown minibatch {minibatch!r}")
    return passes, dropped

