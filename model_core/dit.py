"""CausalWanModel: DreamZero's block-causal video-action diffusion transformer.

"World Action Models are Zero-shot Policies" (DreamZero, arXiv 2602.15922), built on the Wan2.1 / Wan2.2 video
DiT. One sequence holds video tokens and, per block, an action register (24 action tokens + 1 state token); the
transformer jointly predicts flow velocities for video and actions. State-dict names are the release's
(MODEL_SPEC.md section 2) so real checkpoints load unchanged; the math follows sections 3-6.

Order of this file follows the figure: embeddings -> registers (action/state encoders, action decoder) ->
attention -> block -> head -> the model with its two forward passes (teacher forcing for training, cached
incremental inference for closed-loop control).

Shapes: B batch, C channels, F latent frames, H/W latent height/width, L tokens, N heads, D head dim,
T actions, A action dim, S state dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_core.attention import apply_rope, attention, rope_frequencies, video_rope
from model_core.config import DiTConfig
from model_core.errors import InputError
from model_core.kv_cache import KVCache

NUM_CLIP_TOKENS = 257  # CLIP ViT-H/14 at 224px: 16x16 patches + class token


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------

def timestep_sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: float64, cos half first, frequencies 10000^(-k/half). t [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def action_time_sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """The action encoder's timestep encoding (pi0 / GR00T style): sin half first. t [...] -> [..., dim] float32."""
    half = dim // 2
    exponent = -torch.arange(half, dtype=torch.float32, device=t.device) * (math.log(10000.0) / half)
    angles = t.to(torch.float32)[..., None] * exponent.exp()
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, computed in float32, times a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (affine or not), returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class ImageProjection(nn.Module):
    """`img_emb`: CLIP features [B, 257, clip_dim] -> context tokens [B, 257, dim]."""

    def __init__(self, clip_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                  nn.Linear(clip_dim, dim), nn.LayerNorm(dim))

    def forward(self, clip_features: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_features)


# ---------------------------------------------------------------------------------------------------------------
# Action / state registers ("category-specific" layers: W [categories, in, out], applied as x @ W[c] + b[c])
# ---------------------------------------------------------------------------------------------------------------

class CategorySpecificLinear(nn.Module):
    def __init__(self, num_categories: int, in_dim: int, out_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(num_categories, in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(num_categories, out_dim))
        nn.init.normal_(self.W, std=0.02)

    def forward(self, x: torch.Tensor, category: int = 0) -> torch.Tensor:
        return x @ self.W[category] + self.b[category]


class CategorySpecificMLP(nn.Module):
    """Two category-specific layers with ReLU between: the state encoder and the action decoder."""

    def __init__(self, num_categories: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden_dim)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, category: int = 0) -> torch.Tensor:
        return self.layer2(F.relu(self.layer1(x, category)), category)


class ActionEncoder(nn.Module):
    """Noisy actions [B, T, A] and their timesteps [B, T] -> action tokens [B, T, dim] (pi0-style W1/W2/W3)."""

    def __init__(self, num_categories: int, action_dim: int, dim: int):
        super().__init__()
        self.dim = dim
        self.W1 = CategorySpecificLinear(num_categories, action_dim, dim)
        self.W2 = CategorySpecificLinear(num_categories, 2 * dim, dim)
        self.W3 = CategorySpecificLinear(num_categories, dim, dim)

    def forward(self, actions: torch.Tensor, timesteps: torch.Tensor, category: int = 0) -> torch.Tensor:
        a = self.W1(actions, category)  # [B, T, dim]
        tau = action_time_sinusoid(self.dim, timesteps).to(a.dtype)  # [B, T, dim]
        return self.W3(F.silu(self.W2(torch.cat([a, tau], dim=-1), category)), category)


# ---------------------------------------------------------------------------------------------------------------
# Attention layers
# ---------------------------------------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Multi-head self-attention with q/k RMSNorm over the full dim and RoPE, reading/writing a KV cache."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, kernel: str) -> torch.Tensor:
        B, L, _ = x.shape
        heads = (B, L, self.num_heads, self.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).view(heads), freqs)  # [B, L, N, D]
        k = apply_rope(self.norm_k(self.k(x)).view(heads), freqs)
        v = self.v(x).view(heads)
        if cache is not None:  # attend to the cached observed video + all new tokens (no mask)
            k, v = cache.span(layer, k, v)
        return self.o(attention(q, k, v, mask, kernel).flatten(2))


