"""The networks trainers train: :class:`PolicyNet` (a causal-LM-shaped model read at chosen
positions, with chunked log-softmax) and :class:`ValueNet` (backbone + zero-initialised value
head; :func:`build_value_net` / :func:`save_value_net` and its directory format), and
:func:`load_adapter` (the model to train, on the training attention path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from dllm_bench.models.layout import AttentionLayout, forward_mask_kwargs

from .config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from dllm_bench.models import ModelAdapter

    from .engine import Engine
    from .rl_config import ValueOptions
    from .trajectory import Family

VALUE_HEAD_FILE = "value_head.pt"
VALUE_META_FILE = "dllm_bench_value.json"


class PolicyNet(torch.nn.Module):
    """A causal-LM-shaped transformers model read at chosen positions only.

    ``forward(input_ids [n, T], layout, position_ids [n, T], gather_index [n, K]) -> logits
    [n, K, V]`` (float32; ``layout`` an AttentionLayout of n rows or a ``[n, 1, T, T]`` bool
    mask): the backbone runs once, the LM head only on the ``K`` gathered columns, so memory is
    ``O(K·V)`` instead of ``O(T·V)``.

    With ``targets [n, K]`` it returns ``log softmax(logits / temperature)[targets]`` ``[n, K]``
    instead (``banned`` token removed from the softmax), computed in chunks of columns so that
    at most ``logit_chunk_elems`` float32 logits exist at once; above that size each chunk is
    recomputed in backward (activation checkpointing of the LM head) — real vocabularies
    (150k) times long responses never materialise ``[n, K, V]``.

    The layout is read as a dense 4-D mask (:func:`dllm_bench.models.layout.forward_mask_kwargs`):
    training forces the ``sdpa``/``eager`` attention paths.
    """

    logit_chunk_elems: int = 1 << 26

    def __init__(self, lm: PreTrainedModel, attn_backend: str = "sdpa"):
        super().__init__()
        self.lm = lm
        self.attn_backend = attn_backend if attn_backend in ("sdpa", "eager") else "sdpa"
        if attn_backend not in ("sdpa", "eager"):
            try:
                lm.set_attn_implementation(self.attn_backend)
            except (AttributeError, TypeError):
                lm.config._attn_implementation = self.attn_backend
        # stock transformers LMs: backbone + LM head on gathered columns; remote-code models
        # (LLaDA: 4-D mask as `attention_bias`, no position ids) go through their own forward
        self.fast = self._has_backbone()

    def _has_backbone(self) -> bool:
        import inspect

        try:
            dec = self.backbone()
            head = self.lm.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return False
        return head is not None and "position_ids" in inspect.signature(dec.forward).parameters

    def backbone(self) -> torch.nn.Module:
        return self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model

    def _full_logits(self, input_ids: torch.Tensor, layout: AttentionLayout | torch.Tensor,
                     position_ids: torch.Tensor, gather_index: torch.Tensor) -> torch.Tensor:
        import inspect

        params = inspect.signature(self.lm.forward).parameters
        kw: dict[str, Any] = {"input_ids": input_ids}
        if "attention_bias" in params:  # LLaDA's remote code: the boolean mask as `attention_bias`
            kw["attention_bias"] = forward_mask_kwargs(layout, "sdpa", input_ids, torch.bool)["attention_mask"]
        else:
            kw.update(forward_mask_kwargs(layout, self.attn_backend, input_ids, next(self.lm.parameters()).dtype))
        if "position_ids" in params:
            kw["position_ids"] = position_ids
        if "use_cache" in params:
            kw["use_cache"] = False
        out = self.lm(**kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, logits.shape[-1])
        return torch.gather(logits, 1, idx).float()

    def forward(self, input_ids: torch.Tensor, layout: AttentionLayout | torch.Tensor, position_ids: torch.Tensor,
                gather_index: torch.Tensor, targets: torch.Tensor | None = None, temperature: float = 1.0,
                banned: int | None = None) -> torch.Tensor:
        if not self.fast:
            logits = self._full_logits(input_ids, layout, position_ids, gather_index)
            if targets is None:
                return logits
            if banned is not None:
                logits = logits.index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
            return torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        dtype = next(self.lm.parameters()).dtype
        out = self.backbone()(input_ids=input_ids, **forward_mask_kwargs(layout, self.attn_backend, input_ids, dtype),
                              position_ids=position_ids, use_cache=False)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, h.shape[-1])
        hk = torch.gather(h, 1, idx)
        head = self.lm.get_output_embeddings()
        if targets is None:
            return head(hk).float()

        def chunk_logp(hc: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
            logits = head(hc).float()
            if banned is not None:
                logits = logits.index_fill(-1, torch.tensor([banned], device=logits.device), float("-inf"))
            return torch.log_softmax(logits / temperature, dim=-1).gather(-1, tc[..., None]).squeeze(-1)

        n, K = targets.shape
        V = head.weight.shape[0]
        cols = max(1, self.logit_chunk_elems // max(n * V, 1))
        if cols >= K:
            return chunk_logp(hk, targets)
        from torch.utils.checkpoint import checkpoint

        parts = []
        for c in range(0, K, cols):
            hc, tc = hk[:, c:c + cols], targets[:, c:c + cols]
            parts.append(checkpoint(chunk_logp, hc, tc, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_logp(hc, tc))
        return torch.cat(parts, dim=1)


class ValueNet(torch.nn.Module):
    """Diffusion value model (TraceRL, arXiv 2509.06949; dLLM-RL
    ``train/init_trado_value_model.py`` at 10b4fd1): a backbone copy + ``Linear(hidden, 1,
    bias=False)`` head initialised to zero, so V ≡ 0 at the start.

    ``forward(input_ids, layout, position_ids, gather_index) -> [n, K]`` float32 values
    read at the gathered columns (the same packed rows as the policy).
    """

    def __init__(self, backbone: PreTrainedModel, hidden_size: int, attn_backend: str = "sdpa"):
        super().__init__()
        self.backbone = backbone
        self.attn_backend = attn_backend if attn_backend in ("sdpa", "eager") else "sdpa"
        self.head = torch.nn.Linear(hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.head.weight)

    def forward(self, input_ids: torch.Tensor, layout: AttentionLayout | torch.Tensor, position_ids: torch.Tensor,
                gather_index: torch.Tensor) -> torch.Tensor:
        dtype = self.head.weight.dtype
        out = self.backbone(input_ids=input_ids, **forward_mask_kwargs(layout, self.attn_backend, input_ids, dtype),
                            position_ids=position_ids, use_cache=False)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        idx = gather_index.clamp_min(0)[..., None].expand(-1, -1, h.shape[-1])
        return self.head(torch.gather(h, 1, idx)).squeeze(-1).float()


def build_value_net(opts: ValueOptions, adapter: ModelAdapter, device: torch.device) -> ValueNet:
    """The value model: a backbone (policy copy / saved value dir / model spec) + head (dLLM-RL
    ``train/init_trado_value_model.py`` at 10b4fd1)."""
    import copy

    src = opts.model
    if src is not None and (Path(src) / VALUE_META_FILE).is_file():
        from transformers import AutoModel

        meta = json.loads((Path(src) / VALUE_META_FILE).read_text())
        backbone = AutoModel.from_pretrained(src, dtype=adapter.dtype)
        net = ValueNet(backbone, int(meta["hidden_size"]), adapter.attn_backend)
        net.head.weight.data.copy_(torch.load(Path(src) / VALUE_HEAD_FILE, map_location="cpu"))
        return net.to(device)
    if src is None:
        lm = adapter.model
    else:
        from dllm_bench.models import load_model

        lm = load_model(src, dtype=str(adapter.dtype).replace("torch.", ""), device=str(device)).model
    dec = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    backbone = copy.deepcopy(dec)
    backbone.requires_grad_(True)
    return ValueNet(backbone, int(lm.config.hidden_size), adapter.attn_backend).to(device)


def save_value_net(engine: Engine, vmodel: torch.nn.Module, directory: Path) -> Path:
    """Save the value model (backbone in HF format + head) so ``ValueOptions.model`` can load it."""
    engine.accelerator.wait_for_everyone()
    state = engine.accelerator.get_state_dict(vmodel)
    if engine.is_main:
        inner = cast(ValueNet, engine.unwrap(vmodel))  # the ValueNet that engine.prepare wrapped
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        inner.backbone.save_pretrained(d, state_dict=bb, safe_serialization=True)
        torch.save(state["head.weight"].detach().cpu(), d / VALUE_HEAD_FILE)
        (d / VALUE_META_FILE).write_text(json.dumps({"format": 1, "hidden_size": inner.head.in_features}) + "\n")
    engine.accelerator.wait_for_everyone()
    return Path(directory)


def load_adapter(cfg: TrainConfig, device: torch.device | None = None) -> ModelAdapter:
    """``load_model(cfg.model, **cfg.model_args)`` in float32 unless ``dtype`` is given, in
    train mode, with the training attention path (sdpa/eager)."""
    from dllm_bench.models import load_model

    args = dict(cfg.model_args)
    args.setdefault("dtype", "float32")
    if device is not None:
        args.setdefault("device", str(device))
    adapter = load_model(cfg.model, **args)
    if adapter.attn_backend not in ("sdpa", "eager"):
        adapter.set_attn_backend("sdpa")
    return adapter


FAMILY_SHORT: dict[str, Family] = {"block-diffusion": "block", "full-diffusion": "full", "ar": "ar"}
