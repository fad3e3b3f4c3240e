"""The sim's ROS 2 interface: topic names and conversions between sim data and rosbags messages.

The same topics and types as the real robot (ROBOTS_AND_ROS.md sections 1-2):

| topic | type | rate |
|---|---|---|
| /joint_states | sensor_msgs/msg/JointState (7 arm joints + 2 fingers) | 30 Hz |
| /cameras/{wrist,exterior_1,exterior_2}/image_raw | sensor_msgs/msg/Image, rgb8 | 15 Hz (configurable) |
| /fr3_arm_controller/joint_trajectory | trajectory_msgs/msg/JointTrajectory (fr3_joint1..7, rad) | per chunk |
| /fr3_gripper_controller/joint_trajectory | trajectory_msgs/msg/JointTrajectory (fr3_finger_joint1, m) | per chunk |
| /fr3_{arm,gripper}_controller/follow_joint_trajectory | action control_msgs/action/FollowJointTrajectory | per goal |
| /dreamzero/instruction | std_msgs/msg/String, latched | per episode |

Messages are dataclasses of the standard ROS 2 Jazzy rosbags typestore; their CDR bytes are the wire format.
"""
from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_typestore

from sim.controller import JointTrajectory
from sim.env import ARM_CONTROLLER, GRIPPER_CONTROLLER, SimObservation

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)

JOINT_STATES = "/joint_states"
INSTRUCTION = "/dreamzero/instruction"  # the policy node's default instruction topic
TRAJECTORY_TOPICS = {ARM_CONTROLLER: f"/{ARM_CONTROLLER}/joint_trajectory",
                     GRIPPER_CONTROLLER: f"/{GRIPPER_CONTROLLER}/joint_trajectory"}
TRAJECTORY_ACTIONS = {ARM_CONTROLLER: f"/{ARM_CONTROLLER}/follow_joint_trajectory",
                      GRIPPER_CONTROLLER: f"/{GRIPPER_CONTROLLER}/follow_joint_trajectory"}
TRAJECTORY_ACTION_TYPE = "control_msgs/action/FollowJointTrajectory"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
IMAGE_TYPE = "sensor_msgs/msg/Image"
TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
STRING_TYPE = "std_msgs/msg/String"
CLOCK = "/clock"
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"


def camera_topic(camera: str) -> str:
    return f"/cameras/{camera}/image_raw"


def _cls(msgtype: str):
    return TYPESTORE.types[msgtype]


def _time(stamp_ns: int):
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _cls("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str = ""):
    return _cls("std_msgs/msg/Header")(stamp=_time(stamp_ns), frame_id=frame_id)


def stamp_to_ns(stamp) -> int:
    """Integer nanoseconds of a builtin_interfaces Time or Duration."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def joint_state_msg(obs: SimObservation, stamp_ns: int | None = None):
    """sensor_msgs/JointState of an observation (stamp: the observation's unless `stamp_ns` is given)."""
    zeros = np.zeros(len(obs.joint_names))
    return _cls(JOINT_STATE_TYPE)(
        header=_header(obs.stamp_ns if stamp_ns is None else stamp_ns), name=list(obs.joint_names),
        position=np.asarray(obs.joint_positions, dtype=np.float64),
        velocity=np.asarray(zeros if obs.joint_velocities is None else obs.joint_velocities, dtype=np.float64),
        effort=np.asarray(zeros if obs.joint_efforts is None else obs.joint_efforts, dtype=np.float64))


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str):
    """sensor_msgs/Image rgb8 of an [H, W, 3] uint8 image."""
    height, width, _ = image.shape
    return _cls(IMAGE_TYPE)(header=_header(stamp_ns, frame_id), height=height, width=width, encoding="rgb8",
                            is_bigendian=0, step=width * 3, data=np.ascontiguousarray(image).reshape(-1))


def image_from_msg(msg) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an rgb8 sensor_msgs/Image (a copy)."""
    if msg.encoding != "rgb8":
        raise ValueError(f"expected an rgb8 image, got encoding {msg.encoding!r}")
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3).copy()


def trajectory_msg(traj: JointTrajectory, stamp_ns: int):
    """trajectory_msgs/JointTrajectory; header.stamp = `stamp_ns` (the planned start; 0 means now)."""
    point_cls, duration_cls = _cls("trajectory_msgs/msg/JointTrajectoryPoint"), _cls("builtin_interfaces/msg/Duration")
    empty = np.zeros(0)
    points = []
    for i, t_ns in enumerate(np.asarray(traj.time_from_start_ns)):
        sec, nanosec = divmod(int(t_ns), 1_000_000_000)
        velocities = empty if traj.velocities is None else np.asarray(traj.velocities[i], dtype=np.float64)
        points.append(point_cls(positions=np.asarray(traj.positions[i], dtype=np.float64), velocities=velocities,
                                accelerations=empty, effort=empty,
                                time_from_start=duration_cls(sec=sec, nanosec=nanosec)))
    return _cls(TRAJECTORY_TYPE)(header=_header(stamp_ns), joint_names=list(traj.joint_names), points=points)


def trajectory_from_msg(msg) -> JointTrajectory:
    """A JointTrajectory message -> the controller's JointTrajectory, unchecked (the controller checks it)."""
    has_velocities = any(len(p.velocities) for p in msg.points)
    return JointTrajectory(
        joint_names=tuple(msg.joint_names),
        time_from_start_ns=np.array([stamp_to_ns(p.time_from_start) for p in msg.points], dtype=np.int64),
        positions=[np.asarray(p.positions, dtype=np.float64) for p in msg.points],
        velocities=[np.asarray(p.velocities, dtype=np.float64) for p in msg.points] if has_velocities else None)


def clock_msg(stamp_ns: int):
    return _cls(CLOCK_TYPE)(clock=_time(stamp_ns))


def string_msg(text: str):
    return _cls(STRING_TYPE)(data=text)
