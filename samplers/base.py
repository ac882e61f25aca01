"""The sampler contract (:class:`Sampler`) and its building blocks: configs, the
``Generation`` result, token sampling, unmasking.

**Confidence (what remasking ranks by).** At every denoising step each still-masked
position gets a candidate token ``x0`` and a confidence ``c``:

1. logits are scaled by ``1 / temperature`` (``temperature == 0``: no scaling, greedy);
2. top-k filtering keeps the ``top_k`` largest logits (``top_k == 0``: off), then top-p
   (nucleus) keeps the smallest set of tokens whose probability mass reaches ``top_p``
   (``top_p == 1``: off);
3. ``p = softmax(filtered logits)``; ``x0 ~ p`` (``argmax p`` when ``temperature == 0``);
4. ``c = p[x0]`` — the probability of the sampled token *after* filtering.

The ``[MASK]`` token is never proposed (its logit is -inf before step 1).

This is the rule of dLLM-RL's ``block_diffusion_generate`` and JetEngine
(``generate.py`` and ``sample/jetengine_ext/engine/scheduler.py`` at 10b4fd1), except that
the references also propose ``[MASK]`` (a recorded
difference: a proposed ``[MASK]`` would leave the position masked, and the reference's step
loop would then run out of quota). Consequence (also in the references, whose
``sample_with_temperature_topk_topp`` takes the confidence after top-k / top-p filtering;
``generate.py`` and ``sample/jetengine_ext/layers/sampler.py``): with ``top_k == 1`` every
confidence is 1.0, so a dynamic sampler unmasks the whole block in one step and a static
sampler's order is the tie order of the ranking. Entries therefore record ``top_k`` next to
the strategy (it is part of every sampler's config, hence of the key).

**Ranking** (``ranking``): ``topk`` (default) ranks each row with ``torch.topk`` exactly as
the references do (dLLM-RL ``generate.py`` l. 169-171 at 10b4fd1; Fast-dLLM
``llada/generate.py::get_transfer_index`` and ``dream/model/generation_utils_block.py`` at
24cc59e), on a vector laid out as theirs, so ties (e.g. every confidence 1.0 with
``top_k = 1``) fall in the same order on the same device; the order among exact ties is
then the device's ``torch.topk`` order (on CPU, positions 2, 1, 3, 0 of a 4-block).
``stable``: a stable sort, leftmost first among ties, the same on every device.

**Remasking.** ``low_confidence``: among masked positions, unmask those with the highest
confidence; ``random``: rank masked positions by a uniform random score instead
(LLaDA's ``random`` remasking). Static: exactly the step quota per step (the block size
split evenly over the denoising steps, the remainder going to the early steps).
Dynamic: every masked position whose confidence passes ``confidence_threshold``, and at
least the static quota (top by score) — dLLM-RL ``low_confidence_dynamic``. How the
threshold is compared is the reference's: strictly (``>``, SDAR / dLLM-RL ``generate.py``
l. 177) for the block samplers, ``>=`` (Fast-dLLM keeps a candidate unless it is ``<`` the
threshold) for full-diffusion; ``threshold_rule`` records it.

**Cost accounting.** A sequence's ``nfe`` counts the forwards that denoise *that*
sequence, as the references count them per sequence (dLLM-RL ``generate.py`` and JetEngine
``scheduler.py`` at 10b4fd1; Fast-dLLM ``llada/generate.py`` at 24cc59e): a
diffusion forward counts for a row only while that row's current block still holds
``[MASK]`` tokens (prefill and commit forwards, which only write K/V, and forwards in which
a finished row rides along in the batch do not count); for AR every decode step of the
sequence. ``forward_calls`` is the batch's total of model calls (prefill, commit and
denoise forwards included), shared equally among the batch's rows so that it sums to the
true number of calls. The entry's ``cost.nfe`` is the sum over samples;
``tokens_per_forward = generated_tokens / nfe`` is per sequence; ``tokens_per_s =
generated_tokens / wall_s`` with ``wall_s`` the summed wall time of the generate calls.
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from dllm_bench.plugins import StrictModel

if TYPE_CHECKING:
    from dllm_bench.models import ModelAdapter

FinishReason = Literal["eos", "stop", "length"]


# ------------------------------------------------------------------------------ configs
class SamplingConfig(StrictModel):
    """Knobs every sampler has (AR and diffusion)."""

    temperature: float = Field(0.0, ge=0.0, description="Softmax temperature (unitless); 0 = greedy (argmax)")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens before sampling (tokens); 0 = off. "
                       "Confidence is measured after this filter (top_k=1 makes every confidence 1.0)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass kept before sampling (probability); 1 = off")
    max_new_tokens: int = Field(256, ge=1, description="Maximum generated tokens per sequence (tokens); "
                                "diffusion samplers decode whole blocks and truncate")
    stop: list[str] = Field(default_factory=list, description="Stop strings: generation of a sequence ends "
                            "after the block (or token) that completes one; the text is cut before it")
    attention_backend: str = Field("sdpa", description="Attention implementation: sdpa (default), eager, "
                                   "triton or flex (dllm_bench.models.attention)")


class DiffusionConfig(SamplingConfig):
    """Knobs of the masked-diffusion samplers (block and full attention)."""

    block_size: int | None = Field(None, ge=1, description="Block size B (tokens); None = the model's block size "
                                   "(the evaluated value is recorded)")
    denoising_steps: int | None = Field(None, ge=1, description="Denoising forwards per block (steps); "
                                        "None = B (one token per step); values above B are clamped to B")
    remasking: Literal["low_confidence", "random"] = Field(
        "low_confidence", description="Which masked positions to unmask first: highest confidence, or random")
    ranking: Literal["topk", "stable"] = Field(
        "topk", description="How positions are ranked: topk = torch.topk per row exactly as the reference code "
        "(same tie order on the same device); stable = stable sort, leftmost first among ties (device-independent)")

    @model_validator(mode="after")
    def _steps_le_block(self):
        if self.block_size is not None and self.denoising_steps is not None and self.denoising_steps > self.block_size:
            raise ValueError(f"denoising_steps ({self.denoising_steps}) must be <= block_size ({self.block_size})")
        return self


# ------------------------------------------------------------------------------ results
@dataclass
class StepCommit:
    """Tokens committed (unmasked) at one denoising step of one sequence.

    Attributes:
        step: the sequence's 1-based denoise-step counter (prefill / commit forwards do not count,
            as in dLLM-RL ``sample/jetengine_ext/engine/scheduler.py`` l. 149-163 at 10b4fd1).
        block: response block index (0-based).
        positions: response offsets (0-based, from the first generated token) unmasked now.
        tokens: their token ids.
        confidence: their confidence (probability after filtering; see module docstring).
    """

    step: int
    block: int
    positions: list[int]
    tokens: list[int]
    confidence: list[float]


@dataclass
class Trajectory:
    """The decode trajectory of one sequence (TraceRL's ``step_map`` plus per-step commits).

    Attributes:
        step_map: one entry per token of ``Generation.raw_token_ids``: the denoise step
            (1-based) at which it was unmasked. Tokens unmasked at step t were masked in the
            input of every step < t.
        steps: the commits, in step order.
        block_size: B used.
        denoise_steps: total denoise steps of this sequence (= max(step_map)).
        block_alignment: ``response`` | ``absolute`` (:mod:`dllm_bench.blocks`) — where the
            blocks of this decode started; trainers refuse a trajectory of another alignment.
    """

    step_map: list[int]
    steps: list[StepCommit]
    block_size: int
    denoise_steps: int
    block_alignment: str = "response"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """The result for one prompt.

    Attributes:
        token_ids: the response tokens: through the first EOS (inclusive), or cut at a stop
            string, or the first ``max_new_tokens``.
        text: decoded response without EOS / special tokens, cut before a stop string.
        finish_reason: ``eos`` | ``stop`` | ``length``.
        nfe: forwards that denoised this sequence (module docstring, "Cost accounting").
        wall_s: this sequence's share of the batch's wall seconds (batch wall / batch size).
        forward_calls: this sequence's share of the batch's model calls (batch calls / batch
            size); None when the sampler does not count them.
        raw_token_ids: every token decoded for this sequence (whole blocks for block samplers;
            ``step_map`` is aligned with it).
        trajectory: recorded when ``record_trajectory=True`` (diffusion samplers).
        seed: the seed of this sequence's random generator.
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    nfe: int
    wall_s: float
    raw_token_ids: list[int] = field(default_factory=list)
    trajectory: Trajectory | None = None
    seed: int | None = None
    forward_calls: float | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)

    def cost(self) -> dict[str, float]:
        """Per-sample cost for :class:`dllm_bench.schema.SampleRecord`: nfe, generated_tokens, wall_s
        and, when counted, forward_calls."""
        out = {"nfe": float(self.nfe), "generated_tokens": float(self.generated_tokens), "wall_s": self.wall_s}
        if self.forward_calls is not None:
            out["forward_calls"] = float(self.forward_calls)
        return out


