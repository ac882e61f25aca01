"""Model families (block-diffusion, full-diffusion, ar): the family a checkpoint's config
implies, each family's default block size, and where a diffusion checkpoint keeps its mask token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from ..errors import BadInputError

log = logging.getLogger("dllm_bench.models")

Family = Literal["block-diffusion", "full-diffusion", "ar"]
FAMILIES: tuple[str, ...] = ("block-diffusion", "full-diffusion", "ar")
MASK_CANDIDATES = ("<|mask|>", "<|MASK|>", "[MASK]", "<mask>", "<|mdm_mask|>")
LLADA_MASK_ID = 126336
DEFAULT_BLOCK_SIZE = {"block-diffusion": 4, "full-diffusion": 32, "ar": None}


def detect_family(model_type: str, architectures: Sequence[str] | None, name: str) -> tuple[str, bool]:
    """(family, logits_shift) from a checkpoint's model_type, architectures and name."""
    mt = (model_type or "").lower()
    archs = " ".join(architectures or []).lower()
    low = name.lower()
    if "dream" in mt or "dream" in archs:
        return "full-diffusion", True
    if "llada" in mt or "llada" in archs or "llada" in low:
        return "full-diffusion", False
    if "sdar" in mt or "sdar" in archs or "sdar" in low or "trado" in low:
        return "block-diffusion", False
    return "ar", False


def find_mask_id(tok: Any, family: str, mask_token: str | None, declared: int | None = None) -> int | None:
    """The mask id: ``mask_token`` (a token string) if given, else the id the checkpoint declares
    (config / generation config ``mask_token_id``), else the tokenizer's mask token, else a
    known mask string, else LLaDA's 126336 for a vocabulary that large."""
    if family == "ar":
        return None
    vocab = tok.get_vocab()
    if mask_token is not None:
        if mask_token not in vocab:
            raise BadInputError(f"mask token {mask_token!r} is not in the tokenizer's vocabulary")
        return vocab[mask_token]
    tok_mask = getattr(tok, "mask_token_id", None)
    if declared is not None:
        if tok_mask is not None and int(tok_mask) != declared:
            log.warning("config declares mask_token_id %d but the tokenizer's mask token is %d; using %d",
                        declared, tok_mask, declared)
        return declared
    if tok_mask is not None:
        return int(tok_mask)
    for cand in MASK_CANDIDATES:
        if cand in vocab:
            return vocab[cand]
    if len(vocab) > LLADA_MASK_ID:
        return LLADA_MASK_ID
    raise BadInputError("cannot find the mask token of this diffusion model; pass --model-arg mask_token=...")
