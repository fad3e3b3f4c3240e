"""What a reach policy scores without looking: the grasp point put 3 cm above a fixed table point in every scene.

    python bench/reach_blind_baseline.py [--seed 10000] [--episodes 50] [--point 0.47 0.0]

Prints the success count (grasp point within ReachTask.SUCCESS_RADIUS of the target cube's centre) and the median
distance over the scenes of `sim.policy`'s evaluation seeds: the floor a vision policy has to beat. The default point
is the foot of the reach expert's lookout.
"""
from __future__ import annotations

import argparse

import numpy as np

from sim.env import FrankaSimEnv
from sim.experts import ReachExpert
from sim.tasks import ReachTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--point", type=float, nargs=2, default=ReachExpert.LOOKOUT[:2].tolist(), metavar=("X", "Y"))
    args = parser.parse_args()
    with FrankaSimEnv("reach", cameras=()) as env:
        targets = []
        for seed in range(args.seed, args.seed + args.episodes):
            env.reset(seed, render=False)
            targets.append(env.task.pose(env.client, "target")[0])
    targets = np.array(targets)  # [N, 3] cube centres
    grasp = np.array([*args.point, targets[0, 2] + ReachExpert.REACH_Z])  # [3]: the cubes all rest on the table
    distances = np.linalg.norm(targets - grasp, axis=1)
    last, hits = args.seed + args.episodes - 1, int((distances < ReachTask.SUCCESS_RADIUS).sum())
    print(f"blind reach to ({args.point[0]:.3f}, {args.point[1]:.3f}), seeds {args.seed}..{last}: "
          f"{hits}/{args.episodes} within "
          f"{ReachTask.SUCCESS_RADIUS * 100:.0f} cm, median distance {np.median(distances) * 100:.1f} cm")


if __name__ == "__main__":
    main()
