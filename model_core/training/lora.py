"""LoRA adapters on the DiT with the release's (PEFT) names, so `model_core.checkpoint` merges them on load.

"LoRA: Low-Rank Adaptation of Large Language Models" (Hu et al. 2021). The release trains r = alpha = 4 adapters on
target_modules ["q", "k", "v", "o", "ffn.0", "ffn.2"] (MODEL_SPEC.md section 8). PEFT matches a target against the
end of a module's dotted name, so inside every block the adapters sit on self_attn.{q,k,v,o}, cross_attn.{q,k,v,o}
and ffn.{0,2}; nothing else in the DiT ends that way.

A wrapped Linear keeps PEFT's layout, so the model's own state dict already has the release's key names:
    <name>.base_layer.weight / .bias     the frozen pretrained Linear
    <name>.lora_A.default.weight [r, in] Kaiming-uniform init
    <name>.lora_B.default.weight [out, r] zero init (training starts exactly at the pretrained model)
and forward(x) = base_layer(x) + (alpha / r) * lora_B(lora_A(x)). Saved under `action_head.model.base_model.model.`
with an adapter_config.json (r, lora_alpha), `load_model` merges W + (alpha / r) B A.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

ADAPTER = "default"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(rank, base.out_features, bias=False)})
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        a, b = self.lora_A[ADAPTER], self.lora_B[ADAPTER]
        a.to(device=base.weight.device, dtype=base.weight.dtype)
        b.to(device=base.weight.device, dtype=base.weight.dtype)
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B[ADAPTER](self.lora_A[ADAPTER](x)) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, computed as model_core.checkpoint merges it (in float32, cast back)."""
        w = self.base_layer.weight
        delta = self.lora_B[ADAPTER].weight.float() @ self.lora_A[ADAPTER].weight.float()
        return (w.float() + self.scaling * delta).to(w.dtype)


def matches(name: str, targets: tuple[str, ...]) -> bool:
    """PEFT's suffix rule, restricted to the transformer blocks."""
    return name.startswith("blocks.") and any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(dit: nn.Module, rank: int, alpha: float, targets: tuple[str, ...]) -> list[str]:
    """Wrap every matching nn.Linear of `dit` in place; returns the wrapped module names (sorted)."""
    wrapped = []
    for name, module in list(dit.named_modules()):
        if isinstance(module, nn.Linear) and matches(name, targets):
            parent_name, _, child = name.rpartition(".")
            parent = dit.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(module, rank, alpha))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"LoRA targets {list(targets)} match no Linear inside the DiT blocks")
    return sorted(wrapped)


def lora_modules(dit: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in dit.named_modules() if isinstance(m, LoRALinear)}


def merged_state_dict(dit: nn.Module) -> dict[str, torch.Tensor]:
    """The plain DiT's state dict (bare names) with every adapter merged: what loading the checkpoint gives."""
    out: dict[str, torch.Tensor] = {}
    adapters = lora_modules(dit)
    for key, value in dit.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            module, _, param = key.replace(".base_layer.", ".").rpartition(".")
            out[f"{module}.{param}"] = adapters[module].merged_weight().detach() if param == "weight" else value
        else:
            out[key] = value
    return out


def adapter_config(rank: int, alpha: float, targets: tuple[str, ...]) -> dict:
    """adapter_config.json as PEFT writes it (the fields model_core.checkpoint reads: r, lora_alpha)."""
    return {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
            "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": None}
