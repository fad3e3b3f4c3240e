"""Closed-loop evaluation: Wilson interval, summary, videos, determinism, replay, frame observers, bad policies."""
import json

import numpy as np
import pytest

from sim import robot
from sim.env import FrankaSimEnv, SimObservation
from sim.evaluate import evaluate, expert_policies, load_replays, main, wilson_interval
from sim.rollout import ReplayPolicy, run_episode
from sim.tasks import ReachTask
from sim.video import read_mp4


def test_wilson_interval():
    low, high = wilson_interval(19, 20)
    assert low == pytest.approx(0.7639, abs=1e-4) and high == pytest.approx(0.9911, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_expert_evaluation_summary_video_and_determinism(tmp_path):
    first = evaluate("reach", [0, 1, 2], expert_policies(), policy_name="expert", video="first", out=tmp_path,
                     image_hw=(36, 64))
    assert first["episodes"] == 3 and first["successes"] == 3 and first["success_rate"] == 1.0
    assert first["wilson95"] == pytest.approx(list(wilson_interval(3, 3)))
    assert first["mean_chunk_latency_ms"] > 0 and first["rejected_chunks"] == 0
    assert all(row["final_goal_distance_m"] < ReachTask.SUCCESS_RADIUS for row in first["per_episode"])
    assert json.loads((tmp_path / "summary.json").read_text()) == first
    video = read_mp4(first["per_episode"][0]["video"])
    steps = first["per_episode"][0]["control_steps"]
    assert video.shape == (steps // 3 + 1, 36, 3 * 64, 3)  # 5 fps frames incl. the reset, 3 cameras side by side
    assert "video" not in first["per_episode"][1]
    again = evaluate("reach", [0, 1, 2], expert_policies(), policy_name="expert")
    strip = lambda s: {k: v for k, v in s.items() if k != "mean_chunk_latency_ms"}  # noqa: E731
    assert strip(again) == strip({**first, "per_episode": [
        {k: v for k, v in row.items() if k != "video"} for row in first["per_episode"]]})


class Frozen:
    """A policy that never moves and watches the frames (the FrameObserver extra)."""

    def __init__(self):
        self.frames: list[SimObservation] = []

    def reset(self, instruction: str) -> None:
        self.frames.clear()

    def act(self, obs: SimObservation) -> np.ndarray:
        return np.repeat(obs.state[None], 24, axis=0)

    def observe(self, obs: SimObservation) -> None:
        self.frames.append(obs)


def test_failing_policy_runs_to_the_horizon_and_gets_frames_at_5fps():
    policy = Frozen()
    with FrankaSimEnv(task="reach", seed=0, image_hw=(18, 32)) as env:
        episode = run_episode(env, policy, seed=0, render=True)
    assert not episode.success and episode.control_steps == env.max_steps == 72
    assert [f.stamp_ns for f in policy.frames] == [k * 200_000_000 for k in range(72 // 3 + 1)]
    assert all(f.images["wrist"].shape == (18, 32, 3) for f in policy.frames)
    summary = evaluate("reach", [0, 1], lambda env, index: Frozen())
    assert summary["successes"] == 0 and summary["wilson95"][0] == 0.0
    assert summary["median_final_goal_distance_m"] > 0.2  # home is 30+ cm above the table


class Broken:
    """Every second chunk has a NaN."""

    def reset(self, instruction: str) -> None:
        self.calls = 0

    def act(self, obs: SimObservation) -> np.ndarray:
        self.calls += 1
        chunk = np.repeat(np.r_[robot.HOME, 0.0][None], 24, axis=0)
        if self.calls % 2 == 0:
            chunk[3, 2] = np.nan
        return chunk


def test_rejected_chunks_are_counted_and_the_episode_goes_on():
    summary = evaluate("reach", [0], lambda env, index: Broken())
    row = summary["per_episode"][0]
    assert row["chunks"] == 3 and row["rejected_chunks"] == 1 and row["control_steps"] == 72
    assert "positions of fr3_joint3 at point 3 is nan" in row["first_rejection"]


def test_replay_of_a_recording_reproduces_the_expert(tmp_path):
    from sim.record import record
    record("pick", 2, tmp_path / "bags", "mcap", seed=7, image_hw=(18, 32), image_hz=5)
    replays = load_replays(tmp_path / "bags", "pick")
    assert [seed for seed, _ in replays] == [7, 8]
    summary = evaluate("pick", [s for s, _ in replays], lambda env, i: ReplayPolicy(replays[i][1]))
    assert summary["successes"] == 2
    with pytest.raises(ValueError, match="task\\(s\\) \\['pick'\\], not 'push'"):
        load_replays(tmp_path / "bags", "push")


def test_cli(tmp_path, capsys):
    assert main(["--task", "push", "--episodes", "2", "--seed", "4", "--video", "none", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["policy"] == "expert" and printed["episodes"] == 2 and printed["successes"] == 2
    assert [r["seed"] for r in printed["per_episode"]] == [4, 5]
