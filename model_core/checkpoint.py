"""DreamZero checkpoints: load and save the DiT in the release's layout (MODEL_SPEC.md section 2).

Layout of a checkpoint directory:
    config.json                              DiT constructor values (flat, or nested anywhere in a release config)
    model.safetensors                        or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    experiment_cfg/metadata.json             normalisation statistics per embodiment (exposed, never interpreted here)
Keys may be bare (`blocks.0...`), nested under `action_head.model.` (full checkpoints) or under
`action_head.model.base_model.model.` with LoRA adapters (`<name>.base_layer.weight`, `<name>.lora_A.default.weight`,
`<name>.lora_B.default.weight`), merged on load as W + (alpha / r) B A. Other top-level components (VAE, text
encoder, ...) stored beside the DiT are ignored here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model_core.config import DiTConfig
from model_core.dit import CausalWanModel
from model_core.errors import CheckpointError

RELEASE_LORA_PREFIX = "action_head.model.base_model.model."  # the DiT's keys in a LoRA checkpoint (PEFT layout)
PLAIN_PREFIX = "action_head.model."  # the DiT's keys in a full checkpoint
DIT_PREFIXES = (RELEASE_LORA_PREFIX, PLAIN_PREFIX)
STATE_FILE = "training_state.pt"  # the trainer's step and optimizer state beside the weights; never read here
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
METADATA_FILE = Path("experiment_cfg") / "metadata.json"
LORA_DEFAULT_ALPHA_OVER_R = 1.0  # the release trains LoRA with r = alpha = 4


@dataclass
class Checkpoint:
    """A loaded checkpoint: DiT config, DiT state dict (bare names, LoRA merged) and the side files."""

    path: Path
    config: DiTConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)  # experiment_cfg/metadata.json, if present
    extra: dict[str, Any] = field(default_factory=dict)  # the raw config.json


# ---------------------------------------------------------------------------------------------------------------
# Reading tensors
# ---------------------------------------------------------------------------------------------------------------

def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / INDEX_FILE).exists():
        index = json.loads((path / INDEX_FILE).read_text())
        try:
            names = sorted(set(index["weight_map"].values()))
        except (KeyError, AttributeError) as err:
            raise CheckpointError(f"{path / INDEX_FILE}: no 'weight_map' table") from err
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise CheckpointError(f"{path / INDEX_FILE} lists shard(s) that do not exist: {missing}")
        return [path / n for n in names]
    if (path / SINGLE_FILE).exists():
        return [path / SINGLE_FILE]
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint (names as stored)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(Path(path)):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
        except Exception as err:  # safetensors raises its own error types for truncated / corrupt headers
            raise CheckpointError(f"cannot read {file}: {err}") from err
    return tensors


def _lora_alpha_over_r(path: Path) -> float:
    cfg = path / "adapter_config.json" if path.is_dir() else None
    if cfg is not None and cfg.exists():
        adapter = json.loads(cfg.read_text())
        return float(adapter["lora_alpha"]) / float(adapter["r"])
    return LORA_DEFAULT_ALPHA_OVER_R


def dit_state_dict(tensors: dict[str, torch.Tensor], lora_scale: float = LORA_DEFAULT_ALPHA_OVER_R):
    """Bare DiT names from stored names: strip the action-head prefixes, merge LoRA adapters, drop other parts."""
    has_prefix = any(k.startswith(DIT_PREFIXES) for k in tensors)
    bare: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        for prefix in DIT_PREFIXES:
            if key.startswith(prefix):
                bare[key[len(prefix):]] = value
                break
        else:
            if not has_prefix:
                bare[key] = value
    merged: dict[str, torch.Tensor] = {}
    for key, value in bare.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            name = key.replace(".base_layer.", ".")
            module, param = name.rsplit(".", 1)
            if param == "weight":
                a = bare.get(f"{module}.lora_A.default.weight")
                b = bare.get(f"{module}.lora_B.default.weight")
                if (a is None) != (b is None):
                    raise CheckpointError(f"LoRA adapter of {module} is incomplete: lora_A "
                                          f"{'present' if a is not None else 'missing'}, lora_B "
                                          f"{'present' if b is not None else 'missing'}")
                if a is not None:
                    value = (value.float() + lora_scale * (b.float() @ a.float())).to(value.dtype)
            merged[name] = value
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------

def find_dit_config(node: Any) -> dict | None:
    """The first dict (depth-first) that holds DiT constructor values, in a flat or nested release config."""
    if isinstance(node, dict):
        if {"dim", "num_layers", "num_heads"} <= node.keys():
            return node
        for value in node.values():
            found = find_dit_config(value)
            if found is not None:
                return found
    if isinstance(node, list):
        for value in node:
            found = find_dit_config(value)
            if found is not None:
                return found
    return None


def read_dit_config(path: str | Path) -> DiTConfig:
    """The DiT config of a checkpoint directory from its config.json alone (no tensors are read)."""
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file} does not exist")
    found = find_dit_config(json.loads(config_file.read_text()))
    if found is None:
        raise CheckpointError(f"{config_file}: no DiT config (dict with dim/num_layers/num_heads) found")
    return DiTConfig.from_dict(found)


def shapes_implied_by(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the state-dict entries that pin the architecture (for config-vs-checkpoint checks)."""
    with torch.device("meta"):
        model = CausalWanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(config: DiTConfig, state_dict: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise one CheckpointError listing every missing, unexpected and mismatched tensor (key and both shapes)."""
    expected = shapes_implied_by(config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [(k, expected[k], tuple(state_dict[k].shape)) for k in sorted(expected)
                  if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{where} does not fit the DiT config (dim={config.dim}, layers={config.num_layers}, "
             f"in_dim={config.in_dim}, out_dim={config.out_dim}, model_type={config.model_type}):"]
    lines += [f"  shape mismatch {k}: model expects {list(e)}, checkpoint has {list(a)}" for k, e, a in mismatched[:20]]
    lines += [f"  missing {k} {list(expected[k])}" for k in missing[:20]]
    lines += [f"  unexpected {k} {list(state_dict[k].shape)}" for k in unexpected[:20]]
    more = max(0, len(mismatched) - 20) + max(0, len(missing) - 20) + max(0, len(unexpected) - 20)
    if more:
        lines.append(f"  ... and {more} more")
    raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------

def load_checkpoint(path: str | Path, config: DiTConfig | None = None) -> Checkpoint:
    """Read a checkpoint directory (or a single .safetensors file with `config` given) without building a model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    raw: dict[str, Any] = {}
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if config_file.exists():
        raw = json.loads(config_file.read_text())
    if config is None:
        found = find_dit_config(raw)
        if found is None:
            raise CheckpointError(f"{config_file}: no DiT config (dict with dim/num_layers/num_heads) found; "
                                  "pass a DiTConfig or a preset explicitly")
        config = DiTConfig.from_dict(found)
    state_dict = dit_state_dict(read_tensors(path), _lora_alpha_over_r(path))
    check_state_dict(config, state_dict, where=str(path))
    metadata = {}
    meta_file = (path if path.is_dir() else path.parent) / METADATA_FILE
    if meta_file.exists():
        try:
            metadata = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{meta_file}: invalid JSON ({err})") from err
    return Checkpoint(path=path, config=config, state_dict=state_dict, metadata=metadata, extra=raw)


def load_model(path: str | Path, config: DiTConfig | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[CausalWanModel, Checkpoint]:
    """Build the DiT on the meta device and load the checkpoint's weights into it (no double allocation)."""
    ckpt = load_checkpoint(path, config)
    with torch.device("meta"):
        model = CausalWanModel(ckpt.config)
    model.load_state_dict({k: v.to(dtype) for k, v in ckpt.state_dict.items()}, strict=True, assign=True)
    return model.to(device).eval(), ckpt


def write_tensors(tensors: dict[str, torch.Tensor], path: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write stored-name tensors into directory `path`: model.safetensors, or shards + model.safetensors.index.json."""
    path = Path(path)
    if max_shard_bytes is None:
        save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def save_checkpoint(model: CausalWanModel, path: str | Path, metadata: dict[str, Any] | None = None,
                    max_shard_bytes: int | None = None, prefix: str = PLAIN_PREFIX,
                    extra_config: dict[str, Any] | None = None) -> Path:
    """Write config.json, the weights (single file or shards + index) and experiment_cfg/metadata.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    (path / "config.json").write_text(json.dumps({**(extra_config or {}), **model.cfg.to_dict()}, indent=1))
    write_tensors(tensors, path, max_shard_bytes)
    if metadata is not None:
        (path / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
        (path / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
    return path


def lora_key_names(name: str) -> tuple[str, str, str]:
    """Stored names of a LoRA-wrapped Linear `name` (e.g. blocks.0.self_attn.q): base weight, A, B."""
    base = DIT_PREFIXES[0] + name
    return f"{base}.base_layer.weight", f"{base}.lora_A.default.weight", f"{base}.lora_B.default.weight"

