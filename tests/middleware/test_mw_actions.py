"""ROS 2 actions on the DDS backend between two processes (peer.py `action` serves FollowJointTrajectory)."""
from __future__ import annotations

import queue

import numpy as np
import pytest
from cyclonedds.builtin import BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription
from cyclonedds.core import InstanceState, SampleState, ViewState
from cyclonedds.domain import DomainParticipant
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds._clayer import ddspy_take
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from dreamzero_policy import msgs
from dreamzero_policy.middleware import MiddlewareError, QoS
from dreamzero_policy.middleware.base import GoalStatus
from dreamzero_policy.middleware.dds_types import idl_struct
from dreamzero_policy.middleware.qos import Durability, Reliability

from mwtest_util import endpoints, wait_until

ACTION, NAME = "control_msgs/action/FollowJointTrajectory", "/arm/follow_joint_trajectory"
JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]


def goal(first: float = 0.1, points: int = 2):
    point_t, duration_t = msgs.msg_class("trajectory_msgs/msg/JointTrajectoryPoint"), \
        msgs.msg_class("builtin_interfaces/msg/Duration")
    trajectory = msgs.msg_class("trajectory_msgs/msg/JointTrajectory")(
        header=msgs.header(0), joint_names=JOINTS,
        points=[point_t(positions=np.full(7, first + i), velocities=np.zeros(7), accelerations=np.zeros(0),
                        effort=np.zeros(0), time_from_start=duration_t(sec=i + 1, nanosec=0)) for i in range(points)])
    return msgs.default_msg(f"{ACTION}_Goal", trajectory=trajectory)


@pytest.fixture
def client(start_peer, make_mw):
    server = start_peer("action")
    mw = make_mw("action_client")
    mw.spin_background()
    cli = mw.create_action_client(NAME, ACTION)
    assert cli.wait_for_server(10.0), "the peer's action server never matched"
    return server, cli


def test_goal_feedback_result_reject_abort(client):
    server, cli = client
    feedback, done = queue.Queue(), queue.Queue()
    handle = cli.send_goal(goal(), on_done=done.put, on_feedback=feedback.put)
    assert server.expect("goal", points=2)["joints"] == JOINTS
    assert list(feedback.get(timeout=5).joint_names) == JOINTS
    assert wait_until(lambda: handle.status == GoalStatus.EXECUTING, 5), handle   # from the status topic
    assert done.get(timeout=5) is handle and handle.wait(0)
    assert handle.accepted and handle.status == GoalStatus.SUCCEEDED and handle.result.error_code == 0

    rejected = cli.send_goal(goal(points=0), on_done=done.put)
    assert done.get(timeout=5) is rejected
    assert rejected.accepted is False and rejected.result is None

    aborted = cli.send_goal(goal(first=-0.5))
    assert aborted.wait(5) and aborted.status == GoalStatus.ABORTED
    assert (aborted.result.error_code, aborted.result.error_string) == (-4, "path tolerance violated")


def test_cancel_round_trip(client):
    server, cli = client
    handle = cli.send_goal(goal())
    server.expect("goal")
    assert wait_until(lambda: handle.accepted, 5)
    cli.cancel(handle)
    server.expect("cancel")
    assert handle.wait(5) and handle.status == GoalStatus.CANCELED and handle.cancel_requested
    early = cli.send_goal(goal())     # cancelled before the server answered: cancelled once accepted
    cli.cancel(early)
    assert early.wait(5) and early.status == GoalStatus.CANCELED


def _raw_reader(dp, topic: str, msgtype: str, request_header: bool, durability=Policy.Durability.Volatile):
    qos = Qos(Policy.Reliability.Reliable(100_000_000), durability, Policy.History.KeepLast(10),
              Policy.DataRepresentation(use_cdrv0_representation=True))
    return DataReader(dp, Topic(dp, topic, idl_struct(msgtype, msgs.typestore(), request_header)), qos=qos)


