"""DreamZero's training objective: teacher-forcing flow matching over video and actions (MODEL_SPEC.md section 8).

One forward pass of `CausalWanModel.forward_train` over [clean video | noisy video | actions | states] with the
block-causal mask trains every block at once, each conditioned on the clean blocks before it (what closed-loop
inference sees after ground-truth replacement).

    levels   1000 training levels: sigma_i = shift(u_i), u_i = 1 - i/1000 (shift 5), timestep 1000 sigma_i, loss
             weight w_i = exp(-2 ((t_i - 500)/1000)^2) normalised to mean 1 (`model_core.schedulers.training_schedule`)
    per sample: one level for latent frame 0, one per 2-frame block; the actions of block k share its level
             (`decouple_action_noise`: their own level)
    Flash    video sigma ~ Beta(7, 1) (mostly high noise; snapped to the nearest training level), action levels
             uniform and decoupled: the model learns to read clean actions out of very noisy video, so one step from
             pure noise works at inference (engine `flash: true`)
    noising  x_t = (1 - sigma) x0 + sigma eps, target v = eps - x0, for video latents and normalised actions
    loss     video: per-frame MSE weighted by the frame's w, averaged over frames and batch;
             actions: per-block MSE over the embodiment's real action dims (padding excluded) weighted by the
             block's w; total = video_loss_weight * video + action_loss_weight * action

Randomness comes from generators seeded by (seed, step, rank, micro-step), so a resumed run draws the same noise.
`rollout_actions` is the validation sampler: Euler steps through the same teacher-forcing pass, which equals cached
closed-loop inference with `cached_state_attention="training"` (tests/training check it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from model_core.dit import CausalWanModel, Registers
from model_core.schedulers import SIGMA_MAX, FlowEuler, release_sigmas, training_schedule
from model_core.training.config import ObjectiveConfig

Batch = dict[str, torch.Tensor]


@dataclass
class LossParts:
    loss: torch.Tensor
    video: torch.Tensor
    action: torch.Tensor


@dataclass
class Noising:
    """Everything random about one batch: level ids per latent frame / action block and the Gaussian noise."""

    video_ids: torch.Tensor  # [B, F] int64
    action_ids: torch.Tensor  # [B, nb] int64
    video_noise: torch.Tensor  # [B, C, F, h, w]
    action_noise: torch.Tensor  # [B, nb*T, A]


def step_seed(seed: int, step: int, rank: int = 0, micro: int = 0) -> int:
    """A 63-bit seed for (run seed, optimizer step, rank, micro-step)."""
    return int(np.random.SeedSequence([seed, step, rank, micro]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class FlowMatchingObjective:
    """Noise levels, noising and the weighted loss; stateless apart from the level tables."""

    def __init__(self, cfg: ObjectiveConfig, dit_cfg):
        self.cfg, self.dit_cfg = cfg, dit_cfg
        table = training_schedule(shift=cfg.shift)
        self.sigmas, self.timesteps, self.weights = table["sigmas"], table["timesteps"], table["weights"]
        self.num_levels = len(self.sigmas)

    # -- levels -------------------------------------------------------------------------------------------------

    def _nearest_levels(self, sigma: np.ndarray) -> np.ndarray:
        """Level ids whose sigma is nearest (sigmas decrease with the id)."""
        table = self.sigmas.double().numpy()
        return np.abs(table[None, :] - sigma.reshape(-1, 1)).argmin(axis=1).reshape(sigma.shape)

    def sample_levels(self, batch: int, num_blocks: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> video level ids [B, F] (frame 0, then each block's id repeated per frame) and action ids [B, nb]."""
        n, fpb = self.num_levels, self.dit_cfg.num_frame_per_block
        if self.cfg.flash:
            a, b = self.cfg.flash_beta
            video = self._nearest_levels(rng.beta(a, b, size=(batch, 1 + num_blocks)))
            actions = rng.integers(0, n, size=(batch, num_blocks))
        else:
            video = rng.integers(0, n, size=(batch, 1 + num_blocks))
            actions = rng.integers(0, n, size=(batch, num_blocks)) if self.cfg.decouple_action_noise \
                else video[:, 1:].copy()
        frames = np.concatenate([video[:, :1], np.repeat(video[:, 1:], fpb, axis=1)], axis=1)
        return frames.astype(np.int64), actions.astype(np.int64)

    def draw(self, batch: Batch, seed: int) -> Noising:
        """All randomness of a batch from one seed (levels from numpy, Gaussian noise from torch)."""
        latents, actions = batch["latents"], batch["actions"]
        B, nb = latents.shape[0], batch["states"].shape[1]
        video_ids, action_ids = self.sample_levels(B, nb, np.random.default_rng(seed))
        gen = torch.Generator(device=latents.device).manual_seed(seed)
        return Noising(torch.from_numpy(video_ids).to(latents.device), torch.from_numpy(action_ids).to(latents.device),
                       torch.randn(latents.shape, generator=gen, device=latents.device, dtype=latents.dtype),
                       torch.randn(actions.shape, generator=gen, device=actions.device, dtype=actions.dtype))

    # -- the loss -----------------------------------------------------------------------------------------------

    def noised(self, batch: Batch, noise: Noising) -> tuple[torch.Tensor, torch.Tensor, Registers]:
        """-> noisy video [B, C, F, h, w], its timesteps [B, F], and the registers (noisy actions, their timesteps
        [B, nb*T], the anchor states): exactly what `forward_train` gets."""
        x0_v, x0_a = batch["latents"], batch["actions"]  # [B, C, F, h, w], [B, nb*T, A]
        sigmas, timesteps = self.sigmas.to(x0_v.device), self.timesteps.to(x0_v.device)
        sig_v = sigmas[noise.video_ids]  # [B, F]
        noisy_v = (1 - sig_v)[:, None, :, None, None] * x0_v + sig_v[:, None, :, None, None] * noise.video_noise
        action_ids = noise.action_ids.repeat_interleave(self.dit_cfg.num_action_per_block, dim=1)  # [B, nb*T]
        sig_a = sigmas[action_ids][..., None]
        noisy_a = (1 - sig_a) * x0_a + sig_a * noise.action_noise
        return noisy_v, timesteps[noise.video_ids], Registers(noisy_a, timesteps[action_ids], batch["states"])

    def loss(self, dit: CausalWanModel, batch: Batch, noise: Noising) -> LossParts:
        x0_v, x0_a = batch["latents"], batch["actions"]  # [B, C, F, h, w], [B, nb*T, A]
        T, weights = self.dit_cfg.num_action_per_block, self.weights.to(x0_v.device)
        noisy_v, t_video, registers = self.noised(batch, noise)
        context = dit.encode_context(batch["text"], batch.get("clip"))
        v_pred, a_pred = dit.forward_train(noisy_v, x0_v, t_video, registers, context, y=batch.get("y"))
        # video: per-frame MSE, weighted by the frame's level weight
        err_v = (v_pred.float() - (noise.video_noise - x0_v).float()).pow(2).mean(dim=(1, 3, 4))  # [B, F]
        w_v = weights[noise.video_ids]
        if not self.cfg.first_frame_loss:
            w_v = w_v.clone()
            w_v[:, 0] = 0
        video_loss = (err_v * w_v).sum() / (w_v.shape[0] * (w_v.shape[1] - (0 if self.cfg.first_frame_loss else 1)))
        # actions: per-block MSE over the real action dims, weighted by the block's level weight
        mask = batch["action_mask"].float()  # [B, A]
        err_a = (a_pred.float() - (noise.action_noise - x0_a).float()).pow(2)  # [B, nb*T, A]
        err_a = (err_a * mask[:, None, :]).sum(-1) / mask.sum(-1, keepdim=True)  # [B, nb*T]
        err_a = err_a.view(err_a.shape[0], -1, T).mean(-1)  # [B, nb]
        action_loss = (err_a * weights[noise.action_ids]).mean()
        total = self.cfg.video_loss_weight * video_loss + self.cfg.action_loss_weight * action_loss
        return LossParts(total, video_loss.detach(), action_loss.detach())


