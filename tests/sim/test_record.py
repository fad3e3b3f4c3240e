"""Recording: rosbag2 (MCAP, sqlite3) read back with rosbags and the mcap package; LeRobot v2.1 with pyarrow + PyAV."""
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader

from sim import lerobot, robot, rosmsg
from sim.bags import read_chunks, read_custom_data, read_messages
from sim.env import FrankaSimEnv
from sim.evaluate import load_replays
from sim.record import main as record_main
from sim.record import record
from sim.rollout import ReplayPolicy, run_episode

DROID_SCHEMA = Path("/work/shared/reference/lerobot_schemas/droid_lerobot_port_features.json")
CAMERA_TOPICS = [rosmsg.camera_topic(c) for c in ("wrist", "exterior_1", "exterior_2")]
TYPES = {
    "/joint_states": "sensor_msgs/msg/JointState", "/dreamzero/instruction": "std_msgs/msg/String",
    "/fr3_arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/fr3_gripper_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    **{topic: "sensor_msgs/msg/Image" for topic in CAMERA_TOPICS},
}


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory):
    """One expert reach episode, default resolution and rates."""
    out = tmp_path_factory.mktemp("mcap")
    summary = record("reach", 1, out, "mcap", seed=5)
    return out / "episode_000000", summary[0]


