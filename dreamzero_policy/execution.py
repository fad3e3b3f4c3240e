"""Execution stage: a chunk broker for predict-while-executing.

The broker holds the executing targets on a time grid (target i due at origin + (i + 1) dt). When a new chunk
arrives that was computed from an observation at t_obs, the actions already due by now are the real inference
delay: they are dropped (never zero-padded, never replayed late). The rest is spliced onto what remains of the
executing targets with a linear cross-fade over `crossfade_steps` steps, so the first new target is close to where
the old trajectory would have been and the seam has no jump. `plan(now)` returns what to send from now.

Threading: `submit` (session worker thread), `plan` and `clear` (control thread) may be called concurrently;
one internal lock guards the state, held only for array slicing (microseconds).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from dreamzero_policy.chunk import ActionChunk
from dreamzero_policy.errors import ChunkError, OutOfOrderStamp


@dataclass(frozen=True)
class Plan:
    """The targets to send from now: point i is due at start_ns + (i + 1) * dt_ns (header.stamp = start_ns)."""

    start_ns: int
    dt_ns: int
    positions: np.ndarray  # [M, J]; M may be 0 when every target is already due
    gripper: np.ndarray  # [M, G] in joint units
    t_obs_ns: int  # observation behind the newest chunk
    delay_ns: int  # that chunk's arrival time - t_obs: its measured inference delay
    delay_steps: int  # that chunk's actions dropped because they were already due on arrival

    def __len__(self) -> int:
        return self.positions.shape[0]


class ChunkBroker:
    def __init__(self, dt_ns: int, crossfade_steps: int = 4):
        assert dt_ns > 0 and crossfade_steps >= 0, (dt_ns, crossfade_steps)
        self.dt_ns, self.crossfade_steps = dt_ns, crossfade_steps
        self._lock = threading.Lock()
        self._targets: np.ndarray | None = None  # [N, J + G]
        self._n_joints = 0
        self._origin_ns = 0  # target i is due at origin + (i + 1) dt
        self._t_obs_ns = self._delay_ns = self._delay_steps = 0

    def submit(self, chunk: ActionChunk, now_ns: int) -> Plan:
        """Splice a new chunk onto the executing targets; returns the plan from now."""
        if chunk.dt_ns != self.dt_ns:
            raise ChunkError("chunk dt_ns", self.dt_ns, chunk.dt_ns)
        new = np.concatenate([chunk.positions, chunk.gripper], axis=1)  # [T, J + G]
        consumed = min(max((now_ns - chunk.t_obs_ns) // self.dt_ns, 0), len(new))  # the measured delay in steps
        origin = chunk.t_obs_ns + consumed * self.dt_ns
        new = new[consumed:]  # [M, J + G]
        due = origin + (np.arange(len(new)) + 1) * self.dt_ns  # [M] due times
        with self._lock:
            if self._targets is not None and chunk.t_obs_ns <= self._t_obs_ns:
                raise OutOfOrderStamp("chunk t_obs", f"> {self._t_obs_ns} ns (the executing chunk's)", chunk.t_obs_ns)
            if self._targets is not None and len(self._targets):
                old = self._values_at(due)  # [M, J + G]
            else:  # nothing executing: fade in from the state the chunk was computed from
                old = np.concatenate([chunk.anchor.positions, chunk.anchor.gripper])[None]
            weight = np.minimum((np.arange(len(new)) + 1) / (self.crossfade_steps + 1), 1.0)[:, None]  # [M, 1]
            self._targets = (1.0 - weight) * old + weight * new
            self._n_joints = chunk.positions.shape[1]
            self._origin_ns = origin
            self._t_obs_ns, self._delay_ns, self._delay_steps = chunk.t_obs_ns, now_ns - chunk.t_obs_ns, consumed
            return self._plan(now_ns)

    def plan(self, now_ns: int) -> Plan | None:
        """The targets not yet due at `now_ns`; None before the first chunk and after `clear`."""
        with self._lock:
            return None if self._targets is None else self._plan(now_ns)

    def clear(self) -> None:
        """Forget the executing targets (call after the arm was held, or on an episode reset): the next chunk then
        fades in from its own anchor state instead of from targets the arm never followed."""
        with self._lock:
            self._targets = None
            self._t_obs_ns = 0

    def _values_at(self, times_ns: np.ndarray) -> np.ndarray:
        """The executing targets linearly interpolated at `times_ns` [M] -> [M, J + G] (held before the first
        and after the last target)."""
        grid = self._origin_ns + (np.arange(len(self._targets)) + 1) * self.dt_ns  # [N]
        return np.stack([np.interp(times_ns, grid, column) for column in self._targets.T], axis=1)

    def _plan(self, now_ns: int) -> Plan:
        due = min(max((now_ns - self._origin_ns) // self.dt_ns, 0), len(self._targets))
        rest = self._targets[due:]
        return Plan(self._origin_ns + due * self.dt_ns, self.dt_ns, rest[:, :self._n_joints],
                    rest[:, self._n_joints:], self._t_obs_ns, self._delay_ns, self._delay_steps)
