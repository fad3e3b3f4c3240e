"""ROS-topic mode against a real second process: `python -m sim.serve` over Cyclone DDS on loopback.

This process plays the policy node: it reads the robot's topics, sends trajectories (good and bad) and resets the
episode through the service, all through `dreamzero_policy.middleware` on a private domain id.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from dreamzero_policy import msgs  # noqa: E402
from dreamzero_policy.middleware import QoS, create_middleware  # noqa: E402

from sim import robot, rosmsg  # noqa: E402
from sim.controller import JointTrajectory  # noqa: E402
from simtest_util import Latest, stop_sim, wait_for  # noqa: E402


def test_sim_serves_the_robot_topics_to_another_process(sim_process, sim_domain):
    mw = create_middleware("dds", node_name="test_policy", domain_id=sim_domain)
    try:
        joints, wrist, instruction, info = Latest(), Latest(), Latest(), Latest()
        mw.create_subscription("/joint_states", "sensor_msgs/msg/JointState", joints, QoS.SENSOR_DATA)
        mw.create_subscription("/cameras/wrist/image_raw", "sensor_msgs/msg/Image", wrist, QoS.SENSOR_DATA)
        mw.create_subscription("/dreamzero/instruction", "std_msgs/msg/String", instruction, QoS.LATCHED)
        mw.create_subscription("/sim/task_info", "std_msgs/msg/String", info, QoS.LATCHED)
        arm = mw.create_publisher("/fr3_arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                                  QoS.RELIABLE)
        gripper = mw.create_publisher("/fr3_gripper_controller/joint_trajectory",
                                      "trajectory_msgs/msg/JointTrajectory", QoS.RELIABLE)
        mw.spin_background()

        first = wait_for(lambda: instruction.drain(), 60, "the latched instruction")[0].data
        assert first.startswith("reach the ")
        wait_for(lambda: len(joints.drain()) > 30 and len(wrist.drain()) > 5, 30, "joint states and images")
        state = joints.all[-1]
        assert list(state.name) == list(robot.JOINT_NAMES)
        np.testing.assert_allclose(state.position[:7], robot.HOME, atol=1e-3)
        image = rosmsg.image_from_msg(wrist.all[-1])
        assert image.shape == (36, 64, 3) and image.std() > 1
        stamps = np.array([rosmsg.stamp_to_ns(m.header.stamp) for m in joints.all[-20:]])
        np.testing.assert_allclose(np.diff(stamps), 1e9 / 30, atol=1)  # sim-time spacing of /joint_states
        assert abs(stamps[-1] - time.time_ns()) < 5e9  # stamps near the wall clock

        wait_for(lambda: arm.subscription_count() and gripper.subscription_count(), 20, "the sim's subscriptions")
        target = robot.HOME + 0.1
        times = np.array([500_000_000, 1_000_000_000])
        arm.publish(rosmsg.trajectory_msg(JointTrajectory(robot.ARM_JOINTS, times,
                                                          np.stack([robot.HOME + 0.05, target])), 0))
        gripper.publish(rosmsg.trajectory_msg(JointTrajectory(("fr3_finger_joint1",), times[:1],
                                                              np.array([[0.01]])), 0))
        wait_for(lambda: np.abs(np.asarray(joints.drain()[-1].position[:7]) - target).max() < 0.01
                 and abs(joints.all[-1].position[7] - 0.01) < 2e-3, 30, "the arm and gripper at their targets")

        bad = rosmsg.trajectory_msg(JointTrajectory(robot.ARM_JOINTS, times, np.stack([target, target])), 0)
        bad.points[1].positions[2] = np.nan
        arm.publish(bad)
        wait_for(lambda: json.loads(info.drain()[-1].data)["rejected_trajectories"] == 1, 20,
                 "the rejection in /sim/task_info")
        held = np.asarray(joints.drain()[-1].position[:7])
        np.testing.assert_allclose(held, target, atol=0.01)

        client = mw.create_client("/sim/reset", "std_srvs/srv/Trigger")
        assert client.wait_for_service(20)
        reply = client.call(msgs.msg_class("std_srvs/srv/Trigger_Request")(), timeout_s=20)
        assert reply.success and reply.message.startswith("reach the ")
        wait_for(lambda: json.loads(info.drain()[-1].data)["seed"] == 4, 20, "episode 2 in /sim/task_info")
        wait_for(lambda: np.abs(np.asarray(joints.drain()[-1].position[:7]) - robot.HOME).max() < 1e-3, 20,
                 "the arm back at the reset pose")
        assert json.loads(info.all[-1].data)["rejected_trajectories"] == 0
    finally:
        mw.shutdown()
    output = stop_sim(sim_process)
    assert output.count("trajectory rejected") == 1 and "fr3_joint3 at point 1 is nan" in output