@pytest.fixture(scope="module")
def sqlite_bag(tmp_path_factory):
    """One expert pick episode, small images at 5 Hz."""
    out = tmp_path_factory.mktemp("sqlite")
    summary = record("pick", 1, out, "sqlite3", seed=2, image_hw=(36, 64), image_hz=5)
    return out / "episode_000000", summary[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two expert reach episodes as a LeRobot dataset (small images)."""
    out = tmp_path_factory.mktemp("lerobot") / "reach"
    return out, record("reach", 2, out, "lerobot", seed=3, image_hw=(90, 160))


def rates(stamps):
    return 1e9 / np.diff(np.asarray(stamps, dtype=np.int64))


def test_mcap_bag_topics_types_and_rates(mcap_bag):
    path, summary = mcap_bag
    assert summary["success"]
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TYPES
        duration_s = reader.duration / 1e9
    assert duration_s == pytest.approx(summary["control_steps"] / 15, abs=1e-6)
    joint_states = read_messages(path, "/joint_states")
    assert len(joint_states) == round(duration_s * 30) + 1
    np.testing.assert_allclose(rates([t for t, _ in joint_states]), 30, rtol=1e-6)
    for t, msg in joint_states:
        assert rosmsg.stamp_to_ns(msg.header.stamp) == t
        assert list(msg.name) == list(robot.JOINT_NAMES) and len(msg.position) == len(msg.velocity) == 9
    for topic, camera in zip(CAMERA_TOPICS, ("wrist", "exterior_1", "exterior_2")):
        images = read_messages(path, topic)
        assert len(images) == round(duration_s * 15) + 1
        np.testing.assert_allclose(rates([t for t, _ in images]), 15, rtol=1e-6)
        msg = images[0][1]
        assert (msg.height, msg.width, msg.encoding, msg.step, msg.header.frame_id) == (180, 320, "rgb8", 960, camera)
    instruction = read_messages(path, "/dreamzero/instruction")
    assert [(t, m.data) for t, m in instruction] == [(0, summary["instruction"])]


def test_bag_images_are_the_sim_images(mcap_bag):
    path, summary = mcap_bag
    with FrankaSimEnv(task="reach", seed=summary["seed"]) as env:
        obs = env.reset(summary["seed"])
    for camera in ("wrist", "exterior_1", "exterior_2"):
        _, msg = read_messages(path, rosmsg.camera_topic(camera))[0]
        np.testing.assert_array_equal(rosmsg.image_from_msg(msg), obs.images[camera])


def test_bag_trajectories_are_the_commanded_chunks(mcap_bag):
    path, summary = mcap_bag
    arm = read_messages(path, "/fr3_arm_controller/joint_trajectory")
    gripper = read_messages(path, "/fr3_gripper_controller/joint_trajectory")
    assert len(arm) == len(gripper) == summary["control_steps"] // 24
    assert [t for t, _ in arm] == [k * 1_600_000_000 for k in range(len(arm))]
    for (_, a), (_, g) in zip(arm, gripper):
        assert list(a.joint_names) == list(robot.ARM_JOINTS) and list(g.joint_names) == ["fr3_finger_joint1"]
        assert len(a.points) == 24
        assert [rosmsg.stamp_to_ns(p.time_from_start) for p in a.points] == [
            round((i + 1) * 1e9 / 15) for i in range(24)]
        fingers = np.array([p.positions[0] for p in g.points])
        assert np.all((fingers >= 0) & (fingers <= 0.04))
    # Replaying the recorded commands on the recorded seed reproduces the episode exactly.
    chunks = read_chunks(path)
    with FrankaSimEnv(task="reach", seed=0, cameras=()) as env:
        episode = run_episode(env, ReplayPolicy(chunks), int(read_custom_data(path)["seed"]))
    assert episode.success and episode.control_steps == summary["control_steps"]
    np.testing.assert_allclose(episode.actions, np.concatenate(chunks), atol=1e-12)


def test_mcap_package_reads_the_bag(mcap_bag):
    path, summary = mcap_bag
    (mcap_file,) = path.glob("*.mcap")
    with open(mcap_file, "rb") as f:
        reader = make_reader(f)
        stats = reader.get_summary()
        channels = {c.topic: (c.message_encoding, stats.schemas[c.schema_id].name,
                              stats.schemas[c.schema_id].encoding) for c in stats.channels.values()}
        assert channels == {topic: ("cdr", msgtype, "ros2msg") for topic, msgtype in TYPES.items()}
        counts = {}
        for schema, channel, message in reader.iter_messages():
            msg = rosmsg.TYPESTORE.deserialize_cdr(message.data, schema.name)
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == "/joint_states":
                assert rosmsg.stamp_to_ns(msg.header.stamp) == message.log_time
    assert counts["/joint_states"] == round(summary["control_steps"] / 15 * 30) + 1
    assert sum(counts.values()) == stats.statistics.message_count


def test_sqlite3_bag_with_configured_rate_and_metadata(sqlite_bag):
    path, summary = sqlite_bag
    assert list(path.glob("*.db3")) and summary["success"]
    with Reader(path) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == TYPES
    images = read_messages(path, "/cameras/wrist/image_raw")
    np.testing.assert_allclose(rates([t for t, _ in images]), 5, rtol=1e-6)
    assert (images[0][1].height, images[0][1].width) == (36, 64)
    assert read_custom_data(path) == {"task": "pick", "seed": "2", "target": "0", "success": "true"}


def test_lerobot_dataset_layout_and_metadata(dataset):
    root, summaries = dataset
    info = json.loads((root / "meta" / "info.json").read_text())
    lengths = [s["control_steps"] for s in summaries]
    assert info["codebase_version"] == "v2.1" and info["fps"] == 15 and info["robot_type"] == "Franka"
    assert info["total_episodes"] == 2 and info["total_frames"] == sum(lengths) and info["total_videos"] == 6
    features = info["features"]
    for key in ("observation.images.wrist_left", "observation.images.exterior_1_left",
                "observation.images.exterior_2_left"):
        assert features[key]["dtype"] == "video" and features[key]["shape"] == [90, 160, 3]
        assert features[key]["info"]["video.fps"] == 15
    if DROID_SCHEMA.is_file():  # every feature shared with the public DROID port has its dtype, shape and names
        droid = json.loads(DROID_SCHEMA.read_text())["DROID_FEATURES"]
        shared = [key for key, spec in features.items() if key in droid and spec["dtype"] != "video"]
        assert len(shared) >= 12
        for key in shared:
            assert [features[key][f] for f in ("dtype", "shape", "names")] == [
                droid[key][f] for f in ("dtype", "shape", "names")], key
    episodes = lerobot.read_episodes(root)
    assert [(e["episode_index"], e["length"], e["sim_seed"]) for e in episodes] == [(0, lengths[0], 3),
                                                                                      (1, lengths[1], 4)]
    tasks = [json.loads(line) for line in (root / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert {t["task"] for t in tasks} == {s["instruction"] for s in summaries}
    stats = json.loads((root / "meta" / "stats.json").read_text())
    for key in ("action", "observation.state"):
        assert set(stats[key]) >= {"min", "max", "mean", "std", "q01", "q99", "count"}
        assert len(stats[key]["q01"]) == len(stats[key]["q99"]) == 8
        assert np.all(np.array(stats[key]["q01"]) <= np.array(stats[key]["q99"]))
    assert np.array(stats["observation.images.wrist_left"]["mean"]).shape == (3, 1, 1)
    assert stats["observation.state.gripper_position"]["q99"] == [pytest.approx(0.0, abs=1e-3)]  # shape [1]
    assert stats["frame_index"]["max"] == [max(lengths) - 1]
    per_episode = [json.loads(line) for line in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    assert [e["episode_index"] for e in per_episode] == [0, 1] and "q99" in per_episode[0]["stats"]["action"]


def test_lerobot_all_targets(tmp_path):
    """--all-targets: each scene's cubes take turns as the target (the images are compared in test_env)."""
    root = tmp_path / "reach_all"
    summaries = record("reach", 4, root, "lerobot", seed=8, image_hw=(36, 64), all_targets=True)
    episodes = lerobot.read_episodes(root)
    assert [(e["sim_seed"], e["sim_target"]) for e in episodes] == [(8, 0), (8, 1), (8, 2), (9, 0)]
    assert [s["target"] for s in summaries] == [0, 1, 2, 0] and all(s["success"] for s in summaries)
    assert len({s["instruction"] for s in summaries[:3]}) == 3
    with pytest.raises(ValueError, match="recorded with target 1"):  # replays cannot rebuild other targets
        load_replays(root, "reach")


def test_parallel_recording_gives_the_same_dataset_and_bags(tmp_path):
    """--workers: episodes run in other processes, come back in order, and the files are the serial run's."""
    import functools

    from sim.experts import make_expert

    args = dict(seed=8, image_hw=(36, 64), cameras=("wrist",), all_targets=True,
                make_policy=functools.partial(make_expert, miss_m=0.05))
    serial = record("reach", 4, tmp_path / "serial", "lerobot", **args)
    parallel = record("reach", 4, tmp_path / "parallel", "lerobot", workers=2, **args)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "path"} for r in rows]  # noqa: E731
    assert strip(parallel) == strip(serial) and [s["episode"] for s in parallel] == [0, 1, 2, 3]
    assert lerobot.read_episodes(tmp_path / "parallel") == lerobot.read_episodes(tmp_path / "serial")
    for e in range(4):
        assert lerobot.read_episode(tmp_path / "parallel", e).equals(lerobot.read_episode(tmp_path / "serial", e))
        # the same frames went in; PyAV's H.264 encoding varies by a few levels from one call to the next
        ours, theirs = (lerobot.read_episode_video(tmp_path / run, e, "wrist").astype(int)
                        for run in ("parallel", "serial"))
        assert ours.shape == theirs.shape and np.abs(ours - theirs).mean() < 0.5
    for name in ("info.json", "stats.json", "tasks.jsonl"):
        assert (tmp_path / "parallel" / "meta" / name).read_text() == (tmp_path / "serial" / "meta" / name).read_text()
    bags = record("reach", 2, tmp_path / "bags", "mcap", workers=2, **{**args, "all_targets": False})
    for summary in bags:
        assert read_custom_data(summary["path"])["seed"] == str(summary["seed"]) and summary["success"]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        record("reach", 1, tmp_path / "none", "mcap", workers=0)


