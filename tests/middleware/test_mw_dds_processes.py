"""The DDS backend between real processes over real Cyclone DDS on loopback (peer.py runs as a subprocess)."""
from __future__ import annotations

import hashlib
import queue
import threading
import time

import numpy as np
import pytest
from cyclonedds.builtin import BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription
from cyclonedds.domain import DomainParticipant
from cyclonedds.qos import Policy
from rosbags.typesys import Stores, get_typestore

from dreamzero_policy import msgs
from dreamzero_policy.middleware import QoS

from mwtest_util import endpoints, wait_until

STORE = msgs.typestore()
PLAIN = get_typestore(Stores.ROS2_JAZZY)      # plain rosbags, nothing of ours registered


def _joint_state():
    return STORE.types["sensor_msgs/msg/JointState"](
        header=msgs.header(1_700_000_000_123_456_789, "base"),
        name=[f"fr3_joint{i}" for i in range(1, 8)],
        position=np.linspace(-1.0, 1.0, 7), velocity=np.arange(7, dtype=np.float64) * 0.1,
        effort=np.zeros(0))


def _image(rng):
    data = rng.integers(0, 256, size=480 * 640 * 3, dtype=np.uint8)
    return STORE.types["sensor_msgs/msg/Image"](
        header=msgs.header(1_700_000_001_000_000_000, "wrist_camera"), height=480, width=640, encoding="rgb8",
        is_bigendian=0, step=640 * 3, data=data)


def _compressed(rng):
    data = rng.integers(0, 256, size=31_337, dtype=np.uint8)    # arbitrary bytes: the transport does not decode
    return STORE.types["sensor_msgs/msg/CompressedImage"](
        header=msgs.header(1_700_000_002_000_000_000, "ext1"), format="jpeg", data=data)


def test_round_trip_jointstate_image_compressed(start_peer, make_mw):
    """Each message goes to the echo peer and back; bytes are identical and decode with plain rosbags."""
    echo = start_peer("echo")
    mw = make_mw("round_trip")
    received: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
    cases = {
        "joint_states": ("sensor_msgs/msg/JointState", _joint_state()),
        "image": ("sensor_msgs/msg/Image", _image(np.random.default_rng(0))),
        "compressed": ("sensor_msgs/msg/CompressedImage", _compressed(np.random.default_rng(1))),
    }
    pubs = {}
    for name, (msgtype, _) in cases.items():
        mw.create_subscription(f"/echo/{name}", msgtype, lambda d, name=name: received.put((name, d)),
                               QoS.RELIABLE, raw=True)
        pubs[name] = mw.create_publisher(f"/rt_test/{name}", msgtype, QoS.RELIABLE)
    mw.spin_background()
    assert wait_until(lambda: all(p.subscription_count() == 1 for p in pubs.values()), 10.0), "peer never matched"

    for name, (msgtype, msg) in cases.items():
        sent = msgs.serialize(msg, msgtype)
        assert sent[:4] == b"\x00\x01\x00\x00"
        pubs[name].publish(msg)
        ev = echo.expect("recv", topic=name)
        assert ev["len"] == len(sent) and ev["sha256"] == hashlib.sha256(sent).hexdigest()
        got_name, got = received.get(timeout=10.0)
        assert got_name == name
        assert got == sent                                   # exact bytes through two DDS hops
        decoded = PLAIN.deserialize_cdr(got, msgtype)        # the standard type, plain rosbags
        assert decoded.header.stamp.sec == msg.header.stamp.sec
        assert decoded.header.stamp.nanosec == msg.header.stamp.nanosec
        assert decoded.header.frame_id == msg.header.frame_id
        if name == "joint_states":
            assert decoded.name == msg.name
            np.testing.assert_array_equal(decoded.position, msg.position)
            np.testing.assert_array_equal(decoded.velocity, msg.velocity)
        elif name == "image":
            assert (decoded.height, decoded.width, decoded.encoding, decoded.step) == (480, 640, "rgb8", 1920)
            np.testing.assert_array_equal(decoded.data, msg.data)
        else:
            assert decoded.format == "jpeg"
            np.testing.assert_array_equal(decoded.data, msg.data)


