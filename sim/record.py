"""Record sim episodes (the scripted expert by default) as rosbag2 bags or as a LeRobot v2.1 dataset.

    dreamzero-sim-record --task reach --episodes 10 --out /tmp/reach_bags --format mcap
    dreamzero-sim-record --task pick --episodes 50 --out /tmp/pick_lerobot --format lerobot

Bags (`mcap` or `sqlite3`): one bag per episode, `<out>/episode_000000/`, on the robot's topics (see sim.rosmsg):
joint states at 30 Hz, the cameras at `--image-hz` (default 15), each commanded chunk as the arm and gripper
JointTrajectory messages, the latched instruction; metadata.yaml `custom_data` holds task, seed, target and success.
LeRobot: one dataset at `<out>` (see sim.lerobot), 15 fps, images of every control step.
Episode e uses seed `--seed + e`; with `--all-targets`, each scene's objects take turns as the target (reach: episodes
3s, 3s+1, 3s+2 share seed `--seed + s`). `--workers N` runs episodes in N processes (the same episodes, in order).
A JSON summary goes to stdout.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from sim.bags import BagWriter
from sim.cameras import CAMERAS
from sim.env import ARM_CONTROLLER, GRIPPER_CONTROLLER, FrankaSimEnv, chunk_to_trajectories
from sim.experts import make_expert
from sim.lerobot import LeRobotWriter
from sim.rollout import Episode, Policy, run_episode
from sim.tasks import TASKS

FORMATS = ("mcap", "sqlite3", "lerobot")
JOINT_STATE_HZ = 30


def record(task: str, episodes: int, out: str | Path, fmt: str = "mcap", seed: int = 0,
           image_hw: tuple[int, int] = (180, 320), cameras: tuple[str, ...] = CAMERAS, image_hz: int = 15,
           make_policy: Callable[[FrankaSimEnv], Policy] = make_expert, all_targets: bool = False,
           workers: int = 1) -> list[dict]:
    """Record `episodes` episodes of `task` with the policy `make_policy(env)`; returns one summary per episode.

    all_targets: every object of a scene becomes the target in turn (reach: 3 episodes per seed, pick: 2), so the
    same first images come with different instructions; `episodes` still counts episodes, not scenes.
    workers: processes that run episodes side by side, each with its own sim and policy (`make_policy` must pickle);
    episodes are seeded, so they are the same as with one (only the H.264 encoding varies by a few levels)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {list(FORMATS)}")
    if image_hz < 1 or FrankaSimEnv.PHYSICS_HZ % image_hz:
        raise ValueError(f"image_hz {image_hz} must divide the physics rate {FrankaSimEnv.PHYSICS_HZ} Hz "
                         f"(e.g. 5, 10, 15, 30)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    per_scene = TASKS[task].targets if all_targets else 1
    jobs = [(index, seed + index // per_scene, index % per_scene) for index in range(episodes)]
    env = FrankaSimEnv(task=task, seed=seed, image_hw=image_hw, cameras=cameras)  # checks the arguments
    dataset = LeRobotWriter(out, env.cameras, env.image_hw, fps=env.CONTROL_HZ) if fmt == "lerobot" else None
    summaries, pool = [], None
    try:
        if workers == 1:
            results = map(_Recorder(env, make_policy(env), fmt, out, image_hz), jobs)
        else:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker, initargs=(task, seed, env.image_hw, env.cameras,
                                                                            make_policy, fmt, out, image_hz))
            results = pool.map(_run_in_worker, jobs)
        for summary, lerobot_episode in results:  # in episode order
            if dataset is not None:
                dataset.add_episode(**lerobot_episode)
            summaries.append(summary)
        if dataset is not None:
            dataset.finish()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        env.close()
    return summaries


class _Recorder:
    """Records one episode (index, scene seed, target) with its own sim and policy: (summary, LeRobot episode or
    None); bags are written here, LeRobot episodes by the caller, in order."""

    def __init__(self, env: FrankaSimEnv, policy: Policy, fmt: str, out: Path, image_hz: int):
        self.env, self.policy, self.fmt, self.out, self.image_hz = env, policy, fmt, out, image_hz

    def __call__(self, job: tuple[int, int, int]) -> tuple[dict, dict | None]:
        index, seed, target = job
        lerobot_episode = None
        if self.fmt == "lerobot":
            episode, lerobot_episode = _collect_lerobot(self.env, self.policy, seed, target)
            path = self.out
        else:
            path = self.out / f"episode_{index:06d}"
            episode = _record_bag(self.env, self.policy, seed, target, path, self.fmt, self.image_hz)
        summary = {"episode": index, "seed": episode.seed, "target": target, "instruction": episode.instruction,
                   "success": episode.success, "control_steps": episode.control_steps, "path": str(path)}
        return summary, lerobot_episode


_WORKER: list[_Recorder] = []  # a worker process's recorder


def _start_worker(task: str, seed: int, image_hw: tuple[int, int], cameras: tuple[str, ...],
                  make_policy: Callable[[FrankaSimEnv], Policy], fmt: str, out: Path, image_hz: int) -> None:
    env = FrankaSimEnv(task=task, seed=seed, image_hw=image_hw, cameras=cameras)
    _WORKER.append(_Recorder(env, make_policy(env), fmt, out, image_hz))


def _run_in_worker(job: tuple[int, int, int]) -> tuple[dict, dict | None]:
    return _WORKER[0](job)


def _record_bag(env: FrankaSimEnv, policy: Policy, seed: int, target: int, path: Path, fmt: str,
                image_hz: int) -> Episode:
    joint_period, image_period = env.PHYSICS_HZ // JOINT_STATE_HZ, env.PHYSICS_HZ // image_hz
    custom = {"task": env.task_name, "seed": str(seed), "target": str(target)}
    with BagWriter(path, fmt, env.cameras, custom) as bag:
        def on_step(env: FrankaSimEnv) -> None:
            if env.step_count == 0:
                bag.instruction(0, env.instruction)
            if env.step_count % joint_period == 0:
                bag.joint_state(env.observe(render=False))
            if env.step_count % image_period == 0:
                for camera in env.cameras:
                    bag.image(camera, env.now_ns, env.render(camera))

        def on_chunk(env: FrankaSimEnv, chunk: np.ndarray) -> None:
            arm, gripper = chunk_to_trajectories(chunk, 1.0 / env.CONTROL_HZ)
            bag.trajectory(ARM_CONTROLLER, env.now_ns, arm)
            bag.trajectory(GRIPPER_CONTROLLER, env.now_ns, gripper)

        episode = run_episode(env, policy, seed, target=target, on_step=on_step, on_chunk=on_chunk)
        bag.writer.set_custom_data("success", str(episode.success).lower())
    return episode


def _collect_lerobot(env: FrankaSimEnv, policy: Policy, seed: int, target: int) -> tuple[Episode, dict]:
    """Run one episode; -> (episode, LeRobotWriter.add_episode arguments)."""
    substeps = env.PHYSICS_HZ // env.CONTROL_HZ
    states, cartesian, images = [], [], {camera: [] for camera in env.cameras}

    def on_step(env: FrankaSimEnv) -> None:  # the observation at the start of each control step
        if env.step_count % substeps == 0:
            obs = env.observe(render=True)
            position, quaternion = env.tcp_pose()
            states.append(obs.state)
            cartesian.append(np.concatenate([position, env.client.getEulerFromQuaternion(quaternion)]))
            for camera in env.cameras:
                images[camera].append(obs.images[camera])

    episode = run_episode(env, policy, seed, target=target, on_step=on_step)
    if episode.rejected:
        raise RuntimeError(f"episode with seed {seed}: the policy sent rejected chunks ({episode.rejected[0]}); "
                           f"a dataset needs an action for every step")
    n = episode.control_steps  # the last observation (after the last action) has no action: dropped
    return episode, {"states": np.array(states[:n]), "actions": episode.actions, "cartesian": np.array(cartesian[:n]),
                     "images": {camera: np.stack(frames[:n]) for camera, frames in images.items()},
                     "instruction": episode.instruction, "success": episode.success,
                     "extra": {"sim_task": env.task_name, "sim_seed": seed, "sim_target": target}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-sim-record", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="reach")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--format", choices=FORMATS, default="mcap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--cameras", default=",".join(CAMERAS), help="comma-separated subset of " + ",".join(CAMERAS))
    parser.add_argument("--image-hz", type=int, default=15, help="camera rate in bags (divides 240)")
    parser.add_argument("--all-targets", action="store_true", help="every object of a scene as the target in turn "
                        "(reach: 3 episodes per seed, pick: 2): the same images with different instructions")
    parser.add_argument("--expert-miss", type=float, default=0.0, metavar="M",
                        help="reach: the expert's approach aims up to M metres off the target, then corrects "
                        "(recovery demonstrations)")
    parser.add_argument("--workers", type=int, default=1, help="processes recording side by side (same output)")
    args = parser.parse_args(argv)
    if args.expert_miss and args.task != "reach":
        parser.error("--expert-miss: only the reach expert aims off target on purpose")
    if args.workers < 1:
        parser.error(f"--workers: needs at least 1, got {args.workers}")
    summaries = record(args.task, args.episodes, args.out, args.format, args.seed, (args.height, args.width),
                       tuple(c for c in args.cameras.split(",") if c), args.image_hz,
                       make_policy=functools.partial(make_expert, miss_m=args.expert_miss),
                       all_targets=args.all_targets, workers=args.workers)
    successes = sum(s["success"] for s in summaries)
    json.dump({"task": args.task, "format": args.format, "out": args.out, "episodes": len(summaries),
               "successes": successes, "per_episode": summaries}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