@dataclass
class CostMeter:
    """Sums per-sample costs into the entry's :class:`dllm_bench.schema.Cost` block."""

    nfe: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    peak_memory_mb: float | None = None
    forward_calls: float | None = None

    def add(self, nfe: float, generated_tokens: float, wall_s: float, forward_calls: float | None = None) -> None:
        self.nfe += int(nfe)
        self.generated_tokens += int(generated_tokens)
        self.wall_s += float(wall_s)
        if forward_calls is not None:
            self.forward_calls = (self.forward_calls or 0.0) + float(forward_calls)

    def to_cost(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "forward_calls": round(self.forward_calls, 6) if self.forward_calls is not None else None,
            "generated_tokens": self.generated_tokens,
            "tokens_per_forward": self.generated_tokens / self.nfe if self.nfe else 0.0,
            "wall_s": self.wall_s,
            "tokens_per_s": self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0,
            "peak_memory_mb": self.peak_memory_mb,
        }


# ------------------------------------------------------------------------------ seeds
def sample_seed(*parts: int) -> int:
    """One generated sample's 63-bit seed from integers (base seed, doc index, sample index; or
    base seed, row index); sha256-based, stable across runs. Not ``trainers.seeding.train_seed``."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def row_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per prompt: a list is used as is; an int ``s`` gives ``sample_seed(s, i)``."""
    if isinstance(seed, int):
        return [sample_seed(seed, i) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    return seeds


def make_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One ``torch.Generator`` per sequence, so its draws do not depend on its batch mates."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


# ------------------------------------------------------------------------------ sampling
def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and top-p applied to ``logits [..., V]``; returns float32 logits
    with removed tokens at ``-inf`` (steps 1-2 of the module docstring)."""
    x = logits.float()
    if temperature > 0:
        x = x / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        remove = (cum - probs) >= top_p  # mass before this token already reaches top_p
        remove[..., 0] = False
        sorted_x = sorted_x.masked_fill(remove, float("-inf"))
        x = torch.empty_like(x).scatter_(-1, idx, sorted_x)
    return x


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                  generators: Sequence[torch.Generator] | None = None,
                  banned: int | None = None, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate tokens and their confidence (module docstring, steps 1-4).

    Args:
        logits: ``[b, n, V]``.
        generators: one per row (required when ``temperature > 0``).
        banned: a token id never proposed (the ``[MASK]`` id: its logit is set to -inf
            before filtering, so confidences are renormalised without it).
        active: ``[b]`` bool; rows that are not active draw nothing from their generator
            (their candidates are the argmax and unused), so a sequence's draws do not
            depend on how long it rides along in a batch.

    Returns:
        ``(x0 [b, n] long, confidence [b, n] float32)``.
    """
    if banned is not None:
        logits = logits.float().index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    if temperature <= 0:
        x0 = probs.argmax(dim=-1)
    else:
        if generators is None or len(generators) != probs.shape[0]:
            raise ValueError("sampling with temperature > 0 needs one generator per row")
        b, n, V = probs.shape
        act = [True] * b if active is None else active.tolist()
        x0 = torch.stack([torch.multinomial(probs[i].reshape(n, V), 1, generator=generators[i]).squeeze(-1)
                          if act[i] else probs[i].argmax(-1) for i in range(b)])
    conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return x0, conf


def step_quotas(block_size: int, steps: int) -> list[int]:
    """Tokens to unmask at each of ``steps`` denoising steps of a block of ``block_size``.

    The block is split evenly, the remainder going to the early steps (dLLM-RL
    ``get_num_transfer_tokens``). ``steps`` is clamped to ``[1, block_size]``.
    """
    steps = max(1, min(steps, block_size))
    base, rem = divmod(block_size, steps)
    return [base + (1 if j < rem else 0) for j in range(steps)]


def select_unmask(conf: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor, *,
                  threshold: float | None = None, remasking: str = "low_confidence",
                  generators: Sequence[torch.Generator] | None = None, ranking: str = "stable",
                  threshold_rule: str = "ge", layout: Sequence[tuple[int, int]] | None = None,
                  active: torch.Tensor | None = None) -> torch.Tensor:
    """Which masked positions to unmask at this step.

    Args:
        conf: ``[b, n]`` confidence of the candidate tokens.
        masked: ``[b, n]`` bool, True where still masked.
        quota: ``[b]`` long, the static quota per row. ``topk`` ranking asks ``torch.topk`` for
            exactly this many (as the references do), then keeps only masked positions (the
            references' defect of overwriting an unmasked position when the quota exceeds the
            masked count is not reproduced); ``stable`` clamps it to the masked count.
        threshold: dynamic decoding: also unmask every masked position whose confidence passes
            ``threshold`` (None = static).
        remasking: ``low_confidence`` (rank by conf) | ``random`` (rank by a uniform draw).
        generators: per-row generators (``random`` remasking; rows not ``active`` draw nothing).
        ranking: ``topk`` — ``torch.topk`` on each row's 1-D score vector (the references'
            operation and tie order); ``stable`` — stable descending sort, leftmost first.
        threshold_rule: ``gt`` (``conf > threshold``, SDAR) | ``ge`` (``conf >= threshold``,
            Fast-dLLM).
        layout: ``topk`` only: per row ``(width, offset)``: the row's ``n`` scores are placed at
            ``[offset, offset + n)`` of a ``-inf`` vector of length ``width`` before ranking, to
            rank exactly the vector the reference ranks (e.g. LLaDA's whole sequence).

    Returns:
        ``[b, n]`` bool.

    Raises:
        ValueError: unknown ``remasking`` / ``ranking`` / ``threshold_rule``; random remasking
            without generators.
    """
    b, n = conf.shape
    if remasking == "random":
        if generators is None:
            raise ValueError("random remasking needs per-row generators")
        act = [True] * b if active is None else active.tolist()
        score = torch.stack([torch.rand(n, generator=g, device=g.device) if act[i] else
                             torch.zeros(n, device=g.device) for i, g in enumerate(generators)]).to(conf.device)
    elif remasking == "low_confidence":
        score = conf.float()
    else:
        raise ValueError(f"unknown remasking {remasking!r}")
    if threshold_rule not in ("gt", "ge"):
        raise ValueError(f"unknown threshold_rule {threshold_rule!r}")
    score = score.masked_fill(~masked, float("-inf"))
    if ranking == "topk":
        sel = torch.zeros_like(masked)
        q = quota.tolist()
        for i in range(b):
            k = min(int(q[i]), n if layout is None else layout[i][0])
            if k <= 0:
                continue
            row = score[i]
            off = 0
            if layout is not None:
                width, off = layout[i]
                row = torch.full((width,), float("-inf"), dtype=score.dtype, device=score.device)
                row[off:off + n] = score[i]
            idx = torch.topk(row, k).indices - off
            idx = idx[(idx >= 0) & (idx < n)]
            sel[i, idx] = True
        sel &= masked
    elif ranking == "stable":
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=conf.device).expand(b, n))
        quota = torch.minimum(quota.to(conf.device), masked.sum(-1))
        sel = (rank < quota[:, None]) & masked
    else:
        raise ValueError(f"unknown ranking {ranking!r}")
    if threshold is not None:
        sel |= masked & ((conf > threshold) if threshold_rule == "gt" else (conf >= threshold))
    return sel