def test_decoded_subscription_gets_rosbags_message(start_peer, make_mw):
    """raw=False: the callback gets a rosbags dataclass of the subscribed type."""
    start_peer("echo")
    mw = make_mw("decoded")
    got = queue.Queue()
    mw.create_subscription("/echo/joint_states", "sensor_msgs/msg/JointState", got.put, QoS.RELIABLE)
    pub = mw.create_publisher("/rt_test/joint_states", "sensor_msgs/msg/JointState", QoS.RELIABLE)
    mw.spin_background()
    assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
    pub.publish(_joint_state())
    msg = got.get(timeout=10.0)
    assert msg.__msgtype__ == "sensor_msgs/msg/JointState"
    assert msg.name == [f"fr3_joint{i}" for i in range(1, 8)]
    np.testing.assert_array_equal(msg.position, np.linspace(-1.0, 1.0, 7))


def test_latched_instruction_reaches_late_subscriber(start_peer, make_mw):
    """LATCHED: a subscriber created after the publish gets the last instruction, once."""
    start_peer("latched")           # has already published (and keeps the writer alive)
    mw = make_mw("late_joiner")
    latched = queue.Queue()
    sub = mw.create_subscription("/instruction", "std_msgs/msg/String", latched.put, QoS.LATCHED)
    mw.spin_background()
    assert latched.get(timeout=10.0).data == "pick up the red cup"
    assert sub.publisher_count() == 1
    time.sleep(0.3)
    assert latched.empty()


def test_latched_subscriber_does_not_match_volatile_publisher(make_mw):
    """DDS rule the node must respect: a transient-local reader ignores volatile writers (e.g. a default
    `ros2 topic pub`), while a volatile reader matches a transient-local writer."""
    pub_mw, sub_mw = make_mw("volatile_pub"), make_mw("latched_sub")
    volatile_pub = pub_mw.create_publisher("/instr_volatile", "std_msgs/msg/String", QoS.RELIABLE)
    latched_pub = pub_mw.create_publisher("/instr_latched", "std_msgs/msg/String", QoS.LATCHED)
    s1 = sub_mw.create_subscription("/instr_volatile", "std_msgs/msg/String", lambda m: None, QoS.LATCHED)
    s2 = sub_mw.create_subscription("/instr_latched", "std_msgs/msg/String", lambda m: None, QoS.RELIABLE)
    assert wait_until(lambda: s2.publisher_count() == 1 and latched_pub.subscription_count() == 1, 10.0)
    assert s1.publisher_count() == 0 and volatile_pub.subscription_count() == 0


def test_best_effort_publisher_does_not_match_reliable_subscriber(start_peer, make_mw):
    """SENSOR_DATA (best effort) writer: a best-effort reader receives, a reliable reader never matches."""
    start_peer("sensor")
    mw = make_mw("qos_match")
    best_effort, reliable = queue.Queue(), queue.Queue()
    be_sub = mw.create_subscription("/sensor_js", "sensor_msgs/msg/JointState", best_effort.put, QoS.SENSOR_DATA)
    rel_sub = mw.create_subscription("/sensor_js", "sensor_msgs/msg/JointState", reliable.put, QoS.RELIABLE)
    mw.spin_background()
    assert best_effort.get(timeout=10.0).name == ["j1"]
    assert be_sub.publisher_count() == 1
    time.sleep(0.3)
    assert rel_sub.publisher_count() == 0 and reliable.empty()


