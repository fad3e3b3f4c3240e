"""CLIP image encoder of Wan2.1-I2V / DreamZero-14B, on transformers' `CLIPVisionModel`.

Model: the visual tower (ViT-H/14: width 1280, 32 blocks, 16 heads, patch 14, 224 px, exact-GELU MLP 5120) of
open_clip's xlm-roberta-large-vit-huge-14 ("Reproducible scaling laws for contrastive language-image learning",
Cherti et al. 2023), as Wan ships it in `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`. DreamZero's i2v
model conditions on the first frame's features [B, 257, 1280] (1 class + 16x16 patch tokens) through `img_emb`.

Wan's recipe (`CLIPModel.visual` in wan/modules/clip.py), reproduced here:
  image [-1, 1] -> bicubic resize to 224x224 (align_corners=False) -> [0, 1] -> CLIP mean/std normalisation
  -> patch embedding + class token + positions -> pre-norm -> the first 31 of 32 blocks ("use_31_block")
  -> no final norm, no head.
The model is built with 31 layers: the checkpoint's last block, `post_norm`'s use, `head` and the whole text tower
(`textual.*`, `log_scale`) are not needed.

Checkpoint layout: Wan's own module names, not open_clip's (`visual.conv1`, `visual.class_embedding`, ...): the .pth
is the state dict of Wan's `XLMRobertaCLIP` (no `model.` prefix; DiffSynth/DreamZero add one when loading it into
their wrapper): `visual.patch_embedding.weight`, `visual.cls_embedding [1, 1, D]`, `visual.pos_embedding [1, N, D]`,
`visual.pre_norm`, `visual.transformer.{i}.{norm1, attn.to_qkv (fused q|k|v rows), attn.proj, norm2, mlp.0, mlp.2}`,
`visual.post_norm`, `visual.head`.
Departure: the resize runs in float32 (Wan resizes in the input's dtype).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from model_core.errors import InputError
from model_core.vae import check_state_dict, read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ViT-H/14 minus its last block (Wan's use_31_block); open_clip's ViT uses exact GELU and LayerNorm eps 1e-5.
VIT_H_14_31 = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=31,
                   patch_size=14, image_size=224, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5)
# Tiny: 56 px / patch 14 -> 1 + 4x4 = 17 tokens of width 32; the checkpoint has 3 blocks, 2 are used.
VIT_TINY = VIT_H_14_31 | dict(hidden_size=32, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                              image_size=56)


# ---------------------------------------------------------------------------------------------------------------
# Key converter: Wan's XLMRobertaCLIP.visual <-> transformers' CLIPVisionModel (CLIPVisionTransformer)
# ---------------------------------------------------------------------------------------------------------------

_LAYER_PARTS = {  # HF `encoder.layers.{i}.<part>` -> Wan `visual.transformer.{i}.<part>` (q/k/v handled apart)
    "layer_norm1": "norm1", "self_attn.out_proj": "attn.proj", "layer_norm2": "norm2", "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}


def hf_to_wan_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPVisionTransformer tensors -> Wan checkpoint tensors (q, k, v fused into `to_qkv`)."""
    d = state["embeddings.class_embedding"].shape[-1]
    out = {
        "visual.patch_embedding.weight": state["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": state["embeddings.class_embedding"].reshape(1, 1, d),
        "visual.pos_embedding": state["embeddings.position_embedding.weight"].unsqueeze(0),
    }
    for key, value in state.items():
        if key.startswith(("pre_layrnorm.", "post_layernorm.")):
            name = "pre_norm" if key.startswith("pre_") else "post_norm"
            out[f"visual.{name}.{key.rsplit('.', 1)[1]}"] = value
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m and m.group(2) in _LAYER_PARTS:
            out[f"visual.transformer.{m.group(1)}.{_LAYER_PARTS[m.group(2)]}.{m.group(3)}"] = value
        elif m and m.group(2) == "self_attn.q_proj":
            qkv = [state[f"encoder.layers.{m.group(1)}.self_attn.{c}_proj.{m.group(3)}"] for c in "qkv"]
            out[f"visual.transformer.{m.group(1)}.attn.to_qkv.{m.group(3)}"] = torch.cat(qkv, dim=0)
    return out


def wan_to_hf_clip(original: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Wan checkpoint tensors -> CLIPVisionTransformer tensors for its first `num_layers` blocks."""
    d = original["visual.cls_embedding"].shape[-1]
    out = {
        "embeddings.patch_embedding.weight": original["visual.patch_embedding.weight"],
        "embeddings.class_embedding": original["visual.cls_embedding"].reshape(d),
        "embeddings.position_embedding.weight": original["visual.pos_embedding"].squeeze(0),
    }
    for p in ("weight", "bias"):
        out[f"pre_layrnorm.{p}"] = original[f"visual.pre_norm.{p}"]
        out[f"post_layernorm.{p}"] = original[f"visual.post_norm.{p}"]
        for i in range(num_layers):
            wan = f"visual.transformer.{i}."
            for hf, part in _LAYER_PARTS.items():
                out[f"encoder.layers.{i}.{hf}.{p}"] = original[f"{wan}{part}.{p}"]
            q, k, v = original[f"{wan}attn.to_qkv.{p}"].chunk(3, dim=0)  # rows [q | k | v], as Wan's view(3, n, d)
            out |= {f"encoder.layers.{i}.self_attn.{c}_proj.{p}": t for c, t in zip("qkv", (q, k, v))}
    return out


def _vision_core(model: CLIPVisionModel) -> nn.Module:
    """The CLIPVisionTransformer (transformers 4.x nests it as `vision_model`; 5.x is flat)."""
    return getattr(model, "vision_model", model)


# ---------------------------------------------------------------------------------------------------------------
# The frozen encoder
# ---------------------------------------------------------------------------------------------------------------

class ImageEncoder(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> penultimate-block CLIP tokens [B, 1 + (S/14)^2, D] (model dtype)."""

    def __init__(self, model: CLIPVisionModel):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, tiny: bool = False) -> ImageEncoder:
        """Load Wan's `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (`tiny=True`: one saved from
        `ImageEncoder.tiny()`)."""
        return cls.from_state_dict(read_state_dict(path), device, dtype, tiny, source=str(path))

    @classmethod
    def from_state_dict(cls, original: Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, tiny: bool = False,
                        source: str = "CLIP state dict") -> ImageEncoder:
        """Build from a state dict in Wan's CLIP layout; the unused last block, head and text tower are skipped."""
        config = CLIPVisionConfig(**(VIT_TINY if tiny else VIT_H_14_31))
        with torch.device("meta"):
            model = CLIPVisionModel(config)
        core = _vision_core(model)
        expected = {k: v.shape for k, v in hf_to_wan_clip(core.state_dict()).items()}
        unused = ("textual.", "log_scale", "visual.head", f"visual.transformer.{config.num_hidden_layers}.")
        check_state_dict(original, expected, source, ignore_prefixes=unused)
        wanted = {k: original[k].to(device=device, dtype=dtype) for k in expected}
        core.load_state_dict(wan_to_hf_clip(wanted, config.num_hidden_layers), strict=True, assign=True)
        emb = core.embeddings  # its non-persistent position_ids buffer is not in any checkpoint: rebuild it
        emb.position_ids = torch.arange(emb.num_positions, device=device).expand(1, -1)
        return cls(model)

    @classmethod
    def tiny(cls, seed: int = 0) -> ImageEncoder:
        """Width 32, 2 (+1 unused) blocks, 56 px -> 17 tokens; random weights."""
        torch.manual_seed(seed)
        return cls(CLIPVisionModel(CLIPVisionConfig(**VIT_TINY)))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The used weights under Wan's checkpoint names (a real file also holds the last block, head, text tower)."""
        return hf_to_wan_clip(_vision_core(self.model).state_dict())

    @property
    def num_tokens(self) -> int:
        return _vision_core(self.model).embeddings.num_positions

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, num_tokens, width] (257 x 1280 for ViT-H/14)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must be [B, 3, H, W] in [-1, 1], got shape {list(images.shape)}")
        size = self.model.config.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
        mean, std = (torch.tensor(c, device=x.device).view(1, 3, 1, 1) for c in (CLIP_MEAN, CLIP_STD))
        x = (x * 0.5 + 0.5 - mean) / std  # [-1, 1] -> [0, 1] -> CLIP normalisation, in float32
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=x.to(dtype)).last_hidden_state  # output of block 31, before post_layernorm