# ------------------------------------------------------------------------------ finishing
def first_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text`` (``-1`` when none)."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else -1


def finish(raw: Sequence[int], *, tokenizer: Any, eos_ids: Sequence[int], stop: Sequence[str],
           max_new_tokens: int) -> tuple[list[int], str, str]:
    """Response tokens, text and finish reason from the raw decoded tokens of one sequence.

    Cut at ``max_new_tokens``, then after the first EOS (kept in the tokens, dropped from
    the text), then at the earliest stop string (the tokens keep the shortest prefix whose
    text contains it; the text is cut before it).
    """
    ids = list(raw[:max_new_tokens])
    reason = "length"
    eos = set(int(e) for e in eos_ids)
    for i, t in enumerate(ids):
        if t in eos:
            ids, reason = ids[: i + 1], "eos"
            break
    body = ids[:-1] if reason == "eos" else ids
    text = tokenizer.decode(body, skip_special_tokens=True)
    if stop:
        cut = first_stop(text, stop)
        if cut >= 0:
            lo, hi = 1, len(body)
            while lo < hi:  # shortest prefix whose text contains a stop string
                mid = (lo + hi) // 2
                if first_stop(tokenizer.decode(body[:mid], skip_special_tokens=True), stop) >= 0:
                    hi = mid
                else:
                    lo = mid + 1
            ids, text, reason = list(body[:lo]), text[:cut], "stop"
    return ids, text, reason


