"""Build a ready-to-run `WorldActionEngine` from a checkpoint directory (or a random tiny one for tests).

A checkpoint written by this project holds, beside the release layout (config.json, model.safetensors,
experiment_cfg/metadata.json), a `dreamzero_policy` table in config.json:

    "dreamzero_policy": {"video_hw": [H, W], "engine": {...EngineConfig overrides...},
                         "encoders": {"vae": {"variant": "wan21", "tiny": true, "path": "encoders/vae.safetensors"},
                                      "text_encoder": {"tiny": true, "path": "encoders/text_encoder.safetensors"},
                                      "image_encoder": {"tiny": true, "path": "encoders/image_encoder.safetensors"}}}

Relative encoder paths resolve against the checkpoint directory. A public DreamZero checkpoint has no such table:
pass the Wan encoder files (Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth + tokenizer directory,
models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth) and the frame size as `overrides`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from model_core.backends import apply_backend, default_dtype
from model_core.checkpoint import PLAIN_PREFIX, Checkpoint, load_model, save_checkpoint
from model_core.config import TINY_VIDEO_HW, DiTConfig, preset
from model_core.dit import CausalWanModel
from model_core.engine import EngineConfig, WorldActionEngine
from model_core.errors import ConfigError
from model_core.image_encoder import ImageEncoder
from model_core.text_encoder import PromptEncoder
from model_core.vae import WanVAE

SECTION = "dreamzero_policy"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(root: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def load_encoders(spec: dict, root: Path, device, dtype):
    """Instantiate the frozen encoders a checkpoint's `encoders` table names."""
    vae_spec = spec.get("vae")
    if not vae_spec or "path" not in vae_spec:
        raise ConfigError(f"{SECTION}.encoders.vae.path is required (an original Wan VAE file)")
    vae = WanVAE.from_pretrained(_resolve(root, vae_spec["path"]), variant=vae_spec.get("variant", "wan21"),
                                 device=device, dtype=torch.float32, tiny=vae_spec.get("tiny", False))
    text_spec = spec.get("text_encoder")
    if not text_spec or "path" not in text_spec:
        raise ConfigError(f"{SECTION}.encoders.text_encoder.path is required (umT5 weights)")
    text = PromptEncoder.from_pretrained(_resolve(root, text_spec["path"]), _resolve(root, text_spec.get("tokenizer")),
                                         device=device, dtype=dtype, cache_dir=text_spec.get("cache_dir"),
                                         tiny=text_spec.get("tiny", False), lazy=True)
    image = None
    image_spec = spec.get("image_encoder")
    if image_spec:
        image = ImageEncoder.from_pretrained(_resolve(root, image_spec["path"]), device=device, dtype=dtype,
                                             tiny=image_spec.get("tiny", False))
    return vae, text, image


def build_engine(checkpoint: str | Path, device: str | torch.device = "cpu", backend: str = "eager",
                 overrides: dict[str, Any] | None = None) -> tuple[WorldActionEngine, Checkpoint]:
    """Load the DiT and its encoders, apply the inference backend, and return the engine and the checkpoint."""
    device = torch.device(device)
    dtype = default_dtype(device)
    dit, ckpt = load_model(checkpoint, device=device, dtype=dtype)
    section = _merge(ckpt.extra.get(SECTION, {}), overrides or {})
    if "video_hw" not in section:
        raise ConfigError(f"{checkpoint}: config.json has no {SECTION}.video_hw; pass it as an override")
    root = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    vae, text, image = load_encoders(section.get("encoders", {}), root, device, dtype)
    engine_cfg = EngineConfig(video_hw=tuple(section["video_hw"]), **section.get("engine", {}))
    dit = apply_backend(dit, backend, device)
    return WorldActionEngine(dit, vae, text, image, engine_cfg), ckpt


def tiny_components(seed: int = 0, dit_config: DiTConfig | None = None):
    """Random-weight tiny DiT and tiny encoders of the real classes (tests, the demo's starting point)."""
    torch.manual_seed(seed)
    dit = CausalWanModel(dit_config or preset("tiny")).eval()
    return dit, WanVAE.tiny("wan21", seed=seed), PromptEncoder.tiny(seed=seed), ImageEncoder.tiny(seed=seed)


def save_bundle(directory: str | Path, dit: CausalWanModel, vae: WanVAE, text: PromptEncoder,
                image: ImageEncoder | None, video_hw: tuple[int, int], metadata: dict | None = None,
                engine: dict[str, Any] | None = None, tiny_encoders: bool = True,
                prefix: str = PLAIN_PREFIX) -> Path:
    """Write a self-contained checkpoint: DiT (release layout), encoders (original layouts) and the section."""
    from safetensors.torch import save_file

    directory = Path(directory)
    (directory / "encoders").mkdir(parents=True, exist_ok=True)
    encoders: dict[str, Any] = {}
    for name, enc in (("vae", vae), ("text_encoder", text), ("image_encoder", image)):
        if enc is None:
            continue
        rel = f"encoders/{name}.safetensors"
        save_file({k: v.contiguous() for k, v in enc.original_state_dict().items()}, str(directory / rel))
        encoders[name] = {"path": rel, "tiny": tiny_encoders}
    encoders["vae"]["variant"] = vae.variant
    section = {"video_hw": list(video_hw), "engine": engine or {}, "encoders": encoders}
    return save_checkpoint(dit, directory, metadata=metadata, extra_config={SECTION: section}, prefix=prefix)

