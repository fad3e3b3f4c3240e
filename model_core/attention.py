"""The one attention function of the DiT, and rotary position embeddings (RoPE).

Tensor layout everywhere: q [B, Lq, N, D], k/v [B, Lk, N, D] (B batch, L tokens, N heads, D head dim).
Two kernels: `sdpa` (torch's fused scaled_dot_product_attention, the default) and `reference` (explicit softmax,
kept beside it as the readable definition; tests check that they agree).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KERNELS = ("sdpa", "reference")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              kernel: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v.

    q [B, Lq, N, D], k/v [B, Lk, N, D], mask [Lq, Lk] bool (True = may attend) or None -> out [B, Lq, N, D].
    """
    if kernel == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)
    if kernel == "reference":
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(q.shape[-1])  # [B, N, Lq, Lk]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.einsum("bnqk,bknd->bqnd", scores.softmax(dim=-1), v)
    raise ValueError(f"attention kernel {kernel!r} is not one of {KERNELS}")


# ---------------------------------------------------------------------------------------------------------------
# RoPE (MODEL_SPEC section 4): rotations of adjacent pairs (x[2i], x[2i+1]) as complex numbers, in float64.
# ---------------------------------------------------------------------------------------------------------------

def rope_frequencies(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Unit complex rotations for integer positions [P] over `dim` channels -> complex128 [P, dim // 2]."""
    inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = torch.outer(positions.to(torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def video_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (frame, row, column): 44/42/42 for head_dim 128."""
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def video_rope(num_frames: int, height: int, width: int, head_dim: int, start_frame: int = 0,
               device: torch.device | None = None) -> torch.Tensor:
    """3-D RoPE for a (frames x rows x cols) token grid in f, h, w order -> complex128 [F*H*W, head_dim // 2].

    The frame position is the absolute latent-frame index start_frame + f.
    """
    d_t, d_h, d_w = video_rope_split(head_dim)
    arange = lambda n, start=0: torch.arange(start, start + n, device=device)  # noqa: E731
    f_t = rope_frequencies(arange(num_frames, start_frame), d_t)  # [F, d_t/2]
    f_h = rope_frequencies(arange(height), d_h)  # [H, d_h/2]
    f_w = rope_frequencies(arange(width), d_w)  # [W, d_w/2]
    grid = torch.cat([
        f_t[:, None, None, :].expand(num_frames, height, width, -1),
        f_h[None, :, None, :].expand(num_frames, height, width, -1),
        f_w[None, None, :, :].expand(num_frames, height, width, -1),
    ], dim=-1)  # [F, H, W, D/2]
    return grid.reshape(num_frames * height * width, head_dim // 2)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, N, D] by freqs complex [L, D/2]; computed in float64, returned in x's dtype."""
    B, L, N, D = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(B, L, N, D // 2, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).reshape(B, L, N, D).to(x.dtype)