def hit_stop(ids: Sequence[int], *, tokenizer: Any, eos_ids: Sequence[int], stop: Sequence[str]) -> bool:
    """True when ``ids`` (response so far) contains an EOS or (decoded) a stop string."""
    eos = set(int(e) for e in eos_ids)
    if any(int(t) in eos for t in ids):
        return True
    return bool(stop) and first_stop(tokenizer.decode(list(ids), skip_special_tokens=True), stop) >= 0


class Timer:
    """Wall-clock seconds of a ``with`` block; synchronises CUDA so GPU work is counted."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Sampler(ABC):
    """The sampler contract: a decoding strategy (entry-point group ``dllm_bench.samplers``).
    Class attributes ``name``, ``version`` (bump when outputs for the same inputs could
    change) and ``Config`` (pydantic, e.g. :class:`SamplingConfig`); built as ``cls(config)``.

    The harness calls :meth:`check_model` once after building the sampler (before any
    decoding), :meth:`key` for the entry's comparability key, and :meth:`generate` per batch
    of prompts (eval, lm-eval ``generate_until``, RL rollouts). A plugin implements
    :meth:`generate`; :class:`SamplerBase` supplies ``config``, :meth:`key` and
    :meth:`check_model` from ``families``.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[StrictModel]]

    @abstractmethod
    def generate(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0,
                 record_trajectory: bool = False) -> list[Generation]:
        """Decode a batch: ``prompts`` are token-id lists (no padding); ``seed`` one int for the
        batch or one per prompt (each row's generator, :func:`row_seeds`). Returns one
        :class:`Generation` per prompt, in order (tokens, text, ``nfe``, ``wall_s`` share and,
        with ``record_trajectory``, the decode :class:`Trajectory`)."""

    @abstractmethod
    def key(self) -> dict[str, Any]:
        """``{name, version, config}``: every knob (the sampler part of the comparability key)."""

    def check_model(self, model: ModelAdapter) -> None:
        """Raise :class:`dllm_bench.errors.BadInputError` when ``model`` cannot be decoded by this
        sampler (wrong family, ...). Default: every model fits."""
        return None


