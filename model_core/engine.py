"""Closed-loop inference of a DreamZero world-action model: frames + state + instruction -> one action chunk.

The control loop of the paper (section "Closed-loop inference") and MODEL_SPEC.md sections 6-7:

    reset (first call, new instruction, a single-frame input, or the window is full):
        encode the first frame (VAE; CLIP; i2v: first-frame latent "y"), prefill latent frame 0 at t = 0,
        current_start_frame = 1
    otherwise:
        encode the newly observed frames and append their latents at t = 0 (ground-truth replacement:
        predicted video is never cached)
    then denoise the next block of video + its 24 actions from noise (CFG on video only), and
    current_start_frame += num_frame_per_block.

`WorldActionEngine.step` is synchronous and not thread-safe: one caller (the runtime's session worker) owns it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

from model_core.config import DiTConfig
from model_core.dit import CausalWanModel, CrossContext, Registers, check_tensor
from model_core.errors import ConfigError, InputError
from model_core.kv_cache import KVCache
from model_core.schedulers import SIGMA_MAX, dit_step_schedule, make_sampler, release_sigmas


class VideoEncoder(Protocol):
    temporal_stride: int
    spatial_stride: int

    def reset_stream(self) -> None: ...
    def encode_incremental(self, frames: torch.Tensor) -> torch.Tensor: ...
    def encode_block(self, frames: torch.Tensor) -> torch.Tensor: ...
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...


class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor: ...


class ImageEncoder(Protocol):
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class EngineConfig:
    """How to sample. Defaults are the release's (16 UniPC steps, shift 5, CFG 5 on video, noise seed 1140)."""

    video_hw: tuple[int, int]  # pixel frame size the model consumes (tiled views), e.g. (352, 640) for 14B
    sampler: Literal["unipc", "euler"] = "unipc"
    num_steps: int = 16
    shift: float = 5.0
    num_dit_runs: int | None = None  # e.g. 8: the release's DiT step skipping
    cfg_scale: float = 5.0  # 1.0 disables the unconditional branch
    flash: bool = False  # DreamZero-Flash: one DiT call with decoupled video/action noise levels
    flash_video_sigma: float = SIGMA_MAX
    flash_action_sigma: float = SIGMA_MAX
    seed: int | None = 1140  # the release re-seeds every call; None: a fresh generator state per call
    vae_encoding: Literal["stream", "release"] = "stream"  # exact causal streaming, or the release's re-encode
    cached_state_attention: Literal["release", "training"] = "release"

    def __post_init__(self) -> None:
        object.__setattr__(self, "video_hw", tuple(self.video_hw))
        if self.sampler not in ("unipc", "euler"):
            raise ConfigError(f"engine.sampler={self.sampler!r}: must be 'unipc' or 'euler'")
        if self.num_steps < 1:
            raise ConfigError(f"engine.num_steps={self.num_steps}: must be >= 1")
        if self.cfg_scale < 1.0:
            raise ConfigError(f"engine.cfg_scale={self.cfg_scale}: must be >= 1 (1 disables guidance)")
        if self.vae_encoding not in ("stream", "release"):
            raise ConfigError(f"engine.vae_encoding={self.vae_encoding!r}: must be 'stream' or 'release'")
        if self.cached_state_attention not in ("release", "training"):
            raise ConfigError(f"engine.cached_state_attention={self.cached_state_attention!r}: "
                              "must be 'release' or 'training'")
        for name in ("flash_video_sigma", "flash_action_sigma"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"engine.{name}={value}: must be in (0, 1]")
        dit_step_schedule(self.num_steps, self.num_dit_runs)  # validates the skipping schedule