@dataclass
class CrossContext:
    """Per-layer keys/values of the conditioning context (text tokens and CLIP image tokens).

    Computed once per prompt/first frame by `CausalWanModel.encode_context` and reused by every call.
    """

    text_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k, v [B, Lt, N, D]
    image_kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer: k_img, v_img [B, 257, N, D]


class CrossAttention(nn.Module):
    """Cross-attention to the text context, plus (image conditioning) a second attention to CLIP tokens.

    out = o(attn(q, k_text, v_text) + attn(q, k_img, v_img)); no RoPE, no padding mask (zero-padded text
    positions are attended, as in the release).
    """

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def context_kv(self, text: torch.Tensor, image: torch.Tensor | None):
        """text [B, Lt, dim], image [B, 257, dim] | None -> ((k, v), (k_img, v_img) | None)."""
        text_kv = self._heads(self.norm_k(self.k(text))), self._heads(self.v(text))
        if image is None:
            return text_kv, None
        return text_kv, (self._heads(self.norm_k_img(self.k_img(image))), self._heads(self.v_img(image)))

    def forward(self, x: torch.Tensor, text_kv, image_kv, kernel: str) -> torch.Tensor:
        q = self._heads(self.norm_q(self.q(x)))  # [B, L, N, D]
        out = attention(q, *text_kv, kernel=kernel)
        if image_kv is not None:
            out = out + attention(q, *image_kv, kernel=kernel)
        return self.o(out.flatten(2))


# ---------------------------------------------------------------------------------------------------------------
# Transformer block and head
# ---------------------------------------------------------------------------------------------------------------

class DiTBlock(nn.Module):
    """adaLN block: modulated self-attention, cross-attention (no gate), modulated GELU(tanh) FFN.

    Modulation is per token: e0 [B, L, 6, dim] = (shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))

    def forward(self, x, e0, freqs, text_kv, image_kv, mask, cache, layer, kernel) -> torch.Tensor:
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.unsqueeze(0) + e0).unbind(2)
        y = self.self_attn((self.norm1(x).float() * (1 + scale_sa) + shift_sa).type_as(x), freqs, mask, cache, layer,
                           kernel)
        x = x + y * gate_sa
        x = x + self.cross_attn(self.norm3(x), text_kv, image_kv, kernel)
        y = self.ffn((self.norm2(x).float() * (1 + scale_ff) + shift_ff).type_as(x))
        return x + y * gate_ff


class Head(nn.Module):
    """Final modulated LayerNorm + Linear to patch pixels: [B, L, dim] -> [B, L, prod(patch) * out_dim]."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).unbind(2)  # e [B, L, dim]
        return self.head((self.norm(x).float() * (1 + scale) + shift).type_as(x))


# ---------------------------------------------------------------------------------------------------------------
# The block-causal mask of teacher-forcing training (MODEL_SPEC section 5)
# ---------------------------------------------------------------------------------------------------------------

