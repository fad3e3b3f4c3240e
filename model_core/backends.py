"""Inference backends for the DiT: how its Linear layers run on the hardware at hand.

A backend is a function `(model, device) -> model` registered under a name; configs select it by name. Today:
- "eager": the model as built (fp32 on CPU, bf16 on GPU; see `default_dtype`).
- "int8_dynamic": int8 weights with dynamic per-token activation quantization for every nn.Linear of the DiT
  (torch's dynamic quantized Linear; CPU only). About 4x faster than fp32 matmuls on this project's CPU machines.
GPU backends (FP8, NVFP4, TensorRT engines, torch.compile + CUDA graphs) register here the same way; TensorRT must
stay a lazy import so that CPU machines never need it.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from model_core.errors import ConfigError

Backend = Callable[[nn.Module, torch.device], nn.Module]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    def wrap(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn
    return wrap


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are 5-7x slower on the CPUs this was measured on), bf16 on GPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def apply_backend(model: nn.Module, name: str, device: torch.device | str = "cpu") -> nn.Module:
    """Prepare an eval-mode DiT for inference with the named backend."""
    if name not in _BACKENDS:
        raise ConfigError(f"unknown inference backend {name!r}; available: {available_backends()}")
    return _BACKENDS[name](model, torch.device(device))


@register_backend("eager")
def _eager(model: nn.Module, device: torch.device) -> nn.Module:
    return model


@register_backend("int8_dynamic")
def _int8_dynamic(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type != "cpu":
        raise ConfigError(f"backend 'int8_dynamic' runs on CPU only, device is {device}")
    if next(model.parameters()).dtype != torch.float32:
        raise ConfigError("backend 'int8_dynamic' quantizes an fp32 model; load the checkpoint with dtype float32")
    with warnings.catch_warnings():  # torch marks its quantized-tensor constructors as deprecated
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