def test_lerobot_parquet_and_videos_read_back(dataset):
    root, summaries = dataset
    total = 0
    for index, summary in enumerate(summaries):
        table = pq.read_table(root / f"data/chunk-000/episode_{index:06d}.parquet")
        n = summary["control_steps"]
        assert table.num_rows == n
        action_type = table.schema.field("action").type
        assert pa.types.is_fixed_size_list(action_type) and action_type.list_size == 8
        assert action_type.value_type == pa.float32()
        columns = table.to_pydict()
        assert columns["frame_index"] == list(range(n))
        assert columns["index"] == list(range(total, total + n))
        np.testing.assert_allclose(columns["timestamp"], np.arange(n) / 15, atol=1e-6)
        assert columns["is_first"][0] and columns["is_last"][-1] and columns["is_terminal"][-1]
        assert set(columns["language_instruction"]) == {summary["instruction"]}
        state, action = np.array(columns["observation.state"]), np.array(columns["action"])
        np.testing.assert_allclose(state[0], np.r_[robot.HOME, 0.0], atol=1e-6)
        np.testing.assert_array_equal(np.array(columns["action.joint_position"]), action[:, :7])
        np.testing.assert_array_equal(np.array(columns["observation.state.gripper_position"]), state[:, 7])
        total += n
        for camera, key in lerobot.CAMERA_KEYS.items():
            path = root / f"videos/chunk-000/{key}/episode_{index:06d}.mp4"
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name in ("h264", "mpeg4") and stream.average_rate == 15
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            assert frames.shape == (n, 90, 160, 3)
    # The first frame is the sim's image at reset (up to lossy compression).
    with FrankaSimEnv(task="reach", seed=0, image_hw=(90, 160)) as env:
        obs = env.reset(summaries[0]["seed"])
    video = lerobot.read_episode_video(root, 0, "exterior_1")
    assert np.abs(video[0].astype(int) - obs.images["exterior_1"]).mean() < 4


