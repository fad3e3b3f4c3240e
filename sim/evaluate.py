"""Closed-loop evaluation: N episodes of a task with a policy, the success rate with a Wilson 95% interval.

    dreamzero-sim-eval --task pick --episodes 20 --out /tmp/eval_pick              # the scripted expert
    dreamzero-sim-eval --task pick --policy replay --replay /tmp/pick_lerobot --out /tmp/eval_replay

Episode e runs seed `--seed + e` (a replay runs the seeds its recording names). Results are deterministic for a
given seed and policy; only the measured latencies vary. Writes `<out>/summary.json` (also printed) and, with
`--video first|all`, one mp4 per episode: the cameras side by side at the policy's frame rate (5 fps).
The model-backed policy joins through `sim.rollout.Policy` (and `make_policy`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sim import bags, lerobot
from sim.cameras import CAMERAS
from sim.env import FrankaSimEnv, SimObservation
from sim.experts import make_expert
from sim.rollout import CHUNK_LEN, Policy, ReplayPolicy, run_episode
from sim.tasks import TASKS
from sim.video import tile, write_mp4

VIDEO_CHOICES = ("none", "first", "all")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def evaluate(task: str, seeds: Sequence[int], policy_for: Callable[[FrankaSimEnv, int], Policy], *,
             policy_name: str = "policy", video: str = "none", out: str | Path | None = None,
             render: bool = False, image_hw: tuple[int, int] = (180, 320), cameras: tuple[str, ...] = CAMERAS,
             frame_every: int = 3) -> dict:
    """Run one episode per seed; `policy_for(env, e)` gives the policy of episode e.

    render: give the policy observations with images (image-based policies). Episodes with a video always render.
    Returns the JSON-ready summary (also written to `<out>/summary.json` when `out` is given).
    """
    if video not in VIDEO_CHOICES:
        raise ValueError(f"unknown video choice {video!r}; valid: {list(VIDEO_CHOICES)}")
    if video != "none" and out is None:
        raise ValueError("videos need an output folder (out)")
    out = Path(out) if out is not None else None
    env = FrankaSimEnv(task=task, seed=seeds[0] if seeds else 0, image_hw=image_hw, cameras=cameras)
    rows, latencies = [], []
    try:
        for index, seed in enumerate(seeds):
            frames: list[np.ndarray] = []
            with_video = video == "all" or (video == "first" and index == 0)

            def on_frame(obs: SimObservation) -> None:
                frames.append(tile(obs.images[c] for c in env.cameras))

            episode = run_episode(env, policy_for(env, index), seed, render=render or with_video,
                                  frame_every=frame_every, on_frame=on_frame if with_video else None)
            latencies += episode.act_latency_s
            row = {"episode": index, "seed": seed, "instruction": episode.instruction, "success": episode.success,
                   "final_goal_distance_m": round(env.goal_distance(), 4), "control_steps": episode.control_steps,
                   "chunks": len(episode.act_latency_s), "rejected_chunks": len(episode.rejected)}
            if episode.rejected:
                row["first_rejection"] = episode.rejected[0]
            if with_video:
                path = out / "videos" / f"episode_{index:03d}_seed{seed}.mp4"
                write_mp4(path, frames, fps=round(env.CONTROL_HZ / frame_every))
                row["video"] = str(path)
            rows.append(row)
    finally:
        env.close()
    successes = sum(r["success"] for r in rows)
    low, high = wilson_interval(successes, len(rows))
    summary = {
        "task": task, "policy": policy_name, "episodes": len(rows), "successes": successes,
        "success_rate": successes / len(rows) if rows else 0.0, "wilson95": [low, high],
        "mean_chunk_latency_ms": 1e3 * float(np.mean(latencies)) if latencies else 0.0,
        "mean_control_steps": float(np.mean([r["control_steps"] for r in rows])) if rows else 0.0,
        "median_final_goal_distance_m": float(np.median([r["final_goal_distance_m"] for r in rows])) if rows else 0.0,
        "rejected_chunks": sum(r["rejected_chunks"] for r in rows), "per_episode": rows,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def expert_policies() -> Callable[[FrankaSimEnv, int], Policy]:
    """A `policy_for` that builds the scripted expert once per env and reuses it for every episode."""
    experts: dict[int, Policy] = {}

    def policy_for(env: FrankaSimEnv, index: int) -> Policy:
        if id(env) not in experts:
            experts[id(env)] = make_expert(env)
        return experts[id(env)]
    return policy_for


def _check_target(target, where: str) -> None:
    if int(target) != 0:
        raise ValueError(f"{where} was recorded with target {target} (--all-targets); replays evaluate each seed's "
                         f"own target only: record without --all-targets")


def load_replays(path: str | Path, task: str) -> list[tuple[int, list[np.ndarray]]]:
    """(seed, chunks) of every recorded episode at `path`: a LeRobot dataset root, one bag, or a folder of bags.

    Raises ValueError when the recording is of another task.
    """
    path = Path(path)
    episodes = []
    if (path / "meta" / "info.json").is_file():
        for record in lerobot.read_episodes(path):
            actions = lerobot.episode_actions(path, record["episode_index"])
            _check_target(record.get("sim_target", 0), f"{path} episode {record['episode_index']}")
            episodes.append((record.get("sim_task"), int(record["sim_seed"]),
                             [actions[i:i + CHUNK_LEN] for i in range(0, len(actions), CHUNK_LEN)]))
    else:
        for bag in [path] if (path / "metadata.yaml").is_file() else sorted(path.glob("episode_*")):
            custom = bags.read_custom_data(bag)
            _check_target(custom.get("target", 0), str(bag))
            episodes.append((custom.get("task"), int(custom["seed"]), bags.read_chunks(bag)))
    if not episodes:
        raise ValueError(f"no recorded episodes at {path} (expected a LeRobot dataset or rosbag2 episode folders)")
    other = {t for t, _, _ in episodes if t != task}
    if other:
        raise ValueError(f"{path} holds episodes of task(s) {sorted(map(str, other))}, not {task!r}")
    return [(seed, chunks) for _, seed, chunks in episodes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-sim-eval", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="reach")
    parser.add_argument("--policy", choices=("expert", "replay"), default="expert")
    parser.add_argument("--replay", help="recording to replay (LeRobot dataset root or bag folder)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes (replay: at most the recorded ones)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--video", choices=VIDEO_CHOICES, default="first")
    parser.add_argument("--out", required=True, help="folder for summary.json and videos")
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args(argv)
    image_hw = (args.height, args.width)
    if args.policy == "replay":
        if not args.replay:
            parser.error("--policy replay needs --replay PATH")
        replays = load_replays(args.replay, args.task)[:args.episodes]
        seeds = [seed for seed, _ in replays]

        def policy_for(env: FrankaSimEnv, index: int) -> Policy:
            return ReplayPolicy(replays[index][1])
    else:
        seeds = [args.seed + e for e in range(args.episodes)]
        policy_for = expert_policies()
    summary = evaluate(args.task, seeds, policy_for, policy_name=args.policy, video=args.video, out=args.out,
                       image_hw=image_hw)
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
