"""Loading a model: :func:`load_model` builds a built-in tiny model or loads a local directory,
GGUF file or hub id into a :class:`~dllm_bench.models.adapter.ModelAdapter` (device, dtype,
family, mask token, EOS ids, weight identity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from ..schema import canonical_json, sha256_file, sha256_text
from .adapter import SIDECAR, ModelAdapter
from .checks import check_model_args, check_model_source
from .families import DEFAULT_BLOCK_SIZE, FAMILIES, detect_family, find_mask_id
from .gguf import check_gguf, gguf_cache_dir, smollm2_gguf, store_converted
from .specs import SIZE_ARGS, TINY_DEFAULTS, TINY_FAMILY, tiny_config
from .tokenizer import TOKENIZER_VERSION, build_byte_tokenizer


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise BadInputError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(table)}")
    return table[dtype]


def _build_tiny(spec: str, args: dict[str, Any], device: torch.device, dtype: torch.dtype,
                arg_source: str = "model arg") -> ModelAdapter:
    from transformers import Qwen3ForCausalLM

    family = args.pop("family", None) or TINY_FAMILY[spec]
    sizes = {k: args.pop(k) for k in list(args) if k in SIZE_ARGS}
    block_size = args.pop("block_size", None) or DEFAULT_BLOCK_SIZE[family]
    attn = args.pop("attn_backend", "sdpa")
    weights = args.pop("weights", True)
    _reject_unknown(spec, args, arg_source)
    cfg = tiny_config(**sizes)
    seed = int({**TINY_DEFAULTS, **sizes}["init_seed"])
    ident: dict[str, Any] = {"spec": spec, "family": family, "config": cfg.to_dict(), "init_seed": seed,
                             "tokenizer": TOKENIZER_VERSION, "block_size": block_size}
    ident["config"].pop("transformers_version", None)
    config_sha = sha256_text(canonical_json(ident))
    cfg._attn_implementation = "sdpa"
    if weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(cfg)
        model.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]  # transformers types .to as unbound
    else:
        model = _shapes_only(lambda: Qwen3ForCausalLM(cfg), dtype)
    tok = build_byte_tokenizer()
    ad = ModelAdapter(model=model, tokenizer=tok, family=family, spec=spec,
                      mask_token_id=tok.mask_token_id if family != "ar" else None, pad_token_id=tok.pad_token_id,
                      eos_token_ids=(tok.eos_token_id,), block_size=block_size, config_sha256=config_sha,
                      extra={"base": spec, "sizes": {**TINY_DEFAULTS, **sizes}}, weights_loaded=bool(weights))
    ad.set_attn_backend(attn)
    return ad


def _shapes_only(build: Any, dtype: torch.dtype) -> Any:
    """The model ``build()`` returns, built on the ``meta`` device: parameter shapes and dtype
    (hence ``num_parameters``, the embedding rows) without materializing any tensor.

    For ``weights=false`` (a client that only renders prompts and records the model's identity,
    e.g. the ``openai`` sampler): the weights' identity comes from the weight files' sha256
    (or, for built-in specs, the config), never from the tensors.
    """
    with torch.device("meta"):
        model = build()
    return model.to(dtype=dtype).eval()


def _reject_unknown(spec: str, args: dict[str, Any], source: str = "model arg") -> None:
    if args:
        raise BadInputError(f"unknown {source}(s) for {spec!r}: {', '.join(sorted(args))}")


def weights_sha256(directory: Path) -> str | None:
    """sha256 over the checkpoint's weight files: sha256 of ``"<name> <sha256>\\n"`` lines, sorted by name."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
                   and p.is_file())
    if not files:
        return None
    return sha256_text("".join(f"{p.name} {sha256_file(p)}\n" for p in files))


