"""The sim's FollowJointTrajectory action servers, driven from this process over Cyclone DDS on loopback."""
from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from dreamzero_policy import msgs  # noqa: E402
from dreamzero_policy.middleware import GoalStatus, QoS, create_middleware  # noqa: E402

from sim import robot, rosmsg  # noqa: E402
from sim.controller import JointTrajectory  # noqa: E402
from sim.serve import PREEMPTED  # noqa: E402
from simtest_util import Latest, stop_sim, wait_for  # noqa: E402

ARM = rosmsg.TRAJECTORY_ACTIONS["fr3_arm_controller"]


def goal(positions: np.ndarray, seconds: float):
    times = (np.arange(1, len(positions) + 1) * seconds * 1e9 / len(positions)).astype(np.int64)
    trajectory = rosmsg.trajectory_msg(JointTrajectory(robot.ARM_JOINTS, times, positions), 0)
    return msgs.default_msg(f"{rosmsg.TRAJECTORY_ACTION_TYPE}_Goal", trajectory=trajectory)


def test_follow_joint_trajectory_goals_preempt_cancel_and_reject(sim_process, sim_domain):
    mw = create_middleware("dds", node_name="test_action_client", domain_id=sim_domain)
    try:
        joints = Latest()
        mw.create_subscription("/joint_states", "sensor_msgs/msg/JointState", joints, QoS.SENSOR_DATA)
        mw.spin_background()
        arm = mw.create_action_client(ARM, rosmsg.TRAJECTORY_ACTION_TYPE)
        assert arm.wait_for_server(60), "the sim's action server never matched"
        position = lambda: np.asarray(wait_for(lambda: joints.drain(), 20, "joint states")[-1].position[:7])  # noqa

        slow = arm.send_goal(goal(np.stack([robot.HOME - 0.1]), 3.0))
        target = robot.HOME + 0.1
        wait_for(lambda: slow.status == GoalStatus.EXECUTING, 20, "the first goal executing")
        fast = arm.send_goal(goal(np.stack([robot.HOME + 0.05, target]), 1.0))
        assert slow.wait(20) and slow.status == GoalStatus.CANCELED  # preempted, as joint_trajectory_controller
        assert (slow.result.error_code, slow.result.error_string) == (-1, PREEMPTED)
        assert fast.wait(20) and fast.status == GoalStatus.SUCCEEDED and fast.result.error_code == 0
        wait_for(lambda: np.abs(position() - target).max() < 0.01, 20, "the arm at the target")

        bad = np.stack([target, target])
        bad[1, 2] = np.nan
        rejected = arm.send_goal(goal(bad, 1.0))
        assert rejected.wait(20) and rejected.accepted is False

        long = arm.send_goal(goal(np.stack([robot.HOME - 0.2]), 4.0))
        wait_for(lambda: long.status == GoalStatus.EXECUTING, 20, "the long goal executing")
        arm.cancel(long)
        assert long.wait(20) and long.status == GoalStatus.CANCELED
        held = position()
        assert np.abs(held - robot.HOME + 0.2).max() > 0.05          # stopped on the way
        wait_for(lambda: np.abs(position() - held).max() < 0.02, 5, "the arm holding")
    finally:
        mw.shutdown()
    output = stop_sim(sim_process)
    assert output.count("goal rejected") == 1 and "fr3_joint3 at point 1 is nan" in output
