"""Trajectories → training inputs: shrink, rounds, the packed single-forward layout, and the
naive per-step reference.

A rollout records, per generated token, the global denoising step at which it was unmasked
(its *step map*; JetEngine's ``first_unmask_steps`` in dLLM-RL
``sample/jetengine_ext/engine/sequence.py`` at 10b4fd1). Training re-creates the sampler's state just
before each step and scores the tokens committed at that step (TraceRL, arXiv 2509.06949;
dLLM-RL ``train/rl_trado.py`` at 10b4fd1). Token ids come straight from the rollout —
nothing is re-tokenised (dLLM-RL's ``train/rl_trado.py`` re-tokenises the decoded text with
``UniversalPrompting`` and pads or truncates the step map to it, so the two can drift).

**Block models, one packed forward per response** (this module's extension of the staircase
layout, :meth:`dllm_bench.models.layout.AttentionLayout.staircase`, from one masked copy to
many; :class:`~dllm_bench.models.layout.AttentionLayout` with per-row ``segments``). For response block
``k`` with (shrunk) distinct trainable steps ``m_1 < m_2 < ...``, the state just before step
``m`` is the block with every token of step ``>= m`` replaced by MASK. Each such
``(block k, step m)`` state is one *segment* of B tokens, and all segments of a response go
into one row::

    [ prompt (P) ; clean response x0 (L) ; seg_1 (B) ; seg_2 (B) ; ... ; seg_n (B) ]

* prompt and clean columns: block-causal (the blocks of :mod:`dllm_bench.blocks`);
* a segment of block ``k`` sees the real prompt, clean response blocks ``< k`` and itself
  (bidirectionally) — exactly what the sampler's query block saw at that step with an
  exact KV cache; segments never see each other;
* segments reuse the position ids of the response block they copy.

This equals TraceRL's rows (one ``[prompt ; clean ; masked copy]`` row per round, dLLM-RL
``train/rl_trado.py`` at 10b4fd1)
concatenated — a masked copy is the union of one segment per block — but computes the
prompt and the clean response once, and drops blocks that have no step in a round. With
``R`` rounds the row has ``P + L + (Σ_k |D_k|)·B <= P + L + R·L`` columns.

**Full-attention models**: one forward per (shrunk) global step ``t`` of a response, over
``[prompt ; response with every token of step >= t masked]`` with full attention; the
shrinkage ``s`` merges ``s`` consecutive steps (dLLM-RL ``train/rl_llada.py`` at 10b4fd1).

**AR models**: the step map is the token order; one causal forward scores all tokens.

Everything returns per-response-token tensors ``[b, L]`` (see :mod:`.objectives`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from dllm_bench.blocks import left_pad_prompts, response_position_ids, round_up
from dllm_bench.models.layout import PAD_SEGMENT, AttentionLayout, left_pads

Family = Literal["block", "full", "ar"]
INF_STEP = 1 << 40
"""Step id given to padding (never a target, masked in every state)."""
CONTEXT_STEP = 0
"""Step id of prompt tokens moved into the first response block under ``absolute`` block
alignment (:func:`collate`): visible in every state, never a target, not a trajectory step."""


@dataclass
class Rollout:
    """One rollout: the token ids the sampler produced and when each was unmasked (from its
    decode :class:`dllm_bench.samplers.base.Trajectory`), with reward and group.

    Attributes:
        prompt_ids: prompt token ids (unpadded).
        response_ids: generated token ids in order (block models: whole blocks, including
            tokens after EOS inside the last block).
        step_map: same length as ``response_ids``; the global denoising step (>= 1) at which
            each token was unmasked (AR: 1, 2, 3, ...).
        n_trainable: tokens ``[0, n_trainable)`` are trained (through the first EOS plus
            ``post_num`` tokens after it).
        reward: scalar reward of the response.
        group: id of the prompt group (for group-normalised advantages).
        doc_id: the task document id (logging only).
        text: decoded completion (logging only).
        train_mask: optional per-token bool list; when given, only tokens that are True (and
            inside ``n_trainable``) are trained (random-masking RL).
        extra: anything else (finish reason, NFE).
        block_alignment: the block alignment the rollout was decoded under
            (:mod:`dllm_bench.blocks`); :func:`collate` refuses a trajectory of another one.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    step_map: list[int]
    n_trainable: int
    reward: float = 0.0
    group: int = 0
    doc_id: str = ""
    text: str = ""
    train_mask: list[bool] | None = None
    extra: dict = field(default_factory=dict)
    block_alignment: str = "response"


