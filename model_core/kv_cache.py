"""The persistent KV cache of DreamZero's closed-loop inference (MODEL_SPEC.md section 6).

Per layer the cache holds the keys (after RoPE) and values of *observed* video tokens only: the first frame
(prefill) and every ground-truth block appended after its actions were executed. Predicted video is never
cached, and action/state tokens never are. Denoising calls read the cache and discard their own keys.

Memory is preallocated once: `window_tokens` (local_attn_size latent frames) of committed video plus a scratch
tail for one call's new tokens, so an episode never grows it. When an append would overflow the window the
oldest tokens are dropped (the release's rolling window; with its reset rule at current_start_frame >= 9 this
never triggers in the standard loop).
"""
from __future__ import annotations

import torch

from model_core.config import DiTConfig
from model_core.errors import InputError


class KVCache:
    """Rolling per-layer cache for one guidance branch (conditional or unconditional).

    keys/values: [num_layers, B, capacity, N, D]; `length` committed tokens (shared by all layers).
    A forward pass that reads the cache calls `span(layer, k_new, v_new)` once per layer; an appending pass
    then calls `commit(n)` once, after all layers.
    """

    def __init__(self, config: DiTConfig, batch_size: int = 1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.window_tokens = config.window_tokens
        # One denoising call's new tokens: a block of video plus its action and state registers.
        scratch = config.num_frame_per_block * config.frame_seqlen + config.num_action_per_block + \
            config.num_state_per_block
        self.capacity = self.window_tokens + scratch
        shape = (config.num_layers, batch_size, self.capacity, config.num_heads, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    def reset(self) -> None:
        self.length = 0

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed keys and values of one layer: ([B, length, N, D], [B, length, N, D])."""
        return self.keys[index, :, :self.length], self.values[index, :, :self.length]

    def make_room(self, num_new: int) -> None:
        """Before appending `num_new` video tokens: drop the oldest ones that would leave the window."""
        if num_new > self.window_tokens:
            raise InputError(f"cannot append {num_new} tokens: the cache window holds {self.window_tokens}")
        overflow = self.length + num_new - self.window_tokens
        if overflow > 0:
            keep = self.length - overflow
            self.keys[:, :, :keep] = self.keys[:, :, overflow:self.length].clone()
            self.values[:, :, :keep] = self.values[:, :, overflow:self.length].clone()
            self.length = keep

    def span(self, index: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Place this call's keys/values [B, n, N, D] after the committed ones; return [B, length + n, N, D] views.

        Written into the scratch tail, so nothing is copied and nothing is committed until `commit`.
        """
        n = k_new.shape[1]
        end = self.length + n
        if end > self.capacity:
            raise InputError(f"KV cache overflow: {self.length} cached + {n} new tokens > capacity {self.capacity}; "
                             "the session must reset when current_start_frame reaches local_attn_size")
        self.keys[index, :, self.length:end] = k_new
        self.values[index, :, self.length:end] = v_new
        return self.keys[index, :, :end], self.values[index, :, :end]

    def commit(self, num_new: int) -> None:
        """Keep the `num_new` tokens the last forward wrote (ground-truth append)."""
        if self.length + num_new > self.window_tokens:
            raise InputError(f"commit of {num_new} tokens exceeds the window; call make_room first")
        self.length += num_new

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
