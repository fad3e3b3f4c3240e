"""Fit the tiny Wan VAE to a dataset's frames, so that the tiny preset's latents show what the camera sees.

    python -m model_core.training.fit_vae --config config/train/tiny_reach_bundled.yaml --out runs/tiny_encoders \
        [--root OTHER_LEROBOT_DATASET] [--init EARLIER_FIT/encoders/vae.safetensors]

DreamZero's VAE is Wan's, pretrained on web video and frozen. The tiny preset has no pretrained VAE to download, and a
randomly initialised one (`WanVAE.tiny`) loses small objects: its latents barely change from one sim reach scene to
the next, and a CNN probe reads the target's position from the pixels but not from them (bench/probe_grounding.py).
This fits the same class (same config, strides and key layout) as an autoencoder on the frames a DiT training config
would encode: clips of 1 + 4 model frames (both the first-frame and the 4-frame causal path), an L1 reconstruction
loss weighted up on fine detail and on what differs from the dataset's median frame (small objects are few pixels,
and what changes between scenes is what matters: `--detail-weight`, `--foreground-weight`; plain L1 fits the floor
first and the cubes' colours last), and a penalty that keeps every normalised latent channel near zero mean and
unit spread (the statistics the DiT's flow matching assumes). `--out` gets
`encoders/{vae,text_encoder,image_encoder}.safetensors` in the layout `model.encoders: checkpoint` reads: the fitted
VAE, and the random tiny text and image encoders of the same seed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model_core.config import TINY_VIDEO_HW, preset
from model_core.errors import ModelCoreError
from model_core.image_encoder import ImageEncoder
from model_core.text_encoder import PromptEncoder
from model_core.vae import WanVAE
from model_core.training.config import TrainConfig, load_config
from model_core.training.data import DreamZeroData, SampleGeometry
from model_core.training.errors import DatasetError, TrainConfigError

log = logging.getLogger("dreamzero.fit_vae")
CLIP_FRAMES = 5  # 1 + 4: one first-frame latent and one 4-frame latent


def model_frames(cfg: TrainConfig, episodes: int, temporal_stride: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model frames (tiled views at the video rate) of the first `episodes` training episodes and of the
    validation episodes: lists of [N, H, W, 3] uint8."""
    from model_core.training.train import _load_embodiment

    dit_cfg = preset(cfg.model.preset)
    video_hw = tuple(cfg.model.video_hw or TINY_VIDEO_HW)
    geometry = SampleGeometry(cfg.dataset.num_chunks, dit_cfg.num_action_per_block,
                              dit_cfg.num_frame_per_block * temporal_stride)
    data = DreamZeroData(cfg.dataset, _load_embodiment(cfg.embodiment), geometry, video_hw, cfg.model.view_hw,
                         dit_cfg.action_dim, dit_cfg.max_state_dim)
    train_ids = sorted({ref.episode for ref in data.train_samples})[:episodes]
    val_ids = sorted({ref.episode for ref in data.val_samples})

    def frames(episode: int) -> np.ndarray:
        views = data.decode_views(episode)
        steps = range(0, data.episodes[episode].length, geometry.frame_stride)
        return np.stack([data.video({c: v[t] for c, v in views.items()}) for t in steps])

    train = [frames(e) for e in tqdm(train_ids, desc="decoding episodes", unit="episode")]
    return train, [frames(e) for e in val_ids]


def sample_clips(episodes: list[np.ndarray], batch: int, rng: np.random.Generator) -> torch.Tensor:
    """Random clips of CLIP_FRAMES consecutive model frames -> [B, 3, T, H, W] in [-1, 1] (short episodes repeat their
    last frame)."""
    clips = []
    for e in rng.integers(0, len(episodes), batch):
        frames = episodes[e]
        start = int(rng.integers(0, max(1, len(frames) - CLIP_FRAMES + 1)))
        index = np.minimum(np.arange(start, start + CLIP_FRAMES), len(frames) - 1)
        clips.append(frames[index])
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3)  # [B, T, H, W, 3] -> [B, 3, T, H, W]
    return video.float() / 127.5 - 1.0


