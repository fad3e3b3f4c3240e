"""A joint-trajectory controller for the sim, modelled on ros2_controllers' joint_trajectory_controller.

A trajectory is the content of a trajectory_msgs/msg/JointTrajectory: joint names, and points with positions
(optionally velocities) at `time_from_start`. The controller checks it whole before it touches anything; a bad one
raises `TrajectoryRejected` with one message and the caller holds the arm. An accepted trajectory replaces the running
one (ROS 2 Jazzy semantics) and starts from the current setpoint at the time it is received.

Between points the controller interpolates linearly (positions only) or with cubic Hermite splines (positions and
velocities), as joint_trajectory_controller does. Every physics step the setpoint follows the interpolated target
within the joint's velocity and acceleration limits, slowing down early enough to stop at a position limit, and never
leaves the limits: a jumpy command is smoothed and slowed down, never executed past the limits. After the last point
it holds the last position; a rejected command makes it stop as fast as the acceleration limit allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TrajectoryRejected(ValueError):
    """A trajectory that breaks a rule (names, timing, NaN, limits); it was not executed."""


@dataclass(frozen=True)
class JointTrajectory:
    """Content of a JointTrajectory message, times relative to when the controller receives it."""

    joint_names: tuple[str, ...]
    time_from_start_ns: np.ndarray  # [T] int
    positions: np.ndarray  # [T, J] (or T sequences of J values)
    velocities: np.ndarray | None = None  # [T, J] (or T sequences of J values)


class TrajectoryController:
    """Executes JointTrajectory commands for a fixed set of joints; call `update` once per physics step.

    Not thread-safe: the owner (the sim env) calls it from one thread.
    """

    def __init__(self, name: str, joint_names: tuple[str, ...], lower: np.ndarray, upper: np.ndarray,
                 max_velocity: np.ndarray, max_acceleration: np.ndarray):
        self.name = name
        self.joint_names = tuple(joint_names)
        self.lower = np.asarray(lower, dtype=np.float64)  # [J]
        self.upper = np.asarray(upper, dtype=np.float64)  # [J]
        self.max_velocity = np.asarray(max_velocity, dtype=np.float64)  # [J]
        self.max_acceleration = np.asarray(max_acceleration, dtype=np.float64)  # [J]
        self.setpoint = np.zeros(len(self.joint_names))  # [J]
        self.setpoint_velocity = np.zeros(len(self.joint_names))  # [J]
        self._segment: _Spline | None = None
        self._elapsed_s = 0.0

    def reset(self, positions: np.ndarray) -> None:
        """Hold `positions` [J] (clipped to the limits) with no trajectory running."""
        self.setpoint = np.clip(np.asarray(positions, dtype=np.float64), self.lower, self.upper)
        self.setpoint_velocity = np.zeros_like(self.setpoint)
        self._segment = None

    @property
    def active(self) -> bool:
        """True while a trajectory is being executed (before its last point's time)."""
        return self._segment is not None and self._elapsed_s < self._segment.times[-1]

    def hold(self) -> None:
        """Drop the running trajectory and stop as fast as the acceleration limit allows, then hold."""
        stop = self.setpoint + self.setpoint_velocity * np.abs(self.setpoint_velocity) / (2 * self.max_acceleration)
        self._segment = _Spline(np.zeros(1), np.clip(stop, self.lower, self.upper)[None], None)
        self._elapsed_s = 0.0

    def validate(self, traj: JointTrajectory) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Check `traj` and return (times_s [T], positions [T, J], velocities [T, J] or None) in this controller's
        joint order; raise TrajectoryRejected naming the first broken rule."""
        names = tuple(traj.joint_names)
        unknown = [n for n in names if n not in self.joint_names]
        if unknown:
            raise TrajectoryRejected(f"{self.name}: unknown joint names {unknown}; this controller drives "
                                     f"{list(self.joint_names)}")
        if len(set(names)) != len(names) or len(names) != len(self.joint_names):
            raise TrajectoryRejected(f"{self.name}: joint_names {list(names)} must name each of "
                                     f"{list(self.joint_names)} exactly once")
        order = [names.index(n) for n in self.joint_names]
        times = np.atleast_1d(np.asarray(traj.time_from_start_ns))
        positions = self._as_rows(traj.positions, "positions")
        n_points = len(times)
        if n_points == 0:
            raise TrajectoryRejected(f"{self.name}: trajectory has no points")
        if times.ndim != 1 or positions.shape != (n_points, len(names)):
            raise TrajectoryRejected(f"{self.name}: positions have shape {positions.shape}, expected "
                                     f"({n_points}, {len(names)}) for {n_points} points of {len(names)} joints")
        if times[0] <= 0 or np.any(np.diff(times) <= 0):
            raise TrajectoryRejected(f"{self.name}: time_from_start must be positive and strictly increasing, "
                                     f"got {times.tolist()} ns")
        velocities = None
        if traj.velocities is not None and len(traj.velocities) > 0:
            velocities = self._as_rows(traj.velocities, "velocities")
            if velocities.shape != positions.shape:
                raise TrajectoryRejected(f"{self.name}: velocities have shape {velocities.shape}, expected "
                                         f"{positions.shape} (one per position) or none")
            velocities = velocities[:, order]
        positions = positions[:, order]
        for label, values in (("positions", positions), ("velocities", velocities)):
            if values is not None and not np.all(np.isfinite(values)):
                point, joint = np.argwhere(~np.isfinite(values))[0]
                raise TrajectoryRejected(f"{self.name}: {label} of {self.joint_names[joint]} at point {point} is "
                                         f"{values[point, joint]}; every value must be finite")
        outside = (positions < self.lower) | (positions > self.upper)
        if np.any(outside):
            point, joint = np.argwhere(outside)[0]
            raise TrajectoryRejected(
                f"{self.name}: {self.joint_names[joint]} at point {point} is {positions[point, joint]:.4f}, outside "
                f"its limits [{self.lower[joint]:.4f}, {self.upper[joint]:.4f}]")
        if velocities is not None and np.any(np.abs(velocities) > self.max_velocity):
            point, joint = np.argwhere(np.abs(velocities) > self.max_velocity)[0]
            raise TrajectoryRejected(
                f"{self.name}: velocity of {self.joint_names[joint]} at point {point} is "
                f"{velocities[point, joint]:.4f}, beyond its limit {self.max_velocity[joint]:.4f}")
        return times.astype(np.float64) * 1e-9, positions, velocities

    def _as_rows(self, values, label: str) -> np.ndarray:
        try:
            return np.asarray(values, dtype=np.float64)
        except ValueError:
            raise TrajectoryRejected(f"{self.name}: every point needs {len(self.joint_names)} {label} (one per "
                                     f"joint); the points have unequal numbers of {label}") from None

    def command(self, traj: JointTrajectory) -> None:
        """Validate `traj` and start it now from the current setpoint; on rejection hold and re-raise."""
        try:
            times_s, positions, velocities = self.validate(traj)
        except TrajectoryRejected:
            self.hold()
            raise
        self.start(times_s, positions, velocities)

    def start(self, times_s: np.ndarray, positions: np.ndarray, velocities: np.ndarray | None) -> None:
        """Start an already validated trajectory (see `validate`) now, replacing the running one."""
        self._segment = _Spline(np.concatenate([[0.0], times_s]),
                                np.vstack([self.setpoint, positions]),
                                None if velocities is None else np.vstack([self.setpoint_velocity, velocities]))
        self._elapsed_s = 0.0

    def update(self, dt_s: float) -> np.ndarray:
        """Advance by one physics step of `dt_s` seconds; return the new setpoint [J] (velocity in
        `setpoint_velocity`)."""
        if self._segment is None:
            return self.setpoint
        self._elapsed_s += dt_s
        target = self._segment(self._elapsed_s)
        target_velocity = (target - self._segment(self._elapsed_s - dt_s)) / dt_s
        # Follow the target's velocity and close the remaining error as fast as braking to it allows ...
        error = target - self.setpoint
        closing = np.sign(error) * np.minimum(self._stopping_speed(np.abs(error), dt_s), np.abs(error) / dt_s)
        # ... never faster than the speed limit, nor than what still stops before a position limit ...
        room_up, room_down = np.maximum(self.upper - self.setpoint, 0.0), np.maximum(self.setpoint - self.lower, 0.0)
        velocity = np.clip(target_velocity + closing,
                           -np.minimum(self.max_velocity, self._stopping_speed(room_down, dt_s)),
                           np.minimum(self.max_velocity, self._stopping_speed(room_up, dt_s)))
        # ... and within the acceleration limit of the current velocity.
        velocity = np.clip(velocity, self.setpoint_velocity - self.max_acceleration * dt_s,
                           self.setpoint_velocity + self.max_acceleration * dt_s)
        new = np.clip(self.setpoint + velocity * dt_s, self.lower, self.upper)
        self.setpoint_velocity = (new - self.setpoint) / dt_s
        self.setpoint = new
        return self.setpoint


    def _stopping_speed(self, distance: np.ndarray, dt_s: float) -> np.ndarray:
        """The highest speed [J] from which steps of `dt_s` decelerating at the limit stop within `distance` [J]."""
        step = self.max_acceleration * dt_s
        return step * (np.sqrt(0.25 + 2.0 * distance / (step * dt_s)) - 0.5)


class _Spline:
    """Piecewise linear (no velocities) or cubic Hermite interpolation through knots; holds the end knots."""

    def __init__(self, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray | None):
        self.times = times  # [K] seconds, K = T + 1 (the start state is knot 0)
        self.positions = positions  # [K, J]
        self.velocities = velocities  # [K, J] or None

    def __call__(self, t: float) -> np.ndarray:
        if t >= self.times[-1]:
            return self.positions[-1]
        if t <= self.times[0]:
            return self.positions[0]
        k = int(np.searchsorted(self.times, t, side="right")) - 1
        h = self.times[k + 1] - self.times[k]
        s = (t - self.times[k]) / h
        p0, p1 = self.positions[k], self.positions[k + 1]
        if self.velocities is None:
            return p0 + s * (p1 - p0)
        m0, m1 = self.velocities[k] * h, self.velocities[k + 1] * h
        s2, s3 = s * s, s * s * s
        return ((2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1
                + (s3 - s2) * m1)
