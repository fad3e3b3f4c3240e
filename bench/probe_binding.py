"""Can the tiny DiT learn which cube the instruction names? The reach decision alone, in minutes on a CPU.

    python bench/probe_binding.py [--scenes 1200] [--val 150] [--train-scenes N] [--steps 1500]
                                  [--text prompt|onehot|shuffled] [--look static|moving|approach]
                                  [--blocks N] [--flash-beta 7 1] [--action-weight 1] [--threads 2]

The bundled reach policy decides its approach at the expert's lookout (sim/experts.py: the same pose in every
scene), from the wrist view and the instruction; `bench/reach_grounding.py` shows it ignores the instruction. This
isolates that decision. For `--scenes` reach scenes (seeds 20000..; the wrist camera at the demo's 90x160, tiled to
the model frame by the bundle's embodiment, through the bundle's VAE) each cube is named in turn, and the DiT of
`--preset` is trained from scratch with the Flash objective (model_core.training.objective) on samples whose last
block holds 24 actions that all hold the named cube's (x, y) on the table, scaled to [-1, 1]:

    --look static   one block: the lookout frame held still (latent frame 0 and the block's video); with
                    `--blocks 2`, two blocks of it, the decision's actions in the second (block 1's actions: 0)
    --look moving   two blocks, as the runtime decides: the home frame, the look chunk as the camera records it
                    (block 1, actions 0), then the lookout held (block 2's video) with the decision's actions
    --look approach the stage-1 sample of the bundle's recipe: as `moving`, but block 2's video is the approach
                    chunk to the named cube as the camera records it (the expert, aiming on target); in training
                    the block's own noised video shows where the arm goes, in closed loop it starts as pure noise;
                    with `--blocks 1`, one block from the lookout (a session that resets before every chunk,
                    `max_chunk_size: 1`): latent frame 0 the lookout, the block's video the approach chunk

Validation on the last `--val` scenes samples the actions in one Flash step and prints the (x, y) MSE (1.0 =
predicting the mean), how often the prediction lies nearest the named cube (chance: 1/3) and the median distance to
it in cm, also for up to `--val` training scenes.

`--text` chooses what says which cube: `prompt`, the shipped tiny umT5 on the embodiment's prompt (what the policy
sees); `onehot`, the colour as a one-hot in the first context vector (an oracle text encoder); `shuffled`, the prompt
of a random cube of the scene (the text carries nothing: the no-binding baseline). `--flash-beta` sets the Flash
video noise distribution Beta(a, b) (the release's: 7, 1; larger `a` hides more of each block's own video);
`--action-weight` the objective's `action_loss_weight` (the action loss averages the blocks, so with two blocks the
decision carries half of it).
"""
from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from sim.env import FrankaSimEnv
from sim.experts import make_expert
from sim.tasks import COLOURS

BUNDLE = Path("sim/assets/tiny_reach")


def lookout_scenes(seeds: range, look: str) -> dict[str, np.ndarray]:
    """The wrist views [N, V, 90, 160, 3] uint8 (`static`: V = 1, at the lookout; `moving`: V = 9, at home then every
    third control step of the look chunk, the model's 5 fps; `approach`: V = 17, the look then the approach chunk,
    one clip per named cube: [3 N, V, ...], scene-major), the cube colours [N, 3] (COLOURS indices) and their centres
    on the table [N, 3, 2] (m), in the order of the seed's own scene."""
    views, colours, xy = [], [], []
    with FrankaSimEnv("reach", image_hw=(90, 160), cameras=("wrist",)) as env:
        for seed in seeds:
            for named in range(3 if look == "approach" else 1):
                obs = env.reset(seed, render=look != "static", target=named)  # the named cube first in env.task
                expert = make_expert(env)
                expert.reset(obs.instruction)
                clip = env.execute_chunk(expert.act(obs), observe_every=3, render=look != "static")  # the look
                if look == "approach":
                    clip += env.execute_chunk(expert.act(clip[-1]), observe_every=3, render=True)
                expert.close()
                frames = [obs, *clip] if look != "static" else [env.observe(render=True)]
                views.append(np.stack([f.images["wrist"] for f in frames]))
                if named == 0:
                    colours.append([list(COLOURS).index(c) for c in env.task.colours])
                    xy.append(np.asarray(env.task.xy, dtype=np.float32))
                assert np.allclose(env.task.xy[0], xy[-1][named]), "the named cube is not the scene's cube `named`"
    return {"views": np.stack(views), "colours": np.array(colours), "xy": np.stack(xy)}


