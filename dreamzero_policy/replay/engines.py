"""Policy engines for replay: objects with WorldActionEngine's `step` contract, put into the node's own Session.

The Session calls `engine.step(frames, state, prompt, negative_prompt) -> StepOutput` and `engine.reset()`, and
reads `frames_per_block` / `action_horizon`. Anything with that contract can stand in for the model while every
other stage (observation decoding, block buffer, session, chunk decoding, execution, safety) stays the live node's.

- `RecordingEngine` wraps the real engine and keeps its last StepOutput (the imagined video latents) for the report.
- `OracleEngine` returns the recorded ground truth (optionally plus a known bias) as the model's normalised output:
  chunk decoding then turns it back into exactly the recorded targets. It checks the whole evaluation pipeline:
  metrics must come out zero (or exactly the bias).

An engine factory is `f(engine, context) -> engine`; `context` (a ReplayContext) gives the block the session is
working on, the embodiment, the normaliser and the ground truth.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamzero_policy.transforms import assemble, gripper_to_model, observation_vector, relative_mask, to_relative


@dataclass
class ReplayContext:
    """What a replay engine may look at (set by the replay driver before each model call)."""

    embodiment: Any
    normalizer: Any  # transforms.Normalizer of the checkpoint
    ground_truth: Any  # groundtruth.Timeline over embodiment joints + gripper joints
    block: Any = None  # block_buffer.Block being processed (None before the first)
    extra: dict = field(default_factory=dict)


EngineFactory = Callable[[Any, ReplayContext], Any]


class _Delegating:
    """Attributes not defined here come from the wrapped engine (config, vae, dit, frames_per_block, ...)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.inner.reset()


class RecordingEngine(_Delegating):
    """The real engine; `last` is the StepOutput of its latest call (None before the first)."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.last = None

    def step(self, frames, state, prompt, negative_prompt=""):
        self.last = self.inner.step(frames, state, prompt, negative_prompt)
        return self.last


class OracleEngine(_Delegating):
    """Returns the ground truth at the chunk's due times (anchor stamp + (i + 1) dt), plus `bias` (joint units, one
    value per arm + gripper joint), encoded as the model's normalised output (the inverse of chunk.decode_chunk,
    without the normaliser's clipping, so decoding gives the targets back to float64 round-off).

    Where the ground truth has no value yet or any more, the nearest recorded value is used (those steps are not
    scored). The reset bookkeeping follows the engine's rules (first call, new prompt, single-frame input).
    """

    def __init__(self, inner: Any, context: ReplayContext, bias: np.ndarray | None = None):
        super().__init__(inner)
        self.context = context
        emb = context.embodiment
        width = len(emb.joints) + len(emb.grippers)
        self.bias = np.zeros(width) if bias is None else np.asarray(bias, np.float64).reshape(width)
        self.last = None
        self._prompt: str | None = None
        self._frame = 0

    def reset(self) -> None:
        self._prompt = None
        self._frame = 0

    def step(self, frames, state, prompt, negative_prompt=""):
        from model_core.engine import StepOutput

        emb, normalizer, block = self.context.embodiment, self.context.normalizer, self.context.block
        num = int(np.shape(frames)[0])
        reason = ("first call" if self._prompt is None else "instruction changed" if prompt != self._prompt
                  else "single-frame input" if num == 1 else None)
        if reason is not None:
            self._prompt, self._frame = prompt, 1
        anchor = block.joint
        horizon = self.inner.action_horizon
        due = anchor.stamp_ns + (np.arange(horizon, dtype=np.int64) + 1) * emb.dt_ns  # [T]
        targets = self.context.ground_truth.sample_clamped(due)  # [T, J + G]
        current = np.concatenate([anchor.positions, anchor.gripper])
        targets = np.where(np.isfinite(targets), targets, current) + self.bias
        n_arm = len(emb.joints)
        arm, gripper = targets[:, :n_arm], gripper_to_model(targets[:, n_arm:], emb)
        actions = assemble(emb.action, arm, gripper)  # [T, A] in model units, absolute
        anchor_vector = observation_vector(emb.action, anchor, emb)
        actions = to_relative(actions, anchor_vector, relative_mask(emb.action))
        q = normalizer.action
        scaled = np.divide(2.0 * (actions - q.q01), q.range, out=np.zeros_like(actions), where=q.range > 0) - 1.0
        out = np.zeros((horizon, q.dim))
        out[:, :q.size] = scaled
        start = self._frame
        self._frame += 2
        self.last = StepOutput(actions=out, video_latents=None, reset=reason, current_start_frame=start, timings={})
        return self.last


def oracle_factory(bias: np.ndarray | None = None) -> EngineFactory:
    """An engine factory for replay: the ground truth (+ bias) instead of the model."""
    return lambda engine, context: OracleEngine(engine, context, bias)
