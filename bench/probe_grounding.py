"""How many reach scenes does a vision policy need? A data-scale probe for the bundled policy's first chunk.

    python bench/probe_grounding.py [--scenes 1200] [--val 200] [--train-sizes 380,1000] [--steps 1500]

From rest, only the images and the instruction say which of three cubes to reach. This renders the first frame of
`--scenes` reach scenes (seeds 20000.., never in a training set; 90x160 per camera, as the demo) with the scripted
expert's first-chunk end pose (7 arm joints), then trains a small CNN (the three views + the target colour as input
planes) on the first N scenes for each N and prints the validation MSE per joint on the last `--val` scenes, in units
of each joint's spread (1.0 = predicting the mean). No model_core involved: it asks whether the data holds enough
scenes, not whether the DiT can use them.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from sim.env import FrankaSimEnv
from sim.experts import make_expert
from sim.tasks import COLOURS

CAMERAS = ("wrist", "exterior_1", "exterior_2")


def first_frames(scenes: int, seed: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs [N, 9 + 4, 45, 80] (standardised views + colour planes), targets [N, 7] (standardised)."""
    views, poses, colours = [], [], []
    with FrankaSimEnv("reach", image_hw=(90, 160)) as env:
        for s in range(seed, seed + scenes):
            obs = env.reset(s)
            expert = make_expert(env)  # a fresh expert per scene, as sim.evaluate runs them
            expert.reset(obs.instruction)
            poses.append(expert.act(obs)[-1, :7])
            expert.close()
            views.append(np.concatenate([obs.images[c] for c in CAMERAS], axis=-1))  # [90, 160, 9]
            colours.append(list(COLOURS).index(env.task.colours[0]))
    x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(45, 80), mode="area")
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    planes = F.one_hot(torch.tensor(colours), len(COLOURS)).float()[:, :, None, None].expand(-1, -1, 45, 80)
    y = torch.from_numpy(np.stack(poses)).float()
    return torch.cat([x, planes], dim=1), (y - y.mean(0)) / y.std(0)


def probe(x: torch.Tensor, y: torch.Tensor, train: int, val: int, steps: int) -> np.ndarray:
    """Validation MSE per joint [7] of a small CNN trained on the first `train` scenes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(x.shape[1], 32, 5, 2, 2), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(64 * 6 * 10, 128), torch.nn.ReLU(), torch.nn.Linear(128, y.shape[1]))
    optimizer = torch.optim.Adam(net.parameters(), 3e-4)
    best = np.full(y.shape[1], np.inf)
    for step in range(steps):
        batch = torch.randint(0, train, (64,))
        loss = (net(x[batch]) - y[batch]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 300 == 299:
            with torch.no_grad():
                mse = (net(x[-val:]) - y[-val:]).pow(2).mean(0).numpy()
            best = np.minimum(best, mse)  # early stopping, per joint
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=1200)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--train-sizes", default="380,1000")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = first_frames(args.scenes)
    print(f"{args.scenes} scenes; validation: the last {args.val}; MSE per arm joint j1..j7 (1.0 = the mean)")
    for train in (int(n) for n in args.train_sizes.split(",")):
        if train > args.scenes - args.val:
            raise SystemExit(f"--train-sizes {train}: only {args.scenes - args.val} scenes before the validation set")
        mse = probe(x, y, train, args.val, args.steps)
        print(f"train scenes {train:5d}: " + " ".join(f"{v:.2f}" for v in mse) + f"   mean {mse.mean():.2f}")


if __name__ == "__main__":
    main()