def trainable_length(response_ids: Sequence[int], eos_ids: Sequence[int], post_num: int = 0) -> int:
    """Number of leading response tokens to train: through the first EOS plus ``post_num``.

    With no EOS the whole response is trained (a truncated response).
    """
    eos = set(int(e) for e in eos_ids)
    for i, t in enumerate(response_ids):
        if int(t) in eos:
            return min(len(response_ids), i + 1 + max(post_num, 0))
    return len(response_ids)


def shrink_steps(steps: torch.Tensor, group_len: int, shrink: int) -> torch.Tensor:
    """Merge ``shrink`` consecutive distinct step values inside each group of ``group_len``
    tokens; every value becomes the largest value of its merge group (dLLM-RL
    ``collapse_k_unique`` in ``train/rl_trado.py`` at 10b4fd1). ``shrink == 1`` is the
    identity; ``INF_STEP`` is kept.

    Args:
        steps: ``[b, L]`` long (L a multiple of ``group_len``).
        group_len: B for block models (per-block shrink), L for full attention (global).
        shrink: s >= 1.

    Returns:
        ``[b, L]`` long.
    """
    if shrink <= 1:
        return steps.clone()
    out = steps.clone()
    b, L = steps.shape
    for i in range(b):
        for start in range(0, L, group_len):
            seg = steps[i, start:start + group_len]
            real = seg[(seg < INF_STEP) & (seg > CONTEXT_STEP)]
            if real.numel() == 0:
                continue
            uniq = torch.unique(real, sorted=True)
            mapped = uniq.clone()
            for g0 in range(0, uniq.numel(), shrink):
                mapped[g0:g0 + shrink] = uniq[min(g0 + shrink, uniq.numel()) - 1]
            lut = dict(zip(uniq.tolist(), mapped.tolist()))
            out[i, start:start + group_len] = torch.as_tensor(
                [lut.get(int(v), int(v)) for v in seg.tolist()], dtype=steps.dtype)
    return out


@dataclass
class RolloutBatch:
    """Tensorised trajectories of one family (prompts left-padded by the block rule).

    Attributes:
        prompt_ids: ``[b, P]`` long (P a multiple of B for block models).
        prompt_valid: ``[b, P]`` bool.
        prompt_pos: ``[b, P]`` long position ids.
        prompt_lens: real prompt lengths.
        response_ids: ``[b, L]`` long (pads beyond each response hold ``pad_id``).
        steps: ``[b, L]`` long trajectory steps after shrink (``INF_STEP`` on padding).
        mask: ``[b, L]`` bool trainable tokens.
        block_size: B (block models; L is a multiple of it).
        mask_id: the MASK token id; pad_id: the padding token id.
    """

    prompt_ids: torch.Tensor
    prompt_valid: torch.Tensor
    prompt_pos: torch.Tensor
    prompt_lens: list[int]
    response_ids: torch.Tensor
    steps: torch.Tensor
    mask: torch.Tensor
    block_size: int
    mask_id: int
    pad_id: int

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def gen_len(self) -> int:
        return self.response_ids.shape[1]

    def select(self, idx: Sequence[int]) -> RolloutBatch:
        """Rows ``idx`` (prompt/response padding is kept; trimming is not needed)."""
        ix = torch.as_tensor(list(idx), dtype=torch.long)
        return RolloutBatch(self.prompt_ids[ix], self.prompt_valid[ix], self.prompt_pos[ix],
                            [self.prompt_lens[i] for i in idx], self.response_ids[ix],
                            self.steps[ix], self.mask[ix], self.block_size, self.mask_id,
                            self.pad_id)

    def to(self, device: torch.device | str) -> RolloutBatch:
        return RolloutBatch(self.prompt_ids.to(device), self.prompt_valid.to(device),
                            self.prompt_pos.to(device), self.prompt_lens,
                            self.response_ids.to(device), self.steps.to(device),
                            self.mask.to(device), self.block_size, self.mask_id, self.pad_id)


