"""dreamzero-replay end to end: several bags, the aggregate table, JSON + HTML reports, the output bag."""
from __future__ import annotations

import json
import re

import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader

from dreamzero_policy import msgs
from dreamzero_policy.replay import main
from replaytest_util import cli_params


def test_two_bags_with_video_give_reports_a_table_and_output_bags(sim_bags, tiny_checkpoint, tmp_path, capsys):
    bags = sim_bags["mcap"]
    out = tmp_path / "out"
    rc = main([*map(str, bags), *cli_params(tiny_checkpoint), "--embodiment", "franka_droid", "--decode-video",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = captured.out.splitlines()
    assert table[0].split()[:4] == ["bag", "rec", "s", "chunks"]
    rows = [line.split()[0] for line in table[2:] if line and not line.startswith(("-", "(", "reports"))]
    assert rows == ["episode_000000", "episode_000001", "all"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "dreamzero-replay-summary/1" and len(summary["bags"]) == 2
    assert summary["all"]["chunks"] == sum(b["chunks"] for b in summary["bags"])
    for name, bag in zip(("episode_000000", "episode_000001"), bags):
        report = json.loads((out / name / "report.json").read_text())
        assert report["format"] == "dreamzero-replay-report/1"
        metrics = report["metrics"]
        assert set(metrics["per_joint"]) == {f"fr3_joint{i}" for i in range(1, 8)} | {"fr3_finger_joint1"}
        assert len(metrics["per_step"]["mae"]) == 24 and metrics["arm"]["mae"] > 0
        assert metrics["units"]["fr3_joint1"] == "rad"
        assert report["latency_s"]["inference"]["n"] == report["chunks"]["computed"] >= 3
        assert report["latency_s"]["inference"]["p50"] > 0
        assert set(report["safety"]["counters"]) >= {"STALE_CAMERA", "POSITION_LIMIT", "STEP_LIMIT"}
        assert report["video"]["pairs"] >= 1 and 0 < report["video"]["psnr_db"]["mean"] < 60
        assert -1 <= report["video"]["ssim"]["mean"] <= 1
        page = (out / name / "report.html").read_text()
        assert page.count("data:image/png;base64,") >= 4  # joints, horizon, latency, video
        assert not re.search(r"""(src|href)=["']https?:""", page)  # self-contained
        _check_output_bag(out / name / "replay_bag", bag, report)
    assert (out / "summary.html").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))


def _check_output_bag(path, source, report) -> None:
    info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap"
    hashes = {t["topic_metadata"]["name"]: t["topic_metadata"].get("type_description_hash", "")
              for t in info["topics_with_message_count"]}
    assert hashes["/dreamzero_policy/action_chunk"].startswith("RIHS01_")  # what ros2 bag (Jazzy) checks
    with AnyReader([source]) as src:
        source_counts = {t: i.msgcount for t, i in src.topics.items()}
    with Reader(path) as reader:
        counts = {t: i.msgcount for t, i in reader.topics.items()}
        chunks = [msgs.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/dreamzero_policy/action_chunk"]
    for topic, n in source_counts.items():  # the original topics, untouched
        assert counts[topic] == n, topic
    assert counts["/dreamzero_replay/fr3_arm_controller/joint_trajectory"] >= 2  # the node's commands, renamed
    assert counts["/dreamzero_policy/status"] >= 1
    delivered = [p for p in report["inference_points"] if p["fate"] == "delivered"]
    assert len(chunks) == len(delivered) >= 2
    assert [c.chunk_index for c in chunks] == [p["chunk_index"] for p in delivered]
    assert chunks[0].joint_names[:1] == ["fr3_joint1"] and len(chunks[0].trajectory.points) == 24


def test_sqlite3_input_gives_a_sqlite3_output_and_the_oracle_scores_zero(sim_bags, tiny_checkpoint, tmp_path,
                                                                        capsys):
    out = tmp_path / "oracle"
    rc = main([str(sim_bags["sqlite3"][0]), *cli_params(tiny_checkpoint), "--policy", "oracle", "--no-html",
               "--ground-truth", "commands", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["arm_mae"] < 1e-9 and summary["all"]["gripper_agreement"] == 1.0
    info = yaml.safe_load((out / "episode_000000" / "replay_bag" / "metadata.yaml").read_text())
    assert info["rosbag2_bagfile_information"]["storage_identifier"] == "sqlite3"
    assert not (out / "episode_000000" / "report.html").exists()


def test_ground_truth_from_future_joint_states(sim_bags, tiny_checkpoint, tmp_path, capsys):
    """--ground-truth joint_states: the oracle (which returns the ground truth) scores zero against them too."""
    out = tmp_path / "js"
    rc = main([str(sim_bags["mcap"][0]), *cli_params(tiny_checkpoint), "--policy", "oracle", "--no-html",
               "--ground-truth", "joint_states", "--out", str(out), "--output-storage", "sqlite3"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "episode_000000" / "report.json").read_text())
    assert report["replay"]["ground_truth"] == "joint_states"
    assert report["metrics"]["arm"]["mae"] < 1e-9
    assert report["output_bag"]["storage"] == "sqlite3"
