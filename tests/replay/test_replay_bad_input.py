"""Bad input: one clear error line, exit status 1, and nothing written (no output folder, no partial folder)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dreamzero_policy.replay import main
from replaytest_util import ROSBAG2, cli_params, copy_fixture


def _fails(args: list[str], tmp_path: Path, capsys) -> str:
    out = tmp_path / "out"
    rc = main([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    lines = [line for line in err.splitlines() if line.startswith("dreamzero-replay:")]
    assert len(lines) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*")), sorted(tmp_path.iterdir())
    return lines[0]


def test_a_missing_configured_topic_is_named_with_the_topics_the_bag_has(sim_bags, tiny_checkpoint, tmp_path,
                                                                         capsys):
    error = _fails([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), "--embodiment", "agibot_g1"], tmp_path,
                   capsys)
    assert "missing /record/head_camera_rgb" in error and "/record/left_camera_rgb" in error
    images = _bag_facts(sim_bags["mcap"][0])[0]["/cameras/exterior_1/image_raw"]
    assert f"the bag has: /cameras/exterior_1/image_raw (sensor_msgs/msg/Image, {images})" in error
    assert "--topic BAG_TOPIC:=NODE_TOPIC" in error


def _bag_facts(bag: Path) -> tuple[dict[str, int], float]:
    """(messages per topic, duration in s) of a recorded bag."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgcount for c in reader.connections}, (reader.end_time - reader.start_time) / 1e9