class SamplerBase(Sampler):
    """Common plugin plumbing: ``Config`` instance in ``self.config``; :meth:`key`;
    :meth:`check_model` from ``families`` (the model families the sampler decodes) and
    ``needs_weights`` (False for samplers that decode elsewhere, e.g. on a serving engine, and
    so accept a model loaded with ``weights=false``)."""

    families: ClassVar[tuple[str, ...]] = ()
    needs_weights: ClassVar[bool] = True

    def __init__(self, config: StrictModel | None = None):
        self.config = config if config is not None else self.Config()

    def key(self) -> dict[str, Any]:
        """``{name, version, config}``: every knob (the sampler part of the comparability key)."""
        return {"name": self.name, "version": self.version, "config": self.config.model_dump(mode="json")}

    def check_model(self, model: ModelAdapter) -> None:
        """Raise :class:`dllm_bench.errors.BadInputError` when the model family does not fit, or
        the model was loaded without weights and this sampler decodes in this process."""
        from dllm_bench.errors import BadInputError

        if self.needs_weights and not getattr(model, "weights_loaded", True):
            raise BadInputError(f"sampler {self.name!r} decodes in this process and needs the model's weights; "
                                f"{model.spec!r} was loaded with weights=false (drop that model arg)")
        if self.families and model.family not in self.families:
            raise BadInputError(f"sampler {self.name!r} needs a {' or '.join(self.families)} model; "
                                f"{model.spec!r} is {model.family}")


