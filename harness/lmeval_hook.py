"""Opt-in import hook: lets plain ``lm_eval --model dllm-bench`` find our lm-eval model.

lm-eval 0.4.13 discovers models only through its in-process registry (no entry points,
no plugins). ``dllm-bench-lm-eval --install-hook`` writes a ``dllm_bench_lmeval.pth`` into
site-packages whose one line calls :func:`install` at interpreter start. That only
puts a :class:`sys.meta_path` finder first (nothing is imported); when — and only if — some
code imports ``lm_eval.api.registry``, the finder lets the normal loader run and then

1. imports ``lm_eval.models`` (lm-eval's own lazy placeholders; lm-eval imports it only
   into an *empty* registry, so it must come before ours), and
2. registers ``dllm-bench`` as a lazy placeholder ``"dllm_bench.lmeval:DllmBenchLM"``;
   lm-eval's registry imports :mod:`dllm_bench.lmeval` only when that model is requested.

The finder removes itself after firing once. Any failure leaves lm-eval untouched.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

TARGET_MODULE = "lm_eval.api.registry"
PLACEHOLDER = "dllm_bench.lmeval:DllmBenchLM"


class _RegistryHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            try:
                importlib.import_module("lm_eval.models")
                if "dllm-bench" not in module.model_registry:
                    module.model_registry.register("dllm-bench", target=PLACEHOLDER)
            except Exception:  # noqa: BLE001 - never break lm-eval
                pass

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # wraps this one loader instance
        return spec


def install() -> None:
    """Insert the one-shot finder (idempotent; a no-op when the registry is already imported)."""
    if TARGET_MODULE in sys.modules or any(isinstance(f, _RegistryHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _RegistryHook())  # before PathFinder, which would find the module first