def random_crop(video: torch.Tensor, background: torch.Tensor | None, size: tuple[int, int],
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One random window of `size` (h, w) out of every clip of a batch [B, 3, T, H, W] and out of the background
    [3, H, W] (the VAE is convolutional: windows cost less than whole frames and fit the same weights)."""
    h, w = size
    top, left = int(rng.integers(0, video.shape[-2] - h + 1)), int(rng.integers(0, video.shape[-1] - w + 1))
    window = (..., slice(top, top + h), slice(left, left + w))
    return video[window], None if background is None else background[window]


def detail(video: torch.Tensor) -> torch.Tensor:
    """|frame - its 5x5 box blur|, mean over RGB: [B, 3, T, H, W] -> [B, 1, T, H, W] (high on edges and small
    objects, ~0 on flat regions)."""
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    blur = torch.nn.functional.avg_pool2d(frames, 5, stride=1, padding=2, count_include_pad=False)
    return (frames - blur).abs().mean(1, keepdim=True).reshape(b, t, 1, h, w).transpose(1, 2)


def median_frame(episodes: list[np.ndarray], samples: int = 2000, seed: int = 0) -> torch.Tensor:
    """The per-pixel median of `samples` random frames -> [3, H, W] in [-1, 1] (the static background)."""
    rng = np.random.default_rng(seed)
    picks = [episodes[e][rng.integers(len(episodes[e]))] for e in rng.integers(0, len(episodes), samples)]
    return torch.from_numpy(np.median(np.stack(picks), axis=0)).permute(2, 0, 1).float() / 127.5 - 1.0


def autoencoder_loss(vae: WanVAE, video: torch.Tensor, stats_weight: float, detail_weight: float = 0.0,
                     foreground_weight: float = 0.0, background: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, float]:
    """Weighted L1 reconstruction through the normalised latent + the latent statistics penalty -> (loss, plain L1).
    Per-pixel weight: 1 + detail_weight x detail(video) + foreground_weight x |video - background| (RGB mean)."""
    z = vae.encode_differentiable(video)  # [B, C, F, h, w], normalised
    recon = vae.decode_differentiable(z)  # [B, 3, T, H, W]
    error = (recon - video).abs()
    weight = 1.0 + detail_weight * detail(video)
    if foreground_weight and background is not None:
        weight = weight + foreground_weight * (video - background[:, None]).abs().mean(1, keepdim=True)
    weighted = (error * weight).mean()
    channel_mean = z.mean(dim=(0, 2, 3, 4))
    channel_std = z.std(dim=(0, 2, 3, 4))
    stats = (channel_mean.pow(2) + (channel_std - 1.0).pow(2)).mean()
    return weighted + stats_weight * stats, error.mean().item()


def fit(cfg: TrainConfig, out: Path, episodes: int, steps: int, batch: int, lr: float, stats_weight: float,
        seed: int, detail_weight: float = 0.0, init: str | Path | None = None, foreground_weight: float = 0.0,
        device: str = "cpu", crop: tuple[int, int] | None = None) -> dict:
    """Fit the tiny VAE (from `init`, a tiny VAE file, or the random `WanVAE.tiny` of the config's init_seed) on
    `device` (fp32), on `crop`-sized windows of the frames if given; write the three tiny encoders under
    out/encoders; return the losses."""
    vae = WanVAE.from_pretrained(init, "wan21", tiny=True) if init else WanVAE.tiny("wan21", seed=cfg.model.init_seed)
    vae = vae.to(device)
    train, val = model_frames(cfg, episodes, vae.temporal_stride)
    if crop is not None:
        frame_hw, stride = train[0].shape[-3:-1], vae.spatial_stride
        if any(c <= 0 or c > f or c % stride for c, f in zip(crop, frame_hw)):
            raise TrainConfigError(f"--crop {crop[0]} {crop[1]}: needs positive multiples of the VAE's {stride}x "
                                   f"stride no larger than the {frame_hw[0]}x{frame_hw[1]} frames")
    if not train:
        raise DatasetError("the dataset has no training episodes")
    torch.manual_seed(seed)
    vae.model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    background = median_frame(train, seed=seed).to(device) if foreground_weight else None
    history = []
    bar = tqdm(range(steps), desc="fitting the VAE", unit="step")
    for step in bar:
        video, window_background = sample_clips(train, batch, rng).to(device), background
        if crop is not None:
            video, window_background = random_crop(video, background, crop, rng)
        loss, l1 = autoencoder_loss(vae, video, stats_weight, detail_weight, foreground_weight, window_background)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(l1)
        bar.set_postfix(l1=f"{np.mean(history[-50:]):.4f}")
    vae.model.eval().requires_grad_(False)
    result = {"steps": steps, "init": str(init) if init else None, "train_l1": float(np.mean(history[-50:]))}
    if val:
        with torch.no_grad():
            clips = sample_clips(val, 64, np.random.default_rng(0)).to(device)
            result["val_l1"] = np.mean([autoencoder_loss(vae, part, 0.0)[1] for part in clips.split(16)])
    (out / "encoders").mkdir(parents=True, exist_ok=True)
    seed_ = cfg.model.init_seed  # the text and image encoders tiny_components would build with this seed
    for name, encoder in (("vae", vae), ("text_encoder", PromptEncoder.tiny(seed=seed_)),
                          ("image_encoder", ImageEncoder.tiny(seed=seed_))):
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.original_state_dict().items()},
                  str(out / "encoders" / f"{name}.safetensors"))
    (out / "fit_vae.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-fit-vae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the DiT training YAML whose dataset and frames to fit")
    parser.add_argument("--out", required=True, help="output folder (gets encoders/*.safetensors, fit_vae.json)")
    parser.add_argument("--root", default=None, help="take the frames from this LeRobot dataset instead of the "
                        "config's (e.g. other seeds of the same sim task, recorded alongside)")
    parser.add_argument("--episodes", type=int, default=300, help="training episodes to take frames from")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--stats-weight", type=float, default=0.1)
    parser.add_argument("--detail-weight", type=float, default=10.0, help="L1 weight 1 + this x detail(frame)")
    parser.add_argument("--foreground-weight", type=float, default=0.0,
                        help="L1 weight + this x |frame - the dataset's median frame|")
    parser.add_argument("--init", default=None, help="continue from this tiny VAE file (default: random init)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device to fit on, e.g. cuda")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="fit on random H x W windows of the frames (multiples of the VAE's 8x stride)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.root:
            dataset = {"root": args.root, "episodes": None, "val_episodes": [], "val_fraction": 0.05}
            cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update=dataset)})
        result = fit(cfg, Path(args.out), args.episodes, args.steps, args.batch, args.lr,
                     args.stats_weight, args.seed, args.detail_weight, args.init, args.foreground_weight,
                     args.device, tuple(args.crop) if args.crop else None)
    except (TrainConfigError, DatasetError, ModelCoreError) as err:
        print(f"dreamzero-fit-vae: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