def test_a_real_ros1_bag_without_the_topics_lists_its_topics(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("robot_calibration_ros1/calibration_poses.bag", tmp_path)
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "missing /cameras/wrist/image_raw" in error and "/joint_states (joint states" in error
    assert "calibration_joint_states (sensor_msgs/msg/JointState, 61)" in error


def test_unsupported_serialization(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("ros2_rosbag2_test_resources/sqlite3_wrong_rmw_test", tmp_path)
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "CDR serialization" in error and "wrong_format" in error


def test_unsupported_storage(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("ros2_rosbag2_test_resources/sqlite3_empty_bag", tmp_path)
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())
    metadata["rosbag2_bagfile_information"]["storage_identifier"] = "rosbag_v2"
    (bag / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "storage mcap or sqlite3" in error and "rosbag_v2" in error
    other = tmp_path / "recording.hdf5"
    other.write_bytes(b"\x89HDF\r\n\x1a\n")
    error = _fails([str(other), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "unsupported storage format '.hdf5'" in error


def test_a_non_ros_mcap(tiny_checkpoint, tmp_path, capsys):
    bag = copy_fixture("lbx_franka_teach_json_mcap/trajectory_20250527_002946_00m00s.mcap", tmp_path)
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "profile 'ros2'" in error and "message encoding ['json']" in error and "not a ROS 2 bag" in error


@pytest.mark.parametrize("fmt", ["mcap", "sqlite3"])
def test_a_truncated_file(sim_bags, tiny_checkpoint, tmp_path, capsys, fmt):
    bag = tmp_path / "truncated"
    shutil.copytree(sim_bags[fmt][0], bag)
    storage = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    storage.write_bytes(storage.read_bytes()[:storage.stat().st_size // 2])
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "a complete, readable bag" in error and "truncated or corrupt" in error


def test_no_messages_in_range(sim_bags, tiny_checkpoint, tmp_path, capsys):
    error = _fails([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), "--start", "100"], tmp_path, capsys)
    end = _bag_facts(sim_bags["mcap"][0])[1]
    assert f"range 100 .. {end:g} s" in error and "none on /joint_states" in error
    assert f"spans 0 .. {end:.3f} s" in error


@pytest.mark.parametrize("name", ["sqlite3_empty_bag", "sqlite3_file_compressed_zstd"])
def test_an_empty_bag(tiny_checkpoint, tmp_path, capsys, name):
    bag = copy_fixture(f"ros2_rosbag2_test_resources/{name}", tmp_path)
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "an empty bag (0 messages; topics: /parameter_events (rcl_interfaces/msg/ParameterEvent, 0)" in error


def test_no_instruction_anywhere(sim_bags, tiny_checkpoint, tmp_path, capsys):
    error = _fails([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), "--topic",
                    "/dreamzero/instruction:=/elsewhere"], tmp_path, capsys)
    assert "instruction" in error and "--instruction TEXT" in error


def test_a_bad_checkpoint_fails_after_the_output_was_started_and_leaves_nothing(sim_bags, tmp_path, capsys):
    """A checkpoint folder that does not load only fails when the node configures (after the output folder was
    begun): still no output. A missing one is refused up front."""
    (tmp_path / "not_a_checkpoint").mkdir()
    error = _fails([str(sim_bags["mcap"][0]), "--checkpoint", str(tmp_path / "not_a_checkpoint"), "--no-progress"],
                   tmp_path, capsys)
    assert "policy node: expected to configure" in error and "checkpoint" in error
    error = _fails([str(sim_bags["mcap"][0]), "--checkpoint", str(tmp_path / "missing")], tmp_path, capsys)
    assert "--checkpoint: expected an existing checkpoint directory" in error


def test_the_output_folder_is_never_overwritten_by_accident(sim_bags, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    rc = main([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), "--out", str(out)])
    assert rc == 1 and "exists" in capsys.readouterr().err and (out / "keep").is_dir()


def test_bad_command_line_values(sim_bags, tiny_checkpoint, tmp_path, capsys):
    for extra, words in ((["-p", "num_steps:=many"], "parameter num_steps"),
                         (["--inference-delay-ms", "soon"], "--inference-delay-ms"),
                         (["--topic", "joint_states"], "--topic"),
                         (["--embodiment", "no_such_robot"], "embodiment")):
        error = _fails([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), *extra], tmp_path, capsys)
        assert words in error, error
    assert ROSBAG2.is_dir()


def _bag_with_a_broken_late_chunk(source: Path, dst: Path) -> Path:
    """The recording plus 1 MB filler messages from just after its last recorded command on (so the MCAP gets several
    chunks, the last ones after every command), with an impossible record length inside the last chunk: the summary
    stays intact, so the bag opens, its checks and the ground truth read fine, and it breaks only when the replay
    reaches the fillers."""
    from mcap.reader import make_reader
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dreamzero_policy import msgs

    store = msgs.typestore()
    with AnyReader([source]) as reader:
        writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        out = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections}
        filler = writer.add_connection("/filler", "std_msgs/msg/String", typestore=store)
        blob = store.serialize_cdr(store.types["std_msgs/msg/String"](data="x" * 1_000_000), "std_msgs/msg/String")
        last_command = max(t for c, t, _ in reader.messages() if c.topic.endswith("/joint_trajectory"))
        fillers = [last_command + 50_000_000 + k * 200_000_000 for k in range(6)]
        for c, t, raw in reader.messages():  # in time order: chunks follow the write order
            while fillers and fillers[0] <= t:
                writer.write(filler, fillers.pop(0), bytes(blob))
            writer.write(out[c.topic], t, raw)
        writer.close()
    mcap = next(dst.glob("*.mcap"))
    with open(mcap, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    last = max(chunks, key=lambda c: c.chunk_start_offset)
    assert len(chunks) > 2 and last.message_start_time > last_command
    data = bytearray(mcap.read_bytes())
    fields = last.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4  # opcode, length, start, end, size, crc
    compression = int.from_bytes(data[fields:fields + 4], "little")
    first_record = fields + 4 + compression + 8
    data[first_record:first_record + 9] = b"\x05" + (10 ** 12).to_bytes(8, "little")
    mcap.write_bytes(bytes(data))
    return dst


def test_a_file_corrupt_in_the_middle_fails_during_the_replay_and_leaves_nothing(sim_bags, tiny_checkpoint,
                                                                                 tmp_path, capsys):
    from dreamzero_policy.replay import ReplayOptions
    from dreamzero_policy.replay.bagio import BagError, open_bag
    from dreamzero_policy.replay.runner import BagReplay
    from replaytest_util import node_params

    bag = _bag_with_a_broken_late_chunk(sim_bags["mcap"][0], tmp_path / "corrupt")
    with open_bag(bag) as reader:
        replay = BagReplay(reader, ReplayOptions(node_params=node_params(tiny_checkpoint)), tmp_path / "api")
        with pytest.raises(BagError, match="truncated or corrupt"):  # checks passed; it breaks while replaying
            replay.run()
    assert replay.chunks  # the model had run on the good part
    error = _fails([str(bag), *cli_params(tiny_checkpoint)], tmp_path, capsys)
    assert "a complete, readable bag" in error and "Truncated record" in error
