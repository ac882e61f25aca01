"""The built-in model specs: their names, and the sizes, families and ``Qwen3Config`` of the
tiny models built from a config (random init, seeded) with no download."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BadInputError

if TYPE_CHECKING:
    from transformers import Qwen3Config

BUILTIN_SPECS = ("tiny-block-dlm", "tiny-full-dlm", "tiny-ar", "smollm2-135m")

TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "init_seed": 0,
}
TINY_FAMILY = {"tiny-block-dlm": "block-diffusion", "tiny-full-dlm": "full-diffusion", "tiny-ar": "ar"}


def tiny_config(**sizes: Any) -> Qwen3Config:
    """The ``Qwen3Config`` of the built-in tiny models (sizes override :data:`TINY_DEFAULTS`)."""
    from transformers import Qwen3Config

    s = {**TINY_DEFAULTS, **sizes}
    heads, kv = int(s["num_heads"]), int(s["num_kv_heads"])
    if s["hidden_size"] % heads or heads % kv:
        raise BadInputError(f"hidden_size {s['hidden_size']} must divide by num_heads {heads}, "
                            f"and num_heads by num_kv_heads {kv}")
    return Qwen3Config(
        vocab_size=264, hidden_size=int(s["hidden_size"]), intermediate_size=int(s["intermediate_size"]),
        num_hidden_layers=int(s["num_layers"]), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=int(s["hidden_size"]) // heads, max_position_embeddings=int(s["max_position_embeddings"]),
        rope_theta=float(s["rope_theta"]),  # type: ignore[call-arg]  # a parameter in transformers 4, a legacy kwarg in 5
        tie_word_embeddings=True, pad_token_id=256, eos_token_id=257, bos_token_id=None, use_cache=False,
    )


SIZE_ARGS = tuple(TINY_DEFAULTS)