def test_dds_names_and_qos_on_the_wire(start_peer, dds_env, domain_id):
    """Discovery data of the peer's endpoints: ROS 2 topic/type names and the QoS mapping."""
    start_peer("latched")
    start_peer("sensor")
    start_peer("services")
    dp = DomainParticipant(domain_id)
    try:
        (instr,) = endpoints(dp, BuiltinTopicDcpsPublication, "rt/instruction")
        assert instr.type_name == "std_msgs::msg::dds_::String_"
        assert instr.qos[Policy.Reliability] == Policy.Reliability.Reliable(100_000_000)
        assert instr.qos[Policy.Durability] == Policy.Durability.TransientLocal
        assert instr.qos[Policy.History] == Policy.History.KeepLast(1)

        (js,) = endpoints(dp, BuiltinTopicDcpsPublication, "rt/sensor_js")
        assert js.type_name == "sensor_msgs::msg::dds_::JointState_"
        assert js.qos[Policy.Reliability] == Policy.Reliability.BestEffort
        assert js.qos[Policy.Durability] == Policy.Durability.Volatile
        assert js.qos[Policy.History] == Policy.History.KeepLast(5)
        assert js.qos[Policy.DataRepresentation] == Policy.DataRepresentation(use_cdrv0_representation=True)

        (req,) = endpoints(dp, BuiltinTopicDcpsSubscription, "rq/resetRequest")
        assert req.type_name == "std_srvs::srv::dds_::Trigger_Request_"
        assert req.qos[Policy.Userdata].data.startswith(b"serviceid=")
        (rep,) = endpoints(dp, BuiltinTopicDcpsPublication, "rr/set_instructionReply")
        assert rep.type_name == "dreamzero_msgs::srv::dds_::SetInstruction_Response_"
    finally:
        dp.__del__()


def test_stock_cyclonedds_application_interoperates(start_peer, make_mw):
    """A plain cyclonedds program with a hand-written std_msgs String IDL type reads our rt/chatter and we read it."""
    stock = start_peer("stock")
    mw = make_mw("talker")
    heard = queue.Queue()
    mw.create_subscription("/chatter_stock", "std_msgs/msg/String", heard.put, QoS.RELIABLE)
    pub = mw.create_publisher("/chatter", "std_msgs/msg/String", QoS.RELIABLE)
    mw.spin_background()
    assert wait_until(lambda: pub.subscription_count() == 1, 10.0)
    pub.publish(STORE.types["std_msgs/msg/String"](data="hello from dreamzero"))
    stock.expect("recv", data="hello from dreamzero")
    assert heard.get(timeout=10.0).data == "hello from stock"


def test_services_between_processes(start_peer, make_mw):
    """rmw_cyclonedds-style request/reply: Trigger and SetInstruction served by the peer."""
    server = start_peer("services")
    mw = make_mw("client")
    reset = mw.create_client("/reset", "std_srvs/srv/Trigger")
    set_instr = mw.create_client("/set_instruction", "dreamzero_msgs/srv/SetInstruction")
    assert reset.wait_for_service(10.0) and set_instr.wait_for_service(10.0)

    trigger_req = STORE.types["std_srvs/srv/Trigger_Request"]()
    for n in (1, 2):
        resp = reset.call(trigger_req, timeout_s=5.0)
        assert resp.success and resp.message == f"reset #{n}"
        server.expect("reset", n=n)

    req_t = STORE.types["dreamzero_msgs/srv/SetInstruction_Request"]
    resp = set_instr.call(req_t(instruction="stack the blocks", reset=True), timeout_s=5.0)
    assert resp.success and resp.message == "instruction set: stack the blocks"
    server.expect("set_instruction", instruction="stack the blocks", reset=True)
    resp = set_instr.call(req_t(instruction="  ", reset=False), timeout_s=5.0)
    assert not resp.success and resp.message == "empty instruction"


def test_service_call_times_out_without_server(make_mw):
    mw = make_mw("lonely_client")
    cli = mw.create_client("/nobody_home", "std_srvs/srv/Trigger")
    assert not cli.wait_for_service(0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="/nobody_home"):
        cli.call(STORE.types["std_srvs/srv/Trigger_Request"](), timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0