def n_blocks(max_new_tokens: int, block_size: int) -> int:
    return math.ceil(max_new_tokens / block_size)


class RowBook:
    """Per-sequence bookkeeping of a batched diffusion decode: NFE, denoise steps, step map.

    Rows are the *original* prompt indices (batches shrink as sequences finish).

    Args:
        n: number of sequences.
        gen_len: decoded response slots per sequence (whole blocks).
        record: keep per-step commits (trajectory); the step map is always kept.
    """

    def __init__(self, n: int, gen_len: int, record: bool):
        self.nfe = [0] * n
        self.steps = [0] * n
        self.step_map = [[0] * gen_len for _ in range(n)]
        self.commits: list[list[StepCommit]] = [[] for _ in range(n)]
        self.record = record
        self.decoded = [0] * n  # response slots decoded (whole blocks)
        self.calls = [0.0] * n  # share of the batch's model calls
        self.batch_calls = 0

    def forward(self, rows: Sequence[int], active: torch.Tensor | None = None) -> None:
        """One model call over a batch holding ``rows``.

        ``active`` (``[b]`` bool): the rows this forward denoises (their current block still
        has masks); their NFE grows. None: a prefill / commit forward, which denoises nobody.
        Every row gets its share of the call in ``calls``.
        """
        self.batch_calls += 1
        share = 1.0 / max(1, len(rows))
        act = active.tolist() if active is not None else [False] * len(rows)
        for i, r in enumerate(rows):
            self.calls[r] += share
            if act[i]:
                self.nfe[r] += 1

    def commit(self, rows: Sequence[int], active: torch.Tensor, sel: torch.Tensor, x0: torch.Tensor,
               conf: torch.Tensor, block: int, offset: int | Sequence[int]) -> None:
        """Record one denoise step.

        Args:
            rows: original index of each batch row.
            active: ``[b]`` bool, rows that still had masks in this block (their step counter advances).
            sel: ``[b, n]`` bool, positions unmasked now.
            x0, conf: ``[b, n]`` the committed tokens and confidences.
            block: block index; ``offset``: response offset of column 0 of ``sel`` (one per
                batch row when rows differ, e.g. absolute block alignment).
        """
        act = active.tolist()
        offs = [offset] * len(rows) if isinstance(offset, int) else list(offset)
        sel_c, x0_c, conf_c = sel.cpu(), x0.cpu(), conf.float().cpu()
        for i, r in enumerate(rows):
            if not act[i]:
                continue
            self.steps[r] += 1
            cols = torch.nonzero(sel_c[i], as_tuple=False).flatten().tolist()
            for c in cols:
                self.step_map[r][offs[i] + c] = self.steps[r]
            if self.record and cols:
                self.commits[r].append(StepCommit(self.steps[r], block, [offs[i] + c for c in cols],
                                                  x0_c[i, cols].tolist(),
                                                  [round(v, 6) for v in conf_c[i, cols].tolist()]))

    def trajectory(self, r: int, block_size: int, block_alignment: str = "response") -> Trajectory:
        n = self.decoded[r]
        return Trajectory(step_map=self.step_map[r][:n], steps=self.commits[r] if self.record else [],
                          block_size=block_size, denoise_steps=self.steps[r], block_alignment=block_alignment)


