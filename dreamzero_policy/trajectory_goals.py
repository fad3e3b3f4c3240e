"""The controller stage for `follow_joint_trajectory` controllers: one control_msgs/FollowJointTrajectory goal per
(safety-checked) trajectory, through the middleware's action client.

Semantics follow ros2_controllers' joint_trajectory_controller: it accepts a new goal and ends the running one as
CANCELED ("Current goal cancelled due to new incoming action."), so a newer chunk simply preempts. A hold (deactivate,
reset, any safety hold) first cancels the active goal (the controller then holds where it is) and sends the hold
trajectory as a new goal. A goal the controller rejects, aborts or cancels on its own is counted (`counters()`) and
logged, rate-limited; the controller keeps executing or holding what it had, and the next chunk is a new goal.

Threading: `send` is called under the commander's lock (session worker or executor thread); goal outcomes arrive on
the executor thread.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from dreamzero_policy import msgs
from dreamzero_policy.errors import ControllerUnavailable
from dreamzero_policy.middleware.base import ClientGoalHandle, GoalStatus

ACTION_TYPE = "control_msgs/action/FollowJointTrajectory"


class TrajectoryGoals:
    """Sends JointTrajectory messages as goals to the action server `name`; see the module docstring."""

    def __init__(self, mw, name: str, wait_s: float, rate_log: Callable[..., None]):
        """Waits up to `wait_s` for the server; raises ControllerUnavailable when none answers."""
        self._client = mw.create_action_client(name, ACTION_TYPE)
        self.name = self._client.name
        if not self._client.wait_for_server(wait_s):
            self.destroy()
            raise ControllerUnavailable(self.name, wait_s)
        self._rate_log = rate_log
        self._lock = threading.Lock()
        self._active: ClientGoalHandle | None = None
        self._counts: Counter = Counter()

    def send(self, trajectory: Any, hold: bool) -> None:
        """Send `trajectory` (trajectory_msgs/JointTrajectory) as the new goal; `hold` cancels the active one first.

        Raises MiddlewareError when the server is gone (the caller counts and logs it)."""
        with self._lock:
            active = self._active
        if hold and active is not None:
            self._client.cancel(active)
        handle = self._client.send_goal(msgs.default_msg(f"{ACTION_TYPE}_Goal", trajectory=trajectory),
                                        on_done=self._on_done)
        with self._lock:
            self._active = handle
            self._counts["goals_sent"] += 1

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _on_done(self, handle: ClientGoalHandle) -> None:
        with self._lock:
            current = handle is self._active
        if handle.accepted is False:
            kind, detail = "goals_rejected", "rejected a goal"
        elif handle.status == GoalStatus.ABORTED:
            kind, detail = "goals_aborted", f"aborted a goal: {_describe(handle.result)}"
        elif handle.status == GoalStatus.CANCELED and current and not handle.cancel_requested:
            kind, detail = "goals_canceled_by_controller", f"cancelled the goal: {_describe(handle.result)}"
        else:   # succeeded, preempted by the next goal, or cancelled by us
            kind, detail = f"goals_{handle.status.name.lower()}", ""
        with self._lock:
            self._counts[kind] += 1
        if detail:
            self._rate_log(f"{self.name}:{kind}", logging.WARNING, "controller %s %s", self.name, detail)

    def destroy(self) -> None:
        self._client.destroy()


def _describe(result: Any) -> str:
    """`error_code N: error_string` of a FollowJointTrajectory result."""
    if result is None:
        return "no result"
    return f"error_code {result.error_code}" + (f": {result.error_string}" if result.error_string else "")