@dataclass
class StepOutput:
    """One chunk: normalized actions [T, A] (the model's padded action space), the imagined video latents."""

    actions: np.ndarray
    video_latents: torch.Tensor  # [C, num_frame_per_block, h, w], the denoised block
    reset: str | None  # why the cache was reset this call, or None
    current_start_frame: int  # latent frame index of the denoised block
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class WorldActionEngine:
    """DiT + frozen encoders + KV caches + sampler: the model side of the closed loop."""

    def __init__(self, dit: CausalWanModel, vae: VideoEncoder, text_encoder: TextEncoder,
                 image_encoder: ImageEncoder | None, config: EngineConfig):
        self.dit, self.vae, self.text_encoder, self.image_encoder = dit, vae, text_encoder, image_encoder
        self.config = config
        self.dit.cached_state_attention = config.cached_state_attention
        cfg = dit.cfg
        H, W = config.video_hw
        s = vae.spatial_stride * cfg.patch_size[1]
        if H % s or W % s or (H // s) * (W // s) != cfg.frame_seqlen:
            raise ConfigError(f"engine.video_hw={config.video_hw}: with VAE stride {vae.spatial_stride} and patch "
                              f"{cfg.patch_size[1:]} it gives {(H // s) * (W // s)} tokens per frame, the DiT's "
                              f"frame_seqlen is {cfg.frame_seqlen}")
        param = next(dit.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latent_hw = (H // vae.spatial_stride, W // vae.spatial_stride)
        use_cfg = config.cfg_scale > 1.0
        self.cache = KVCache(cfg, 1, self.dtype, self.device)
        self.uncond_cache = KVCache(cfg, 1, self.dtype, self.device) if use_cfg else None
        self.sigmas, self.timesteps = release_sigmas(config.num_steps, config.shift)
        self.dit_steps = set(dit_step_schedule(config.num_steps, config.num_dit_runs))
        self._prompt: str | None = None
        self._contexts: tuple[CrossContext, CrossContext | None] | None = None
        self._text: dict[str, torch.Tensor] = {}
        self._y: torch.Tensor | None = None
        self.current_start_frame = 0

    # -- geometry the runtime needs ---------------------------------------------------------------------------------

    @property
    def frames_per_block(self) -> int:
        """New pixel frames per control block (2 latent frames x the VAE's temporal stride = 8)."""
        return self.dit.cfg.num_frame_per_block * self.vae.temporal_stride

    @property
    def action_horizon(self) -> int:
        return self.dit.cfg.num_action_per_block

    def reset(self) -> None:
        """Forget the episode: the next call re-encodes its first frame and prefills the caches."""
        self._prompt = None
        self.current_start_frame = 0

    def reset_reason(self, prompt: str, num_frames: int) -> str | None:
        """The release's reset rules, in order."""
        if self._prompt is None:
            return "first call"
        if prompt != self._prompt:
            return "instruction changed"
        if num_frames == 1:
            return "single-frame input"
        if self.current_start_frame >= self.dit.cfg.local_attn_size:
            return "window full"
        return None

    # -- encoders -----------------------------------------------------------------------------------------------

    def _pixels(self, frames) -> torch.Tensor:
        """uint8 [T, H, W, 3] (numpy or torch) -> float [1, 3, T, H, W] in [-1, 1]."""
        x = torch.as_tensor(frames)
        H, W = self.config.video_hw
        check_tensor("frames", x, (None, H, W, 3), finite=False)
        if x.dtype != torch.uint8:
            raise InputError(f"frames: expected dtype uint8 RGB, got {x.dtype}")
        return (x.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0).to(self.device)

    def _text_embedding(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text:
            if len(self._text) > 16:
                self._text.clear()
            self._text[prompt] = self.text_encoder.encode([prompt]).to(self.device, self.dtype)
        return self._text[prompt]

    def _start_episode(self, first: torch.Tensor, prompt: str, negative_prompt: str, t: dict) -> None:
        """Encode the first frame and prompts, prefill latent frame 0 at t = 0 into every cache."""
        cfg = self.dit.cfg
        tic = time.perf_counter()
        clip = None
        if self.image_encoder is not None:
            clip = self.image_encoder.encode(first[:, :, 0]).to(self.device, self.dtype)  # [1, 257, clip_dim]
        self.vae.reset_stream()
        latent0 = self.vae.encode_incremental(first).to(self.dtype)  # [1, C, 1, h, w]
        if cfg.concat_first_frame_latent:
            self._y = self._first_frame_condition(first)
        t["encode_first_frame"] = time.perf_counter() - tic
        tic = time.perf_counter()
        cond = self.dit.encode_context(self._text_embedding(prompt), clip)
        uncond = None
        if self.uncond_cache is not None:
            uncond = self.dit.encode_context(self._text_embedding(negative_prompt), clip)
        self._contexts = (cond, uncond)
        t["encode_prompt"] = time.perf_counter() - tic
        self.cache.reset()
        if self.uncond_cache is not None:
            self.uncond_cache.reset()
        self.current_start_frame = 0
        self._append(latent0, t, "prefill")
        self._prompt = prompt

    def _first_frame_condition(self, first: torch.Tensor) -> torch.Tensor:
        """i2v "y" for the whole window: 4 mask channels (1 on latent frame 0) + latents of [first frame, zeros]."""
        cfg, F = self.dit.cfg, self.dit.cfg.local_attn_size
        T = 1 + (F - 1) * self.vae.temporal_stride
        video = torch.cat([first, torch.zeros_like(first).expand(-1, -1, T - 1, -1, -1)], dim=2)
        latents = self.vae.encode(video).to(self.dtype)  # [1, C, F, h, w]
        mask = torch.zeros(1, cfg.in_dim - 2 * cfg.out_dim, F, *latents.shape[3:], dtype=self.dtype,
                           device=self.device)
        mask[:, :, 0] = 1
        return torch.cat([mask, latents], dim=1)

    def _y_slice(self, start: int, num: int) -> torch.Tensor | None:
        return None if self._y is None else self._y[:, :, start:start + num]

    def _append(self, latents: torch.Tensor, t: dict, stage: str) -> None:
        """Cache-filling call at t = 0 on observed latents [1, C, f, h, w], into both branches."""
        tic = time.perf_counter()
        f = latents.shape[2]
        zeros = torch.zeros(1, f, device=self.device)
        start = self.current_start_frame
        cond, uncond = self._contexts
        self.dit.forward_cached(latents, zeros, start, self.cache, cond, y=self._y_slice(start, f), append=True)
        if self.uncond_cache is not None:
            self.dit.forward_cached(latents, zeros, start, self.uncond_cache, uncond, y=self._y_slice(start, f),
                                    append=True)
        self.current_start_frame = start + f
        t[stage] = time.perf_counter() - tic

    # -- the chunk ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, frames, state: np.ndarray, prompt: str, negative_prompt: str = "") -> StepOutput:
        """frames uint8 [T, H, W, 3] (T = 1 at a reset, else frames_per_block new frames), state [S] normalized.

        Returns the next chunk of normalized actions [action_horizon, action_dim].
        """
        t: dict[str, float] = {}
        tic_total = time.perf_counter()
        cfg = self.dit.cfg
        pixels = self._pixels(frames)
        num = pixels.shape[2]
        state_t = torch.as_tensor(np.asarray(state, dtype=np.float32))
        if state_t.dim() != 1 or state_t.shape[0] > cfg.max_state_dim:
            raise InputError(f"state: expected shape [S] with S <= {cfg.max_state_dim}, got {list(state_t.shape)}")
        if not torch.isfinite(state_t).all():
            raise InputError("state: contains NaN or Inf")
        reason = self.reset_reason(prompt, num)
        if reason is not None:
            self._start_episode(pixels[:, :, -1:], prompt, negative_prompt, t)
        else:
            if num != self.frames_per_block:
                raise InputError(f"frames: a continuation block needs {self.frames_per_block} new frames "
                                 f"(or 1 to reset), got {num}")
            tic = time.perf_counter()
            if self.config.vae_encoding == "stream":
                latents = self.vae.encode_incremental(pixels)
            else:
                latents = self.vae.encode_block(pixels)
            t["encode_frames"] = time.perf_counter() - tic
            # The block denoised last call sits at current_start_frame - 2: replace it with what was observed.
            self.current_start_frame -= cfg.num_frame_per_block
            self._append(latents.to(self.dtype)[:, :, -cfg.num_frame_per_block:], t, "append_observed")
        states = torch.zeros(1, 1, cfg.max_state_dim, device=self.device, dtype=self.dtype)
        states[0, 0, :state_t.shape[0]] = state_t.to(self.device, self.dtype)
        tic = time.perf_counter()
        video, actions = self._denoise(states)
        t["denoise"] = time.perf_counter() - tic
        start = self.current_start_frame
        self.current_start_frame += cfg.num_frame_per_block
        t["total"] = time.perf_counter() - tic_total
        return StepOutput(actions=actions[0].float().cpu().numpy(), video_latents=video[0], reset=reason,
                          current_start_frame=start, timings=t)

    def _velocities(self, video, actions, t_video: float, t_action: float, states):
        """One DiT evaluation of the block: guided video velocity and conditional action velocity."""
        cfg = self.dit.cfg
        start, nf = self.current_start_frame, cfg.num_frame_per_block
        tv = torch.full((1, nf), t_video, device=self.device)
        regs = Registers(actions, torch.full((1, cfg.num_action_per_block), t_action, device=self.device), states)
        cond, uncond = self._contexts
        y = self._y_slice(start, nf)
        v_video, v_action = self.dit.forward_cached(video, tv, start, self.cache, cond, regs, y=y)
        if self.uncond_cache is not None:
            v_video_u, _ = self.dit.forward_cached(video, tv, start, self.uncond_cache, uncond, regs, y=y)
            v_video = v_video_u + self.config.cfg_scale * (v_video - v_video_u)
        return v_video, v_action

    def _denoise(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, ec = self.dit.cfg, self.config
        gen = torch.Generator(device="cpu")
        if ec.seed is not None:
            gen.manual_seed(ec.seed)
        else:
            gen.seed()
        h, w = self.latent_hw
        video = torch.randn(1, cfg.out_dim, cfg.num_frame_per_block, h, w, generator=gen).to(self.device, self.dtype)
        actions = torch.randn(1, cfg.num_action_per_block, cfg.action_dim, generator=gen).to(self.device, self.dtype)
        if ec.flash:
            # Both inputs are pure noise; the decoupled timesteps tell the model how noisy to treat each as.
            sv, sa = ec.flash_video_sigma, ec.flash_action_sigma
            v_video, v_action = self._velocities(video, actions, 1000 * sv, 1000 * sa, states)
            return video - sv * v_video, actions - sa * v_action
        video_sampler = make_sampler(ec.sampler, self.sigmas)
        action_sampler = make_sampler(ec.sampler, self.sigmas)
        v_video = v_action = None
        for i, timestep in enumerate(self.timesteps.tolist()):
            if i in self.dit_steps or v_video is None:
                v_video, v_action = self._velocities(video, actions, float(timestep), float(timestep), states)
            video = video_sampler.step(v_video, video)
            actions = action_sampler.step(v_action, actions)
        return video, actions
