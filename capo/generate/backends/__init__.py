"""Inference backends behind one interface (`capo.generate.backends.base.Backend`): Hugging Face transformers, and vLLM
when it is installed. `load_backend` picks one by name."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from capo.errors import DataError
from capo.generate.backends.base import Backend, Generation

BACKENDS = ("hf", "vllm")

__all__ = ["BACKENDS", "Backend", "Generation", "load_backend", "vllm_available"]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def backend_options(name: str, dtype: str, batch_size: int, tensor_parallel_size: int = 1, device=None) -> dict:
    """The options each backend takes from a recipe's common arguments (vLLM batches by itself and places the model
    on its GPUs; HF: `device`, None for `capo.precision.resolve_device`)."""
    if name == "vllm":
        return {"dtype": dtype, "tensor_parallel_size": tensor_parallel_size}
    return {"dtype": dtype, "batch_size": batch_size, "device": device}


def load_backend(name: str, model: str, adapters: Mapping[str, str] | None = None, **options) -> Backend:
    """A backend for `model` (hub id or folder) with LoRA `adapters` {name: hub id or folder} registered.

    `options` go to the backend: HF takes dtype, batch_size, device, min_shared_tokens, max_batch_tokens; vLLM
    takes dtype, tensor_parallel_size, max_lora_rank, max_logprobs, seed and any `vllm.LLM` engine argument.
    """
    if name == "hf":
        from capo.generate.backends.hf import HFBackend

        return HFBackend(model, adapters, **options)
    if name == "vllm":
        if not vllm_available():
            raise DataError(
                "backend 'vllm' needs the vllm package, which is not installed (CUDA only: pip install "
                "'capo[infer]' in its own environment); use backend 'hf'", field="backend",
            )
        from capo.generate.backends.vllm import VLLMBackend

        return VLLMBackend(model, adapters, **options)
    raise DataError(f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})", field="backend")