def _load_pretrained(spec: str, args: dict[str, Any], device: torch.device, dtype: torch.dtype,
                     arg_source: str = "model arg") -> ModelAdapter:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .. import native as nat

    path = Path(spec)
    gguf_file = None
    src = spec
    if spec == "smollm2-135m":
        g = smollm2_gguf()
        src, gguf_file = str(g.parent), g.name
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise BadInputError(f"GGUF file not found: {spec}")
        src, gguf_file = str(path.parent), path.name
    elif path.exists() and not path.is_dir():
        raise BadInputError(f"model path is not a directory or a .gguf file: {spec}")
    else:
        check_model_source(spec, args, arg_source=arg_source)
    sidecar: dict[str, Any] = {}
    if gguf_file is None and (path / SIDECAR).is_file():
        try:
            sidecar = json.loads((path / SIDECAR).read_text())
        except json.JSONDecodeError as exc:
            raise BadInputError(f"invalid sidecar: {exc}", path=path / SIDECAR) from None
    trust = bool(args.pop("trust_remote_code", False))
    args.pop("force_ar", None)
    weights = bool(args.pop("weights", True))
    attn = args.pop("attn_backend", "sdpa")
    family_arg = args.pop("family", None)
    block_arg = args.pop("block_size", None)
    mask_arg = args.pop("mask_token", None)
    _reject_unknown(spec, args, arg_source)
    gguf_sha = None
    gguf_path = str(Path(src) / gguf_file) if gguf_file else None
    if gguf_file:
        check_gguf(Path(src) / gguf_file)
        gguf_sha = sha256_file(Path(src) / gguf_file)
        cached = gguf_cache_dir() / gguf_sha[:32]
        if (cached / "DONE").is_file():  # converted before: a plain HF directory
            src, gguf_file = str(cached), None
    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    raw_cfg = nat.read_json(src, "config.json") if not gguf_file else {}
    gen_cfg = nat.read_json(src, "generation_config.json") if not gguf_file else {}
    declared = nat.declared_decoding_fields(raw_cfg, gen_cfg)
    mt = str(raw_cfg.get("model_type", "")).lower()
    layout = nat.LAYOUTS.get(mt) if not trust else None
    try:
        if layout:
            config = layout.make_config(raw_cfg)
        else:
            config = AutoConfig.from_pretrained(src, trust_remote_code=trust, **kw)
            mt = (getattr(config, "model_type", "") or "").lower()
        tok = nat.load_tokenizer(src, trust, config if layout else None, **kw)
    except (OSError, ValueError) as exc:
        hint = " (custom code: add --model-arg trust_remote_code=true)" if "trust_remote_code" in str(exc) else ""
        raise BadInputError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}{hint}") from None
    family, shift = detect_family(mt, raw_cfg.get("architectures") or getattr(config, "architectures", None), spec)
    family = family_arg or sidecar.get("family") or family
    if family not in FAMILIES:
        raise BadInputError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    shift = bool(sidecar.get("logits_shift", shift))
    load_kw = {"dtype": dtype, **kw}
    if not weights:
        import transformers

        auto = AutoModel if "llada" in mt else AutoModelForCausalLM
        model = _shapes_only(lambda: getattr(transformers, layout.model_class)(config) if layout
                             else auto.from_config(config, trust_remote_code=trust), dtype)
    elif layout:
        # released SDAR / TraDo (Qwen3), Dream (Qwen2) and LLaDA (Llama) layouts in a stock class:
        # the diffusion behaviour comes from our 4-D masks, and the native KV cache API works.
        model = nat.load_native_model(layout, src, config, dtype, spec, mt)
    else:
        auto = AutoModel if "llada" in mt else AutoModelForCausalLM
        try:
            model = auto.from_pretrained(src, trust_remote_code=trust, attn_implementation="sdpa", **load_kw)
        except (ValueError, TypeError):
            model = auto.from_pretrained(src, trust_remote_code=trust, **load_kw)
    if gguf_file and gguf_sha and weights:  # de-quantising a GGUF is slow (tens of seconds): keep an HF-format copy
        store_converted(model, tok, gguf_cache_dir() / gguf_sha[:32])
    if weights:
        model.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    eos = list(sidecar.get("eos_token_ids") or [])
    if not eos:
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        eos += declared.get("eos_token_ids", [])
        if family != "ar":  # chat-turn ends of diffusion checkpoints
            eos += [tok.get_vocab().get(name) for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")]
        eos = list(dict.fromkeys(e for e in eos if e is not None))
    block = block_arg or sidecar.get("block_size") or declared.get("block_size") or DEFAULT_BLOCK_SIZE[family]
    mask_id = sidecar.get("mask_token_id") if sidecar and mask_arg is None else None
    if mask_id is None:
        mask_id = find_mask_id(tok, family, mask_arg or sidecar.get("mask_token"),
                                None if sidecar.get("mask_token") else declared.get("mask_token_id"))
    rows = int(model.get_input_embeddings().weight.shape[0])
    if mask_id is not None and not 0 <= mask_id < rows:
        raise BadInputError(f"mask token id {mask_id} is outside the model's {rows} embeddings")
    wsha = gguf_sha or (weights_sha256(Path(src)) if Path(src).is_dir() else None)
    ad = ModelAdapter(model=model, tokenizer=tok, family=family, spec=spec, mask_token_id=mask_id,
                      pad_token_id=int(tok.pad_token_id), eos_token_ids=tuple(int(e) for e in eos) or (0,),
                      block_size=block, logits_shift=shift, config_sha256=sidecar.get("base_config_sha256"),
                      weights_sha256=wsha, training=sidecar.get("training"),
                      gguf_file=gguf_path, extra={"base": sidecar.get("base", spec), "source_dir": src},
                      weights_loaded=weights)
    # a released block-diffusion checkpoint (SDAR / TraDo, no sidecar) decodes with blocks counted from
    # sequence position 0, as its reference generate.py does; our own checkpoints record theirs
    ad.block_alignment = sidecar.get("block_alignment") or ("absolute" if family == "block-diffusion" and not sidecar
                                                            else "response")
    # LLaDA's own modeling code converts the mask into an attention bias and then calls SDPA without
    # it (Fast-dLLM llada/model/modeling_llada.py at 24cc59e): padding would be attended
    ad.masks_padding = not (trust and "llada" in mt)
    ad.attn_backend = getattr(model.config, "_attn_implementation", None) or "sdpa"
    ad.set_attn_backend(attn)
    return ad


def load_model(spec: str, *, arg_source: str = "model arg", **model_args: Any) -> ModelAdapter:
    """Load or build a model and wrap it in a :class:`ModelAdapter`.

    Args:
        spec: a built-in spec (``tiny-block-dlm``, ``tiny-full-dlm``, ``tiny-ar``,
            ``smollm2-135m``), a local checkpoint directory, a ``.gguf`` file, or a hub id.
        **model_args: ``dtype``, ``device``, ``family``, ``block_size``, ``mask_token``,
            ``attn_backend``, ``trust_remote_code``, ``force_ar`` (load a non-causal
            checkpoint as ``ar`` anyway), ``weights`` (default true; false: tokenizer, config and
            identity only — the model is built on the ``meta`` device, no tensor is read or
            allocated, ``weights_sha256`` still hashes the weight files; for clients of a serving
            engine, e.g. the ``openai`` sampler; in-process samplers refuse such a model); for tiny specs also the sizes
            (``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``,
            ``intermediate_size``, ``max_position_embeddings``, ``rope_theta``, ``init_seed``).

        arg_source: how model-arg errors name the args (``--model-arg`` from the CLI).

    Returns:
        the adapter, in eval mode, on ``device``.

    Raises:
        BadInputError: unknown spec (with did-you-mean), missing files, a checkpoint
            directory without weights or tokenizer, a truncated safetensors file, a
            non-causal checkpoint as ``ar`` (:func:`check_model_dir`), unknown or mistyped
            model args (naming ``arg_source``), a diffusion model
            without a findable mask token, a released layout whose config or weights have no
            native equivalent (the message names the field).
    """
    args = dict(model_args)
    check_model_args(args, arg_source)
    device = resolve_device(args.pop("device", None))
    dtype = resolve_dtype(args.pop("dtype", None), device)
    if spec in TINY_FAMILY:
        return _build_tiny(spec, args, device, dtype, arg_source)
    return _load_pretrained(spec, args, device, dtype, arg_source)