def collate(trajs: Sequence[Rollout], *, family: Family, block_size: int, shrink: int,
            mask_id: int, pad_id: int, alignment: str = "response") -> RolloutBatch:
    """Pad trajectories into a :class:`RolloutBatch` and apply the shrinkage.

    Block models shrink per block (dLLM-RL ``train/rl_trado.py`` at 10b4fd1), full-attention
    models over the whole response (``train/rl_llada.py``),
    AR models never (``shrink`` is ignored).

    Block alignment (:mod:`dllm_bench.blocks`, one definition for samplers and trainers):
    ``response`` pads prompts to a multiple of B so the response starts a block. ``absolute``
    counts blocks from sequence position 0: the prompt's last ``n mod B`` tokens share the
    first response block, so they are moved to the head of the response with
    ``CONTEXT_STEP`` (visible in every training state, never a target, not a step) — the
    packed layouts then see exactly the blocks the sampler decoded.

    Raises:
        ValueError: a step map whose length differs from its response, an unknown alignment,
            or a trajectory decoded under another block alignment than ``alignment``.
    """
    from dllm_bench.blocks import ALIGNMENTS

    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown block alignment {alignment!r}; expected one of {ALIGNMENTS}")
    B = block_size if family == "block" else 1
    for t in trajs:
        if len(t.step_map) != len(t.response_ids):
            raise ValueError(f"step map length {len(t.step_map)} != response length {len(t.response_ids)}")
        if family == "block" and t.block_alignment != alignment:
            raise ValueError(f"a trajectory decoded with {t.block_alignment!r} block alignment cannot be trained "
                             f"with {alignment!r} alignment (its blocks would differ from the decoded ones)")
    if family == "block" and alignment == "absolute":
        trajs = [_tail_into_response(t, B) for t in trajs]
    L = max(round_up(max(len(t.response_ids), 1), B) for t in trajs)
    pb = left_pad_prompts([t.prompt_ids for t in trajs], B, pad_id, allow_empty=True)
    b = len(trajs)
    resp = torch.full((b, L), pad_id, dtype=torch.long)
    steps = torch.full((b, L), INF_STEP, dtype=torch.long)
    mask = torch.zeros((b, L), dtype=torch.bool)
    for i, t in enumerate(trajs):
        n = len(t.response_ids)
        resp[i, :n] = torch.as_tensor(t.response_ids, dtype=torch.long)
        steps[i, :n] = torch.as_tensor(t.step_map, dtype=torch.long)
        mask[i, :min(t.n_trainable, n)] = True
        if t.train_mask is not None:
            mask[i, :n] &= torch.as_tensor(t.train_mask[:n], dtype=torch.bool)
    if family == "block":
        steps = shrink_steps(steps, B, shrink)
    elif family == "full":
        steps = shrink_steps(steps, L, shrink)
    return RolloutBatch(pb.input_ids, pb.valid, pb.position_ids, pb.prompt_lens, resp, steps,
                        mask, block_size, mask_id, pad_id)


def _tail_into_response(t: Rollout, B: int) -> Rollout:
    """``absolute`` alignment: the prompt's ``n mod B`` tail becomes untrained context at the
    head of the response (see :func:`collate`)."""
    r = len(t.prompt_ids) % B
    if r == 0:
        return t
    n = len(t.response_ids)
    keep = list(t.train_mask[:n]) if t.train_mask is not None else [True] * n
    return Rollout(prompt_ids=t.prompt_ids[:-r], response_ids=t.prompt_ids[-r:] + list(t.response_ids),
                   step_map=[CONTEXT_STEP] * r + list(t.step_map), n_trainable=r + t.n_trainable,
                   reward=t.reward, group=t.group, doc_id=t.doc_id, text=t.text,
                   train_mask=[False] * r + keep, extra=t.extra, block_alignment=t.block_alignment)