def _plain_control_msgs_store():
    """Plain rosbags (Jazzy) + control_msgs registered with rosbags' own parser from the .action text, with the
    SendGoal request as rosidl generates it: none of dreamzero_policy.msgs' code decodes."""
    store = get_typestore(Stores.ROS2_JAZZY)
    root = msgs.INTERFACES_DIR / "control_msgs"
    types = {}
    for name in ("JointTolerance", "JointComponentTolerance"):
        types.update(get_types_from_msg((root / "msg" / f"{name}.msg").read_text(), f"control_msgs/msg/{name}"))
    goal_text = (root / "action" / "FollowJointTrajectory.action").read_text().split("\n---\n")[0]
    types.update(get_types_from_msg(goal_text, "control_msgs/msg/FollowJointTrajectory_Goal"))
    types.update(get_types_from_msg("unique_identifier_msgs/UUID goal_id\ncontrol_msgs/FollowJointTrajectory_Goal goal",
                                    "control_msgs/msg/FollowJointTrajectory_SendGoal_Request"))
    store.register(types)
    return store


def test_wire_names_types_and_bytes(client, make_mw, domain_id):
    """rcl_action's DDS topics and types; the request bytes and the status decode with plain rosbags."""
    _server, cli = client
    prefix = NAME + "/_action/"
    dp = DomainParticipant(domain_id)
    try:
        for service, request_type in (("send_goal", "control_msgs::action::dds_::FollowJointTrajectory_SendGoal"),
                                      ("get_result", "control_msgs::action::dds_::FollowJointTrajectory_GetResult"),
                                      ("cancel_goal", "action_msgs::srv::dds_::CancelGoal")):
            (req,) = endpoints(dp, BuiltinTopicDcpsSubscription, f"rq{prefix}{service}Request")
            assert req.type_name == request_type + "_Request_"
            (rep,) = endpoints(dp, BuiltinTopicDcpsPublication, f"rr{prefix}{service}Reply")
            assert rep.type_name == request_type + "_Response_"
        (fb,) = endpoints(dp, BuiltinTopicDcpsPublication, f"rt{prefix}feedback")
        assert fb.type_name == "control_msgs::action::dds_::FollowJointTrajectory_FeedbackMessage_"
        (st,) = endpoints(dp, BuiltinTopicDcpsPublication, f"rt{prefix}status")
        assert st.type_name == "action_msgs::msg::dds_::GoalStatusArray_"
        assert st.qos[Policy.Durability] == Policy.Durability.TransientLocal and st.qos[Policy.History].depth == 1

        spy = _raw_reader(dp, f"rq{prefix}send_goalRequest", f"{ACTION}_SendGoal_Request", True)
        status = queue.Queue()
        watcher = make_mw("status_watcher")
        watcher.create_subscription(prefix + "status", "action_msgs/msg/GoalStatusArray", status.put,
                                    QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1), raw=True)
        watcher.spin_background()
        assert wait_until(lambda: spy.get_matched_publications(), 10)
        handle = cli.send_goal(goal(first=0.25))
        assert handle.wait(5) and handle.status == GoalStatus.SUCCEEDED

        samples = ddspy_take(spy._ref, SampleState.Any | ViewState.Any | InstanceState.Any, 4)
        (data, _info), = samples
        request = _plain_control_msgs_store().deserialize_cdr(data[:4] + data[20:],
                                                              "control_msgs/msg/FollowJointTrajectory_SendGoal_Request")
        assert bytes(request.goal_id.uuid) == handle.goal_id
        assert list(request.goal.trajectory.joint_names) == JOINTS
        np.testing.assert_array_equal(request.goal.trajectory.points[1].positions, np.full(7, 1.25))
        plain = get_typestore(Stores.ROS2_JAZZY)
        seen = []
        while not status.empty():
            array = plain.deserialize_cdr(status.get(), "action_msgs/msg/GoalStatusArray")
            seen += [s.status for s in array.status_list if bytes(s.goal_info.goal_id.uuid) == handle.goal_id]
        assert seen and seen[-1] == GoalStatus.SUCCEEDED
    finally:
        dp.__del__()


def test_no_server_is_one_clear_error(make_mw):
    cli = make_mw("lonely").create_action_client("/nobody/follow_joint_trajectory", ACTION)
    assert not cli.server_is_ready() and not cli.wait_for_server(0.2)
    with pytest.raises(MiddlewareError, match=r"action server /nobody/follow_joint_trajectory not available"):
        cli.send_goal(goal())
    with pytest.raises(KeyError, match="unknown action type"):
        make_mw("typo").create_action_client("/x", "control_msgs/action/FollowJointTrajectori")
