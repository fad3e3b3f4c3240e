"""Embodiment configs: everything robot-specific, one YAML file per robot in `config/embodiments/`.

A new robot is a new YAML file and nothing else. The file says which joints the model controls and in what order,
their limits, the gripper mapping (model 0 = open, 1 = closed -> joint units), the state/action layout as keys into
the checkpoint's `experiment_cfg/metadata.json` statistics (the numbers come from the checkpoint at run time, never
from the YAML), which action parts are relative to the current state, the cameras and how their views are tiled,
the topics and controller interface, the prompt template and the staleness thresholds.

`load_embodiment(name_or_path)` validates at load; every error names the field, the value and the rule.
Embodiment objects are frozen and safe to share between threads.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dreamzero_policy.errors import ConfigError, InstructionError

ENV_EMBODIMENTS_DIR = "DREAMZERO_EMBODIMENTS_DIR"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmJoint(_Model):
    """One controlled joint (radians, or metres for prismatic joints)."""

    name: str = Field(min_length=1)
    lower: float
    upper: float
    max_velocity: float = Field(gt=0, description="per second")
    max_step: float = Field(gt=0, description="largest change of the target per control step")
    home: float = Field(description="reset / example pose")

    @model_validator(mode="after")
    def _check(self) -> ArmJoint:
        if not self.lower < self.upper:
            raise ConfigError("upper", f"> lower ({self.lower})", self.upper)
        if not self.lower <= self.home <= self.upper:
            raise ConfigError("home", f"within [{self.lower}, {self.upper}]", self.home)
        return self


class Gripper(_Model):
    """A gripper joint; the model's value g in [0, 1] maps linearly to `open + g * (closed - open)`."""

    joint: str = Field(min_length=1)
    open: float = Field(description="joint position for model value 0")
    closed: float = Field(description="joint position for model value 1")

    @model_validator(mode="after")
    def _check(self) -> Gripper:
        if self.open == self.closed:
            raise ConfigError("closed", f"!= open ({self.open})", self.closed)
        return self


class Segment(_Model):
    """A consecutive part of the state or action vector, named by its key in the checkpoint statistics.

    Segments of one source take that source's joints in order: e.g. `arm` segments of sizes 7 and 7 cover the
    first and the last 7 arm joints.
    """

    key: str = Field(min_length=1)
    source: Literal["arm", "gripper"]
    size: int = Field(gt=0)
    relative: bool = Field(False, description="action only: the model predicts the offset from the current state")


class Camera(_Model):
    name: str = Field(min_length=1)
    topic: str = Field(pattern=r"^/", description="image topic; compressed transport adds /compressed")
    transport: Literal["raw", "compressed"] = "raw"
    rate_hz: float = Field(gt=0, description="expected publishing rate")

    @property
    def subscribed_topic(self) -> str:
        return self.topic if self.transport == "raw" else f"{self.topic}/compressed"

    @property
    def message_type(self) -> str:
        return "sensor_msgs/msg/Image" if self.transport == "raw" else "sensor_msgs/msg/CompressedImage"


class Video(_Model):
    """How camera views become the model's video frame.

    `layout` lists rows of camera names (null = black cell). Rows share the height equally; a row's views share
    the width equally, so a row with fewer views than the widest row has wider cells (DROID's wrist view on top
    spans both columns). Each view is center-cropped by `crop_fraction` then resized (transforms.VideoTransform).
    """

    layout: tuple[tuple[str | None, ...], ...] = Field(min_length=1)
    crop_fraction: float = Field(gt=0, le=1)
    sync_tolerance_ms: float = Field(gt=0, description="largest stamp spread inside one frame set")


class Controller(_Model):
    interface: Literal["joint_trajectory", "follow_joint_trajectory", "float64_multi_array", "joint_state"]
    name: str = Field(pattern=r"^/", description="topic, or action name for follow_joint_trajectory")
    joints: tuple[str, ...] = Field(min_length=1, description="joints in the command message, in order")