def test_lerobot_actions_replay_to_the_same_outcome(dataset):
    root, summaries = dataset
    replays = load_replays(root, "reach")
    assert [seed for seed, _ in replays] == [3, 4]
    assert [sum(len(c) for c in chunks) for _, chunks in replays] == [s["control_steps"] for s in summaries]
    actions = lerobot.episode_actions(root, 1)
    with FrankaSimEnv(task="reach", seed=0, cameras=()) as env:
        episode = run_episode(env, ReplayPolicy.from_actions(actions), summaries[1]["seed"])
    assert episode.success and episode.control_steps == len(actions)
    np.testing.assert_allclose(episode.actions, actions, atol=1e-6)  # float32 in the dataset


def test_cli_and_bad_arguments(tmp_path, capsys):
    assert record_main(["--task", "reach", "--episodes", "1", "--out", str(tmp_path / "cli"), "--format", "sqlite3",
                        "--height", "18", "--width", "32", "--image-hz", "5", "--cameras", "wrist",
                        "--expert-miss", "0.05"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["episodes"] == 1 and printed["successes"] == 1
    with Reader(tmp_path / "cli" / "episode_000000") as reader:
        assert "/cameras/exterior_1/image_raw" not in {c.topic for c in reader.connections}
    with pytest.raises(ValueError, match="unknown format 'bag'"):
        record("reach", 1, tmp_path / "x", "bag")
    with pytest.raises(ValueError, match="must divide the physics rate"):
        record("reach", 1, tmp_path / "y", "mcap", image_hz=7)
    with pytest.raises(FileExistsError, match="not empty"):
        record("reach", 1, tmp_path / "cli", "lerobot")
    with pytest.raises(SystemExit):
        record_main(["--task", "push", "--episodes", "1", "--out", str(tmp_path / "z"), "--expert-miss", "0.05"])
    assert "--expert-miss: only the reach expert" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
