"""The node with `follow_joint_trajectory` controllers, in separate processes over real DDS on loopback.

  robot process   tests/node/robot.py with the franka_droid variant below: FollowJointTrajectory action servers
                  /fr3_{arm,gripper}_controller/follow_joint_trajectory (joint_trajectory_controller semantics)
  node process    python -m dreamzero_policy.node with the tiny checkpoint, sending each chunk as a goal
  lonely process  the node with an action name nobody serves: configure fails with one clear error
  this process    reads ~/status, calls ~/deactivate

The tests share the processes and run in file order.
"""
from __future__ import annotations

import pytest
import yaml

from dreamzero_policy import msgs
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.middleware import create_middleware
from nodetest_util import REPO, Monitor, start_node, start_robot, wait_until

ARM, GRIPPER = "/fr3_arm_controller/follow_joint_trajectory", "/fr3_gripper_controller/follow_joint_trajectory"
STATUS, LONELY_STATUS = "/dreamzero_policy/status", "/lonely/dreamzero_policy/status"
NODE_ARGS = ("--params-file", str(REPO / "config" / "franka_droid.params.yaml"), "--device", "cpu", "--num-steps", "1",
             "--cfg-scale", "1.0", "--inference-delay-ms", "1500", "--instruction", "pick up the red cup",
             "--log-period-s", "30")


def action_embodiment(path, arm: str, gripper: str):
    data = load_embodiment("franka_droid").model_dump()
    data["controller"].update(interface="follow_joint_trajectory", name=arm)
    data["gripper_controller"].update(interface="follow_joint_trajectory", name=gripper)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def system(dds_env, node_domain_id, tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("action_embodiment")
    embodiment = action_embodiment(folder / "franka_fjt.yaml", ARM, GRIPPER)
    lonely_embodiment = action_embodiment(folder / "franka_lonely.yaml", "/nobody/follow_joint_trajectory", GRIPPER)
    mw = create_middleware("dds", node_name="test_monitor", domain_id=node_domain_id)
    monitor = Monitor(mw, {STATUS: "dreamzero_msgs/msg/PolicyStatus", LONELY_STATUS: "dreamzero_msgs/msg/PolicyStatus"})
    mw.spin_background()
    robot = node = lonely = None
    try:
        robot = start_robot(embodiment, node_domain_id, dds_env)
        node = start_node(dds_env, *NODE_ARGS, "--checkpoint", str(tiny_checkpoint), "--embodiment", str(embodiment))
        lonely = start_node(dds_env, "--checkpoint", str(tiny_checkpoint), "--embodiment", str(lonely_embodiment),
                            "--namespace", "/lonely", "--device", "cpu", "--warmup", "false")
        yield mw, monitor, robot, node, lonely
    finally:
        for proc in (node, lonely, robot):
            if proc is not None:
                proc.stop(terminate=True)
        mw.shutdown()


def counters(monitor, topic: str = STATUS) -> dict[str, int]:
    received = monitor.since(topic)
    if not received:
        return {}
    status = msgs.deserialize(received[-1][1], "dreamzero_msgs/msg/PolicyStatus")
    return dict(zip(status.counter_names, (int(v) for v in status.counter_values)))


def wait_counter(monitor, node, key: str, at_least: int, timeout_s: float = 10.0) -> int:
    name = f"controller.{ARM}.{key}"
    value = wait_until(lambda: (v := counters(monitor).get(name, 0)) >= at_least and v, timeout_s)
    assert value, f"{name} = {counters(monitor).get(name)} < {at_least}\n{node.log()}"
    return value


def test_chunks_are_sent_as_goals_and_preempt(system):
    _mw, monitor, robot, node, _lonely = system
    first = robot.expect("goal", timeout_s=120, controller=ARM, hold=False)
    assert 1 <= first["points"] <= 24, first
    robot.expect("goal", timeout_s=30, controller=ARM, hold=False)
    wait_counter(monitor, node, "goals_sent", 2)
    wait_counter(monitor, node, "goals_canceled", 1)  # preempted by the next goal, as joint_trajectory_controller does
    assert counters(monitor).get(f"controller.{ARM}.goals_rejected", 0) == 0
    assert counters(monitor).get(f"controller.{GRIPPER}.goals_sent", 0) >= 1


def test_rejected_goals_are_counted_and_logged_once(system):
    _mw, monitor, robot, node, _lonely = system
    robot.send(cmd="reject_goals", reject=True)
    wait_counter(monitor, node, "goals_rejected", 2, timeout_s=30)
    robot.send(cmd="reject_goals", reject=False)
    lines = [line for line in node.lines if f"controller {ARM} rejected a goal" in line]
    assert len(lines) == 1, node.log()  # log_period_s 30: once


def test_deactivate_cancels_the_goal_and_holds(system):
    mw, _monitor, robot, node, _lonely = system
    robot.expect("goal", timeout_s=30, controller=ARM, hold=False, rejected=False)
    client = mw.create_client("/dreamzero_policy/deactivate", "std_srvs/srv/Trigger")
    assert client.wait_for_service(10.0)
    reply = client.call(msgs.msg_class("std_srvs/srv/Trigger_Request")(), timeout_s=30.0)
    assert reply.success, reply.message
    # The node cancels the active goal, then sends the hold as a new goal (which preempts whatever still runs). The
    # robot may see no cancel: it travels on its own topic and can overtake the goal it cancels, which the server
    # then does not know yet (rcl_action answers such a cancel with ERROR_UNKNOWN_GOAL_ID); the hold still lands.
    robot.expect("goal", timeout_s=10, controller=ARM, hold=True)
    with pytest.raises(AssertionError, match="no 'goal' event"):  # deactivated: no chunk follows the hold
        robot.expect("goal", timeout_s=2, hold=False)


def test_unavailable_action_server_is_one_clear_error(system):
    _mw, monitor, _robot, _node, lonely = system
    expected = "configure failed: action server /nobody/follow_joint_trajectory not available after 5 s"
    assert wait_until(lambda: any(expected in line for line in lonely.lines), 90), lonely.log()
    assert sum("configure failed" in line for line in lonely.lines) == 1, lonely.log()
    status = wait_until(lambda: monitor.since(LONELY_STATUS), 10)
    assert msgs.deserialize(status[-1][1], "dreamzero_msgs/msg/PolicyStatus").lifecycle_state == "unconfigured"
    assert lonely.alive