def frame_blocks(num_frames: int, frames_per_block: int) -> torch.Tensor:
    """Block index of each latent frame: frame 0 is block 0, then blocks of `frames_per_block` frames."""
    f = torch.arange(num_frames)
    return torch.where(f == 0, 0, (f - 1) // frames_per_block + 1)


def block_causal_mask(cfg: DiTConfig, num_frames: int, num_blocks: int) -> torch.Tensor:
    """Mask [L, L] (True = may attend) over [clean video | noisy video | actions | states].

    clean block c sees clean blocks c' <= c inside the window (frame 0 always); noisy block c and action block c
    see clean blocks < c (window), noisy block c, action block c and state c; a state token sees only itself.
    Bidirectional inside a block. The window (local_attn_size latent frames) never bites at the release's
    training length (33 frames = 9 latent frames = one window).
    """
    fs, Ta = cfg.frame_seqlen, cfg.num_action_per_block
    video_block = frame_blocks(num_frames, cfg.num_frame_per_block).repeat_interleave(fs)  # [F*fs]
    register_block = torch.arange(1, num_blocks + 1)
    kind = torch.cat([torch.full_like(video_block, 0), torch.full_like(video_block, 1),
                      torch.full((num_blocks * Ta,), 2), torch.full((num_blocks,), 3)])  # 0 clean 1 noisy 2 act 3 state
    block = torch.cat([video_block, video_block, register_block.repeat_interleave(Ta), register_block])
    qk, qb = kind[:, None], block[:, None]
    kk, kb = kind[None, :], block[None, :]
    in_window = (kb == 0) | (qb - kb < cfg.max_chunk_size)
    clean_sees = (qk == 0) & (kk == 0) & (kb <= qb) & in_window
    denoise_q = (qk == 1) | (qk == 2)
    denoise_sees = denoise_q & (((kk == 0) & (kb < qb) & in_window) | ((kk >= 1) & (kb == qb)))
    state_sees = (qk == 3) & (kk == 3) & (kb == qb)
    return clean_sees | denoise_sees | state_sees


# ---------------------------------------------------------------------------------------------------------------
# Input validation: one clear error naming the field, never a silent broadcast
# ---------------------------------------------------------------------------------------------------------------

def check_tensor(name: str, x: torch.Tensor, shape: tuple, finite: bool = True) -> None:
    """Raise InputError unless x matches `shape` (ints, or None for any size) and is finite."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() and name.endswith(("video", "actions", "states", "text", "clip_features")):
        raise InputError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    pattern = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    if x.dim() != len(shape) or any(s is not None and s != a for s, a in zip(shape, x.shape)):
        raise InputError(f"{name}: expected shape {pattern}, got {list(x.shape)}")
    if finite and x.is_floating_point() and not torch.isfinite(x).all():
        raise InputError(f"{name}: contains NaN or Inf")


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Registers:
    """One call's action/state register inputs: noisy actions [B, T, A] with timesteps [B, T], states [B, nb, S]."""

    actions: torch.Tensor
    timesteps: torch.Tensor
    states: torch.Tensor


class CausalWanModel(nn.Module):
    """The DreamZero DiT. `forward_train` is the teacher-forcing pass; `forward_cached` the closed-loop call.

    `cached_state_attention` chooses what the state token sees in cached inference. "release" (default): the
    release's behaviour, the state token attends to the cache and all new tokens. "training": it attends only to
    itself, as in the teacher-forcing mask. With 2+ layers the two differ (~1e-4 at the release's init scale),
    because the state token's keys feed the video and action tokens of the next layer; with "training" cached
    inference reproduces the teacher-forcing forward exactly (tests/model_core/test_causality.py).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.img_emb = ImageProjection(cfg.clip_dim, dim)
        self.state_encoder = CategorySpecificMLP(cfg.num_categories, cfg.max_state_dim, cfg.hidden_size, dim)
        self.action_encoder = ActionEncoder(cfg.num_categories, cfg.action_dim, dim)
        self.action_decoder = CategorySpecificMLP(cfg.num_categories, dim, cfg.hidden_size, cfg.action_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.attention_kernel = "sdpa"
        self.cached_state_attention = "release"
        self.init_weights()

    def init_weights(self) -> None:
        """The release's init: xavier-uniform Linear, zero biases, N(0, 0.02) embeddings, zero head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    # -- conditioning ---------------------------------------------------------------------------------------------

    def encode_context(self, text: torch.Tensor, clip_features: torch.Tensor | None) -> CrossContext:
        """text [B, Lt, text_dim] (umT5, zero-padded), clip_features [B, 257, clip_dim] | None -> per-layer K/V."""
        text_ctx = self.text_embedding(text)  # [B, Lt, dim]
        image_ctx = None if clip_features is None else self.img_emb(clip_features)  # [B, 257, dim]
        kv = [blk.cross_attn.context_kv(text_ctx, image_ctx) for blk in self.blocks]
        return CrossContext(text_kv=[t for t, _ in kv], image_kv=None if image_ctx is None else [i for _, i in kv])

    def _time_modulation(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token timesteps [B, L] -> e [B, L, dim] (head) and e0 [B, L, 6, dim] (blocks), float32.

        A call has only a few distinct timesteps (one per frame, per action), so the MLPs run once per distinct
        value and the rows are gathered per token: the same numbers as embedding every token.
        """
        values, index = torch.unique(t, return_inverse=True)  # [U], [B, L]
        e = self.time_embedding(timestep_sinusoid(self.cfg.freq_dim, values).to(self.patch_embedding.weight.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.cfg.dim))  # [U, 6, dim]
        return e.float()[index], e0.float()[index]

    # -- tokens ---------------------------------------------------------------------------------------------------

    def embed_video(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """latents [B, in_dim, F, H, W] -> tokens [B, F*h*w, dim] in f, h, w order, grid (F, h, w)."""
        x = self.patch_embedding(latents)  # [B, dim, F, h, w]
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, F*h*w, p*q*r*C] -> video [B, C, F*p, h*q, w*r]."""
        (Fr, h, w), (p, q, r), C = grid, self.cfg.patch_size, self.cfg.out_dim
        x = x.reshape(x.shape[0], Fr, h, w, p, q, r, C)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(x.shape[0], C, Fr * p, h * q, w * r)

    def _register_rope(self, first_block: int, num_blocks: int, device) -> torch.Tensor:
        """1-D RoPE of action tokens (position block * T + j) then state tokens (position block)."""
        Ta, D = self.cfg.num_action_per_block, self.cfg.head_dim
        blocks = torch.arange(first_block, first_block + num_blocks, device=device)
        action_pos = (blocks[:, None] * Ta + torch.arange(Ta, device=device)).flatten()
        return torch.cat([rope_frequencies(action_pos, D), rope_frequencies(blocks, D)])

    def _register_tokens(self, reg: Registers):
        """-> tokens [B, nb*T + nb, dim] and their timesteps [B, nb*T + nb] (state takes its block's first action)."""
        Ta = self.cfg.num_action_per_block
        tokens = torch.cat([self.action_encoder(reg.actions, reg.timesteps), self.state_encoder(reg.states)], dim=1)
        state_t = reg.timesteps[:, ::Ta]  # [B, nb]
        return tokens, torch.cat([reg.timesteps, state_t], dim=1)

    def _run(self, x, t_tokens, freqs, context: CrossContext, mask, cache):
        e, e0 = self._time_modulation(t_tokens)
        for i, blk in enumerate(self.blocks):
            image_kv = None if context.image_kv is None else context.image_kv[i]
            x = blk(x, e0, freqs, context.text_kv[i], image_kv, mask, cache, i, self.attention_kernel)
        return x, e

    def _check_video(self, name: str, video: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> None:
        cfg = self.cfg
        _, p_h, p_w = cfg.patch_size
        check_tensor(name, video, (None, cfg.out_dim, None, None, None))
        B, _, Fr, H, W = video.shape
        if H % p_h or W % p_w:
            raise InputError(f"{name}: latent height/width {H}x{W} must be divisible by the patch {p_h}x{p_w}")
        if (H // p_h) * (W // p_w) != cfg.frame_seqlen:
            raise InputError(f"{name}: {H}x{W} latents give {(H // p_h) * (W // p_w)} tokens per frame, "
                             f"the config's frame_seqlen is {cfg.frame_seqlen}")
        check_tensor(f"{name} timesteps", timesteps, (B, Fr))
        if cfg.concat_first_frame_latent:
            if y is None:
                raise InputError(f"y: required for {cfg.model_type} with concat_first_frame_latent "
                                 f"(mask + first-frame latent, {cfg.in_dim - cfg.out_dim} channels)")
            check_tensor("y", y, (B, cfg.in_dim - cfg.out_dim, Fr, H, W))

    def _check_registers(self, reg: Registers, num_blocks: int, batch: int) -> None:
        cfg = self.cfg
        check_tensor("registers.actions", reg.actions, (batch, num_blocks * cfg.num_action_per_block, cfg.action_dim))
        check_tensor("registers.timesteps", reg.timesteps, (batch, num_blocks * cfg.num_action_per_block))
        check_tensor("registers.states", reg.states, (batch, num_blocks, cfg.max_state_dim))

    def _with_y(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.concat_first_frame_latent:
            return torch.cat([x, y], dim=1)
        return x

    # -- forward passes -------------------------------------------------------------------------------------------

    def forward_train(self, noisy_video: torch.Tensor, clean_video: torch.Tensor, timesteps: torch.Tensor,
                      registers: Registers, context: CrossContext, y: torch.Tensor | None = None):
        """Teacher forcing in one pass over [clean video | noisy video | actions | states].

        noisy_video/clean_video [B, C, F, H, W] with F = 1 + nb * frames_per_block; timesteps [B, F] per frame
        (the clean copy runs at t = 0); registers for nb blocks; y [B, 4 + C, F, H, W] (i2v only).
        Returns video velocity [B, out_dim, F, H, W] (noisy copy) and action velocity [B, nb*T, A].
        """
        nb = registers.states.shape[1]
        num_frames = noisy_video.shape[2]
        self._check_video("noisy_video", noisy_video, timesteps, y)
        check_tensor("clean_video", clean_video, tuple(noisy_video.shape))
        if num_frames != 1 + nb * self.cfg.num_frame_per_block:
            raise InputError(f"noisy_video: {num_frames} latent frames, expected 1 + {nb} blocks x "
                             f"{self.cfg.num_frame_per_block} = {1 + nb * self.cfg.num_frame_per_block} "
                             f"for the {nb} state token(s)")
        self._check_registers(registers, nb, noisy_video.shape[0])
        clean, grid = self.embed_video(self._with_y(clean_video, y))
        noisy, _ = self.embed_video(self._with_y(noisy_video, y))
        regs, t_regs = self._register_tokens(registers)
        fs = clean.shape[1] // num_frames
        t_video = timesteps.repeat_interleave(fs, dim=1)  # [B, F*fs]
        t_tokens = torch.cat([torch.zeros_like(t_video), t_video, t_regs.to(t_video.dtype)], dim=1)
        rope_video = video_rope(*grid, self.cfg.head_dim, device=clean.device)
        freqs = torch.cat([rope_video, rope_video, self._register_rope(0, nb, clean.device)])
        mask = block_causal_mask(self.cfg, num_frames, nb).to(clean.device)
        x = torch.cat([clean, noisy, regs], dim=1)
        x, e = self._run(x, t_tokens, freqs, context, mask, cache=None)
        Lv = clean.shape[1]
        video = self.unpatchify(self.head(x[:, Lv:2 * Lv], e[:, Lv:2 * Lv]), grid)
        actions = self.action_decoder(x[:, 2 * Lv:2 * Lv + nb * self.cfg.num_action_per_block])
        return video, actions

    def forward_cached(self, video: torch.Tensor, timesteps: torch.Tensor, start_frame: int, cache: KVCache,
                       context: CrossContext, registers: Registers | None = None, y: torch.Tensor | None = None,
                       append: bool = False):
        """One closed-loop call: new tokens [video | actions | state] attend to the cache and to each other.

        video [B, C, f, H, W] at latent frames start_frame..start_frame+f-1, timesteps [B, f]; registers for the
        block ((start_frame - 1) // frames_per_block) or None (cache-filling calls carry video only);
        append=True commits the video keys/values (observed latents at t = 0: prefill or ground-truth append),
        append=False reads the cache and discards its own keys (denoising).
        Returns video velocity [B, out_dim, f, H, W] and action velocity [B, T, A] | None.
        """
        num_frames = video.shape[2]
        self._check_video("video", video, timesteps, y)
        if registers is not None:
            self._check_registers(registers, 1, video.shape[0])
        if start_frame < 0:
            raise InputError(f"start_frame: must be >= 0, got {start_frame}")
        x, grid = self.embed_video(self._with_y(video, y))
        Lv = x.shape[1]
        t_tokens = timesteps.repeat_interleave(Lv // num_frames, dim=1)
        freqs = video_rope(*grid, self.cfg.head_dim, start_frame=start_frame, device=x.device)
        if registers is not None:
            regs, t_regs = self._register_tokens(registers)
            block = (start_frame - 1) // self.cfg.num_frame_per_block
            x = torch.cat([x, regs], dim=1)
            t_tokens = torch.cat([t_tokens, t_regs.to(t_tokens.dtype)], dim=1)
            freqs = torch.cat([freqs, self._register_rope(block, 1, x.device)])
        if append:
            if registers is not None:
                raise ValueError("cache-filling (append) calls carry observed video only, no action registers")
            cache.make_room(Lv)
        mask = None
        if registers is not None and self.cached_state_attention == "training":
            total = cache.length + x.shape[1]
            mask = torch.ones(x.shape[1], total, dtype=torch.bool, device=x.device)
            mask[-1, :] = False
            mask[-1, -1] = True  # the state token (last) sees only itself
        x, e = self._run(x, t_tokens, freqs, context, mask=mask, cache=cache)
        if append:
            cache.commit(Lv)
        video_out = self.unpatchify(self.head(x[:, :Lv], e[:, :Lv]), grid)
        actions = None
        if registers is not None:
            actions = self.action_decoder(x[:, Lv:Lv + self.cfg.num_action_per_block])
        return video_out, actions
