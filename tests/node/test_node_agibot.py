"""AgiBot G1: the node (in this process, built-in DDS backend) streams one JointState setpoint per control tick on
/joint_command, for both arms and grippers in the controller's joint order; deactivate holds and stops sending.
The robot (cameras, joint states) is a separate process on loopback DDS."""
from __future__ import annotations

import time

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.middleware import create_middleware
from dreamzero_policy.node import PlainLifecycle, PolicyNode
from nodetest_util import Monitor, start_robot, wait_until, write_tiny_checkpoint

AGIBOT = load_embodiment("agibot_g1")


def agibot_statistics() -> dict:
    q = lambda lo, hi: {"q01": [float(v) for v in lo], "q99": [float(v) for v in hi]}  # noqa: E731
    arm = q(AGIBOT.lower * 0.8, AGIBOT.upper * 0.8)
    return {"state": {"joint.position": arm, "effector.position": q([0.0, 0.0], [1.0, 1.0])},
            "action": {"joint.position": arm, "effector.position": q([0.0, 0.0], [1.0, 1.0])}}


@pytest.fixture(scope="module")
def agibot_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("agibot_ckpt"),
                                 {AGIBOT.metadata_key: {"statistics": agibot_statistics()}})


def test_agibot_streams_joint_commands_and_holds_on_deactivate(dds_env, node_domain_id, agibot_checkpoint):
    robot = start_robot("agibot_g1", node_domain_id, dds_env)
    mw = create_middleware("dds", node_name="dreamzero_policy", domain_id=node_domain_id, namespace="/agibot")
    watcher = create_middleware("dds", node_name="watcher", domain_id=node_domain_id)
    values = {"checkpoint": str(agibot_checkpoint), "embodiment": "agibot_g1", "device": "cpu", "num_steps": 1,
              "cfg_scale": 1.0, "warmup": False, "instruction": "fold the towel", "inference_delay_ms": 750.0}
    node = PolicyNode(mw, lambda: values)
    try:
        monitor = Monitor(watcher, {"/joint_command": "sensor_msgs/msg/JointState"})
        watcher.spin_background()
        lifecycle = PlainLifecycle(node)
        ok, message = lifecycle.trigger("configure")
        assert ok, message
        assert "agibot_g1" in message and "30 Hz" in message
        assert lifecycle.trigger("activate")[0] and node.state == "active"
        mw.spin_background()
        assert wait_until(lambda: monitor.count("/joint_command") >= 15, 60), node.counters()
        commands = [msgs.deserialize(b, "sensor_msgs/msg/JointState") for _, b in monitor.since("/joint_command")]
        names = list(AGIBOT.controller.joints)
        lower = dict(zip(AGIBOT.joint_names + AGIBOT.gripper_joints,
                         np.concatenate([AGIBOT.lower, np.minimum(AGIBOT.gripper_open, AGIBOT.gripper_closed)])))
        upper = dict(zip(AGIBOT.joint_names + AGIBOT.gripper_joints,
                         np.concatenate([AGIBOT.upper, np.maximum(AGIBOT.gripper_open, AGIBOT.gripper_closed)])))
        for command in commands:
            assert list(command.name) == names and command.position.shape == (16,)
            assert all(lower[n] - 1e-9 <= p <= upper[n] + 1e-9 for n, p in zip(names, command.position))
        stamps = [msgs.time_to_ns(c.header.stamp) for c in commands]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
        moving = [c for c in commands if np.any(c.velocity != 0)]
        assert moving, "only holds were streamed"

        ok, message = lifecycle.trigger("deactivate")
        assert ok and "holding" in message
        count = monitor.count("/joint_command")
        last = msgs.deserialize(monitor.since("/joint_command")[-1][1], "sensor_msgs/msg/JointState")
        assert np.all(last.velocity == 0)  # the hold
        time.sleep(0.5)
        assert monitor.count("/joint_command") == count  # inactive: nothing more
        counters = node.counters()
        assert counters["node.chunks_published"] >= 1 and counters["session.errors"] == 0
    finally:
        node.shutdown()
        mw.shutdown()
        watcher.shutdown()
        robot.stop()
