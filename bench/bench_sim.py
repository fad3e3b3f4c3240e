"""The simulation bench's speed: physics steps per second, rendered frames per second, recording wall time.

    python bench/bench_sim.py [--episodes 100] [--format mcap] [--steps 4800] [--renders 10]

- physics: pybullet's stepSimulation alone, and FrankaSimEnv.step (trajectory controllers + motor commands +
  physics) while a chunk runs; real-time factor against the 240 Hz physics clock.
- rendering: TinyRenderer frames of the three DROID cameras at 320x180 (one observation = 3 frames).
- recording: wall time to record `--episodes` expert reach episodes (joint states 30 Hz, 3 cameras 15 Hz), through
  the same `sim.record.record` as `dreamzero-sim-record`.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from sim import robot
from sim.env import FrankaSimEnv
from sim.record import FORMATS, record


def bench_physics(steps: int) -> tuple[float, float]:
    """(pybullet steps/s, env steps/s) with a chunk running."""
    with FrankaSimEnv(task="pick", seed=0, cameras=()) as env:
        env.reset(0, render=False)
        start = time.perf_counter()
        for _ in range(steps):
            env.client.stepSimulation()
        raw = steps / (time.perf_counter() - start)
        env.reset(0, render=False)
        wave = np.sin(np.linspace(0, 2 * np.pi, 24))[:, None]  # [24, 1]
        chunk = np.column_stack([robot.HOME + 0.3 * wave, 0.5 + 0.5 * wave])  # [24, 8]
        start, done = time.perf_counter(), 0
        while done < steps:
            env.send_chunk(chunk)
            env.step(24 * 16)
            done += 24 * 16
        return raw, done / (time.perf_counter() - start)


def bench_render(renders: int) -> float:
    """Three-camera observations per second at 320x180."""
    with FrankaSimEnv(task="pick", seed=0, image_hw=(180, 320)) as env:
        env.reset(0)
        start = time.perf_counter()
        for _ in range(renders):
            env.observe(render=True)
        return renders / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100, help="expert reach episodes to record")
    parser.add_argument("--format", choices=FORMATS, default="mcap")
    parser.add_argument("--steps", type=int, default=4800, help="physics steps to time")
    parser.add_argument("--renders", type=int, default=10, help="three-camera observations to time")
    args = parser.parse_args()

    raw, stepped = bench_physics(args.steps)
    observations = bench_render(args.renders)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summaries = record("reach", args.episodes, f"{tmp}/out", args.format)
        wall = time.perf_counter() - start
    sim_seconds = sum(s["control_steps"] for s in summaries) / FrankaSimEnv.CONTROL_HZ
    rows = [
        ("physics: pybullet stepSimulation", f"{raw:,.0f} steps/s", f"{raw / 240:.0f}x real time"),
        ("physics: env.step (controllers + physics)", f"{stepped:,.0f} steps/s", f"{stepped / 240:.0f}x real time"),
        ("render: 3 cameras at 320x180", f"{3 * observations:.1f} frames/s",
         f"{1e3 / observations:.0f} ms per 3-camera observation"),
        (f"record: {args.episodes} expert reach episodes ({args.format})", f"{wall:.1f} s wall",
         f"{wall / max(args.episodes, 1):.2f} s/episode, {sim_seconds / wall:.2f}x real time, "
         f"{sum(s['success'] for s in summaries)}/{len(summaries)} successful"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")


if __name__ == "__main__":
    main()
