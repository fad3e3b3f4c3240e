"""QoS profiles, ROS <-> DDS names, backend selection and the DDS type objects (no network)."""
from __future__ import annotations

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.middleware import QoS, create_middleware, rclpy_available
from dreamzero_policy.middleware.naming import (dds_service_topics, dds_topic_name, dds_type_name, resolve_name,
                                                ros_type_name)
from dreamzero_policy.middleware.qos import Durability, Reliability

STORE = msgs.typestore()
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_qos_profiles():
    assert QoS.SENSOR_DATA == QoS(Reliability.BEST_EFFORT, Durability.VOLATILE, 5)
    assert QoS.RELIABLE == QoS(Reliability.RELIABLE, Durability.VOLATILE, 10)
    assert QoS.LATCHED == QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1)
    assert QoS.LATCHED.reliable and QoS.LATCHED.transient_local and not QoS.SENSOR_DATA.reliable
    assert QoS.named("Sensor_Data") is QoS.SENSOR_DATA
    assert QoS.RELIABLE.with_depth(1) == QoS("reliable", "volatile", 1)
    with pytest.raises(ValueError, match=r"valid: \['latched', 'reliable', 'sensor_data', 'services'\]"):
        QoS.named("fast")
    with pytest.raises(ValueError, match="depth"):
        QoS(depth=0)
    with pytest.raises(ValueError):
        QoS(reliability="sometimes")


@pytest.mark.parametrize("name,node,ns,expected", [
    ("/joint_states", "n", "/", "/joint_states"),
    ("joint_states", "n", "/", "/joint_states"),
    ("joint_states", "n", "/robot", "/robot/joint_states"),
    ("~/status", "policy", "/", "/policy/status"),
    ("~/status", "policy", "/robot/", "/robot/policy/status"),
    ("/cam/image_raw/compressed", "n", "/x", "/cam/image_raw/compressed"),
])
def test_resolve_name(name, node, ns, expected):
    assert resolve_name(name, node, ns) == expected


@pytest.mark.parametrize("bad", ["", "a//b", "/1abc", "/a b", "~x", "/a-b"])
def test_resolve_name_rejects_invalid(bad):
    with pytest.raises(ValueError):
        resolve_name(bad, "n")


def test_dds_names():
    assert dds_topic_name("/foo/bar") == "rt/foo/bar"
    assert dds_service_topics("/reset") == ("rq/resetRequest", "rr/resetReply")
    assert dds_type_name("sensor_msgs/msg/JointState") == "sensor_msgs::msg::dds_::JointState_"
    assert dds_type_name("std_srvs/srv/Trigger_Request") == "std_srvs::srv::dds_::Trigger_Request_"
    assert ros_type_name("sensor_msgs::msg::dds_::Image_") == "sensor_msgs/msg/Image"
    with pytest.raises(ValueError):
        dds_topic_name("relative")
    with pytest.raises(ValueError):
        dds_type_name("JointState")


def test_backend_selection():
    with pytest.raises(ValueError, match=r"valid: \['auto', 'dds', 'rclpy'\]"):
        create_middleware("zenoh")


@pytest.mark.skipif(rclpy_available(), reason="a ROS 2 install is present")
def test_rclpy_backend_without_ros_says_what_to_do():
    from dreamzero_policy.middleware import MiddlewareError
    with pytest.raises(MiddlewareError, match="backend='dds'"):
        create_middleware("rclpy")


def test_dds_backend_never_imports_rclpy():
    """Architecture rule: only rclpy_backend.py (and the node entry) import rclpy, and only when asked for."""
    import subprocess
    import sys
    code = ("import sys, dreamzero_policy.middleware as m, dreamzero_policy.middleware.dds_backend, "
            "dreamzero_policy.msgs; assert 'rclpy' not in sys.modules, 'rclpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=str(REPO))


def test_rclpy_backend_module_imports_without_ros():
    import dreamzero_policy.middleware.rclpy_backend as rb
    assert hasattr(rb, "RclpyMiddleware")
    assert (rb.rclpy is None) == (not rclpy_available())


def _stock_bytes(msgtype, **values):
    """Serialize with the stock cyclonedds binding through our generated IDL type."""
    from dreamzero_policy.middleware.dds_types import idl_struct
    cls = idl_struct(msgtype, STORE)
    return cls(**values).serialize()


def test_generated_dds_types_serialize_like_rosbags():
    """The stock binding, given our generated types, writes the very bytes rosbags writes: same wire layout."""
    from dreamzero_policy.middleware.dds_types import idl_struct
    time_t = idl_struct("builtin_interfaces/msg/Time", STORE)
    header_t = idl_struct("std_msgs/msg/Header", STORE)
    hdr = header_t(stamp=time_t(sec=12, nanosec=345), frame_id="base")
    stock = _stock_bytes("sensor_msgs/msg/JointState", header=hdr, name=["a", "bc"], position=[1.0, -2.5],
                         velocity=[0.5], effort=[])
    ours = msgs.serialize(STORE.types["sensor_msgs/msg/JointState"](
        header=msgs.header(12 * 10**9 + 345, "base"), name=["a", "bc"], position=np.array([1.0, -2.5]),
        velocity=np.array([0.5]), effort=np.zeros(0)))
    assert stock.rstrip(b"\0") == ours.rstrip(b"\0")     # the binding pads to 4 bytes; rosbags does not

    chunk = STORE.types["dreamzero_msgs/msg/ActionChunk"]
    ours = msgs.serialize(_action_chunk(chunk))
    from dreamzero_policy.middleware.dds_types import idl_struct as mk
    decoded = mk("dreamzero_msgs/msg/ActionChunk", STORE).deserialize(ours)
    assert decoded.instruction == "pick up the cup" and decoded.raw_steps == 2
    assert list(decoded.trajectory.joint_names) == ["j1", "j2"]
    assert decoded.trajectory.points[1].time_from_start.nanosec == 133_333_333


def test_dds_type_names_and_service_header_members():
    from dreamzero_policy.middleware.dds_types import REQUEST_HEADER_FIELDS, idl_struct
    img = idl_struct("sensor_msgs/msg/Image", STORE)
    assert img.__idl_typename__ == "sensor_msgs::msg::dds_::Image_"
    req = idl_struct("std_srvs/srv/Trigger_Request", STORE, with_request_header=True)
    assert req.__idl_typename__ == "std_srvs::srv::dds_::Trigger_Request_"
    assert list(req.__annotations__)[:2] == list(REQUEST_HEADER_FIELDS)


def _action_chunk(cls):
    traj_t = STORE.types["trajectory_msgs/msg/JointTrajectory"]
    point_t = STORE.types["trajectory_msgs/msg/JointTrajectoryPoint"]
    points = [point_t(positions=np.array([0.1 * i, -0.1 * i]), velocities=np.array([1.0, -1.0]),
                      accelerations=np.zeros(0), effort=np.zeros(0), time_from_start=msgs.duration_msg((i + 1) / 15))
              for i in range(2)]
    return cls(header=msgs.header(5), chunk_index=3, joint_names=["j1", "j2"],
               trajectory=traj_t(header=msgs.header(6), joint_names=["j1", "j2"], points=points),
               raw_actions=np.arange(4, dtype=np.float32), raw_steps=2, raw_dim=2, inference_latency=0.25,
               instruction="pick up the cup", session_call=1, current_start_frame=3, session_reset=False)
