"""Block boundaries for block-diffusion LMs — defined once, used by samplers and trainers.

**Block alignment** (a named, recorded choice; ``BlockAlignment``):

* ``response`` (the harness's convention, default for models it trains from scratch):
  each prompt is left-padded to a multiple of the block size B, so the response always
  starts on a block boundary. The inference convention (blocks from sequence position 0),
  TraceRL's training convention (response blocks from the response start, prompt blocks
  counted back from the prompt end; dLLM-RL ``train/sft_trado.py``,
  ``train/train_trado_policy.py`` at 10b4fd1) and the KV cache then see the same partition
  whatever the prompt length.
* ``absolute`` (the reference convention of released SDAR / TraDo checkpoints): blocks are
  counted from sequence position 0 of the unpadded sequence, so when the prompt length n is
  not a multiple of B its last ``n mod B`` tokens (the *tail*) share the first decoded
  block with the first ``B - n mod B`` response tokens (dLLM-RL ``generate.py`` l. 84-94,
  JetEngine ``sequence.py``; SDAR's own training mask partitions from position 0 too). In
  a batch, row i is left-padded by ``P - floor(n_i / B) * B`` (a multiple of B, with ``P``
  the largest number of full prompt-block columns), so all rows share the column blocks
  and row i's tail sits at the start of the first decoded block ``[P, P + B)``.

With ``absolute`` alignment and ``n mod B = 0`` the two conventions coincide.

Layout of one batch (b sequences)::

    [ left pads | prompt_i ]  [ response block 0 ] [ response block 1 ] ...
    <------- P (multiple of B, max over the batch) --><---- L = n_blocks * B ---->

* ``block id`` of sequence position j (0-based, pads included) is ``j // B``.
* Pads are never attended to as keys; position ids skip them (the first real prompt
  token has position 0), so a sequence's logits do not depend on how much it was padded.
* Who attends to whom (block-causal: bidirectional inside the block, causal across blocks;
  the training layouts with masked copies; the pad rule) is defined once, by
  :class:`dllm_bench.models.layout.AttentionLayout`; with the left padding above it is
  ``AttentionLayout(block_size=B, kv_start=<left pads>)``.

Training layout (packed TraceRL / block SFT; the "[prompt ; clean ; masked copy]" rows of
dLLM-RL ``train/rl_trado.py`` at 10b4fd1; :meth:`AttentionLayout.staircase`)::

    [ prompt (P) ; clean response x0 (L) ; masked copy xt (L) ]   length P + 2L

the masked copy reusing the response position ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

BlockAlignment = Literal["response", "absolute"]
ALIGNMENTS: tuple[str, ...] = ("response", "absolute")


def round_up(n: int, block_size: int) -> int:
    """Smallest multiple of ``block_size`` that is >= n."""
    return -(-n // block_size) * block_size


@dataclass
class PromptBatch:
    """Left-padded prompts.

    Attributes:
        input_ids: ``[b, W]`` long; pads hold ``pad_id``. ``W = prefix_len`` (response
            alignment) or ``prefix_len + max(tail_lens)`` (absolute).
        valid: ``[b, W]`` bool; True for real prompt tokens (False on pads and, for rows with
            a shorter tail, on the columns after their prompt).
        position_ids: ``[b, W]`` long; 0.. for real tokens (pads get 0).
        prompt_lens: real prompt length per sequence.
        block_size: B.
        prefix_len: P, the columns before the first decoded block (a multiple of B).
        tail_lens: per row, prompt tokens inside the first decoded block (all 0 for
            ``response`` alignment; ``n_i mod B`` for ``absolute``).
        alignment: the :data:`BlockAlignment` used.
    """

    input_ids: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor
    prompt_lens: list[int]
    block_size: int
    prefix_len: int = 0
    tail_lens: list[int] = field(default_factory=list)
    alignment: str = "response"

    @property
    def padded_len(self) -> int:
        return self.input_ids.shape[1]


def left_pad_prompts(prompts: Sequence[Sequence[int]], block_size: int, pad_id: int,
                     device: torch.device | str | None = None, alignment: str = "response",
                     allow_empty: bool = False) -> PromptBatch:
    """Left-pad ``prompts`` by the block rule of ``alignment`` (module docstring).

    ``response``: to P = max_i round_up(len_i, B), every prompt ending at column P.
    ``absolute``: row i padded by ``P - floor(len_i / B) * B`` with P = max_i floor(len_i / B) * B;
    its ``len_i mod B`` tail tokens occupy columns ``[P, P + tail_i)``.

    ``allow_empty``: accept empty prompts (trainers under ``absolute`` alignment, where a
    prompt shorter than B lies entirely inside the first response block).

    Raises:
        ValueError: an empty prompt (unless ``allow_empty``), block_size < 1 or an unknown alignment.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown block alignment {alignment!r}; expected one of {ALIGNMENTS}")
    if not allow_empty and any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    lens = [len(p) for p in prompts]
    B = block_size
    if alignment == "response":
        P = max(round_up(n, B) for n in lens)
        tails = [0] * len(lens)
    else:
        P = max((n // B) * B for n in lens)
        tails = [n % B for n in lens]
    W = P + max(tails)
    b = len(prompts)
    ids = torch.full((b, W), pad_id, dtype=torch.long)
    valid = torch.zeros((b, W), dtype=torch.bool)
    pos = torch.zeros((b, W), dtype=torch.long)
    for i, p in enumerate(prompts):
        n, end = len(p), P + tails[i]
        ids[i, end - n:end] = torch.as_tensor(list(p), dtype=torch.long)
        valid[i, end - n:end] = True
        pos[i, end - n:end] = torch.arange(n)
    return PromptBatch(ids.to(device), valid.to(device), pos.to(device), lens, B, P, tails, alignment)


def response_position_ids(prompt_lens: Sequence[int], gen_len: int,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """``[b, gen_len]`` position ids of the response: prompt_len_i + (0..gen_len-1)."""
    base = torch.as_tensor(list(prompt_lens), dtype=torch.long).unsqueeze(1)
    return (base + torch.arange(gen_len).unsqueeze(0)).to(device)