# ------------------------------------------------------------------- round rows
def round_ids(batch: RolloutBatch, family: Family) -> torch.Tensor:
    """The TraceRL *round row* of every trainable token (the unit of TraceRL's mini-batches).

    Rule (dLLM-RL ``train/rl_trado.py`` ``one_round_vectorized`` / ``collect_training_data``,
    commit 10b4fd1, lines 366-424 and 514-576, restated): the response is cut into groups
    (``block_size`` tokens for block models, the whole response for full attention, one
    token for AR). Round r of a response takes, in every group, the tokens of the group's
    r-th smallest distinct (shrunk) step. The steps counted are those of *every* real
    response token — trainable or not (tokens after EOS keep their step) — so a group whose
    r-th step decoded only untrainable tokens contributes nothing to round r. One round is
    one training row ``[prompt ; clean ; masked copy]`` in dLLM-RL; rounds without any
    trainable token are dropped there and have no id here.

    Args:
        batch: a collated :class:`RolloutBatch` (steps already shrunk).
        family: ``block`` / ``full`` / ``ar``.

    Returns:
        ``[b, L]`` long: the round r >= 0 of each trainable token, -1 where ``batch.mask`` is
        False. Round ids of a response need not be contiguous (an untrainable round is skipped).

    Raises:
        ValueError: unknown family.
    """
    if family == "block":
        g = batch.block_size
    elif family == "full":
        g = batch.gen_len
    elif family == "ar":
        g = 1
    else:
        raise ValueError(f"unknown model family {family!r}")
    b, L = batch.steps.shape
    out = torch.full((b, L), -1, dtype=torch.long)
    if b == 0 or L == 0:
        return out
    steps = batch.steps.cpu()
    mask = batch.mask.cpu()
    for i in range(b):
        st = steps[i].view(L // g, g)                         # [groups, g]
        real = (st < INF_STEP) & (st > CONTEXT_STEP)
        srt, _ = torch.sort(torch.where(real, st, torch.full_like(st, INF_STEP)), dim=1)
        first = torch.ones_like(srt, dtype=torch.bool)
        first[:, 1:] = srt[:, 1:] != srt[:, :-1]
        first &= srt < INF_STEP                                # distinct real steps of each group
        # rank of a token's step among its group's distinct real steps
        rank = ((srt[:, None, :] < st[:, :, None]) & first[:, None, :]).sum(-1)
        out[i] = torch.where(mask[i], rank.flatten(), torch.full_like(out[i], -1))
    return out


def round_rows(rid: torch.Tensor) -> list[tuple[int, int]]:
    """The round rows of a batch in dLLM-RL's order: response by response, rounds ascending.

    Args:
        rid: ``[b, L]`` long round ids from :func:`round_ids` (-1 = not trainable).

    Returns:
        ``[(response index, round id), ...]`` — one entry per row with >= 1 trainable token.
    """
    rows = []
    for i in range(rid.shape[0]):
        r = rid[i][rid[i] >= 0]
        rows += [(i, int(x)) for x in torch.unique(r, sorted=True).tolist()]
    return rows


# ------------------------------------------------------------------- model inputs
@dataclass
class ForwardInputs:
    """One model forward and where to read the scored tokens from it.

    Attributes:
        input_ids: ``[n, T]`` long.
        layout: who attends to whom (:class:`~dllm_bench.models.layout.AttentionLayout`, ``n`` rows).
        position_ids: ``[n, T]`` long.
        gather_index: ``[n, K]`` long — packed column whose logits predict each scored token.
        rows: ``[n]`` long — the batch row (response) each forward row belongs to.
        cols: ``[n, K]`` long — the response position j of each scored token (``-1`` = none).
    """

    input_ids: torch.Tensor
    layout: AttentionLayout
    position_ids: torch.Tensor
    gather_index: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


def _segments(steps: torch.Tensor, mask: torch.Tensor, B: int) -> list[list[tuple[int, int]]]:
    """Per row, the ``(block k, step m)`` states that have at least one trainable target,
    ordered by block then step."""
    out: list[list[tuple[int, int]]] = []
    blk = torch.arange(steps.shape[1]) // B
    for i in range(steps.shape[0]):
        m = mask[i]
        if not bool(m.any()):
            out.append([])
            continue
        pairs = torch.unique(torch.stack([blk[m], steps[i][m]], 1), dim=0)  # sorted lexicographically
        out.append([(int(k), int(t)) for k, t in pairs.tolist()])
    return out


def packed_block_inputs(batch: RolloutBatch) -> ForwardInputs:
    """The packed single-forward layout for block models (module docstring).

    Returns:
        :class:`ForwardInputs` with one row per response: ``T = P + L + n_seg·B`` columns
        (``n_seg`` = the most segments of any response; shorter rows are padded with
        segments nobody attends to), ``gather_index`` ``[b, L]`` giving, for every
        trainable token j, its column inside the segment where it is a target.
    """
    B, P, L = batch.block_size, batch.prompt_ids.shape[1], batch.gen_len
    b = batch.size
    dev = batch.response_ids.device
    segs = _segments(batch.steps.cpu(), batch.mask.cpu(), B)
    n_seg = max(1, max(len(s) for s in segs))
    T = P + L + n_seg * B
    resp_pos = response_position_ids(batch.prompt_lens, L, device=dev)
    ids = torch.full((b, T), batch.pad_id, dtype=torch.long, device=dev)
    pos = torch.zeros((b, T), dtype=torch.long, device=dev)
    ids[:, :P], ids[:, P:P + L] = batch.prompt_ids, batch.response_ids
    pos[:, :P], pos[:, P:P + L] = batch.prompt_pos, resp_pos
    # the clean block (counted from column 0) each segment copies; PAD_SEGMENT for padding segments
    seg_blocks = torch.full((b, n_seg), PAD_SEGMENT, dtype=torch.long, device=dev)
    gather = torch.zeros((b, L), dtype=torch.long, device=dev)
    col_of = torch.full((b, L), -1, dtype=torch.long, device=dev)
    ar_B = torch.arange(B, device=dev)
    for i, row in enumerate(segs):
        if not row:
            continue
        n = len(row)
        ks = torch.as_tensor([k for k, _ in row], device=dev)
        ms = torch.as_tensor([m for _, m in row], device=dev)
        src = ks[:, None] * B + ar_B[None, :]                      # [n, B] response columns
        st = batch.steps[i][src]
        state = torch.where(st >= ms[:, None], torch.full_like(st, batch.mask_id), batch.response_ids[i][src])
        c0 = P + L
        ids[i, c0:c0 + n * B] = state.flatten()
        pos[i, c0:c0 + n * B] = resp_pos[i][src].flatten()
        seg_blocks[i, :n] = P // B + ks
        tgt = (st == ms[:, None]) & batch.mask[i][src]             # [n, B]
        j = src[tgt]
        gather[i, j] = (c0 + torch.arange(n * B, device=dev).view(n, B))[tgt]
        col_of[i, j] = j
    layout = AttentionLayout(block_size=B, kv_start=left_pads(batch.prompt_valid), segments=seg_blocks)
    return ForwardInputs(ids, layout, pos, gather, torch.arange(b, device=dev), col_of)


def round_rows_block_inputs(batch: RolloutBatch) -> ForwardInputs:
    """TraceRL's original layout (dLLM-RL ``train/rl_trado.py`` at 10b4fd1): one
    ``[prompt ; clean ; masked copy]`` row per
    round r, the copy masking, in every block, the tokens of the block's r-th step and later.

    Used by the speed benchmark as the published baseline; numerically equal to
    :func:`packed_block_inputs`.
    """
    B, P, L = batch.block_size, batch.prompt_ids.shape[1], batch.gen_len
    dev = batch.response_ids.device
    segs = _segments(batch.steps.cpu(), batch.mask.cpu(), B)
    resp_pos = response_position_ids(batch.prompt_lens, L, device=dev)
    rows, ids_l, pos_l, valid_l, gather_l, cols_l = [], [], [], [], [], []
    for i, row in enumerate(segs):
        per_block: dict[int, list[int]] = {}
        for k, m in row:
            per_block.setdefault(k, []).append(m)
        n_rounds = max((len(v) for v in per_block.values()), default=0)
        for r in range(n_rounds):
            copy = batch.response_ids[i].clone()
            gather = torch.zeros(L, dtype=torch.long, device=dev)
            cols = torch.full((L,), -1, dtype=torch.long, device=dev)
            for k in range(L // B):
                sl = slice(k * B, (k + 1) * B)
                st = batch.steps[i, sl]
                ms = per_block.get(k, [])
                if r < len(ms):
                    m = ms[r]
                    copy[sl] = torch.where(st >= m, torch.full_like(st, batch.mask_id), copy[sl])
                    tgt = (st == m) & batch.mask[i, sl]
                    j = torch.arange(k * B, (k + 1) * B, device=dev)[tgt]
                    gather[j] = P + L + j
                    cols[j] = j
                else:
                    copy[sl] = batch.mask_id
            rows.append(i)
            ids_l.append(torch.cat([batch.prompt_ids[i], batch.response_ids[i], copy]))
            pos_l.append(torch.cat([batch.prompt_pos[i], resp_pos[i], resp_pos[i]]))
            valid_l.append(batch.prompt_valid[i])
            gather_l.append(gather)
            cols_l.append(cols)
    layout = AttentionLayout.staircase(torch.stack(valid_l), L, B)
    return ForwardInputs(torch.stack(ids_l), layout, torch.stack(pos_l), torch.stack(gather_l),
                         torch.as_tensor(rows, device=dev), torch.stack(cols_l))


def per_step_block_inputs(batch: RolloutBatch) -> Iterator[ForwardInputs]:
    """The naive reference: one block-causal forward per trajectory step.

    For the i-th step (k, m) of every response, the input is the sampler's state just before
    it — ``[prompt ; clean blocks < k ; block k with steps >= m masked ; later blocks masked]`` —
    with a block-causal :class:`~dllm_bench.models.layout.AttentionLayout`; the tokens of step m are read at their
    own columns. Responses are batched step-by-step (the i-th forward holds every response's
    i-th step), so the number of forwards is the largest step count in the batch.
    """
    B, P, L = batch.block_size, batch.prompt_ids.shape[1], batch.gen_len
    dev = batch.response_ids.device
    segs = _segments(batch.steps.cpu(), batch.mask.cpu(), B)
    resp_pos = response_position_ids(batch.prompt_lens, L, device=dev)
    layout = AttentionLayout(block_size=B, kv_start=left_pads(batch.prompt_valid))
    n_max = max(len(s) for s in segs)
    for s in range(n_max):
        rows = [i for i in range(batch.size) if s < len(segs[i])]
        ids_l, gather_l, cols_l = [], [], []
        for i in rows:
            k, m = segs[i][s]
            resp = batch.response_ids[i].clone()
            st = batch.steps[i]
            jj = torch.arange(L, device=dev)
            blk = jj // B
            resp = torch.where((blk > k) | ((blk == k) & (st >= m)),
                               torch.full_like(resp, batch.mask_id), resp)
            tgt = (blk == k) & (st == m) & batch.mask[i]
            gather = torch.where(tgt, P + jj, torch.zeros_like(jj))
            ids_l.append(torch.cat([batch.prompt_ids[i], resp]))
            gather_l.append(gather)
            cols_l.append(torch.where(tgt, jj, torch.full_like(jj, -1)))
        ix = torch.as_tensor(rows, device=dev)
        yield ForwardInputs(torch.stack(ids_l), layout.select(ix), torch.cat([batch.prompt_pos, resp_pos], 1)[ix],
                            torch.stack(gather_l), ix, torch.stack(cols_l))


def full_attention_inputs(batch: RolloutBatch, rows_per_forward: int = 8) -> Iterator[ForwardInputs]:
    """Full-attention models: one row per (response, shrunk global step t) (dLLM-RL
    ``train/rl_llada.py`` at 10b4fd1).

    The row is ``[prompt ; response with every token of step >= t masked]`` with full
    (bidirectional) attention over the real tokens; the tokens of step t are read at their own
    columns. Rows are yielded in chunks of ``rows_per_forward``.
    """
    P, L = batch.prompt_ids.shape[1], batch.gen_len
    dev = batch.response_ids.device
    resp_pos = response_position_ids(batch.prompt_lens, L, device=dev)
    jobs = []
    for i in range(batch.size):
        for t in torch.unique(batch.steps[i][batch.mask[i]], sorted=True).tolist():
            jobs.append((i, int(t)))
    full = AttentionLayout(block_size=None, kv_start=left_pads(batch.prompt_valid))
    for c in range(0, len(jobs), rows_per_forward):
        chunk = jobs[c:c + rows_per_forward]
        ids_l, pos_l, g_l, c_l = [], [], [], []
        for i, t in chunk:
            st = batch.steps[i]
            resp = torch.where(st >= t, torch.full_like(st, batch.mask_id), batch.response_ids[i])
            tgt = (st == t) & batch.mask[i]
            jj = torch.arange(L, device=dev)
            ids_l.append(torch.cat([batch.prompt_ids[i], resp]))
            pos_l.append(torch.cat([batch.prompt_pos[i], resp_pos[i]]))
            g_l.append(torch.where(tgt, P + jj, torch.zeros_like(jj)))
            c_l.append(torch.where(tgt, jj, torch.full_like(jj, -1)))
        rows = torch.as_tensor([i for i, _ in chunk], device=dev)
        yield ForwardInputs(torch.stack(ids_l), full.select(rows), torch.stack(pos_l), torch.stack(g_l), rows,
                            torch.stack(c_l))


def ar_inputs(batch: RolloutBatch) -> ForwardInputs:
    """AR models: one causal forward over ``[prompt ; response]``; token j is predicted by
    column ``P + j − 1`` (the usual shift)."""
    P, L = batch.prompt_ids.shape[1], batch.gen_len
    dev = batch.response_ids.device
    causal = AttentionLayout(block_size=1, kv_start=left_pads(batch.prompt_valid))
    pos = torch.cat([batch.prompt_pos, response_position_ids(batch.prompt_lens, L, device=dev)], 1)
    jj = torch.arange(L, device=dev)[None].expand(batch.size, L)
    gather = P + jj - 1
    cols = torch.where(batch.mask, jj, torch.full_like(jj, -1))
    return ForwardInputs(torch.cat([batch.prompt_ids, batch.response_ids], 1), causal, pos,
                         gather, torch.arange(batch.size, device=dev), cols)


def forward_plan(batch: RolloutBatch, family: Family, *, layout: str = "packed",
                 rows_per_forward: int = 8) -> Iterator[ForwardInputs]:
    """All forwards needed to score every trainable token of ``batch`` once.

    Args:
        layout: block models only — ``packed`` (one forward per response batch, default),
            ``rounds`` (TraceRL's row per round) or ``per_step`` (naive reference).
    """
    if family == "block":
        if layout == "packed":
            yield packed_block_inputs(batch)
        elif layout == "rounds":
            yield round_rows_block_inputs(batch)
        elif layout == "per_step":
            yield from per_step_block_inputs(batch)
        else:
            raise ValueError(f"unknown layout {layout!r}")
    elif family == "full":
        yield from full_attention_inputs(batch, rows_per_forward)
    elif family == "ar":
        yield ar_inputs(batch)
    else:
        raise ValueError(f"unknown model family {family!r}")


GatherFn = Callable[[ForwardInputs], torch.Tensor]
"""``fn(inputs) -> [n, K]`` per-scored-token quantity (log-prob or value) for one forward."""


def scatter_tokens(batch: RolloutBatch, plan: Iterator[ForwardInputs], fn: GatherFn) -> torch.Tensor:
    """Run ``fn`` on every forward of ``plan`` and scatter its ``[n, K]`` outputs back to
    ``[b, L]`` response positions (0 where nothing was scored). Differentiable."""
    out = None
    for inp in plan:
        vals = fn(inp)  # [n, K]
        if out is None:
            out = vals.new_zeros((batch.size, batch.gen_len))
        ok = inp.cols >= 0
        r = inp.rows[:, None].expand_as(inp.cols)[ok]
        c = inp.cols[ok]
        out = out.index_put((r, c), vals[ok], accumulate=True)
    if out is None:
        out = torch.zeros((batch.size, batch.gen_len))
    return out