class Staleness(_Model):
    camera_ms: float = Field(gt=0, description="a camera silent this long holds the arm")
    joint_states_ms: float = Field(gt=0, description="joint states silent this long hold the arm")
    inference_delay_ms: float = Field(gt=0, description="chunks from older observations are refused")


class Prompt(_Model):
    template: str = Field(description="text with one or more {instruction} fields")
    negative: str = Field(description="negative prompt for classifier-free guidance")

    @model_validator(mode="after")
    def _check(self) -> Prompt:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        if fields != {"instruction"}:
            raise ConfigError("template", "exactly the field {instruction}", sorted(fields))
        return self

    def format(self, instruction: str) -> str:
        """The model's prompt for an instruction: whitespace collapsed and lower-cased, as in training."""
        text = " ".join(instruction.split()).lower()
        if not text:
            raise InstructionError("instruction", "a non-empty text", repr(instruction))
        return self.template.format(instruction=text)


class Embodiment(_Model):
    name: str = Field(min_length=1)
    metadata_key: str = Field(min_length=1, description="embodiment tag in the checkpoint's metadata.json")
    control_rate_hz: float = Field(gt=0)
    action_horizon: int = Field(gt=0, description="actions per chunk")
    joint_states_topic: str = Field(pattern=r"^/")
    joints: tuple[ArmJoint, ...] = Field(min_length=1)
    grippers: tuple[Gripper, ...] = ()
    state: tuple[Segment, ...] = Field(min_length=1)
    action: tuple[Segment, ...] = Field(min_length=1)
    cameras: tuple[Camera, ...] = Field(min_length=1)
    video: Video
    controller: Controller
    gripper_controller: Controller | None = None
    staleness: Staleness
    prompt: Prompt

    @model_validator(mode="after")
    def _check(self) -> Embodiment:
        _check_unique("joints", self.joint_names + self.gripper_joints)
        _check_unique("cameras", [c.name for c in self.cameras])
        _check_unique("cameras (topic)", [c.subscribed_topic for c in self.cameras])
        for part in ("state", "action"):
            self._check_layout(part)
        self._check_video_layout()
        self._check_controllers()
        horizon_ms = 1000.0 * self.action_horizon / self.control_rate_hz
        if self.staleness.inference_delay_ms >= horizon_ms:
            raise ConfigError("staleness.inference_delay_ms", f"< the chunk duration ({horizon_ms:g} ms)",
                              self.staleness.inference_delay_ms)
        return self

    def _check_layout(self, part: str) -> None:
        segments: tuple[Segment, ...] = getattr(self, part)
        _check_unique(f"{part} (key)", [s.key for s in segments])
        for source, count in (("arm", len(self.joints)), ("gripper", len(self.grippers))):
            total = sum(s.size for s in segments if s.source == source)
            if total != count:
                raise ConfigError(f"{part} ({source} sizes)", f"a sum of {count} ({source} joints)", total)
        if part == "state":
            for i, s in enumerate(segments):
                if s.relative:
                    raise ConfigError(f"state.{i}.relative", "false (only actions can be relative)", True)

    def _check_video_layout(self) -> None:
        placed = [name for row in self.video.layout for name in row]
        for r, row in enumerate(self.video.layout):
            if not row:
                raise ConfigError(f"video.layout.{r}", "a non-empty row", list(row))
        names = {c.name for c in self.cameras}
        for name in placed:
            if name is not None and name not in names:
                raise ConfigError("video.layout", f"camera names from {sorted(names)} or null", name)
        _check_unique("video.layout", [n for n in placed if n is not None])
        missing = names - set(placed)
        if missing:
            raise ConfigError("video.layout", "every camera placed once", f"{sorted(missing)} missing")

    def _check_controllers(self) -> None:
        known = self.joint_names + self.gripper_joints
        commanded: list[str] = []
        for field, ctrl in (("controller", self.controller), ("gripper_controller", self.gripper_controller)):
            if ctrl is None:
                continue
            for joint in ctrl.joints:
                if joint not in known:
                    raise ConfigError(f"{field}.joints", f"names from {known}", joint)
            commanded += ctrl.joints
        _check_unique("controller joints", commanded)
        missing = [j for j in known if j not in commanded]
        if missing:
            raise ConfigError("controller joints", "every arm and gripper joint commanded", f"{missing} missing")

    # Derived views (numpy arrays are copies; the model stays immutable).
    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def gripper_joints(self) -> list[str]:
        return [g.joint for g in self.grippers]

    @property
    def dt_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def dt_ns(self) -> int:
        return round(1e9 / self.control_rate_hz)

    @property
    def lower(self) -> np.ndarray:  # [J]
        return np.array([j.lower for j in self.joints])

    @property
    def upper(self) -> np.ndarray:  # [J]
        return np.array([j.upper for j in self.joints])

    @property
    def max_velocity(self) -> np.ndarray:  # [J]
        return np.array([j.max_velocity for j in self.joints])

    @property
    def max_step(self) -> np.ndarray:  # [J]
        return np.array([j.max_step for j in self.joints])

    @property
    def home(self) -> np.ndarray:  # [J]
        return np.array([j.home for j in self.joints])

    @property
    def gripper_open(self) -> np.ndarray:  # [G]
        return np.array([g.open for g in self.grippers])

    @property
    def gripper_closed(self) -> np.ndarray:  # [G]
        return np.array([g.closed for g in self.grippers])

    def video_fps(self, frames_per_block: int) -> float:
        """The model's video rate: one block of `frames_per_block` frames spans one chunk of actions."""
        return frames_per_block * self.control_rate_hz / self.action_horizon