class DiffusionBatch:
    """The state of one batched masked-diffusion decode (shared by block and full samplers).

    Layout (:mod:`dllm_bench.blocks`, ``alignment``): ``x`` ``[b, P + L]`` = left-padded
    prompts followed by ``[MASK]`` tokens, ``L = n_blocks * B``. With ``response`` alignment
    every prompt ends at column P (a multiple of B) and ``L = ceil(max_new_tokens / B) * B``;
    with ``absolute`` alignment row i's prompt tail (``n_i mod B`` tokens) occupies the start
    of the first decoded block ``[P, P + B)`` and the row decodes ``ceil((tail_i +
    max_new_tokens) / B)`` blocks (the reference's ``ceil((n_i + gen_length) / B)`` blocks
    minus its full prompt blocks). ``valid`` ``[b, P + L]`` (False on pads), ``pos``
    ``[b, P + L]`` position ids skipping pads, ``kv_start`` ``[b]`` pads per row,
    ``resp_start`` ``[b]`` the column of each row's first response token. Block ``k`` is
    columns ``[P + kB, P + (k+1)B)`` for every row. ``pad_unit`` (full-attention models,
    whose blocks count from the response start): prompts are left-padded to a multiple of it
    instead of B (1: only to the batch's longest prompt, so a single prompt has no pads). Rows
    leave the batch after their last block or the block in which they finish
    (:meth:`end_block`); ``rows`` maps batch rows to prompt indices.

    Raises:
        BadInputError: padding is needed and the model cannot mask it (``masks_padding``).
    """

    def __init__(self, model: ModelAdapter, prompts: Sequence[Sequence[int]], block_size: int, cfg: Any,
                 seeds: Sequence[int], record: bool, alignment: str = "response", pad_unit: int | None = None):
        from dllm_bench.blocks import left_pad_prompts
        from dllm_bench.errors import BadInputError

        dev = model.device
        self.model, self.cfg, self.B, self.alignment = model, cfg, block_size, alignment
        if model.mask_token_id is None:  # diffusion families always have one (see load_model)
            raise BadInputError(f"{model.spec!r} has no [MASK] token: diffusion decoding needs one")
        self.mask_id: int = model.mask_token_id
        pb = left_pad_prompts(prompts, pad_unit or block_size, model.pad_token_id, dev, alignment)
        if not model.masks_padding and not bool(pb.valid.all()):
            raise BadInputError(f"{model.spec!r} cannot mask padding (its own modeling code ignores the attention "
                                "mask), and these prompts need padding: use batch_size 1, or load the checkpoint "
                                "natively (without trust_remote_code), which masks padding")
        self.P = P = pb.prefix_len
        self.tails = list(pb.tail_lens)
        G = cfg.max_new_tokens
        self.row_blocks = [n_blocks(t + G, block_size) for t in self.tails]
        self.n_blocks = max(self.row_blocks)
        L = self.n_blocks * block_size
        b = len(prompts)
        W = pb.input_ids.shape[1]
        self.x = torch.full((b, P + L), self.mask_id, dtype=torch.long, device=dev)
        self.valid = torch.ones(b, P + L, dtype=torch.bool, device=dev)
        self.pos = torch.zeros(b, P + L, dtype=torch.long, device=dev)
        lens = torch.as_tensor(pb.prompt_lens, device=dev)
        tails = torch.as_tensor(self.tails, device=dev)
        self.resp_start = (P + tails).long()
        col = torch.arange(P + L, device=dev)
        in_prompt = col[None, :W] < self.resp_start[:, None]
        self.x[:, :W] = torch.where(in_prompt, pb.input_ids, self.x[:, :W])
        self.valid[:, :W] = pb.valid | ~in_prompt
        self.pos[:, :W] = pb.position_ids
        resp = col[None, :] - self.resp_start[:, None] + lens[:, None]  # response positions continue the prompt
        self.pos = torch.where(col[None, :] >= self.resp_start[:, None], resp, self.pos)
        self.kv_start = (self.resp_start - lens).long()
        self.rows = list(range(b))
        self.gens = make_generators(seeds, dev) if (cfg.temperature > 0 or cfg.remasking == "random") else None
        self.book = RowBook(b, L, record)
        self.raw: list[list[int]] = [[] for _ in range(b)]
        self.cache: Any = None

    def block(self, k: int) -> tuple[int, int]:
        """Columns ``[s, e)`` of decoded block ``k``."""
        return self.P + k * self.B, self.P + (k + 1) * self.B

    def offsets(self, s: int) -> list[int]:
        """Per batch row, the response offset of column ``s``."""
        return (s - self.resp_start).tolist()

    def masked(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked [b, e-s] bool, active [b] bool)`` for columns ``[s, e)``."""
        m = self.x[:, s:e] == self.mask_id
        return m, m.any(dim=1)

    def denoise(self, logits: torch.Tensor, s: int, e: int, quota: int, k: int, threshold: float | None,
                masked: torch.Tensor, active: torch.Tensor, *, threshold_rule: str = "ge",
                layout: Sequence[tuple[int, int]] | None = None, force_first: bool = False) -> None:
        """One denoise step on block ``k`` from its logits ``[b, e-s, V]``: sample candidates,
        unmask per the strategy, record the step (the forward must already be counted).

        ``force_first``: also unmask each row's first masked position of the block whatever
        its confidence (Dream's rule at a block's first forward). ``threshold_rule`` and
        ``layout`` as in :func:`select_unmask`.
        """
        cfg = self.cfg
        x0, conf = sample_tokens(logits, cfg.temperature, cfg.top_k, cfg.top_p, self.gens, banned=self.mask_id,
                                 active=active)
        q = torch.full((self.x.shape[0],), quota, dtype=torch.long, device=self.x.device)
        sel = select_unmask(conf, masked, q, threshold=threshold, remasking=cfg.remasking, generators=self.gens,
                            ranking=cfg.ranking, threshold_rule=threshold_rule, layout=layout,
                            active=active)
        if force_first:
            first = masked & (masked.long().cumsum(-1) == 1)
            sel |= first
        self.x[:, s:e] = torch.where(sel, x0, self.x[:, s:e])
        self.book.commit(self.rows, active, sel, x0, conf, k, self.offsets(s))

    def end_block(self, k: int) -> bool:
        """After block ``k``: retire rows that are done (EOS, stop string, their last block) and
        drop them from the batch (and the cache). Returns False when no row goes on."""
        _, e = self.block(k)
        keep = []
        m = self.model
        starts = self.resp_start.tolist()
        for i, r in enumerate(self.rows):
            resp = self.x[i, starts[i]:e].tolist()
            self.book.decoded[r] = len(resp)
            if k >= self.row_blocks[r] - 1 or hit_stop(resp, tokenizer=m.tokenizer, eos_ids=m.eos_token_ids,
                                                       stop=self.cfg.stop):
                self.raw[r] = resp
            else:
                keep.append(i)
        if keep and len(keep) < len(self.rows):
            idx = torch.as_tensor(keep, dtype=torch.long, device=self.x.device)
            self.x, self.valid, self.pos = self.x[idx], self.valid[idx], self.pos[idx]
            self.kv_start = self.kv_start[idx]
            self.resp_start = self.resp_start[idx]
            if self.cache is not None:
                self.cache.select(idx)
            if self.gens is not None:
                self.gens = [self.gens[i] for i in keep]
            self.rows = [self.rows[i] for i in keep]
        return bool(keep)


def diffusion_generations(model: ModelAdapter, cfg: Any, st: DiffusionBatch, seeds: list[int], seconds: float,
                          record: bool) -> list[Generation]:
    """One :class:`Generation` per prompt from a finished diffusion decode."""
    raw, book, block_size = st.raw, st.book, st.B
    share = seconds / max(1, len(raw))
    out = []
    for r in range(len(raw)):
        ids, text, reason = finish(raw[r], tokenizer=model.tokenizer, eos_ids=model.eos_token_ids, stop=cfg.stop,
                                   max_new_tokens=cfg.max_new_tokens)
        traj = book.trajectory(r, block_size, st.alignment) if record else None
        out.append(Generation(token_ids=ids, text=text, finish_reason=reason, nfe=book.nfe[r], wall_s=share,
                              raw_token_ids=raw[r], trajectory=traj, seed=seeds[r],
                              forward_calls=round(book.calls[r], 6)))
    return out
