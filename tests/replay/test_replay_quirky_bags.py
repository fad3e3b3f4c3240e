"""Readable but quirky bags: split files, no metadata.yaml, ROS 1, zstd compression, empty joint names, unset
stamps. Each is read correctly (the same replay as the plain bag) or refused with the reason."""
from __future__ import annotations

import numpy as np
import pytest

from dreamzero_policy.replay import ReplayOptions, main, oracle_factory, replay_bag
from dreamzero_policy.replay.bagio import open_bag
from replaytest_util import cli_params, copy_fixture, node_params, rewrite_bag, split_bag

EXACT = 1e-9


def _oracle(bag, checkpoint, **options):
    return replay_bag(bag, ReplayOptions(node_params=node_params(checkpoint), **options),
                      engine_factory=oracle_factory())


def _assert_zero(result) -> None:
    summary = result.errors.summary()
    assert summary["arm"]["samples"] > 100 and summary["arm"]["mae"] < EXACT, summary["arm"]
    assert summary["per_joint"]["fr3_finger_joint1"]["mae"] < EXACT


def test_real_split_bag_is_read_across_its_five_files(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("ros2_rosbag2_test_resources/sqlite3_wbag_split5", tmp_path)
    with open_bag(bag) as reader:
        info = reader.info
        assert info.message_count == 6074 and len(info.files) == 5 and info.storage == "sqlite3"
        assert sum(1 for _ in reader.messages()) == 6074
    assert main([str(bag), *cli_params(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "AAA (std_msgs/msg/String, 804)" in error and "HHH (std_msgs/msg/String, 726)" in error


def test_real_mcap_files_without_metadata_are_read_as_one_recording(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("ros2_rosbag2_test_resources/mcap_multiple_files_no_metadata", tmp_path)
    with open_bag(bag) as reader:
        assert not reader.info.has_metadata and len(reader.info.files) == 3
        assert reader.info.message_count == 1324 + 1324 + 529
        times = [t for _, t, _ in reader.messages()]
        assert times == sorted(times)
    assert main([str(bag), *cli_params(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    assert "/chatter (std_msgs/msg/String, 3177)" in capsys.readouterr().err


@pytest.mark.parametrize("metadata", [True, False], ids=["split", "split_no_metadata"])
def test_a_split_recording_replays_like_the_whole_one(sim_bags, tiny_checkpoint, tmp_path, metadata):
    whole = sim_bags["mcap"][0]
    split = split_bag(whole, tmp_path / "split", parts=3, metadata=metadata)
    with open_bag(split) as reader:
        assert len(reader.info.files) == 3 and reader.info.has_metadata == metadata
    a, b = _oracle(whole, tiny_checkpoint), _oracle(split, tiny_checkpoint)
    _assert_zero(b)
    assert [c.t_obs_ns for c in a.chunks] == [c.t_obs_ns for c in b.chunks]


def test_a_ros1_bag_feeds_the_model_the_same_inputs(sim_bags, tiny_checkpoint, tmp_path):
    """The sim recording converted to ROS 1: the real model computes the same chunks from it."""
    original = sim_bags["mcap"][1]
    ros1 = rewrite_bag(original, tmp_path / "episode.bag", ros1=True)
    options = ReplayOptions(node_params=node_params(tiny_checkpoint))
    a = replay_bag(original, options)
    b = replay_bag(ros1, options, out_dir=tmp_path / "out")
    assert b.bag.storage == "ros1" and b.output["storage"] == "mcap" and b.output["skipped_topics"] == {}
    assert len(a.chunks) == len(b.chunks) >= 3
    for x, y in zip(a.chunks, b.chunks):
        assert x.t_obs_ns == y.t_obs_ns
        np.testing.assert_array_equal(x.predicted, y.predicted)
    with open_bag(tmp_path / "out" / "replay_bag") as reader:  # the output is a rosbag2 bag with CDR messages
        assert reader.info.topics["/joint_states"].count == b.bag.topics["/joint_states"].count
        c, _, raw = next(reader.messages(["/joint_states"]))
        assert list(reader.deserialize(raw, c.msgtype).name)[:1] == ["fr3_joint1"]


def test_a_zstd_compressed_bag(sim_bags, tiny_checkpoint, tmp_path):
    bag = rewrite_bag(sim_bags["sqlite3"][0], tmp_path / "compressed", storage="sqlite3", compress=True)
    assert any(p.name.endswith(".zstd") for p in bag.iterdir())
    result = _oracle(bag, tiny_checkpoint)
    assert result.bag.compression == "zstd"
    _assert_zero(result)


def test_empty_joint_names_are_refused_with_the_reason(sim_bags, tiny_checkpoint, tmp_path, capsys):
    def drop_names(topic, msg):
        if topic == "/joint_states":
            msg.name = []
        return msg

    bag = rewrite_bag(sim_bags["mcap"][0], tmp_path / "no_names", transform=drop_names)
    assert main([str(bag), *cli_params(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "/joint_states JointState.name" in error and "empty names with 9 positions" in error


def test_unset_stamps_are_refused_or_replayed_in_log_time(sim_bags, tiny_checkpoint, tmp_path, capsys):
    def zero_stamps(topic, msg):
        if topic == "/joint_states" or topic.startswith("/cameras/"):
            msg.header.stamp = type(msg.header.stamp)(sec=0, nanosec=0)
        return msg

    bag = rewrite_bag(sim_bags["mcap"][0], tmp_path / "zero_stamps", transform=zero_stamps)
    assert main([str(bag), *cli_params(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "header.stamp" in error and "0 ns twice" in error and "--stamps log" in error
    restamped = _oracle(bag, tiny_checkpoint, stamps="log")
    _assert_zero(restamped)
    plain = _oracle(sim_bags["mcap"][0], tiny_checkpoint)
    assert [c.t_obs_ns for c in restamped.chunks] == [c.t_obs_ns for c in plain.chunks]


def test_compressed_camera_topics_go_through_the_nodes_compressed_path(sim_bags, tiny_checkpoint, tmp_path):
    """exterior_1 recorded as PNG CompressedImage on <topic>/compressed, with an embodiment that says so: lossless,
    so the model sees the same frames and computes the same chunks as from the raw images."""
    import cv2
    import yaml
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dreamzero_policy import msgs
    from dreamzero_policy.embodiment import load_embodiment

    raw_topic = "/cameras/exterior_1/image_raw"
    source, bag = sim_bags["mcap"][0], tmp_path / "compressed_camera"
    store = msgs.typestore()
    compressed_cls = store.types["sensor_msgs/msg/CompressedImage"]
    with AnyReader([source]) as reader:
        writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        out = {}
        for c in reader.connections:
            topic, msgtype = (raw_topic + "/compressed", "sensor_msgs/msg/CompressedImage") if c.topic == raw_topic \
                else (c.topic, c.msgtype)
            out[c.topic] = (writer.add_connection(topic, msgtype, typestore=store), msgtype)
        for c, t, raw in reader.messages():
            connection, msgtype = out[c.topic]
            if c.topic == raw_topic:
                image = reader.deserialize(raw, c.msgtype)
                rgb = np.asarray(image.data).reshape(image.height, image.width, 3)
                ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                raw = store.serialize_cdr(compressed_cls(header=image.header, format="rgb8; png compressed bgr8",
                                                         data=png.reshape(-1)), msgtype)
            writer.write(connection, t, bytes(raw))
        writer.close()
    data = load_embodiment("franka_droid").model_dump()
    for camera in data["cameras"]:
        if camera["name"] == "exterior_1":
            camera["transport"] = "compressed"
    embodiment = tmp_path / "franka_compressed.yaml"
    embodiment.write_text(yaml.safe_dump(data, sort_keys=False))
    plain = replay_bag(source, ReplayOptions(node_params=node_params(tiny_checkpoint)))
    compressed = replay_bag(bag, ReplayOptions(node_params=node_params(tiny_checkpoint,
                                                                      embodiment=str(embodiment))))
    assert compressed.counters.get("input.malformed_image", 0) == 0
    from dreamzero_policy.replay.bagio import BagError

    with pytest.raises(BagError, match="the bag has the other image transport"):  # raw expected: a clear refusal
        replay_bag(bag, ReplayOptions(node_params=node_params(tiny_checkpoint)))
    assert len(plain.chunks) == len(compressed.chunks) >= 3
    for a, b in zip(plain.chunks, compressed.chunks):
        np.testing.assert_array_equal(a.predicted, b.predicted)


def test_stamps_on_another_clock_are_warned_about_and_counted_by_the_safety_filter(sim_bags, tiny_checkpoint,
                                                                                   tmp_path):
    """Header stamps 2 s behind the recorder's clock: the node's watchdog (bag time) finds every stream stale, as it
    would live; the replay warns up front, and --stamps log replays on the log times."""
    def shift(topic, msg):
        if hasattr(msg, "header"):
            msg.header.stamp = type(msg.header.stamp)(sec=msg.header.stamp.sec + 10, nanosec=msg.header.stamp.nanosec)
        return msg

    bag = rewrite_bag(sim_bags["mcap"][0], tmp_path / "skewed", transform=shift, log_offset_ns=12_000_000_000)
    skewed = replay_bag(bag, ReplayOptions(node_params=node_params(tiny_checkpoint)))
    assert any("/joint_states: header stamps are 2.000 s behind" in w for w in skewed.warnings), skewed.warnings
    assert skewed.safety["STALE_CAMERA"] > 0 and skewed.safety["STALE_JOINTS"] > 0
    assert skewed.status["refusals_stale_observation"] == skewed.safety["STALE_CAMERA"] + skewed.safety["STALE_JOINTS"]
    fixed = _oracle(bag, tiny_checkpoint, stamps="log")
    assert not fixed.warnings and fixed.safety["STALE_CAMERA"] == fixed.safety["STALE_JOINTS"] == 0
    _assert_zero(fixed)
