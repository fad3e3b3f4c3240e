"""Architecture configuration of DreamZero's CausalWanModel, and the named presets.

Numbers follow the DreamZero release (MODEL_SPEC.md section 1); every architecture number lives here and in a
checkpoint's `config.json`, nowhere else.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model_core.errors import ConfigError


@dataclass(frozen=True)
class DiTConfig:
    """Constructor values of the causal video-action DiT (names as in the release's config.json)."""

    model_type: Literal["i2v", "ti2v"]
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    frame_seqlen: int  # tokens per latent frame after the (1, 2, 2) patch embedding
    concat_first_frame_latent: bool  # i2v: in_dim = latent + 4 mask channels + first-frame latent "y"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    # Both released backbones carry CLIP image conditioning (img_emb, k_img/v_img), also the ti2v one.
    clip_dim: int = 1280
    # Action/state registers.
    num_frame_per_block: int = 2
    num_action_per_block: int = 24
    num_state_per_block: int = 1
    max_chunk_size: int = 4  # attention window = max_chunk_size blocks + the first frame
    action_dim: int = 32  # DiT-internal default the release never overrides
    max_state_dim: int = 64
    hidden_size: int = 1024  # state-encoder / action-decoder width
    num_categories: int = 1  # embodiment id is ignored by the release (category 0 always)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        checks = [
            ("model_type", self.model_type in ("i2v", "ti2v"), "must be 'i2v' or 'ti2v'"),
            ("dim", self.dim % self.num_heads == 0, f"must be divisible by num_heads={self.num_heads}"),
            ("dim", (self.dim // max(self.num_heads, 1)) % 2 == 0, "head_dim must be even for RoPE"),
            ("freq_dim", self.freq_dim % 2 == 0, "must be even"),
            ("num_frame_per_block", self.num_frame_per_block >= 1, "must be >= 1"),
            ("num_state_per_block", self.num_state_per_block == 1, "the release uses exactly 1 state token per block"),
            ("max_chunk_size", self.max_chunk_size >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"DiTConfig.{name}={getattr(self, name)!r}: {rule}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def local_attn_size(self) -> int:
        """Attention window in latent frames: max_chunk_size blocks plus the first frame (9 for the release)."""
        return self.max_chunk_size * self.num_frame_per_block + 1

    @property
    def window_tokens(self) -> int:
        return self.local_attn_size * self.frame_seqlen

    @property
    def latent_channels(self) -> int:
        """Channels of the noisy video latent (in_dim minus the i2v conditioning channels)."""
        return self.out_dim

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        """Build from a release-style config.json, ignoring keys that are not constructor values."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"DiT config is missing required field(s) {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "DiTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, DiTConfig] = {
    # Wan2.1-I2V-14B-480P backbone (the public DreamZero-DROID checkpoint): 352x640 frames -> 44x80 latents.
    "wan21_14b": DiTConfig(model_type="i2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40,
                           in_dim=36, out_dim=16, frame_seqlen=880, concat_first_frame_latent=True),
    # Wan2.2-TI2V-5B backbone: 160x320 frames -> 10x20 latents (VAE38, 16x spatial).
    "wan22_5b": DiTConfig(model_type="ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
                          in_dim=48, out_dim=48, frame_seqlen=50, concat_first_frame_latent=False),
    # ~60M parameters: for benchmarks that need a model with real arithmetic intensity on a CPU.
    "small": DiTConfig(model_type="ti2v", dim=512, ffn_dim=2048, num_heads=8, num_layers=12, in_dim=16, out_dim=16,
                       frame_seqlen=32, concat_first_frame_latent=False, text_dim=48, text_len=32, clip_dim=64,
                       freq_dim=256, action_dim=32, max_state_dim=64, hidden_size=256),
    # Tests and the demo: a tiny Wan2.1-style VAE (16 ch, 8x), 64x128 frames -> 8x16 latents -> 32 tokens per frame.
    "tiny": DiTConfig(model_type="ti2v", dim=128, ffn_dim=384, num_heads=4, num_layers=4, in_dim=16, out_dim=16,
                      frame_seqlen=32, concat_first_frame_latent=False, text_dim=48, text_len=32, clip_dim=32,
                      freq_dim=64, action_dim=32, max_state_dim=64, hidden_size=128),
}


# Pixel frame (tiled views) of the tiny and small presets: 8x VAE -> 8x16 latents -> 4x8 = 32 tokens per frame.
TINY_VIDEO_HW = (64, 128)


def preset(name: str) -> DiTConfig:
    """Look up a named preset; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]
