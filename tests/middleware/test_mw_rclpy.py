"""The rclpy backend on a machine with a sourced ROS 2 install (skipped where rclpy is missing, e.g. CI here).

Uses ROS_DOMAIN_ID-style isolation through the dds_env fixture's domain id and, when the RMW is Cyclone, the same
loopback configuration as the DDS tests. Also checks that the two backends talk to each other on the wire.
"""
from __future__ import annotations

import queue

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.middleware import QoS, create_middleware, rclpy_available

from mwtest_util import wait_until

pytestmark = pytest.mark.skipif(not rclpy_available(), reason="rclpy not installed (no ROS 2 on this machine)")

STORE = msgs.typestore()


def test_rclpy_pub_sub_timer_service(dds_env, domain_id):
    a = create_middleware("rclpy", node_name="rclpy_a", domain_id=domain_id)
    b = create_middleware("rclpy", node_name="rclpy_b", domain_id=domain_id)
    try:
        got, ticks = queue.Queue(), queue.Queue()
        b.create_subscription("/js", "sensor_msgs/msg/JointState", got.put, QoS.RELIABLE)
        b.create_timer(0.02, lambda: ticks.put(1))
        b.create_service("/reset", "std_srvs/srv/Trigger",
                         lambda req: STORE.types["std_srvs/srv/Trigger_Response"](success=True, message="ok"))
        b.spin_background()
        pub = a.create_publisher("/js", "sensor_msgs/msg/JointState", QoS.RELIABLE)
        assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
        pub.publish(STORE.types["sensor_msgs/msg/JointState"](
            header=msgs.header(5), name=["j"], position=np.array([1.5]), velocity=np.zeros(0), effort=np.zeros(0)))
        msg = got.get(timeout=10.0)
        assert msg.name == ["j"] and msg.position[0] == 1.5
        ticks.get(timeout=5.0)
        cli = a.create_client("/reset", "std_srvs/srv/Trigger")
        assert cli.wait_for_service(10.0)
        resp = cli.call(STORE.types["std_srvs/srv/Trigger_Request"](), timeout_s=5.0)
        assert resp.success and resp.message == "ok"
    finally:
        a.shutdown()
        b.shutdown()


def test_dds_backend_talks_to_rclpy_backend(dds_env, domain_id):
    """Wire compatibility with a real RMW: the built-in backend publishes, rclpy receives (and back)."""
    ros = create_middleware("rclpy", node_name="ros_side", domain_id=domain_id)
    dds = create_middleware("dds", node_name="dds_side", domain_id=domain_id)
    try:
        to_ros, to_dds = queue.Queue(), queue.Queue()
        ros.create_subscription("/chatter", "std_msgs/msg/String", to_ros.put, QoS.RELIABLE)
        dds.create_subscription("/chatter_back", "std_msgs/msg/String", to_dds.put, QoS.RELIABLE)
        ros.spin_background()
        dds.spin_background()
        p1 = dds.create_publisher("/chatter", "std_msgs/msg/String", QoS.RELIABLE)
        p2 = ros.create_publisher("/chatter_back", "std_msgs/msg/String", QoS.RELIABLE)
        assert wait_until(lambda: p1.subscription_count() == 1 and p2.subscription_count() == 1, 10.0)
        p1.publish(STORE.types["std_msgs/msg/String"](data="from dds"))
        p2.publish(STORE.types["std_msgs/msg/String"](data="from rclpy"))
        assert to_ros.get(timeout=10.0).data == "from dds"
        assert to_dds.get(timeout=10.0).data == "from rclpy"
    finally:
        dds.shutdown()
        ros.shutdown()


def test_rclpy_action_client_against_dds_action_server(dds_env, domain_id):
    """rclpy.action.ActionClient (rclpy backend) drives the built-in backend's FollowJointTrajectory server."""
    from dreamzero_policy.middleware.base import GoalStatus

    action = "control_msgs/action/FollowJointTrajectory"
    result = msgs.default_msg(f"{action}_Result", error_string="done")
    server = create_middleware("dds", node_name="dds_server", domain_id=domain_id)
    ros = create_middleware("rclpy", node_name="rclpy_client", domain_id=domain_id)
    try:
        goals = queue.Queue()
        server.create_action_server("/arm/follow_joint_trajectory", action,
                                    lambda handle: goals.put(handle) or True,
                                    lambda handle: handle.canceled(result) or True)
        server.spin_background()
        ros.spin_background()
        cli = ros.create_action_client("/arm/follow_joint_trajectory", action)
        assert cli.wait_for_server(10.0)
        trajectory = STORE.types["trajectory_msgs/msg/JointTrajectory"](header=msgs.header(0), joint_names=["j"],
                                                                         points=[])
        handle = cli.send_goal(msgs.default_msg(f"{action}_Goal", trajectory=trajectory))
        served = goals.get(timeout=10.0)
        assert list(served.goal.trajectory.joint_names) == ["j"]
        served.succeed(result)
        assert handle.wait(10.0) and handle.status == GoalStatus.SUCCEEDED and handle.result.error_string == "done"
        second = cli.send_goal(msgs.default_msg(f"{action}_Goal", trajectory=trajectory))
        goals.get(timeout=10.0)
        assert wait_until(lambda: second.accepted, 10.0)
        cli.cancel(second)
        assert second.wait(10.0) and second.status == GoalStatus.CANCELED
    finally:
        ros.shutdown()
        server.shutdown()
