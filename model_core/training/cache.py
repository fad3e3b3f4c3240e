"""Frozen encoders run once over the dataset; their outputs cached on disk (paper: VAE, umT5 and CLIP are frozen).

Layout under the cache folder (one namespace per everything that changes an encoding):

    <cache_dir>/<namespace>/manifest.json                what was encoded, with which encoders and transforms
    <cache_dir>/<namespace>/prompts.safetensors          umT5 embeddings of every prompt [P, text_len, text_dim]
    <cache_dir>/<namespace>/episode_000012.safetensors   per sample of the episode: VAE latents [n, C, F, h, w],
                                                         CLIP tokens of frame 0 [n, L, D] (image conditioning),
                                                         i2v first-frame condition y [n, 4 + C, F, h, w],
                                                         and the sample starts [n]

An episode file is reused when its starts match; otherwise it is re-encoded. Under torchrun every rank encodes its
share of the episodes (episode i goes to rank i % world) and all ranks wait for each other before training.
`CachedSamples` is the torch Dataset over the cache plus the normalised states/actions (computed in memory).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model_core.training.data import DreamZeroData, SampleRef

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass
class FrozenEncoders:
    """The frozen encoders of a DreamZero model (any objects with the model_core encoder interfaces)."""

    vae: Any  # model_core.vae.WanVAE
    text: Any  # model_core.text_encoder.PromptEncoder
    image: Any | None  # model_core.image_encoder.ImageEncoder
    device: torch.device
    dtype: torch.dtype = torch.float32

    def fingerprint(self) -> str:
        """Hash of the encoders' classes, configs and (sampled) weights: a different encoder never reuses a cache."""
        h = hashlib.sha256()
        for name, enc in (("vae", self.vae), ("text", self.text), ("image", self.image)):
            h.update(name.encode())
            if enc is None:
                continue
            h.update(type(enc).__name__.encode())
            if not isinstance(enc, torch.nn.Module):  # the prompt encoder: its own weight fingerprint (stays lazy)
                h.update(str(getattr(enc, "_fingerprint", "")).encode())
                continue
            state = enc.state_dict()
            for key, tensor in list(state.items())[:: max(1, len(state) // 16)]:
                    flat = tensor.detach().float().flatten()
                    h.update(key.encode())
                    h.update(np.asarray(flat[:: max(1, flat.numel() // 256)].cpu()).tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode_clip(self, frames: np.ndarray, concat_first_frame: bool, in_dim: int, out_dim: int) -> dict:
        """One sample's frames uint8 [T, H, W, 3] -> latents [C, F, h, w], clip [L, D] | None, y | None."""
        pixels = torch.from_numpy(frames).to(self.device).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
        latents = self.vae.encode(pixels)  # [1, C, F, h, w]
        out = {"latents": latents[0].float().cpu()}
        if self.image is not None:
            out["clip"] = self.image.encode(pixels[:, :, 0]).float()[0].cpu()  # [L, D]
        if concat_first_frame:
            out["y"] = self._first_frame_condition(pixels[:, :, :1], latents.shape[2], in_dim, out_dim)[0].cpu()
        return out

    def _first_frame_condition(self, first: torch.Tensor, num_latents: int, in_dim: int, out_dim: int):
        """i2v: 4 mask channels (1 on latent frame 0) + latents of [first frame, zero frames], as the engine builds."""
        T = 1 + (num_latents - 1) * self.vae.temporal_stride
        video = torch.cat([first, torch.zeros_like(first).expand(-1, -1, T - 1, -1, -1)], dim=2)
        latents = self.vae.encode(video).float()  # [1, C, F, h, w]
        mask = torch.zeros(1, in_dim - 2 * out_dim, num_latents, *latents.shape[3:], device=latents.device)
        mask[:, :, 0] = 1
        return torch.cat([mask, latents], dim=1)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text.encode(list(prompts)).float().cpu()  # [P, text_len, text_dim]


class EncoderCache:
    """Builds (once) and reads the on-disk cache of one dataset + encoder + transform combination."""

    def __init__(self, cache_dir: str | Path, data: DreamZeroData, encoders: FrozenEncoders, dit_cfg):
        self.data, self.encoders, self.dit_cfg = data, encoders, dit_cfg
        self.concat_first_frame = bool(dit_cfg.concat_first_frame_latent)
        self.use_image = encoders.image is not None
        self.description = self._describe()
        key = hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / key
        self.prompts = sorted({data.prompt(i) for i in data.episodes})

    def _describe(self) -> dict:
        d, info_file = self.data, Path(self.data.cfg.root) / "meta" / "info.json"
        return {
            "format": CACHE_FORMAT,
            "dataset": str(Path(d.cfg.root).resolve()),
            "info_sha": hashlib.sha256(info_file.read_bytes()).hexdigest()[:16],
            "cameras": d.camera_refs,
            "layout": [list(r) for r in d.video.layout], "crop": d.video.crop_fraction,
            "video_hw": list(d.video.out_hw), "view_hw": list(d.video.view_hw),
            "geometry": [d.geometry.num_chunks, d.geometry.action_horizon, d.geometry.frames_per_chunk],
            "encoders": self.encoders.fingerprint(), "image": self.use_image, "i2v": self.concat_first_frame,
            "prompt_template": d.embodiment.prompt.template,
        }

    def episode_file(self, episode: int) -> Path:
        return self.dir / f"episode_{episode:06d}.safetensors"

    def _fresh(self, episode: int, starts: list[int]) -> bool:
        path = self.episode_file(episode)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor("starts").tolist() == starts
        except Exception:  # a partial or foreign file: re-encode it
            return False

    def build(self, rank: int = 0, world: int = 1, progress: bool = False) -> None:
        """Encode the episodes of this rank's share that are missing or stale (then call `wait` on every rank)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        starts = self._starts()
        todo = [i for i in sorted(starts) if i % world == rank and not self._fresh(i, starts[i])]
        if rank == 0:
            (self.dir / "manifest.json").write_text(json.dumps(self.description, indent=1))
            self._write_prompts()
        if not todo:
            return
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(len(starts[i]) for i in todo), desc="encoding dataset", unit="sample")
        for episode in todo:
            views = self.data.decode_views(episode)  # checks one frame per row
            parts: dict[str, list[torch.Tensor]] = {}
            for start in starts[episode]:
                clip = self.data.tiled_clip(views, SampleRef(episode, start))
                for key, value in self.encoders.encode_clip(clip, self.concat_first_frame, self.dit_cfg.in_dim,
                                                            self.dit_cfg.out_dim).items():
                    parts.setdefault(key, []).append(value)
                if bar is not None:
                    bar.update(1)
            tensors = {k: torch.stack(v).contiguous() for k, v in parts.items()}
            tensors["starts"] = torch.tensor(starts[episode], dtype=torch.int64)
            _atomic_save(tensors, self.episode_file(episode))
        if bar is not None:
            bar.close()

    def _starts(self) -> dict[int, list[int]]:
        starts: dict[int, list[int]] = {}
        for ref in self.data.train_samples + self.data.val_samples:
            starts.setdefault(ref.episode, []).append(ref.start)
        return starts

    def _write_prompts(self) -> None:
        path = self.dir / "prompts.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    if json.loads(f.metadata().get("prompts", "[]")) == self.prompts:
                        return
            except Exception:
                pass
        embeds = self.encoders.encode_prompts(self.prompts)
        _atomic_save({"embeds": embeds.contiguous()}, path, metadata={"prompts": json.dumps(self.prompts)})

    def prompt_embeddings(self) -> torch.Tensor:
        return load_file(str(self.dir / "prompts.safetensors"))["embeds"]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class CachedSamples(torch.utils.data.Dataset):
    """Training/validation samples: cached encodings + normalised low-dim data.

    Item: {"latents" [C, F, h, w], "text" [text_len, text_dim], "clip" [L, D] (image conditioning),
    "y" (i2v), "states" [nb, S], "actions" [nb*T, A], "action_mask" [A]} as float32 tensors.
    """

    def __init__(self, cache: EncoderCache, refs: list[SampleRef]):
        self.cache, self.refs = cache, list(refs)
        data = cache.data
        self.text = cache.prompt_embeddings()
        prompt_index = {p: i for i, p in enumerate(cache.prompts)}
        self.prompt_ids = [prompt_index[data.prompt(r.episode)] for r in self.refs]
        rows: dict[int, dict[int, int]] = {}
        for ep in {r.episode for r in self.refs}:
            with safe_open(str(cache.episode_file(ep)), framework="pt") as f:
                rows[ep] = {int(s): i for i, s in enumerate(f.get_tensor("starts").tolist())}
        self.rows = [rows[r.episode][r.start] for r in self.refs]
        lowdim = [data.lowdim(r) for r in self.refs]
        self.states = torch.from_numpy(np.stack([s for s, _ in lowdim])) if lowdim else torch.zeros(0)
        self.actions = torch.from_numpy(np.stack([a for _, a in lowdim])) if lowdim else torch.zeros(0)
        self.action_mask = torch.from_numpy(data.action_mask())
        self.keys = ["latents"] + (["clip"] if cache.use_image else []) + (["y"] if cache.concat_first_frame else [])

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ref = self.refs[i]
        item = {"text": self.text[self.prompt_ids[i]], "states": self.states[i], "actions": self.actions[i],
                "action_mask": self.action_mask}
        with safe_open(str(self.cache.episode_file(ref.episode)), framework="pt") as f:
            for key in self.keys:
                item[key] = f.get_slice(key)[self.rows[i]]
        return item