def scenes(n: int, look: str, workers: int, cache: Path) -> dict[str, np.ndarray]:
    """`lookout_scenes` for seeds 20000..20000+n, rendered by `workers` processes, cached in `cache`."""
    path = cache / f"{look}_{n}.npz"
    if path.is_file():
        return dict(np.load(path))
    bounds = np.linspace(20000, 20000 + n, workers + 1).astype(int)
    with Pool(workers) as pool:
        parts = pool.starmap(lookout_scenes, [(range(a, b), look) for a, b in zip(bounds[:-1], bounds[1:])])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def clips(views: np.ndarray, blocks: int, fpb: int) -> np.ndarray:
    """The pixel video of a sample [N, 1 + 4 fpb blocks, H, W, 3]: the views, then the last one held to the end."""
    frames = 1 + 4 * fpb * blocks
    held = np.repeat(views[:, -1:], frames - views.shape[1], axis=1)
    return np.concatenate([views, held], axis=1)


@torch.no_grad()
def encode_clips(video: np.ndarray) -> torch.Tensor:
    """[N, T, 90, 160, 3] uint8, tiled to the model frame by the embodiment, through the shipped VAE ->
    [N, C, F, h, w]."""
    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.transforms import VideoTransform
    from model_core.config import TINY_VIDEO_HW
    from model_core.vae import WanVAE

    tile = VideoTransform.from_embodiment(load_embodiment(BUNDLE / "embodiment.yaml"), TINY_VIDEO_HW)
    vae = WanVAE.from_pretrained(BUNDLE / "encoders/vae.safetensors", "wan21", tiny=True)
    out = []
    for group in np.array_split(video, max(1, len(video) // 16)):
        model = torch.from_numpy(np.stack([[tile({"wrist": v}) for v in clip] for clip in group]))  # [n, T, H, W, 3]
        out.append(vae.encode(model.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0).float())
    return torch.cat(out)


@torch.no_grad()
def context(colour_of_sample: np.ndarray, mode: str, text_dim: int, text_len: int) -> torch.Tensor:
    """Per sample [S, text_len, text_dim]: the shipped umT5 on the embodiment's prompt, or a one-hot colour."""
    if mode == "onehot":
        out = torch.zeros(len(colour_of_sample), text_len, text_dim)
        out[torch.arange(len(colour_of_sample)), 0, torch.from_numpy(colour_of_sample)] = 1.0
        return out
    from dreamzero_policy.embodiment import load_embodiment
    from model_core.text_encoder import PromptEncoder

    prompt = load_embodiment(BUNDLE / "embodiment.yaml").prompt
    encoder = PromptEncoder.from_pretrained(BUNDLE / "encoders/text_encoder.safetensors", None, tiny=True, lazy=True)
    table = encoder.encode([prompt.format(f"reach the {c} cube") for c in COLOURS]).float()  # [len(COLOURS), L, D]
    return table[torch.from_numpy(colour_of_sample)]


def samples(data: dict[str, np.ndarray], latents: torch.Tensor, mode: str, blocks: int, cfg,
            rng: np.random.Generator) -> dict:
    """Three samples per scene (each cube named): latents (one per scene, or one per sample), text, and the last
    block's actions holding the named (x, y) in [-1, 1] (earlier blocks' actions: 0)."""
    n = len(data["xy"])
    scene = np.repeat(np.arange(n), 3)
    named = np.tile(np.arange(3), n)
    colour = data["colours"][scene, named]
    if mode == "shuffled":
        colour = data["colours"][scene, rng.integers(0, 3, len(scene))]
    xy = data["xy"][scene, named]  # [S, 2]
    lo, hi = data["xy"].reshape(-1, 2).min(0), data["xy"].reshape(-1, 2).max(0)
    target = torch.from_numpy(2 * (xy - lo) / (hi - lo) - 1).float()
    T = cfg.num_action_per_block
    actions = torch.zeros(len(scene), blocks * T, cfg.action_dim)
    actions[:, -T:, :2] = target[:, None]
    mask = torch.zeros(len(scene), cfg.action_dim, dtype=torch.bool)
    mask[:, :2] = True
    return {"latents": latents if len(latents) == 3 * n else latents[scene],
            "text": context(colour, mode, cfg.text_dim, cfg.text_len),
            "actions": actions, "action_mask": mask, "states": torch.zeros(len(scene), blocks, cfg.max_state_dim),
            "scene": torch.from_numpy(scene), "scale": torch.from_numpy((hi - lo) / 2)}


def evaluate(dit, batch: dict, xy: np.ndarray, val_scenes: np.ndarray, objective_cfg) -> dict[str, float]:
    """1-step Flash sampling on the validation samples -> MSE (of the spread), nearest-is-named rate, median cm."""
    from model_core.schedulers import SIGMA_MAX
    from model_core.training.objective import rollout_actions

    dit.eval()
    keys = ("latents", "text", "actions", "action_mask", "states")
    pred = rollout_actions(dit, {k: batch[k] for k in keys}, 1, objective_cfg.shift, seed=1,
                           flash=(SIGMA_MAX, SIGMA_MAX))[:, -dit.cfg.num_action_per_block:, :2].mean(1)
    dit.train()
    gt = batch["actions"][:, -1, :2]
    mse = ((pred - gt).pow(2).mean(0) / gt.var(0)).mean().item()
    lo = xy.reshape(-1, 2).min(0)
    pred_m = (pred.numpy() + 1) * batch["scale"].numpy() + lo  # back to metres
    cubes = xy[val_scenes]  # [S, 3, 2]
    dist = np.linalg.norm(cubes - pred_m[:, None], axis=-1)  # [S, 3]
    named = np.tile(np.arange(3), len(val_scenes) // 3)
    return {"mse": mse, "named": float((dist.argmin(1) == named).mean()),
            "cm": float(np.median(dist[np.arange(len(named)), named]) * 100)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=1200)
    parser.add_argument("--val", type=int, default=150, help="the last scenes, held out")
    parser.add_argument("--train-scenes", type=int, default=None, help="train on the first N scenes only "
                        "(default: all before the held-out ones)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--text", choices=("prompt", "onehot", "shuffled"), default="prompt")
    parser.add_argument("--look", choices=("static", "moving", "approach"), default="static", help="static: one "
                        "block, the lookout frame held still; moving: two blocks, the look chunk as recorded, then "
                        "the decision; approach: as moving, with the approach chunk as block 2's video")
    parser.add_argument("--blocks", type=int, default=None, help="static: how many blocks of the held lookout "
                        "(default 1); approach: 2 (default) or 1, from the lookout; moving: 2")
    parser.add_argument("--flash-beta", type=float, nargs=2, default=(7.0, 1.0), metavar=("A", "B"))
    parser.add_argument("--action-weight", type=float, default=1.0, help="the objective's action_loss_weight")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the scenes")
    parser.add_argument("--cache", type=Path, default=Path("runs/probe_binding"))
    args = parser.parse_args()
    blocks = args.blocks or (1 if args.look == "static" else 2)
    if blocks < 1 or (args.look == "moving" and blocks != 2) or (args.look == "approach" and blocks > 2):
        parser.error(f"--blocks {blocks} with --look {args.look}: static takes N >= 1, approach 1 or 2, moving 2")
    from model_core.config import preset
    from model_core.dit import CausalWanModel
    from model_core.training.config import ObjectiveConfig
    from model_core.training.objective import FlowMatchingObjective

    t0 = time.time()
    data = scenes(args.scenes, args.look, args.workers, args.cache)
    cfg = preset(args.preset)
    layout = args.look + (str(blocks) if blocks != (1 if args.look == "static" else 2) else "")
    latent_path = args.cache / f"latents_{layout}_{args.scenes}.pt"
    if latent_path.is_file():
        latents = torch.load(latent_path)
    else:
        views = data["views"]
        if args.look == "approach" and blocks == 1:
            views = views[:, 4 * cfg.num_frame_per_block:]  # from the look chunk's last frame, the lookout
        latents = encode_clips(clips(views, blocks, cfg.num_frame_per_block))
        torch.save(latents, latent_path)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    all_samples = samples(data, latents, args.text, blocks, cfg, np.random.default_rng(0))
    first_val = 3 * (args.scenes - args.val)
    train_n = 3 * min(args.train_scenes or args.scenes, args.scenes - args.val)
    train = {k: v[:train_n] for k, v in all_samples.items() if k != "scale"}
    val = {k: v[first_val:] for k, v in all_samples.items() if k != "scale"} | {"scale": all_samples["scale"]}
    val_scenes = val["scene"].numpy()
    print(f"{train_n // 3} training scenes, {args.val} held out, latents {list(latents.shape[1:])}, text {args.text}, "
          f"look {args.look}, {blocks} block(s), Flash Beta{tuple(args.flash_beta)}, action weight "
          f"{args.action_weight}, preset {args.preset}; "
          f"data ready in {time.time() - t0:.0f} s", flush=True)

    objective_cfg = ObjectiveConfig(mode="full", flash=True, flash_beta=tuple(args.flash_beta),
                                    action_loss_weight=args.action_weight)
    objective = FlowMatchingObjective(objective_cfg, cfg)
    dit = CausalWanModel(cfg)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-5)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    rng = np.random.default_rng(0)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.integers(0, train_n, args.batch))
        batch = {k: v[idx] for k, v in train.items() if k != "scene"}
        parts = objective.loss(dit, batch, objective.draw(batch, seed=step))
        optimizer.zero_grad()
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                tr_idx = torch.arange(0, min(train_n, 3 * args.val))
                tr = evaluate(dit, {k: v[tr_idx] for k, v in train.items()} | {"scale": all_samples["scale"]},
                              data["xy"], train["scene"][tr_idx].numpy(), objective_cfg)
                va = evaluate(dit, val, data["xy"], val_scenes, objective_cfg)
            print(f"step {step:5d} ({time.time() - t0:5.0f} s) loss video {parts.video.item():.3f} action "
                  f"{parts.action.item():.3f} | train MSE {tr['mse']:.2f} named {tr['named']:.2f} "
                  f"{tr['cm']:.1f} cm | held-out MSE {va['mse']:.2f} named {va['named']:.2f} {va['cm']:.1f} cm",
                  flush=True)


if __name__ == "__main__":
    main()
