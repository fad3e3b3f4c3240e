"""Does a reach policy's descent correct a miss? The scripted expert looks and approaches, the policy descends.

    python bench/reach_descent.py [--checkpoint sim/assets/tiny_reach] [--seed 10000] [--scenes 20] [--expert-miss 0.06]

The reach expert (`sim.experts.ReachExpert`) runs the look and the approach, aimed up to `--expert-miss` off the named
cube as in the demonstrations; the policy sees every frame and decides at every chunk boundary as in closed loop, but
only its third chunk (the descent) is executed. Prints per scene the horizontal distance from the named cube before
and after the descent, the grasp point's final height, and where the policy's descent chunk ends against the expert's
descent from the same state (forward kinematics of the last targets); then the medians, the slope of the distance
after against before (0: the miss is corrected, 1: it is kept) and the success count.
"""
from __future__ import annotations

import argparse

import numpy as np

from sim.env import FrankaSimEnv
from sim.experts import ReachExpert
from sim.policy import DEFAULT_CHECKPOINT, RuntimePolicy, checkpoint_embodiment
from sim.rollout import run_episode

DESCENT = 3  # the chunk the policy executes: look, approach, descend


class ExpertApproach:
    """A Policy: the expert's chunks until the descent, then the policy's; both decide at every chunk boundary."""

    def __init__(self, policy: RuntimePolicy, env: FrankaSimEnv, miss_m: float):
        self.policy, self.env, self.expert = policy, env, ReachExpert(env, miss_m)

    def reset(self, instruction: str) -> None:
        self.chunk, self.start, self.ends = 0, None, None
        self.expert.reset(instruction)
        self.policy.reset(instruction)

    def observe(self, obs) -> None:
        self.policy.observe(obs)

    def act(self, obs) -> np.ndarray:
        self.chunk += 1
        expert, own = self.expert.act(obs), self.policy.act(obs)
        if self.chunk < DESCENT:
            return expert
        if self.chunk == DESCENT:
            self.start = self.env.tcp_position().copy()
            self.ends = [self.expert.ik.tcp_position(c[-1, :7]) for c in (expert, own)]  # expert's, policy's [3]
        return own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--embodiment", default=None, help="name or YAML (default: the checkpoint's, as sim.policy)")
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--expert-miss", type=float, default=0.06, help="the approach's aim error, m (at most)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    before, after, offsets, successes = [], [], [], 0
    embodiment = args.embodiment or checkpoint_embodiment(args.checkpoint)
    with FrankaSimEnv("reach", image_hw=(90, 160)) as env:
        runner = ExpertApproach(RuntimePolicy(args.checkpoint, embodiment=embodiment), env, args.expert_miss)
        for seed in range(args.seed, args.seed + args.scenes):
            episode = run_episode(env, runner, seed, render=True)
            if runner.start is None:
                raise RuntimeError(f"seed {seed}: the episode ended before the descent")
            cube = env.task.pose(env.client, "target")[0][:2]  # the named cube now, [2]
            end = env.tcp_position()
            before.append(np.linalg.norm(runner.start[:2] - cube))
            after.append(np.linalg.norm(end[:2] - cube))
            offsets.append(runner.ends[1] - runner.ends[0])
            successes += episode.success
            print(f"seed {seed}: {before[-1] * 100:.1f} cm from the cube before the descent, {after[-1] * 100:.1f} cm "
                  f"after, grasp point {end[2] * 100:.1f} cm up; the policy's descent ends "
                  f"{np.round(offsets[-1] * 100, 1).tolist()} cm from the expert's (x, y, z)", flush=True)
    before, after, offsets = np.array(before), np.array(after), np.array(offsets) * 100
    print(f"{args.checkpoint}, seeds {args.seed}..{args.seed + args.scenes - 1}, expert approach missing by up to "
          f"{args.expert_miss * 100:.0f} cm: median horizontal distance {np.median(before) * 100:.1f} cm before the "
          f"descent, {np.median(after) * 100:.1f} cm after (slope {np.polyfit(before, after, 1)[0]:.2f}); the "
          f"policy's descent ends {np.round(offsets.mean(0), 1).tolist()} cm from the expert's on average (|.| "
          f"{np.round(np.abs(offsets).mean(0), 1).tolist()}); success {successes}/{args.scenes}")


if __name__ == "__main__":
    main()
