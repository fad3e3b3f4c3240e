"""Ground truth: what the robot was commanded (or did) over time, per joint, from recorded messages.

`Timeline` holds per-joint piecewise-linear signals and samples them at arbitrary times (a sample outside a joint's
recorded span is invalid, never extrapolated). Two builders, one per `--ground-truth` choice:

- `CommandTimeline` (the recorded controller commands): JointTrajectory messages as a joint_trajectory_controller
  executes them: point i is due at start + time_from_start_i, start = header.stamp (0: the receipt time); a newer
  trajectory replaces the points of older ones from its start on; between trajectories the controller holds the
  last point, then moves to the new first point. JointState / Float64MultiArray commands are setpoints at their
  stamp (receipt time when unstamped).
- joint states (`Timeline.from_joint_states`): the measured positions at their stamps.

The same builder reads the node's own published commands in replay, so "recorded" and "would have sent" are
compared on equal terms. Values are joint units (rad, or m for prismatic joints and fingers).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _duration_ns(d) -> int:
    return int(d.sec) * 1_000_000_000 + int(d.nanosec)


class Timeline:
    """Per-joint samples (t_ns ascending, value); `sample` interpolates linearly inside each joint's span."""

    def __init__(self, joints: Sequence[str], points: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.joints = list(joints)
        self._points = {j: points.get(j, (np.zeros(0, np.int64), np.zeros(0))) for j in self.joints}

    def span(self, joint: str) -> tuple[int, int] | None:
        t, _ = self._points[joint]
        return (int(t[0]), int(t[-1])) if len(t) else None

    def count(self, joint: str) -> int:
        return len(self._points[joint][0])

    def points(self, joint: str) -> tuple[np.ndarray, np.ndarray]:
        return self._points[joint]

    def sample(self, times_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values [..., K], valid [..., K] bool) at `times_ns` [...] for the K joints; invalid values are NaN."""
        times = np.asarray(times_ns, np.int64)
        values = np.full((*times.shape, len(self.joints)), np.nan)
        valid = np.zeros(values.shape, bool)
        for k, joint in enumerate(self.joints):
            t, v = self._points[joint]
            if not len(t):
                continue
            inside = (times >= t[0]) & (times <= t[-1])
            # Relative to the first sample: float64 keeps nanoseconds exact over days of bag time.
            values[..., k] = np.where(inside, np.interp((times - t[0]).astype(np.float64),
                                                        (t - t[0]).astype(np.float64), v), np.nan)
            valid[..., k] = inside
        return values, valid

    def sample_clamped(self, times_ns: np.ndarray) -> np.ndarray:
        """Like `sample`, but outside a span the nearest end value (NaN only for a joint without data)."""
        times = np.asarray(times_ns, np.int64)
        values = np.full((*times.shape, len(self.joints)), np.nan)
        for k, joint in enumerate(self.joints):
            t, v = self._points[joint]
            if len(t):
                values[..., k] = np.interp((times - t[0]).astype(np.float64), (t - t[0]).astype(np.float64), v)
        return values

    @classmethod
    def from_samples(cls, joints: Sequence[str], samples: dict[str, list[tuple[int, float]]]) -> Timeline:
        points = {}
        for joint, items in samples.items():
            if not items:
                continue
            items = sorted(items, key=lambda x: x[0])
            t = np.array([x[0] for x in items], np.int64)
            v = np.array([x[1] for x in items], np.float64)
            keep = np.ones(len(t), bool)  # one value per time: the last one written wins
            keep[:-1] = t[1:] != t[:-1]
            points[joint] = (t[keep], v[keep])
        return cls(joints, points)

    @classmethod
    def from_joint_states(cls, joints: Sequence[str], messages: Iterable[tuple[int, Any]],
                          use_log_time: bool = False) -> Timeline:
        """sensor_msgs/JointState messages (log time, msg) -> positions by name at their stamps."""
        wanted = set(joints)
        samples: dict[str, list[tuple[int, float]]] = {j: [] for j in joints}
        for t_log, msg in messages:
            t = t_log if use_log_time else _stamp_ns(msg.header)
            positions = np.asarray(msg.position, np.float64)
            for name, value in zip(msg.name, positions):
                if name in wanted and np.isfinite(value):
                    samples[name].append((t, float(value)))
        return cls.from_samples(joints, samples)


class CommandTimeline:
    """Builds a Timeline from controller commands in arrival order (see the module docstring)."""

    def __init__(self, joints: Sequence[str], use_log_time: bool = False):
        self.joints = list(joints)
        self._wanted = set(joints)
        self._use_log_time = use_log_time
        self._samples: dict[str, list[tuple[int, float]]] = {j: [] for j in joints}
        self.messages = 0

    def add(self, t_log: int, msgtype: str, msg: Any, joint_order: Sequence[str] = ()) -> None:
        """One command message received at `t_log`; `joint_order` names the values of a Float64MultiArray."""
        self.messages += 1
        if msgtype == "trajectory_msgs/msg/JointTrajectory":
            self._trajectory(t_log, msg)
        elif msgtype == "sensor_msgs/msg/JointState":
            stamp = _stamp_ns(msg.header)
            t = t_log if self._use_log_time or stamp == 0 else stamp
            self._setpoint(t, list(msg.name), np.asarray(msg.position, np.float64))
        elif msgtype == "std_msgs/msg/Float64MultiArray":
            self._setpoint(t_log, list(joint_order), np.asarray(msg.data, np.float64))
        else:
            raise ValueError(f"unsupported command type {msgtype!r}")

    def _setpoint(self, t: int, names: Sequence[str], values: np.ndarray) -> None:
        for name, value in zip(names, values):
            if name in self._wanted and np.isfinite(value):
                self._truncate(name, t)
                self._samples[name].append((t, float(value)))

    def _trajectory(self, t_log: int, msg: Any) -> None:
        stamp = _stamp_ns(msg.header)
        start = t_log if self._use_log_time or stamp == 0 else stamp
        names = list(msg.joint_names)
        columns = [(k, name) for k, name in enumerate(names) if name in self._wanted]
        for _, name in columns:
            self._truncate(name, start)
            held = self._samples[name]
            if held:  # the controller holds the last point until this trajectory starts
                self._samples[name].append((start, held[-1][1]))
        for point in msg.points:
            t = start + _duration_ns(point.time_from_start)
            positions = np.asarray(point.positions, np.float64)
            for k, name in columns:
                if k < len(positions) and np.isfinite(positions[k]):
                    self._samples[name].append((t, float(positions[k])))

    def _truncate(self, joint: str, t: int) -> None:
        """Forget the points of older commands due at or after `t` (a newer command replaces them)."""
        items = self._samples[joint]
        while items and items[-1][0] >= t:
            items.pop()

    def timeline(self) -> Timeline:
        return Timeline.from_samples(self.joints, self._samples)
