"""Safety stage: always the last step before the controller, and it fails closed.

`SafetyFilter.apply` turns the execution plan into the command to send, or into a hold:
  hold (stop sending new targets, stay at the current position) when a camera or the joint states are stale
  (the watchdog), when nothing is left to execute, when the newest chunk came from an observation older than the
  allowed inference delay, or when a target is NaN/Inf;
  a hold keeps the position where it started (latched) until targets flow again;
  otherwise clamp targets to the position limits and limit each step to min(max_step, max_velocity * dt),
  starting from the current joint positions.
Every reason is counted (SafetyRefusal) and logged at most once per `log_period_s` per reason.

Threading: `apply` is called from the control thread only; `counters()` may be read from any thread (it copies
under a lock).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dreamzero_policy.embodiment import Embodiment
from dreamzero_policy.errors import SafetyRefusal
from dreamzero_policy.execution import Plan
from dreamzero_policy.observation import JOINT_STATES, JointObservation

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SafeCommand:
    """What the node sends: point i due at start_ns + (i + 1) * dt_ns."""

    start_ns: int
    dt_ns: int
    positions: np.ndarray  # [M >= 1, J]
    gripper: np.ndarray | None  # [M, G] joint units; None = send nothing to the gripper (hold it)
    held: bool  # True: the node holds position (and should clear the chunk broker)
    reasons: tuple[SafetyRefusal, ...]


def hold_trajectory(current_positions: np.ndarray, now_ns: int, dt_ns: int,
                    reasons: tuple[SafetyRefusal, ...] = ()) -> SafeCommand:
    """One target at the current positions, due one step from now (send it with zero velocity)."""
    return SafeCommand(now_ns, dt_ns, np.asarray(current_positions, np.float64)[None].copy(), None, True, reasons)


class Watchdog:
    """Reports streams whose newest stamp is older than the embodiment's thresholds (or that never arrived).

    Stamps and `now_ns` must come from the same clock (ROS time, or sim time under use_sim_time).
    """

    def __init__(self, embodiment: Embodiment):
        self._limits_ns = {c.name: int(embodiment.staleness.camera_ms * 1e6) for c in embodiment.cameras}
        self._limits_ns[JOINT_STATES] = int(embodiment.staleness.joint_states_ms * 1e6)

    def stale(self, now_ns: int, stamps: Mapping[str, int | None]) -> dict[str, float]:
        """{stream: age in ms (inf if never received)} for every stale stream."""
        ages = {}
        for stream, limit in self._limits_ns.items():
            stamp = stamps.get(stream)
            age = float("inf") if stamp is None else (now_ns - stamp) / 1e6
            if age > limit / 1e6:
                ages[stream] = age
        return ages


class SafetyFilter:
    def __init__(self, embodiment: Embodiment, log_period_s: float = 5.0, logger: logging.Logger | None = None):
        self.embodiment = embodiment
        self.watchdog = Watchdog(embodiment)
        self._lower, self._upper = embodiment.lower, embodiment.upper  # [J]
        self._max_step, self._max_velocity = embodiment.max_step, embodiment.max_velocity  # [J]
        self._gripper_lo = np.minimum(embodiment.gripper_open, embodiment.gripper_closed)  # [G]
        self._gripper_hi = np.maximum(embodiment.gripper_open, embodiment.gripper_closed)
        self._max_delay_ns = int(embodiment.staleness.inference_delay_ms * 1e6)
        self._log = logger or _log
        self._log_period_ns = int(log_period_s * 1e9)
        self._lock = threading.Lock()
        self._counts = {reason: 0 for reason in SafetyRefusal}
        self._unlogged = {reason: 0 for reason in SafetyRefusal}
        self._last_logged_ns: dict[SafetyRefusal, int] = {}
        self._held_at: np.ndarray | None = None  # [J] latched when a hold starts, so a hold never drifts

    def apply(self, plan: Plan | None, current: JointObservation, now_ns: int,
              stream_stamps: Mapping[str, int | None]) -> SafeCommand:
        """The command to send now for `plan`, or a hold at `current.positions`."""
        dt_ns = self.embodiment.dt_ns
        stale = self.watchdog.stale(now_ns, stream_stamps)
        if stale:
            by_reason: dict[SafetyRefusal, list[str]] = {}
            for stream, age in stale.items():
                reason = SafetyRefusal.STALE_JOINTS if stream == JOINT_STATES else SafetyRefusal.STALE_CAMERA
                by_reason.setdefault(reason, []).append(f"{stream} {age:.0f} ms old")
            return self._hold(current, now_ns, dt_ns, {r: ", ".join(d) for r, d in by_reason.items()})
        if plan is None or len(plan) == 0:
            return self._hold(current, now_ns, dt_ns, {SafetyRefusal.NO_TARGETS: "plan empty"})
        if plan.delay_ns > self._max_delay_ns:
            return self._hold(current, now_ns, dt_ns, {
                SafetyRefusal.STALE_CHUNK: f"delay {plan.delay_ns / 1e6:.0f} ms > {self._max_delay_ns / 1e6:.0f} ms"})
        if not (np.isfinite(plan.positions).all() and np.isfinite(plan.gripper).all()):
            return self._hold(current, now_ns, dt_ns, {SafetyRefusal.NON_FINITE: "in the plan"})

        reasons: list[SafetyRefusal] = []
        positions = np.clip(plan.positions, self._lower, self._upper)  # [M, J]
        gripper = np.clip(plan.gripper, self._gripper_lo, self._gripper_hi)  # [M, G]
        if (positions != plan.positions).any() or (gripper != plan.gripper).any():
            reasons.append(SafetyRefusal.POSITION_LIMIT)
        positions, step_hit, velocity_hit = self._limit_steps(positions, current.positions, plan.dt_ns)
        if step_hit:
            reasons.append(SafetyRefusal.STEP_LIMIT)
        if velocity_hit:
            reasons.append(SafetyRefusal.VELOCITY_LIMIT)
        for reason in reasons:
            self._record(reason, now_ns, f"{len(plan)} targets")
        self._held_at = None
        return SafeCommand(plan.start_ns, plan.dt_ns, positions, gripper, False, tuple(reasons))

    def counters(self) -> dict[str, int]:
        """{reason name: count} since construction, every reason included (for the status message)."""
        with self._lock:
            return {reason.name: count for reason, count in self._counts.items()}

    def _limit_steps(self, positions: np.ndarray, start: np.ndarray, dt_ns: int) -> tuple[np.ndarray, bool, bool]:
        """Limit every step (from `start` [J], then point to point) to min(max_step, max_velocity * dt)."""
        velocity_step = self._max_velocity * dt_ns / 1e9  # [J]
        limit = np.minimum(self._max_step, velocity_step)
        velocity_binds = velocity_step < self._max_step  # [J]
        out = np.empty_like(positions)
        previous, hit = start, np.zeros(positions.shape[1], bool)
        for i, target in enumerate(positions):
            step = target - previous
            hit |= np.abs(step) > limit
            previous = out[i] = previous + np.clip(step, -limit, limit)
        return out, bool((hit & ~velocity_binds).any()), bool((hit & velocity_binds).any())

    def _hold(self, current: JointObservation, now_ns: int, dt_ns: int,
              details: dict[SafetyRefusal, str]) -> SafeCommand:
        for reason, detail in details.items():
            self._record(reason, now_ns, detail)
        if self._held_at is None:
            self._held_at = current.positions.copy()
        return hold_trajectory(self._held_at, now_ns, dt_ns, tuple(details))

    def _record(self, reason: SafetyRefusal, now_ns: int, detail: str) -> None:
        with self._lock:
            self._counts[reason] += 1
            self._unlogged[reason] += 1
            last = self._last_logged_ns.get(reason)
            if last is not None and now_ns - last < self._log_period_ns:
                return
            count, total, self._unlogged[reason] = self._unlogged[reason], self._counts[reason], 0
            self._last_logged_ns[reason] = now_ns
        level = logging.WARNING if reason.holds else logging.INFO
        self._log.log(level, "safety %s (code %d): %s; %s [%d time(s) since the last report, %d in total]",
                      reason.name, reason.code, reason.message, detail, count, total)
