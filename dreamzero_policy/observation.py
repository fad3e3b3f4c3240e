"""Observation stage: message fields -> validated numpy (first stage of the runtime).

Pure functions on the *fields* of sensor_msgs/Image, CompressedImage and JointState (no ROS types), so the node,
a bag reader and the tests share them. Images never pass through Python lists: raw images become zero-copy views
of the message buffer where the encoding allows (rgb8, rgba8) and one OpenCV conversion otherwise.
ROS stamps are converted to integer nanoseconds here, once.

Threading: the functions are pure and thread-safe. `StampOrder` keeps per-stream state and is not thread-safe;
its owner (the block buffer) calls it under its own lock.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dreamzero_policy.embodiment import Embodiment
from dreamzero_policy.errors import BadJointState, MalformedImage, OutOfOrderStamp

JOINT_STATES = "joint_states"  # stream name of the joint states (camera streams use the camera names)


@dataclass(frozen=True)
class CameraFrame:
    camera: str  # embodiment camera name
    stamp_ns: int
    rgb: np.ndarray  # [H, W, 3] uint8, possibly a read-only view of the message buffer


@dataclass(frozen=True)
class JointObservation:
    stamp_ns: int
    positions: np.ndarray  # [J] float64, in the embodiment's joint order
    velocities: np.ndarray | None  # [J] float64, None when not published (or not finite)
    gripper: np.ndarray  # [G] float64, gripper joint positions in joint units (not the model's [0, 1])


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(sec) * 1_000_000_000 + int(nanosec)


# encoding -> (channels, dtype, OpenCV conversion to RGB or None when the pixels are already RGB in the first 3 channels)
_ENCODINGS: dict[str, tuple[int, str, int | None]] = {
    "rgb8": (3, "u1", None),
    "rgba8": (4, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "mono16": (1, "u2", cv2.COLOR_GRAY2RGB),
    "8UC1": (1, "u1", cv2.COLOR_GRAY2RGB),
    "8UC3": (3, "u1", cv2.COLOR_BGR2RGB),  # OpenCV's (and cv_bridge's) convention: 3 channels are BGR
    "8UC4": (4, "u1", cv2.COLOR_BGRA2RGB),
    "16UC1": (1, "u2", cv2.COLOR_GRAY2RGB),
    # OpenCV names Bayer patterns by the second row's first two pixels, hence the shifted names.
    "bayer_rggb8": (1, "u1", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, "u1", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, "u1", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, "u1", cv2.COLOR_BayerGB2RGB),
    "yuv422": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),  # ROS's yuv422 is UYVY
    "yuv422_yuy2": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                 data: np.ndarray | bytes) -> np.ndarray:
    """sensor_msgs/Image fields -> [H, W, 3] uint8 RGB (a read-only view of `data` for rgb8 and rgba8).

    16-bit images keep their 8 most significant bits.
    """
    if encoding not in _ENCODINGS:
        raise MalformedImage("encoding", f"one of {list(SUPPORTED_ENCODINGS)}", repr(encoding))
    channels, kind, conversion = _ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise MalformedImage("height x width", "positive sizes", f"{height} x {width}")
    data = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if data.dtype != np.uint8 or data.ndim != 1:
        raise MalformedImage("data", "a 1-D uint8 array", f"{data.dtype} array of shape {data.shape}")
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise MalformedImage("step", f">= {row_bytes} bytes ({width} px x {channels * dtype.itemsize} B, {encoding})",
                             step)
    if data.size != step * height:
        raise MalformedImage("data", f"{step * height} bytes (step {step} x height {height})", f"{data.size} bytes")
    if encoding.startswith("yuv422") and width % 2:
        raise MalformedImage("width", "an even width for yuv422", width)

    rows = data.reshape(height, step)[:, :row_bytes]  # [H, row_bytes] view
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = rows.view(dtype).reshape(shape)  # zero-copy
    if dtype.itemsize == 2:
        pixels = (pixels >> 8).astype(np.uint8)
    if conversion is None:
        return pixels[..., :3]
    return cv2.cvtColor(pixels, conversion)


def decode_compressed(format: str, data: np.ndarray | bytes) -> np.ndarray:
    """sensor_msgs/CompressedImage fields (JPEG or PNG) -> [H, W, 3] uint8 RGB."""
    if "compressedDepth" in format:
        raise MalformedImage("format", "a color JPEG or PNG image", repr(format))
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    rgb = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB) if buffer.size else None
    if rgb is None:
        raise MalformedImage("data", f"a decodable image (format {format!r})", f"{buffer.size} undecodable bytes")
    return rgb


def joint_observation(names: Sequence[str], positions: Sequence[float] | np.ndarray,
                      velocities: Sequence[float] | np.ndarray | None, stamp_ns: int,
                      embodiment: Embodiment) -> JointObservation:
    """sensor_msgs/JointState fields -> JointObservation in the embodiment's joint order.

    Joints the embodiment does not use are ignored; a missing or repeated joint, mismatched array lengths or a
    non-finite position raise BadJointState naming the joint. Velocities are optional: empty or non-finite
    velocities give `velocities=None`.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(names),):
        raise BadJointState("position", f"{len(names)} values (one per name)", positions.shape[0])
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise BadJointState("name", "unique joint names", f"{name!r} twice")
        index[name] = i
    wanted = embodiment.joint_names + embodiment.gripper_joints
    for name in wanted:
        if name not in index:
            raise BadJointState("name", f"joint {name!r} present", f"missing from {list(names)}")
    order = np.array([index[n] for n in wanted])
    values = positions[order]  # [J + G]
    for name, value in zip(wanted, values):
        if not np.isfinite(value):
            raise BadJointState(f"position[{name}]", "a finite value", value)

    n_arm = len(embodiment.joints)
    arm_velocities = None
    if velocities is not None and len(velocities):
        velocities = np.asarray(velocities, dtype=np.float64)
        if velocities.shape != (len(names),):
            raise BadJointState("velocity", f"0 or {len(names)} values", velocities.shape[0])
        arm_velocities = velocities[order[:n_arm]]
        if not np.isfinite(arm_velocities).all():
            arm_velocities = None
    return JointObservation(int(stamp_ns), values[:n_arm], arm_velocities, values[n_arm:])


def example_observation(embodiment: Embodiment, stamp_ns: int = 1_000_000_000) -> JointObservation:
    """The embodiment at its home pose with open grippers (for smoke tests and examples)."""
    return JointObservation(stamp_ns, embodiment.home, np.zeros(len(embodiment.joints)), embodiment.gripper_open)


class StampOrder:
    """Rejects negative stamps and stamps that do not increase, per stream (a driver that leaves stamps unset
    repeats 0 and fails on its second message). Not thread-safe (the owner locks)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, stream: str, stamp_ns: int) -> None:
        if stamp_ns < 0:
            raise OutOfOrderStamp(f"{stream} stamp", "a stamp >= 0 ns", stamp_ns)
        last = self._last.get(stream)
        if last is not None and stamp_ns <= last:
            raise OutOfOrderStamp(f"{stream} stamp", f"> {last} ns (the previous stamp)", stamp_ns)
        self._last[stream] = stamp_ns

    def reset(self) -> None:
        self._last.clear()
