"""Does a reach policy follow the instruction? Each scene run once per cube as the named target, same images.

    python bench/reach_grounding.py [--checkpoint sim/assets/tiny_reach] [--seed 10000] [--scenes 20] [--chunk 2]

For every scene of `sim.policy`'s evaluation seeds, the policy runs three closed-loop episodes, naming each cube in
turn. After `--chunk` chunks (2: the look and the approach, the one decision that needs the named cube's place) it
records which cube the grasp point is nearest to. Prints, per scene, the nearest cube's colour under each instruction,
then: how often that cube is the named one (chance: 1/3), in how many scenes all three instructions end at the same
cube (the policy ignores the instruction there), how far the endpoints of one scene's three episodes lie apart, the
median distances to the nearest and to the named cube, and the success count over all episodes.
"""
from __future__ import annotations

import argparse

import numpy as np

from sim.env import FrankaSimEnv
from sim.policy import DEFAULT_CHECKPOINT, RuntimePolicy
from sim.rollout import run_episode
from sim.tasks import ReachTask


class ChunkEnds:
    """A Policy wrapper that notes the grasp point at every chunk boundary (where `act` is called)."""

    def __init__(self, policy: RuntimePolicy, env: FrankaSimEnv):
        self.policy, self.env, self.tcp = policy, env, []

    def reset(self, instruction: str) -> None:
        self.tcp = []
        self.policy.reset(instruction)

    def observe(self, obs) -> None:
        self.policy.observe(obs)

    def act(self, obs) -> np.ndarray:
        self.tcp.append(self.env.tcp_position().copy())
        return self.policy.act(obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=2, help="chunks executed before the nearest cube is read")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance against the "
                        "embodiment's negative prompt (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    named, same, spread, successes, d_nearest, d_named = [], 0, [], 0, [], []
    with FrankaSimEnv("reach", image_hw=(90, 160)) as env:
        overrides = {"cfg_scale": args.cfg_scale} if args.cfg_scale is not None else None
        tap = ChunkEnds(RuntimePolicy(args.checkpoint, engine_overrides=overrides), env)
        for seed in range(args.seed, args.seed + args.scenes):
            ends, nearest = [], []
            for target in range(ReachTask.targets):
                episode = run_episode(env, tap, seed, target=target, render=True)
                successes += episode.success
                points = tap.tcp + [env.tcp_position().copy()]
                end = points[min(args.chunk, len(points) - 1)]  # an episode that succeeds early stops there
                cubes = np.asarray(env.task.xy)  # [3, 2], the named cube first
                d = np.linalg.norm(cubes - end[:2], axis=1)  # [3] horizontal distances
                nearest.append(env.task.colours[int(np.argmin(d))])
                d_nearest.append(d.min())
                d_named.append(d[0])
                named.append(nearest[-1] == env.task.colours[0])
                ends.append(end[:2])
            same += len(set(nearest)) == 1
            spread.append(np.linalg.norm(np.array(ends) - np.mean(ends, axis=0), axis=1).mean())
            print(f"seed {seed}: nearest cube after chunk {args.chunk} when naming each cube in turn: {nearest}",
                  flush=True)
    n = len(named)
    print(f"{args.checkpoint}, seeds {args.seed}..{args.seed + args.scenes - 1} x {ReachTask.targets} targets: "
          f"nearest cube is the named one in {sum(named)}/{n} ({sum(named) / n:.0%}; chance 33%); "
          f"all instructions end at the same cube in {same}/{args.scenes} scenes; "
          f"endpoints of a scene's episodes lie {np.mean(spread) * 100:.1f} cm from their mean; median horizontal "
          f"distance to the nearest cube {np.median(d_nearest) * 100:.1f} cm, to the named one "
          f"{np.median(d_named) * 100:.1f} cm; "
          f"success {successes}/{n}")


if __name__ == "__main__":
    main()
