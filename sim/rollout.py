"""Closed-loop episodes: the Policy protocol and the one loop that evaluation and recording share.

The loop is synchronous and deterministic: the policy acts when the previous chunk has run, on the observation at
that instant; the sim does not advance while the policy thinks. An episode ends at the first chunk boundary where the
task succeeds, or when the task's horizon (`env.max_steps` control steps) is used up.

A policy that watches the video between its decisions (the model consumes 5 fps frames) also implements
`observe(obs)`; the loop then renders an observation every `frame_every` control steps while a chunk runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from sim.controller import TrajectoryRejected
from sim.env import FrankaSimEnv, SimObservation

CHUNK_LEN = 24  # the model's chunk: 24 control steps = 1.6 s at 15 Hz (DROID)


class Policy(Protocol):
    """What the evaluator drives: absolute joint targets + gripper, one chunk per call."""

    def reset(self, instruction: str) -> None:
        """Start a new episode with this language instruction."""

    def act(self, obs: SimObservation) -> np.ndarray:
        """The next chunk [T, 8]: 7 absolute arm joint targets (rad) + gripper in [0, 1] (0 open, 1 closed)."""


@runtime_checkable
class FrameObserver(Protocol):
    """Optional extra of a Policy: receives the frames between decisions (5 fps by default)."""

    def observe(self, obs: SimObservation) -> None: ...


class ReplayPolicy:
    """Replays recorded chunks in order, then holds the last action (open loop)."""

    def __init__(self, chunks: list[np.ndarray]):
        if not chunks:
            raise ValueError("ReplayPolicy needs at least one chunk")
        self.chunks = [np.asarray(c, dtype=np.float64) for c in chunks]  # each [T, 8]
        self._next = 0

    @classmethod
    def from_actions(cls, actions: np.ndarray, chunk_len: int = CHUNK_LEN) -> ReplayPolicy:
        """Per-step actions [N, 8] (e.g. a LeRobot episode's `action` column) cut into chunks of `chunk_len`."""
        actions = np.asarray(actions, dtype=np.float64)
        return cls([actions[i:i + chunk_len] for i in range(0, len(actions), chunk_len)])

    def reset(self, instruction: str) -> None:
        self._next = 0

    def act(self, obs: SimObservation) -> np.ndarray:
        if self._next < len(self.chunks):
            self._next += 1
            return self.chunks[self._next - 1]
        return np.repeat(self.chunks[-1][-1:], CHUNK_LEN, axis=0)


@dataclass
class Episode:
    """The outcome of one closed-loop episode."""

    seed: int
    instruction: str
    target: int = 0  # which object of the seed's scene was the target (sim.tasks)
    success: bool = False
    control_steps: int = 0
    chunks: list[np.ndarray] = field(default_factory=list)  # accepted chunks as executed (cut at the horizon), [T, 8]
    act_latency_s: list[float] = field(default_factory=list)  # wall time of each policy.act call
    rejected: list[str] = field(default_factory=list)  # messages of rejected chunks

    @property
    def actions(self) -> np.ndarray:
        """The executed actions [control_steps, 8] (held steps of rejected chunks excluded)."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 8))


def run_episode(env: FrankaSimEnv, policy: Policy, seed: int, *, target: int = 0, render: bool = False,
                frame_every: int = 3, on_frame: Callable[[SimObservation], None] | None = None,
                on_chunk: Callable[[FrankaSimEnv, np.ndarray], None] | None = None,
                on_step: Callable[[FrankaSimEnv], None] | None = None) -> Episode:
    """Run one episode of `policy` from `env.reset(seed, target=target)`.

    render: whether observations carry images (for image-based policies and videos).
    frame_every: control steps between frames; at reset and whenever the episode's control step count is a multiple
        of it, the observation goes to `policy.observe` (if the policy has it) and to `on_frame`.
    on_chunk(env, chunk): after each accepted chunk is sent (recording the commands).
    on_step(env): after reset and after every physics step (recording at sensor rates).
    """
    obs = env.reset(seed, render=render, target=target)
    policy.reset(obs.instruction)
    episode = Episode(seed=seed, instruction=obs.instruction, target=target)
    observers = [f for f in (on_frame, policy.observe if isinstance(policy, FrameObserver) else None) if f]
    substeps = env.PHYSICS_HZ // env.CONTROL_HZ
    if on_step:
        on_step(env)
    for observe in observers:
        observe(obs)
    while episode.control_steps < env.max_steps:
        start = time.perf_counter()
        chunk = policy.act(obs)
        episode.act_latency_s.append(time.perf_counter() - start)
        n_steps = min(len(chunk) if np.ndim(chunk) >= 1 and len(chunk) else CHUNK_LEN,
                      env.max_steps - episode.control_steps)
        try:
            env.send_chunk(chunk, 1.0 / env.CONTROL_HZ)
            episode.chunks.append(np.asarray(chunk, dtype=np.float64)[:n_steps])
            if on_chunk:
                on_chunk(env, np.asarray(chunk, dtype=np.float64))
        except TrajectoryRejected as error:  # the env holds the arm for as long as the chunk would have run
            episode.rejected.append(str(error))
        for k in range(n_steps):
            for _ in range(substeps):
                env.step()
                if on_step:
                    on_step(env)
            episode.control_steps += 1
            last, at_frame = k == n_steps - 1, bool(observers) and episode.control_steps % frame_every == 0
            if last or at_frame:
                current = env.observe(render)
                obs = current if last else obs
                for observe in observers if at_frame else ():
                    observe(current)
        if env.success():
            episode.success = True
            break
    return episode
