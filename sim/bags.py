"""rosbag2 recordings (MCAP or sqlite3, metadata version 9) of sim episodes on the robot's topics, and reading back.

Written with rosbags (no ROS install); the topics, types and QoS are those of `sim.rosmsg`. Log times are the sim's
clock (ns since the episode's reset), equal to the header stamps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from sim import robot, rosmsg
from sim.controller import JointTrajectory
from sim.env import ARM_CONTROLLER, GRIPPER_CONTROLLER, SimObservation

STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def _qos(reliability: QosReliability, durability: QosDurability, depth: int) -> Qos:
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=reliability, durability=durability,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


SENSOR_QOS = _qos(QosReliability.BEST_EFFORT, QosDurability.VOLATILE, 5)
RELIABLE_QOS = _qos(QosReliability.RELIABLE, QosDurability.VOLATILE, 10)
LATCHED_QOS = _qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 1)


class BagWriter:
    """One episode's bag at `path` (a new directory). Use as a context manager.

    custom_data: strings kept in metadata.yaml (`custom_data`), e.g. the task and seed that rebuild the scene.
    """

    def __init__(self, path: str | Path, storage: str, cameras: tuple[str, ...],
                 custom_data: dict[str, str] | None = None):
        if storage not in STORAGE:
            raise ValueError(f"unknown bag storage {storage!r}; valid: {sorted(STORAGE)}")
        self.writer = Writer(Path(path), version=9, storage_plugin=STORAGE[storage])
        for key, value in (custom_data or {}).items():
            self.writer.set_custom_data(key, str(value))
        self.writer.open()
        add = self.writer.add_connection
        store = rosmsg.TYPESTORE
        self.connections = {
            rosmsg.INSTRUCTION: add(rosmsg.INSTRUCTION, rosmsg.STRING_TYPE, typestore=store,
                                    offered_qos_profiles=[LATCHED_QOS]),
            rosmsg.JOINT_STATES: add(rosmsg.JOINT_STATES, rosmsg.JOINT_STATE_TYPE, typestore=store,
                                     offered_qos_profiles=[SENSOR_QOS]),
            **{rosmsg.camera_topic(c): add(rosmsg.camera_topic(c), rosmsg.IMAGE_TYPE, typestore=store,
                                           offered_qos_profiles=[SENSOR_QOS]) for c in cameras},
            **{topic: add(topic, rosmsg.TRAJECTORY_TYPE, typestore=store, offered_qos_profiles=[RELIABLE_QOS])
               for topic in rosmsg.TRAJECTORY_TOPICS.values()},
        }

    def _write(self, topic: str, stamp_ns: int, msg, msgtype: str) -> None:
        self.writer.write(self.connections[topic], stamp_ns, rosmsg.TYPESTORE.serialize_cdr(msg, msgtype))

    def instruction(self, stamp_ns: int, text: str) -> None:
        self._write(rosmsg.INSTRUCTION, stamp_ns, rosmsg.string_msg(text), rosmsg.STRING_TYPE)

    def joint_state(self, obs: SimObservation) -> None:
        self._write(rosmsg.JOINT_STATES, obs.stamp_ns, rosmsg.joint_state_msg(obs), rosmsg.JOINT_STATE_TYPE)

    def image(self, camera: str, stamp_ns: int, image: np.ndarray) -> None:
        self._write(rosmsg.camera_topic(camera), stamp_ns, rosmsg.image_msg(image, stamp_ns, camera),
                    rosmsg.IMAGE_TYPE)

    def trajectory(self, controller: str, stamp_ns: int, traj: JointTrajectory) -> None:
        self._write(rosmsg.TRAJECTORY_TOPICS[controller], stamp_ns, rosmsg.trajectory_msg(traj, stamp_ns),
                    rosmsg.TRAJECTORY_TYPE)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_custom_data(path: str | Path) -> dict[str, str]:
    """The `custom_data` of a bag's metadata.yaml (empty when it has none)."""
    metadata = yaml.safe_load((Path(path) / "metadata.yaml").read_text())
    return dict(metadata["rosbag2_bagfile_information"].get("custom_data") or {})


def read_messages(path: str | Path, topic: str) -> list[tuple[int, object]]:
    """(log time ns, message) of every message on `topic`, in time order."""
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [(t, rosmsg.TYPESTORE.deserialize_cdr(data, c.msgtype))
                for c, t, data in reader.messages(connections=connections)]


def read_chunks(path: str | Path) -> list[np.ndarray]:
    """The commanded chunks of a bag, each [T, 8] (arm targets + gripper [0, 1]), pairing arm and gripper
    trajectories by their header stamps (the form `ReplayPolicy` takes)."""
    arm = {rosmsg.stamp_to_ns(m.header.stamp): rosmsg.trajectory_from_msg(m)
           for _, m in read_messages(path, rosmsg.TRAJECTORY_TOPICS[ARM_CONTROLLER])}
    gripper = {rosmsg.stamp_to_ns(m.header.stamp): rosmsg.trajectory_from_msg(m)
               for _, m in read_messages(path, rosmsg.TRAJECTORY_TOPICS[GRIPPER_CONTROLLER])}
    chunks = []
    for stamp in sorted(arm):
        order = [arm[stamp].joint_names.index(n) for n in robot.ARM_JOINTS]
        joints = np.asarray(arm[stamp].positions)[:, order]  # [T, 7]
        if stamp not in gripper:
            raise ValueError(f"{path}: the arm trajectory stamped {stamp} ns has no gripper trajectory with that stamp")
        fingers = np.asarray(gripper[stamp].positions)[:, 0]  # [T] m
        chunks.append(np.column_stack([joints, robot.finger_to_gripper(fingers)]))
    return chunks
