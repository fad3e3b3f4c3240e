"""Flow-matching noise schedules and samplers (MODEL_SPEC.md sections 7-8).

Convention (rectified flow): x_t = (1 - sigma) x0 + sigma eps, the DiT predicts v = eps - x0, timestep = 1000 sigma.

- `release_sigmas`: the release's inference table (sigma_max = float32(0.999), shift 5; 16 steps ->
  timesteps [999, 986, ..., 249]).
- `FlowUniPC`: UniPC multistep (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"): order 2,
  B(h) = expm1(h) ("bh2"), data (x0) prediction, lower order at the final steps — the release's default sampler.
- `FlowEuler`: first-order Euler on the flow ODE.
- `training_schedule`: the 1000 training noise levels with shift 5 and the loss weight per level.
- `DIT_STEP_SCHEDULES`: the release's DiT step skipping (which sampler steps evaluate the DiT).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from model_core.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000
# The release's training sigmas are float32 1 - linspace(1/1000, 1); its inference table starts at their max.
SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))

# Sampler steps at which the DiT runs; other steps reuse the last prediction (the scheduler still steps).
DIT_STEP_SCHEDULES: dict[tuple[int, int], tuple[int, ...]] = {
    (16, 8): (0, 1, 2, 6, 10, 13, 14, 15),
}


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Timestep shift s' = shift s / (1 + (shift - 1) s) (more steps at high noise)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def release_sigmas(num_steps: int = 16, shift: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference sigmas float32 [num_steps + 1] (last 0) and int64 timesteps [num_steps], as the release builds them."""
    if num_steps < 1:
        raise ConfigError(f"num_steps={num_steps}: must be >= 1")
    sigmas = shift_sigmas(np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1], shift)  # float64
    timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return torch.from_numpy(sigmas), torch.from_numpy(timesteps)


