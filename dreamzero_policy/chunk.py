"""Chunk stage: the model's normalised action chunk -> absolute targets in robot units.

decode_chunk: unnormalise (q01/q99) -> relative dims += the joint state the chunk was computed from -> gripper
[0, 1] -> joint units. trajectory_points: the positions, times and velocities of a trajectory message as arrays.

Threading: pure functions and immutable dataclasses; thread-safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dreamzero_policy.embodiment import Embodiment
from dreamzero_policy.errors import ChunkError
from dreamzero_policy.observation import JointObservation
from dreamzero_policy.transforms import (Normalizer, gripper_to_joint, observation_vector, relative_mask, split,
                                         to_absolute)


@dataclass(frozen=True)
class ActionChunk:
    """Absolute targets: action i is due at anchor.stamp_ns + (i + 1) * dt_ns."""

    anchor: JointObservation  # the joint state at the observation the chunk was computed from
    positions: np.ndarray  # [T, J] joint targets
    gripper: np.ndarray  # [T, G] gripper targets in joint units
    dt_ns: int

    @property
    def t_obs_ns(self) -> int:
        return self.anchor.stamp_ns

    def __len__(self) -> int:
        return self.positions.shape[0]


def decode_chunk(normalized: np.ndarray, anchor: JointObservation, normalizer: Normalizer,
                 embodiment: Embodiment) -> ActionChunk:
    """Model output [T, A_model] (normalised, padded) -> ActionChunk in robot units."""
    normalized = np.asarray(normalized, np.float64)
    if normalized.ndim != 2 or normalized.shape[0] < 1 or normalized.shape[1] != normalizer.action.dim:
        raise ChunkError("chunk shape", f"[T >= 1, {normalizer.action.dim}]", list(normalized.shape))
    actions = normalizer.action.unnormalize(normalized)  # [T, A]
    anchor_vector = observation_vector(embodiment.action, anchor, embodiment)  # [A]
    actions = to_absolute(actions, anchor_vector, relative_mask(embodiment.action))
    arm, gripper = split(embodiment.action, actions)  # [T, J], [T, G] (model units)
    return ActionChunk(anchor, arm, gripper_to_joint(gripper, embodiment), embodiment.dt_ns)


class TrajectoryPoints(NamedTuple):
    time_from_start_s: np.ndarray  # [M]: (i + 1) * dt
    positions: np.ndarray  # [M, J]
    velocities: np.ndarray  # [M, J]


def trajectory_points(positions: np.ndarray, dt_s: float, start: np.ndarray) -> TrajectoryPoints:
    """Times and velocities for a trajectory that starts at `start` [J] and passes `positions` [M, J].

    Point i's velocity is the central difference of its neighbours, with `start` as the neighbour before point 0,
    so the first segment leaves the current state consistently and the controller's splines do not overshoot
    between points. The last point has velocity 0: if no newer trajectory replaces this one, the arm comes to
    rest there instead of stopping abruptly.
    """
    padded = np.vstack([start[None], positions])  # [M + 1, J]
    velocities = np.zeros_like(positions, dtype=np.float64)
    velocities[:-1] = (padded[2:] - padded[:-2]) / (2.0 * dt_s)
    times = (np.arange(positions.shape[0]) + 1) * dt_s
    return TrajectoryPoints(times, positions, velocities)
