"""The KV cache the samplers drive: :class:`SlotKVCache`, preallocated slots written and read
through windows, behind transformers' :class:`~transformers.Cache` contract."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache as _HFCache


class SlotKVCache(_HFCache):
    """Preallocated K/V slots per layer, written and read through windows the sampler sets.

    This implements the ``past_key_values.update(key, value, layer_idx)`` contract of
    transformers' :class:`~transformers.Cache`, so stock modeling code (Qwen3, Llama, ...)
    drives it unchanged. Per layer it holds ``keys``/``values`` of shape
    ``[batch, kv_heads, max_len, head_dim]`` (allocated on first use).

    Before each forward the sampler calls :meth:`window`: the forward's ``q`` new K/V rows
    are written to slots ``[write_start, write_start + q)`` and attention reads keys
    ``[0, read_end)`` (default ``write_start + q``). The attention mask passed to the model
    must therefore be ``[batch, 1, q, read_end]``.

    * Exact block-diffusion cache (dLLM-RL ``generate.py`` and
      ``sample/jetengine_ext/layers/attention.py`` at 10b4fd1): prefill writes the prompt
      ``[0, P)`` and :meth:`commit` marks it; each denoise forward of block ``[s, s+B)`` writes
      only the scratch slots ``[s, s+B)`` (the committed prefix ``[0, s)`` is never written)
      and reads ``[0, s+B)``; the commit forward rewrites ``[s, s+B)`` with the clean block's
      K/V and ``commit(s+B)``.
    * Fast-dLLM prefix cache (arXiv 2505.22618, §3.2; NVlabs/Fast-dLLM ``llada/generate.py`` at
      24cc59e): a full forward writes ``[0, T)``; window forwards over
      ``[s, T)`` read the stale prefix ``[0, s)``.
    * Fast-dLLM dual cache: window forwards over ``[s, e)`` read ``[0, T)`` (stale prefix and
      suffix).

    Args:
        batch: rows b.
        max_len: slots per row (prompt + generation).
    """

    is_compileable = False

    def __init__(self, batch: int, max_len: int):
        try:
            super().__init__(layers=[])
        except TypeError:  # pragma: no cover - transformers without the layers API
            pass
        self.batch, self.max_len = batch, max_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.committed = 0
        self._write_start = 0
        self._read_end: int | None = None

    # -- sampler side
    def window(self, write_start: int, read_end: int | None = None) -> SlotKVCache:
        """Set where the next forward writes (``write_start``) and how far it reads (``read_end``)."""
        if write_start < 0 or (read_end is not None and read_end > self.max_len):
            raise ValueError(f"window ({write_start}, {read_end}) outside [0, {self.max_len}]")
        self._write_start, self._read_end = write_start, read_end
        return self

    def commit(self, length: int) -> None:
        """Mark slots ``[0, length)`` as final (informational: :meth:`get_seq_length`)."""
        self.committed = length

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (1-D long tensor), e.g. after some sequences finished."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.batch = int(rows.numel())

    # -- transformers Cache contract
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key_states``/``value_states`` ``[b, h_kv, q, d]`` at the window; return the read view."""
        while len(self.keys) <= layer_idx:
            b, h, _, d = key_states.shape
            self.keys.append(torch.zeros(b, h, self.max_len, d, dtype=key_states.dtype, device=key_states.device))
            self.values.append(torch.zeros(b, h, self.max_len, value_states.shape[-1], dtype=value_states.dtype,
                                           device=value_states.device))
        q = key_states.shape[2]
        s = self._write_start
        if s + q > self.max_len:
            raise ValueError(f"cache overflow: writing [{s}, {s + q}) into {self.max_len} slots")
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[:, :, s:s + q].copy_(key_states)
        v[:, :, s:s + q].copy_(value_states)
        end = self._read_end if self._read_end is not None else s + q
        return k[:, :, :end], v[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.committed

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        end = self._read_end if self._read_end is not None else self._write_start + query_length
        return end, 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"SlotKVCache(batch={self.batch}, max_len={self.max_len}, committed={self.committed})"