def training_schedule(shift: float = 5.0, num: int = NUM_TRAIN_TIMESTEPS) -> dict[str, torch.Tensor]:
    """Training noise levels: sigma_i = shift(u_i), u_i = 1 - i/num; timestep 1000 sigma; loss weight per level.

    weight(t) = exp(-2 ((t - 500) / 1000)^2), shifted to a zero minimum and normalised to mean 1.
    """
    u = torch.linspace(1.0, 0.0, num + 1)[:-1]  # 1 - i/num, i = 0..num-1 (float32, as the release)
    sigmas = shift_sigmas(u, shift)
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    y = torch.exp(-2 * ((timesteps - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    return {"sigmas": sigmas, "timesteps": timesteps, "weights": y * (num / y.sum())}


def dit_step_schedule(num_steps: int, num_dit_runs: int | None) -> tuple[int, ...]:
    """Which sampler steps run the DiT: all of them, or one of the release's skipping schedules."""
    if num_dit_runs is None or num_dit_runs == num_steps:
        return tuple(range(num_steps))
    key = (num_steps, num_dit_runs)
    if key not in DIT_STEP_SCHEDULES:
        raise ConfigError(f"no DiT step-skipping schedule for {num_dit_runs} runs in {num_steps} steps; "
                          f"known (steps, runs): {sorted(DIT_STEP_SCHEDULES)}")
    return DIT_STEP_SCHEDULES[key]


class FlowEuler:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas
        self.step_index = 0

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        self.step_index += 1
        return (sample + (self.sigmas[i + 1] - self.sigmas[i]) * velocity).to(sample.dtype)


class FlowUniPC:
    """UniPC multistep in data-prediction form for flow matching (alpha_t = 1 - sigma_t).

    One object per trajectory; call `step(velocity, sample)` once per sigma, in order.
    """

    def __init__(self, sigmas: torch.Tensor, order: int = 2, lower_order_final: bool = True):
        self.sigmas = sigmas
        self.order = order
        self.lower_order_final = lower_order_final
        self.num_steps = len(sigmas) - 1
        self.step_index = 0
        self.x0_history: list[torch.Tensor] = []  # data predictions, newest last (at most `order`)
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _lambda(self, i: int) -> torch.Tensor:
        """Half log-SNR log(alpha / sigma) at sigma index i (+inf at sigma = 0)."""
        s = self.sigmas[i]
        return torch.log(1 - s) - torch.log(s)

    def _coefficients(self, lam_t, lam_s0, lam_prev: list[torch.Tensor], order: int):
        """h, h*phi_1, B(h) and the solve matrix/vector of UniPC-bh2 for the given order."""
        h = lam_t - lam_s0
        rks = [(lp - lam_s0) / h for lp in lam_prev] + [torch.tensor(1.0)]
        rks = torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rks])
        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = torch.expm1(hh)
        R, b, factorial = [], [], 1
        for k in range(1, order + 1):
            R.append(torch.pow(rks, k - 1))
            b.append(h_phi_k * factorial / B_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, B_h, torch.stack(R), torch.stack(b), rks

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniPC predictor (UniP-bh2) from step_index to step_index + 1."""
        i = self.step_index
        m0 = self.x0_history[-1]
        sig_t, sig_s0 = self.sigmas[i + 1], self.sigmas[i]
        lam_prev = [self._lambda(i - k) for k in range(1, order)]
        h_phi_1, B_h, R, b, rks = self._coefficients(self._lambda(i + 1), self._lambda(i), lam_prev, order)
        x_t = sig_t / sig_s0 * sample - (1 - sig_t) * h_phi_1 * m0
        if order >= 2:
            D1s = torch.stack([(self.x0_history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)], dim=1)
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            x_t = x_t - (1 - sig_t) * B_h * torch.einsum("k,bk...->b...", rhos_p.to(D1s.dtype), D1s)
        return x_t.to(sample.dtype)

    def _correct(self, x0_t: torch.Tensor, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniPC corrector (UniC-bh2): refine the sample just reached using its own data prediction x0_t."""
        i = self.step_index
        m0 = self.x0_history[-1]
        x = self.last_sample
        sig_t, sig_s0 = self.sigmas[i], self.sigmas[i - 1]
        lam_prev = [self._lambda(i - (k + 1)) for k in range(1, order)]
        h_phi_1, B_h, R, b, rks = self._coefficients(self._lambda(i), self._lambda(i - 1), lam_prev, order)
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
        x_t = sig_t / sig_s0 * x - (1 - sig_t) * h_phi_1 * m0
        corr = rhos_c[-1] * (x0_t - m0)
        if order >= 2:
            D1s = torch.stack([(self.x0_history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)], dim=1)
            corr = corr + torch.einsum("k,bk...->b...", rhos_c[:-1].to(D1s.dtype), D1s)
        return (x_t - (1 - sig_t) * B_h * corr).to(sample.dtype)

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        x0 = sample - self.sigmas[i] * velocity  # data prediction
        if i > 0 and self.last_sample is not None:
            sample = self._correct(x0, sample, self.this_order)
        self.x0_history = (self.x0_history + [x0])[-self.order:]
        order = min(self.order, self.num_steps - i) if self.lower_order_final else self.order
        self.this_order = min(order, len(self.x0_history))
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.step_index += 1
        return prev


def make_sampler(name: str, sigmas: torch.Tensor):
    """Factory for the samplers by config name."""
    if name == "unipc":
        return FlowUniPC(sigmas)
    if name == "euler":
        return FlowEuler(sigmas)
    raise ConfigError(f"unknown sampler {name!r}; valid: ['euler', 'unipc']")


def flash_sigmas(video_sigma: float, action_sigma: float) -> tuple[float, float]:
    """DreamZero-Flash 1-step noise levels (decoupled): video stays noisy, actions go from pure noise to clean."""
    for name, s in (("video_sigma", video_sigma), ("action_sigma", action_sigma)):
        if not (0.0 < s <= 1.0) or math.isnan(s):
            raise ConfigError(f"flash.{name}={s}: must be in (0, 1]")
    return video_sigma, action_sigma