class TrainingForward(nn.Module):
    """The unit DDP / FSDP wrap: forward(batch, noise) -> (loss, video loss, action loss)."""

    def __init__(self, dit: CausalWanModel, objective: FlowMatchingObjective):
        super().__init__()
        self.dit = dit
        self.objective = objective

    def forward(self, batch: Batch, noise: Noising) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = self.objective.loss(self.dit, batch, noise)
        return parts.loss, parts.video, parts.action

    def rollout(self, batch: Batch, steps: int, seed: int, flash: tuple[float, float] | None = None) -> torch.Tensor:
        """Validation sampling (`rollout_actions`); under FSDP a registered forward method, so weights gather."""
        return rollout_actions(self.dit, batch, steps, self.objective.cfg.shift, seed, flash)


@torch.no_grad()
def rollout_actions(dit: CausalWanModel, batch: Batch, steps: int, shift: float, seed: int,
                    flash: tuple[float, float] | None = None) -> torch.Tensor:
    """Validation sampling: predict every block's actions from noise, each block conditioned on the clean blocks
    before it (teacher forcing), with `steps` Euler steps of the release's sigma table (or one Flash step with the
    given (video sigma, action sigma)). Returns normalised actions [B, nb*T, A]."""
    x0_v = batch["latents"]
    B, F = x0_v.shape[0], x0_v.shape[2]
    gen = torch.Generator(device=x0_v.device).manual_seed(seed)
    video = torch.randn(x0_v.shape, generator=gen, device=x0_v.device, dtype=x0_v.dtype)
    actions = torch.randn(batch["actions"].shape, generator=gen, device=x0_v.device, dtype=x0_v.dtype)
    context = dit.encode_context(batch["text"], batch.get("clip"))

    def velocities(t_video: float, t_action: float):
        video[:, :, :1] = x0_v[:, :, :1]  # frame 0 is observed: clean, at t = 0, as the engine prefills it
        tv = torch.full((B, F), t_video, device=x0_v.device)
        tv[:, 0] = 0.0
        ta = torch.full(actions.shape[:2], t_action, device=x0_v.device)
        return dit.forward_train(video, x0_v, tv, Registers(actions, ta, batch["states"]), context, y=batch.get("y"))

    if flash is not None:
        sv, sa = flash
        _, v_a = velocities(1000 * sv, 1000 * sa)
        return actions - sa * v_a
    sigmas, ts = release_sigmas(steps, shift)
    video_solver, action_solver = FlowEuler(sigmas), FlowEuler(sigmas)
    for t in ts.tolist():
        v_v, v_a = velocities(float(t), float(t))
        video = video_solver.step(v_v, video)
        actions = action_solver.step(v_a, actions)
    return actions


__all__ = ["FlowMatchingObjective", "LossParts", "Noising", "TrainingForward", "rollout_actions", "step_seed",
           "SIGMA_MAX"]
