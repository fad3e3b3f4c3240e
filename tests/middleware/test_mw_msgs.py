"""dreamzero_msgs through rosbags: CDR round trips, rosbag2 MCAP files, the typestore and the small constructors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dreamzero_policy import msgs

STORE = msgs.typestore()
REPO = Path(__file__).resolve().parents[2]


def action_chunk(index: int = 7):
    t = STORE.types
    steps, joints = 24, ["fr3_joint%d" % i for i in range(1, 8)] + ["fr3_finger_joint1"]
    rng = np.random.default_rng(index)
    points = [t["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=rng.normal(size=8), velocities=rng.normal(size=8), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=msgs.duration_msg((i + 1) / 15.0)) for i in range(steps)]
    return t["dreamzero_msgs/msg/ActionChunk"](
        header=msgs.header(1_700_000_000_000_000_000 + index, ""), chunk_index=index, joint_names=joints,
        trajectory=t["trajectory_msgs/msg/JointTrajectory"](header=msgs.header(0), joint_names=joints, points=points),
        raw_actions=rng.uniform(-1, 1, size=steps * 8).astype(np.float32), raw_steps=steps, raw_dim=8,
        inference_latency=0.1875, instruction="put the marker in the cup", session_call=index % 4,
        current_start_frame=1 + 2 * (index % 4), session_reset=index % 4 == 0)


def policy_status(n: int = 3):
    return STORE.types["dreamzero_msgs/msg/PolicyStatus"](
        header=msgs.header(1_700_000_000_500_000_000 + n), lifecycle_state="active",
        instruction="put the marker in the cup", chunks_published=40 + n, refusals_nan=1, refusals_limit_clamp=2,
        refusals_step_clamp=3, refusals_stale_observation=4, refusals_stale_chunk=5, refusals_malformed_image=6,
        refusals_bad_joint_state=7, refusals_out_of_order_stamps=8, refusals_exception=9, refusals_total=45,
        counter_names=["safety.VELOCITY_LIMIT", "session.blocks_skipped"],
        counter_values=np.array([3, 1], dtype=np.uint64), latency_p50=0.15, latency_p90=0.2, latency_p99=0.31, model_name="dreamzero-14b",
        checkpoint="/ckpt/droid.safetensors", embodiment="franka_droid", device="cuda:0")


def assert_msg_equal(a, b, path="msg"):
    """Field-by-field equality of two rosbags messages (numpy arrays compared exactly)."""
    assert type(a).__name__ == type(b).__name__, path
    for name in a.__dataclass_fields__:
        if name == "__msgtype__":
            continue
        x, y = getattr(a, name), getattr(b, name)
        if hasattr(x, "__dataclass_fields__"):
            assert_msg_equal(x, y, f"{path}.{name}")
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f"{path}.{name}")
            assert x.dtype == np.asarray(y).dtype, f"{path}.{name}"
        elif isinstance(x, list) and x and hasattr(x[0], "__dataclass_fields__"):
            assert len(x) == len(y), f"{path}.{name}"
            for i, (u, v) in enumerate(zip(x, y)):
                assert_msg_equal(u, v, f"{path}.{name}[{i}]")
        else:
            assert x == y, f"{path}.{name}: {x!r} != {y!r}"


@pytest.mark.parametrize("make,msgtype", [(action_chunk, "dreamzero_msgs/msg/ActionChunk"),
                                          (policy_status, "dreamzero_msgs/msg/PolicyStatus")])
def test_cdr_round_trip(make, msgtype):
    msg = make()
    data = msgs.serialize(msg, msgtype)
    assert isinstance(data, bytes) and data[:4] == b"\x00\x01\x00\x00"
    assert_msg_equal(msgs.deserialize(data, msgtype), msg)
    assert msgs.serialize(msg) == data            # msgtype taken from the message


def test_service_types_round_trip():
    req_t, resp_t = msgs.service_types("dreamzero_msgs/srv/SetInstruction")
    req = STORE.types[req_t](instruction="open the drawer", reset=True)
    assert_msg_equal(msgs.deserialize(msgs.serialize(req), req_t), req)
    resp = STORE.types[resp_t](success=False, message="empty instruction")
    assert_msg_equal(msgs.deserialize(msgs.serialize(resp), resp_t), resp)
    trig_req_t, trig_resp_t = msgs.service_types("std_srvs/srv/Trigger")
    # rosidl gives an empty request one uint8 member; it is on the wire as one byte
    assert msgs.serialize(STORE.types[trig_req_t]()) == b"\x00\x01\x00\x00\x00"
    with pytest.raises(KeyError, match="known: .*dreamzero_msgs/srv/SetInstruction.*std_srvs/srv/Trigger"):
        msgs.service_types("std_srvs/srv/SetBool")


def test_standard_types_are_plain_jazzy():
    plain = get_typestore(Stores.ROS2_JAZZY)
    for t in ("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", "trajectory_msgs/msg/JointTrajectory"):
        assert STORE.fielddefs[t] == plain.fielddefs[t]
    with pytest.raises(KeyError, match="unknown message type 'foo/msg/Bar'"):
        msgs.msg_class("foo/msg/Bar")


@pytest.mark.parametrize("plugin", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_rosbag2_write_and_read_back(tmp_path, plugin):
    bag = tmp_path / "bag"
    chunks = [action_chunk(i) for i in range(3)]
    statuses = [policy_status(i) for i in range(2)]
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        c_chunk = writer.add_connection("/dreamzero_policy/action_chunk", "dreamzero_msgs/msg/ActionChunk",
                                        typestore=STORE)
        c_status = writer.add_connection("/dreamzero_policy/status", "dreamzero_msgs/msg/PolicyStatus",
                                         typestore=STORE)
        for i, m in enumerate(chunks):
            writer.write(c_chunk, 1_000 + i, msgs.serialize(m))
        for i, m in enumerate(statuses):
            writer.write(c_status, 2_000 + i, msgs.serialize(m))

    with Reader(bag) as reader:          # our typestore
        got = {"/dreamzero_policy/action_chunk": [], "/dreamzero_policy/status": []}
        for conn, _t, raw in reader.messages():
            got[conn.topic].append(msgs.deserialize(raw, conn.msgtype))
    for a, b in zip(got["/dreamzero_policy/action_chunk"], chunks, strict=True):
        assert_msg_equal(a, b)
    for a, b in zip(got["/dreamzero_policy/status"], statuses, strict=True):
        assert_msg_equal(a, b)

    # A consumer without dreamzero_msgs: the bag carries the definitions, AnyReader registers them itself.
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        decoded = [reader.deserialize(raw, conn.msgtype) for conn, _t, raw in reader.messages()]
    assert [m.chunk_index for m in decoded if hasattr(m, "chunk_index")] == [0, 1, 2]
    assert [m.chunks_published for m in decoded if hasattr(m, "chunks_published")] == [40, 41]
    np.testing.assert_array_equal(decoded[0].raw_actions, chunks[0].raw_actions)


def test_time_helpers():
    ns = 1_700_000_000_123_456_789
    assert msgs.time_to_ns(msgs.time_msg(ns)) == ns
    t = msgs.time_msg(-1)
    assert (t.sec, t.nanosec) == (-1, 999_999_999)
    h = msgs.header(ns, "cam")
    assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (1_700_000_000, 123_456_789, "cam")
    d = msgs.duration_msg(1 / 15)
    assert (d.sec, d.nanosec) == (0, 66_666_667)
    assert msgs.duration_to_s(msgs.duration_msg(-0.25)) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="finite"):
        msgs.duration_msg(float("nan"))


def test_definitions_come_from_the_repo_package():
    link = REPO / "dreamzero_policy" / "msg_defs"
    assert link.is_symlink() and os.readlink(link) == "../dreamzero_msgs"
    assert msgs.msg_defs_dir() == link.resolve() or msgs.msg_defs_dir().resolve() == (REPO / "dreamzero_msgs")
    for f in ("msg/ActionChunk.msg", "msg/PolicyStatus.msg", "srv/SetInstruction.srv"):
        assert (REPO / "dreamzero_msgs" / f).is_file()


def test_ament_index_lookup(tmp_path, monkeypatch):
    """On a ROS install without the msg_defs link, the share directory is found through the ament index."""
    prefix = tmp_path / "install"
    (prefix / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (prefix / "share/ament_index/resource_index/packages/dreamzero_msgs").touch()
    (prefix / "share/dreamzero_msgs/msg").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join([str(tmp_path / "other"), str(prefix)]))
    assert msgs._ament_share_dir("dreamzero_msgs") == prefix / "share/dreamzero_msgs"
    assert msgs._ament_share_dir("not_there") is None
