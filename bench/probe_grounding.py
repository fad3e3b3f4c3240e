"""How many reach scenes does a vision policy need? A data-scale probe for the bundled policy's decision chunk.

    python bench/probe_grounding.py [--scenes 1200] [--val 200] [--train-sizes 380,1000] [--steps 1500]
    python bench/probe_grounding.py --input latents --vae sim/assets/tiny_reach/encoders/vae.safetensors

The scripted reach expert first moves to a lookout (sim/experts.py: the same first chunk in every scene); from there
only the images and the instruction say which of three cubes to reach. This runs the expert's first `--chunk` chunks
of `--scenes` reach scenes (seeds 20000..; 90x160 per camera, as the demo), renders the views there and takes the end
pose (7 arm joints) of the expert's next chunk, then trains a small CNN (the views + the target colour as input
planes) on the first N scenes for each N and prints the validation MSE per joint on the last `--val` scenes, in units
of each joint's spread (1.0 = predicting the mean). `--input pixels` (default) asks whether the data holds enough
scenes; `--input latents` asks the same of what the DiT sees: the model frame (the embodiment's tiled views at
64x128) through a tiny Wan VAE file, standardised per latent element (a random VAE loses the cubes; a fitted one,
model_core.training.fit_vae, keeps them).
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


def decision_frames(scenes: int, chunk: int, seed: int = 20000) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """-> the views after the expert's first `chunk` chunks [{camera: [90, 160, 3]}], target colour index [N], end pose
    of the expert's next chunk [N, 7] (standardised)."""
    views, poses, colours = [], [], []
    with FrankaSimEnv("reach", image_hw=(90, 160)) as env:
        for s in range(seed, seed + scenes):
            obs = env.reset(s, render=chunk == 0)
            expert = make_expert(env)  # a fresh expert per scene, as sim.evaluate runs them
            expert.reset(obs.instruction)
            for k in range(chunk):
                env.execute_chunk(expert.act(obs), render=False)
                obs = env.observe(render=k == chunk - 1)
            poses.append(expert.act(obs)[-1, :7])
            expert.close()
            views.append({c: obs.images[c] for c in CAMERAS})
            colours.append(list(COLOURS).index(env.task.colours[0]))
    y = torch.from_numpy(np.stack(poses)).float()
    return views, torch.tensor(colours), (y - y.mean(0)) / y.std(0)


def pixel_inputs(views: list[dict]) -> torch.Tensor:
    """The three views stacked as channels at half size -> [N, 9, 45, 80], standardised per channel."""
    x = torch.from_numpy(np.stack([np.concatenate([v[c] for c in CAMERAS], axis=-1) for v in views]))
    x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(45, 80), mode="area")
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


def latent_inputs(views: list[dict], vae_path: str, embodiment: str) -> torch.Tensor:
    """The model frame through a tiny Wan VAE -> [N, 16, 8, 16], standardised per element."""
    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.transforms import VideoTransform
    from model_core.config import TINY_VIDEO_HW
    from model_core.vae import WanVAE

    tile = VideoTransform.from_embodiment(load_embodiment(embodiment), TINY_VIDEO_HW)
    vae = WanVAE.from_pretrained(vae_path, "wan21", tiny=True)
    frames = torch.from_numpy(np.stack([tile(v) for v in views])).permute(0, 3, 1, 2)[:, :, None]  # [N, 3, 1, H, W]
    x = torch.cat([vae.encode(f.float() / 127.5 - 1.0)[:, :, 0] for f in frames.split(64)])
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def with_colour(x: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Append the target colour as one-hot planes -> [N, C + len(COLOURS), H, W]."""
    planes = F.one_hot(colours, len(COLOURS)).float()[:, :, None, None].expand(-1, -1, *x.shape[2:])
    return torch.cat([x, planes], dim=1)


def probe(x: torch.Tensor, y: torch.Tensor, train: int, val: int, steps: int) -> np.ndarray:
    """Validation MSE per joint [7] of a small CNN trained on the first `train` scenes."""
    torch.manual_seed(0)
    first = (5, 2, 2) if x.shape[-1] > 32 else (3, 1, 1)  # pixels: stride 2 first; 8x16 latents: keep the size
    features = torch.nn.Sequential(
        torch.nn.Conv2d(x.shape[1], 32, *first), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten())  # pixels: 64x6x10, latents: 64x2x4
    net = torch.nn.Sequential(features, torch.nn.Linear(features(x[:1]).shape[1], 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, y.shape[1]))
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
    parser.add_argument("--chunk", type=int, default=1, help="expert chunks run before the views are taken "
                        "(1: at the lookout; 0: at rest)")
    parser.add_argument("--input", choices=("pixels", "latents"), default="pixels")
    parser.add_argument("--vae", default="sim/assets/tiny_reach/encoders/vae.safetensors", help="--input latents")
    parser.add_argument("--embodiment", default="sim/assets/tiny_reach/embodiment.yaml", help="its camera layout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    views, colours, y = decision_frames(args.scenes, args.chunk)
    x = with_colour(pixel_inputs(views) if args.input == "pixels" else
                    latent_inputs(views, args.vae, args.embodiment), colours)
    print(f"{args.scenes} scenes, input {args.input} {list(x.shape[1:])}; validation: the last {args.val}; "
          f"MSE per arm joint j1..j7 (1.0 = the mean)")
    for train in (int(n) for n in args.train_sizes.split(",")):
        if train > args.scenes - args.val:
            raise SystemExit(f"--train-sizes {train}: only {args.scenes - args.val} scenes before the validation set")
        mse = probe(x, y, train, args.val, args.steps)
        print(f"train scenes {train:5d}: " + " ".join(f"{v:.2f}" for v in mse) + f"   mean {mse.mean():.2f}")


if __name__ == "__main__":
    main()