def _check_unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(field, "unique names", f"{name!r} twice")
        seen.add(name)


def embodiment_dirs() -> list[Path]:
    """Where embodiment names are looked up: $DREAMZERO_EMBODIMENTS_DIR, the source tree, the installed share."""
    here = Path(__file__).resolve()
    dirs = [here.parents[1] / "config" / "embodiments"]
    if len(here.parents) > 4:  # <prefix>/lib/pythonX.Y/site-packages/dreamzero_policy/embodiment.py
        dirs.append(here.parents[4] / "share" / "dreamzero_policy" / "config" / "embodiments")
    if os.environ.get(ENV_EMBODIMENTS_DIR):
        dirs.insert(0, Path(os.environ[ENV_EMBODIMENTS_DIR]))
    return dirs


def available_embodiments() -> list[str]:
    return sorted({p.stem for d in embodiment_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def load_embodiment(name_or_path: str | os.PathLike) -> Embodiment:
    """Load and validate an embodiment by name (`franka_droid`) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        found = [d / f"{path.name}.yaml" for d in embodiment_dirs() if (d / f"{path.name}.yaml").is_file()]
        if not found:
            raise ConfigError("embodiment", f"one of {available_embodiments()} or a .yaml path", str(name_or_path))
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError("embodiment", "a readable YAML file", str(path), e.strerror or "") from e
    except yaml.YAMLError as e:
        raise ConfigError(path.name, "valid YAML", str(e).replace("\n", " ")) from e
    return parse_embodiment(data, source=path.name)


def parse_embodiment(data: object, source: str = "embodiment") -> Embodiment:
    """Validate an already-parsed YAML mapping; `source` prefixes the field names in errors."""
    try:
        return Embodiment.model_validate(data)
    except ValidationError as e:
        raise _config_error(e, source) from None


def _config_error(error: ValidationError, source: str) -> ConfigError:
    """The first validation problem as a ConfigError naming the field path, the rule and the value."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = ".".join(str(p) for p in first["loc"])
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, ConfigError):
        field, expected, actual = ".".join(p for p in (loc, inner.field) if p), inner.expected, inner.actual
    elif first["type"] == "missing":
        field, expected, actual = loc, "a value (required field)", "nothing"
    elif first["type"] == "extra_forbidden":
        field, expected, actual = loc, "no such field (Extra inputs are not permitted)", repr(first.get("input"))
    else:
        field, expected, actual = loc, first["msg"].removeprefix("Input should be "), repr(first.get("input"))
    hint = f"{len(problems) - 1} more problem(s) in {source}" if len(problems) > 1 else ""
    return ConfigError(f"{source}: {field}", expected, actual, hint)
