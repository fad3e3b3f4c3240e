"""Wan video VAEs, frozen frame encoder of DreamZero, on diffusers' `AutoencoderKLWan`.

Implements the causal 3D video VAEs of "Wan: Open and Advanced Large-Scale Video Generative Models"
(arXiv 2503.20314, section 3.1 "Spatio-temporal variational autoencoder"):

| variant | checkpoint       | latent channels | stride (T, H, W) | used by                                         |
|---------|------------------|-----------------|------------------|-------------------------------------------------|
| wan21   | `Wan2.1_VAE.pth` | 16              | 4, 8, 8          | DreamZero 14B (Wan2.1-I2V-14B)                  |
| wan22   | `Wan2.2_VAE.pth` | 48              | 4, 16, 16        | DreamZero 5B (Wan2.2-TI2V-5B)                   |
Wan2.2's VAE adds a 2x2 pixel patchify (12 input channels), residual down/up blocks and a wider decoder (256 vs 160).

Video [B, 3, T, H, W] in [-1, 1] with T = 1 + 4k encodes to latents [B, C, 1 + k, H/s, W/s]: the first frame alone
makes latent frame 0, every further 4 frames make one latent frame. Latents are the posterior mean, normalised per
channel as DreamZero/Wan do: (mu - mean) * (1 / std).

Streaming (closed loop): the encoder is causal, and both Wan and diffusers encode a clip chunk by chunk (1 frame, then
4 frames at a time) while carrying a cache of the last input frames of every causal convolution. `encode_incremental`
keeps that cache across calls, so feeding a trajectory in pieces gives bit for bit the latents the whole-video
`encode` gives (tests/model_core/test_vae.py checks it; the cache holds 2 frames of activations per causal conv).
`encode_block` is what the DreamZero release does instead on every later control call: a fresh encode of
[first frame repeated, new frames], dropping the first latent.

Departures from the release: the release encodes with DiffSynth-style spatial tiling (tiles of 34x34 latents, stride
18x16, blended); this module encodes untiled (exact, more memory). Checkpoints load through `wan_to_diffusers_keys`
from the original Wan key layout (`encoder.conv1`, `encoder.downsamples.*`, `conv1`, `conv2`, `decoder.*`).
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, patchify
from torch import nn

from model_core.errors import CheckpointError, ConfigError, InputError

# Per-channel latent statistics, from Wan2.1 `wan/modules/vae.py` and Wan2.2 `wan/modules/vae2_2.py`.
WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
WAN22_LATENTS_MEAN = [-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
                      -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
                      -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                      -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
                      -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
                      0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667]
WAN22_LATENTS_STD = [0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
                     0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
                     0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                     0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
                     0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
                     0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744]

# `AutoencoderKLWan` configs of the released checkpoints. Both: dim_mult [1, 2, 4, 4], 2 res blocks per level,
# no attention outside the middle block, temporal downsampling in levels 1 and 2 (4x).
VARIANTS: dict[str, dict] = {
    "wan21": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], latents_mean=WAN21_LATENTS_MEAN,
                  latents_std=WAN21_LATENTS_STD, scale_factor_temporal=4, scale_factor_spatial=8),
    "wan22": dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                  attn_scales=[], temperal_downsample=[False, True, True], latents_mean=WAN22_LATENTS_MEAN,
                  latents_std=WAN22_LATENTS_STD, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                  scale_factor_temporal=4, scale_factor_spatial=16),
}
# Tiny test configs: same class, strides, latent channels and statistics; few channels (the wan22 decoder keeps a
# different width from its encoder, like the real 160/256).
TINY_OVERRIDES: dict[str, dict] = {"wan21": dict(base_dim=8), "wan22": dict(base_dim=8, decoder_base_dim=12)}


def _variant_config(variant: str, tiny: bool) -> dict:
    if variant not in VARIANTS:
        raise ConfigError(f"VAE variant {variant!r} is unknown; valid variants: {sorted(VARIANTS)}")
    return VARIANTS[variant] | (TINY_OVERRIDES[variant] if tiny else {})


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files (shared by the three frozen encoders)
# ---------------------------------------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from `.safetensors` or a torch `.pth` (never unpickling code: weights_only;
    zip-format files are memory-mapped, pre-1.6 pickle files read whole)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # truncated files, foreign formats, pickles that need code
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a flat name -> tensor state dict")
    return dict(state)


def check_state_dict(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str,
                     ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Raise one CheckpointError if `found` lacks, adds (outside `ignore_prefixes`) or mis-shapes an `expected` tensor.

    Keys are the checkpoint's own (original) names, so the message points at what is in the file.
    """
    for key, shape in expected.items():
        if key in found and tuple(found[key].shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(found[key].shape)} "
                                  f"but the model expects {list(shape)}")
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and not k.startswith(ignore_prefixes)]
    for what, keys in (("lacks", missing), ("has unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise CheckpointError(f"{source} {what} tensors: {keys[:5]}{more}")


# ---------------------------------------------------------------------------------------------------------------
# Key converter: original Wan layout <-> diffusers AutoencoderKLWan
# ---------------------------------------------------------------------------------------------------------------

# Inside a residual block: Wan's nn.Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d).
_RESNET_PARTS = [("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                 ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")]
# Middle: Sequential(ResidualBlock, AttentionBlock, ResidualBlock); head: Sequential(RMS_norm, SiLU, CausalConv3d).
_TOP_PARTS = [("mid_block.resnets.0.", "middle.0."), ("mid_block.attentions.0.", "middle.1."),
              ("mid_block.resnets.1.", "middle.2."), ("norm_out.", "head.0."), ("conv_out.", "head.2."),
              ("conv_in.", "conv1.")]


def _resnet_inner(rest: str) -> str:
    for new, old in _RESNET_PARTS:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest  # attention (norm, to_qkv, proj) and resample (resample.1, time_conv) names are shared


def diffusers_to_wan_key(key: str, residual: bool, num_res_blocks: int) -> str:
    """Original Wan VAE name of an `AutoencoderKLWan` parameter name.

    Wan2.1 (`residual=False`) keeps flat Sequentials: `encoder.downsamples.{k}` (res blocks and resamples in order,
    same index as diffusers' `down_blocks.{k}`), `decoder.upsamples.{k}` (per level num_res_blocks+1 res blocks, then
    a resample). Wan2.2 nests them: `encoder.downsamples.{i}.downsamples.{j}`, `decoder.upsamples.{i}.upsamples.{j}`,
    the resample last in each level.
    """
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv."):]
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv."):]
    side, rest = key.split(".", 1)
    for new, old in _TOP_PARTS:
        if rest.startswith(new):
            tail = rest[len(new):]
            return f"{side}.{old}{_resnet_inner(tail) if 'resnets' in new else tail}"
    r = num_res_blocks
    patterns = [  # (diffusers regex, original index function)
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda i, j: f"downsamples.{i}.downsamples.{j}"),
        (r"down_blocks\.(\d+)\.downsampler\.(.*)", lambda i: f"downsamples.{i}.downsamples.{r}"),
        (r"down_blocks\.(\d+)\.(.*)", lambda k: f"downsamples.{k}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda i, j: f"upsamples.{i}.upsamples.{j}" if residual else f"upsamples.{i * (r + 2) + j}"),
        (r"up_blocks\.(\d+)\.upsampler\.(.*)", lambda i: f"upsamples.{i}.upsamples.{r + 1}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", lambda i: f"upsamples.{i * (r + 2) + r + 1}"),
    ]
    for pattern, index in patterns:
        m = re.fullmatch(pattern, rest)
        if m:
            *idx, tail = m.groups()
            return f"{side}.{index(*map(int, idx))}.{_resnet_inner(tail)}"
    raise AssertionError(f"no Wan name for AutoencoderKLWan parameter {key!r}")


def wan_key_map(model: AutoencoderKLWan) -> dict[str, str]:
    """{diffusers name: original Wan name} for every tensor of `model` (a bijection)."""
    cfg = model.config
    names = {k: diffusers_to_wan_key(k, cfg.is_residual, cfg.num_res_blocks) for k in model.state_dict()}
    assert len(set(names.values())) == len(names), "Wan VAE key map is not one-to-one"
    return names


def wan_to_diffusers_keys(original: Mapping[str, torch.Tensor], model: AutoencoderKLWan,
                          source: str = "VAE checkpoint") -> dict[str, torch.Tensor]:
    """Rename an original `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` state dict for `model`, after checking every tensor."""
    names = wan_key_map(model)
    shapes = model.state_dict()
    check_state_dict(original, {names[k]: shapes[k].shape for k in names}, source)
    return {k: original[names[k]] for k in names}


# ---------------------------------------------------------------------------------------------------------------
# The frozen encoder
# ---------------------------------------------------------------------------------------------------------------

class WanVAE(nn.Module):
    """A Wan VAE with DreamZero's latent normalisation and a causal streaming encoder.

    Shapes: video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k; latents [B, C, F = 1 + k, H / s, W / s] (float32).
    """

    def __init__(self, model: AutoencoderKLWan, variant: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.variant = variant
        # encode_incremental's cache: one slot per causal conv of the encoder (diffusers' `feat_cache` protocol)
        self._stream: list | None = None
        self._stream_geometry: tuple[int, int, int] | None = None  # [B, H, W] the stream was started with
        self._num_encoder_convs = sum(isinstance(m, WanCausalConv3d) for m in model.encoder.modules())

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, variant: str = "wan21", device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, tiny: bool = False) -> WanVAE:
        """Load an original Wan VAE checkpoint (`Wan2.1_VAE.pth` for "wan21", `Wan2.2_VAE.pth` for "wan22";
        `tiny=True`: one saved from `WanVAE.tiny(variant)`)."""
        return cls.from_state_dict(read_state_dict(path), variant, device, dtype, tiny, source=str(path))

    @classmethod
    def from_state_dict(cls, original: Mapping[str, torch.Tensor], variant: str = "wan21",
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, tiny: bool = False,
                        source: str = "VAE state dict") -> WanVAE:
        """Build from a state dict in the original Wan key layout (e.g. selected from a larger checkpoint)."""
        with torch.device("meta"):
            model = AutoencoderKLWan(**_variant_config(variant, tiny))
        model.load_state_dict(wan_to_diffusers_keys(original, model, source), strict=True, assign=True)
        return cls(model.to(device=device, dtype=dtype), variant)

    @classmethod
    def tiny(cls, variant: str = "wan22", seed: int = 0) -> WanVAE:
        """A few-channel VAE of the same class, strides, latent channels and statistics (random weights)."""
        torch.manual_seed(seed)
        return cls(AutoencoderKLWan(**_variant_config(variant, tiny=True)), variant)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the original Wan checkpoint names (what `from_pretrained` reads)."""
        state = self.model.state_dict()
        return {wan: state[name] for name, wan in wan_key_map(self.model).items()}

    # --- geometry -----------------------------------------------------------------------------------------------

    @property
    def z_dim(self) -> int:
        return self.model.config.z_dim

    @property
    def spatial_stride(self) -> int:
        return self.model.config.scale_factor_spatial

    @property
    def temporal_stride(self) -> int:
        return self.model.config.scale_factor_temporal

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean and 1 / std [1, C, 1, 1, 1] in float32 (built per call from the config, so casting
        the module to bf16 never rounds them)."""
        cfg = self.model.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)

    # --- encode / decode ----------------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor, first: bool) -> None:
        s, t = self.spatial_stride, self.temporal_stride
        if video.ndim != 5 or video.shape[1] != 3:
            raise InputError(f"video must be [B, 3, T, H, W], got shape {list(video.shape)}")
        n = video.shape[2]
        if (n % t != 1) if first else (n == 0 or n % t != 0):
            rule = f"1 + {t}k (a first chunk)" if first else f"a positive multiple of {t} (a continuation)"
            raise InputError(f"video has T = {n} frames; it must be {rule}")
        if video.shape[3] % s or video.shape[4] % s:
            raise InputError(f"video H x W = {video.shape[3]} x {video.shape[4]} must be divisible by the "
                             f"spatial stride {s}")

    def _encode_chunks(self, video: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
        """Wan's chunked causal encode (1 frame, then 4 at a time), continuing the causal-conv `cache` in place.

        The loop of `AutoencoderKLWan._encode`, with the 1x1x1 `quant_conv` applied per chunk: a pointwise conv, but
        its float summation order depends on the chunk length, so per-chunk application is what makes streaming
        bit-exact.
        """
        x = video.to(self.dtype)
        if self.model.config.patch_size is not None:  # wan22: 2x2 pixel patchify, [B, 12, T, H/2, W/2]
            x = patchify(x, self.model.config.patch_size)
        t = self.temporal_stride
        starts = [0, *range(1, x.shape[2], t)] if first else list(range(0, x.shape[2], t))
        moments = [self.model.quant_conv(self.model.encoder(x[:, :, i: i + (1 if first and i == 0 else t)],
                                                             feat_cache=cache, feat_idx=[0])) for i in starts]
        mu = torch.cat(moments, dim=2)[:, : self.z_dim]  # [B, 2C, F, h, w] -> posterior mean [B, C, F, h, w]
        mean, inv_std = self.latent_stats(mu.device)
        return (mu.float() - mean) * inv_std

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1 + 4k, H, W] in [-1, 1] -> normalised latents [B, C, 1 + k, H/s, W/s] (float32)."""
        return self.encode_differentiable(video)

    def encode_differentiable(self, video: torch.Tensor) -> torch.Tensor:
        """`encode` with autograd (fitting the VAE itself: model_core.training.fit_vae)."""
        self._check_video(video, first=True)
        return self._encode_chunks(video, [None] * self._num_encoder_convs, first=True)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> video [B, 3, 1 + 4(F-1), h*s, w*s] in [-1, 1] (float32)."""
        return self.decode_differentiable(latents)

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode` with autograd (fitting the VAE itself: model_core.training.fit_vae)."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise InputError(f"latents must be [B, {self.z_dim}, F, h, w], got shape {list(latents.shape)}")
        mean, inv_std = self.latent_stats(latents.device)
        z = latents.float() / inv_std + mean
        return self.model.decode(z.to(self.dtype)).sample.float()

    def reset_stream(self) -> None:
        """Forget the streaming cache; the next `encode_incremental` call starts a new video."""
        self._stream = None

    @torch.no_grad()
    def encode_incremental(self, frames: torch.Tensor) -> torch.Tensor:
        """Causal streaming encode: returns the latent frames these new frames complete.

        First call after `reset_stream()`: [B, 3, 1 + 4k, H, W] -> 1 + k latents; later calls: [B, 3, 4k, H, W] -> k
        latents. The concatenated outputs equal (bit for bit) `encode` of the concatenated frames: the same
        per-chunk encoder calls with the same cache of the last frames of every causal convolution.
        """
        first = self._stream is None
        self._check_video(frames, first)
        geometry = (frames.shape[0], *frames.shape[3:])
        if first:
            self._stream, self._stream_geometry = [None] * self._num_encoder_convs, geometry
        elif geometry != self._stream_geometry:
            raise InputError(f"frames [B, H, W] = {list(geometry)} differ from the stream's "
                             f"{list(self._stream_geometry)}; call reset_stream() to start a new video")
        return self._encode_chunks(frames, self._stream, first)

    @torch.no_grad()
    def encode_block(self, frames: torch.Tensor) -> torch.Tensor:
        """The DreamZero release's per-call encode: [B, 3, 4k, H, W] -> k latents from a fresh cache.

        Prepends a copy of the first frame (standing in for the missing history), encodes from scratch and drops
        latent 0. Cheaper to reason about than streaming, but not the latents the whole video would give.
        """
        self._check_video(frames, first=False)
        return self.encode(torch.cat([frames[:, :, :1], frames], dim=2))[:, :, 1:]
