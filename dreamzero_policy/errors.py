"""The runtime's exception types and safety refusal reasons.

Every exception names the field, the expected value or rule and the actual value, so one line in a log says what
went wrong and where. `assert` stays for internal invariants; anything a user, a config or a robot can cause raises
one of these.
"""
from __future__ import annotations

from enum import Enum
from typing import Any


class DreamZeroError(Exception):
    """Base class: `<field>: expected <expected>, got <actual>[ (<hint>)]`."""

    def __init__(self, field: str, expected: Any, actual: Any, hint: str = ""):
        self.field, self.expected, self.actual, self.hint = field, expected, actual, hint
        message = f"{field}: expected {expected}, got {actual}"
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(DreamZeroError, ValueError):
    """An embodiment YAML, checkpoint metadata or runtime parameter breaks a rule."""


class InstructionError(DreamZeroError, ValueError):
    """A language instruction cannot be turned into a prompt (e.g. it is empty)."""


class ObservationError(DreamZeroError, ValueError):
    """A camera image or joint state from the robot cannot be used."""


class MalformedImage(ObservationError):
    """Image fields disagree (size, step, encoding) or compressed data does not decode."""


class BadJointState(ObservationError):
    """A joint state lacks a joint, repeats one, has mismatched arrays or a non-finite position."""


class OutOfOrderStamp(ObservationError):
    """A stream's stamps went backwards (or repeated), or a stamp is unset."""


class ChunkError(DreamZeroError, ValueError):
    """A predicted action chunk has the wrong shape for the embodiment and model."""


class ControllerUnavailable(DreamZeroError, RuntimeError):
    """The robot's controller does not answer (no FollowJointTrajectory action server)."""

    def __init__(self, action: str, timeout_s: float):
        super().__init__(f"action server {action}", "available", f"not available after {timeout_s:g} s",
                         "is the controller loaded and active? `ros2 control list_controllers`")
        self.args = (f"action server {action} not available after {timeout_s:g} s ({self.hint})",)


class SafetyRefusal(Enum):
    """Why the safety stage changed or refused a command: (code, message, holds).

    `holds` is True for reasons that make the node stop sending and hold position; False for corrections that
    still let a (modified) trajectory through.
    """

    NON_FINITE = (1, "a target is NaN or Inf", True)
    STALE_CHUNK = (2, "the chunk was computed from an observation older than the allowed inference delay", True)
    STALE_CAMERA = (3, "a camera stream is stale", True)
    STALE_JOINTS = (4, "the joint states are stale", True)
    NO_TARGETS = (5, "no actions left to execute (waiting for the model)", True)
    POSITION_LIMIT = (10, "a target was clamped to the joint position limits", False)
    STEP_LIMIT = (11, "a step was limited to the maximum per-step motion", False)
    VELOCITY_LIMIT = (12, "a step was limited to the joint velocity limit", False)

    def __init__(self, code: int, message: str, holds: bool):
        self.code, self.message, self.holds = code, message, holds
