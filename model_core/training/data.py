"""DreamZero training samples from a LeRobot dataset, built with the runtime's own transforms.

A sample starting at control step s (MODEL_SPEC.md sections 8-9; release: 4 chunks of 24 actions at 15 Hz):

    frames   1 + nb * 8 frames at the model's video rate, steps s, s + 3, ..., s + 24 nb (5 fps for DROID), each the
             embodiment's camera views center-cropped, resized and tiled by `VideoTransform` -> [T, H, W, 3] uint8
             (the VAE makes 1 + 2 nb latent frames of them: frame 0, then one 2-frame block per chunk)
    chunks   nb chunks of `action_horizon` actions; chunk k covers steps s + 24k .. s + 24k + 23 and is anchored at
             the state of step s + 24k, the newest observation before it (what the runtime anchors a chunk at)
    states   the anchor states, q01/q99-normalised and zero-padded to the DiT's max_state_dim  -> [nb, S]
    actions  per chunk: relative dims (embodiment `relative: true`) minus the anchor, gripper absolute in [0, 1],
             q01/q99-normalised and clipped, zero-padded to the DiT's action_dim          -> [nb * 24, A]

Normalisation is `dreamzero_policy.transforms.Normalizer.from_statistics` on the statistics this module computes and
writes into the checkpoint's experiment_cfg/metadata.json (`{metadata_key: {"statistics": {"state" | "action":
{key: {min, max, mean, std, q01, q99}}}, ...}}`), so the runtime's `decode_chunk` inverts exactly what training did.
Action statistics are over the relative actions the samples actually contain (every chunk of every training sample).

The dataset is checked completely before anything is encoded or trained: every needed feature present with the
embodiment's sizes, the dataset rate equal to the embodiment's control rate, finite values, parquet rows equal to
the episode length, one video frame per row (checked when the videos are decoded for the encoder cache, also before
training). Each problem is one DatasetError naming the episode and the field.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamzero_policy.embodiment import Embodiment, Segment
from dreamzero_policy.errors import DreamZeroError
from dreamzero_policy.transforms import (Normalizer, VideoTransform, assemble, gripper_to_model, relative_mask,
                                         split, to_relative)
from model_core.training.config import DatasetConfig
from model_core.training.errors import DatasetError
from model_core.training.lerobot import FeatureRef, LeRobotDataset, open_dataset

log = logging.getLogger(__name__)
STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")


@dataclass(frozen=True)
class SampleGeometry:
    """How many steps, frames and chunks one sample spans."""

    num_chunks: int  # nb
    action_horizon: int  # actions per chunk (the DiT's num_action_per_block)
    frames_per_chunk: int  # pixel frames per chunk = latent frames per block x VAE temporal stride (8)

    def __post_init__(self) -> None:
        if self.action_horizon % self.frames_per_chunk:
            raise DatasetError(f"action_horizon {self.action_horizon} is not a multiple of the {self.frames_per_chunk} "
                               f"video frames per chunk: frames cannot sit on control steps")

    @property
    def frame_stride(self) -> int:
        """Control steps between video frames (3 for DROID: 15 Hz control, 5 fps video)."""
        return self.action_horizon // self.frames_per_chunk

    @property
    def num_frames(self) -> int:
        return 1 + self.num_chunks * self.frames_per_chunk

    @property
    def span(self) -> int:
        """Control steps from the first to the last frame (the actions end one step before the last frame)."""
        return self.num_chunks * self.action_horizon

    def starts(self, length: int, stride: int, pad_end: bool) -> list[int]:
        """Sample starts in an episode of `length` steps. Without pad_end every frame of a sample is real (the last
        one at start + span); with pad_end, the first chunk's actions are real (start + action_horizon <= length):
        the episode's last whole chunk is a sample too, its closing frame the last real one repeated."""
        last = length - self.action_horizon if pad_end else length - 1 - self.span
        return list(range(0, last + 1, stride)) if last >= 0 else []

    def frame_steps(self, start: int, length: int) -> np.ndarray:  # [T]
        return np.minimum(start + self.frame_stride * np.arange(self.num_frames), length - 1)

    def anchor_steps(self, start: int, length: int) -> np.ndarray:  # [nb]
        return np.minimum(start + self.action_horizon * np.arange(self.num_chunks), length - 1)

    def action_steps(self, start: int, length: int) -> np.ndarray:  # [nb, T]
        steps = start + self.action_horizon * np.arange(self.num_chunks)[:, None] + np.arange(self.action_horizon)
        return np.minimum(steps, length - 1)


@dataclass
class Episode:
    """One episode's low-dimensional data in model units (gripper in [0, 1])."""

    index: int
    length: int
    instruction: str
    state: np.ndarray  # [N, S_emb] state layout
    arm: np.ndarray  # [N, J] arm joints of the state
    gripper: np.ndarray  # [N, G] gripper of the state, [0, 1]
    action: np.ndarray  # [N, A_emb] action layout, absolute, gripper in [0, 1]


@dataclass(frozen=True)
class SampleRef:
    episode: int
    start: int


class DreamZeroData:
    """A LeRobot dataset seen through an embodiment: validated episodes, samples, statistics, transforms."""

    def __init__(self, cfg: DatasetConfig, embodiment: Embodiment, geometry: SampleGeometry,
                 video_hw: tuple[int, int], view_hw: tuple[int, int] | None = None, action_dim: int = 32,
                 max_state_dim: int = 64):
        try:
            self._build(cfg, embodiment, geometry, video_hw, view_hw, action_dim, max_state_dim)
        except DatasetError as err:
            raise err.in_dataset(cfg.root) from None

    def _build(self, cfg, embodiment, geometry, video_hw, view_hw, action_dim, max_state_dim) -> None:
        self.cfg, self.embodiment, self.geometry = cfg, embodiment, geometry
        self.reader: LeRobotDataset = open_dataset(cfg.root)
        self.action_dim, self.max_state_dim = action_dim, max_state_dim
        self.state_refs = self._refs(embodiment.state, cfg.state_features, "observation.state.{}", "state")
        self.action_refs = self._refs(embodiment.action, cfg.action_features, "action.{}", "action")
        self.camera_refs = {c.name: cfg.camera_features.get(c.name, f"observation.images.{c.name}")
                            for c in embodiment.cameras}
        unknown = sorted(set(cfg.camera_features) - set(self.camera_refs))
        if unknown:
            raise DatasetError(f"camera_features names camera(s) {unknown} the embodiment {embodiment.name!r} does "
                               f"not have (it has {sorted(self.camera_refs)})", field="dataset.camera_features")
        self._check_schema()
        self.video = VideoTransform.from_embodiment(embodiment, tuple(video_hw), tuple(view_hw) if view_hw else None)
        self.episodes = {i: self._load_episode(i) for i in self._selected_episodes()}
        self.train_ids, self.val_ids = self._split()
        self.train_samples = self._samples(self.train_ids)
        self.val_samples = self._samples(self.val_ids)
        if not self.train_samples:
            need = geometry.action_horizon if cfg.pad_episode_end else geometry.span + 1
            raise DatasetError(f"{cfg.root}: no training sample fits: every training episode is shorter than the "
                               f"{need} steps a sample of {geometry.num_chunks} chunk(s) needs (lengths "
                               f"{sorted(self.episodes[i].length for i in self.train_ids)}); lower num_chunks or "
                               f"set pad_episode_end", field="dataset.num_chunks")
        self.statistics = self._statistics()
        try:
            self.normalizer = Normalizer.from_statistics(self.statistics, embodiment, action_dim, max_state_dim)
        except DreamZeroError as err:
            raise DatasetError(f"statistics do not fit the model: {err}") from err
        self.relative = relative_mask(embodiment.action)

    # -- schema -------------------------------------------------------------------------------------------------

    @staticmethod
    def _refs(segments: tuple[Segment, ...], mapping: dict[str, str], default: str, part: str) -> list[FeatureRef]:
        keys = [s.key for s in segments]
        unknown = sorted(set(mapping) - set(keys))
        if unknown:
            raise DatasetError(f"{part}_features names key(s) {unknown} that are not in the embodiment's {part} "
                               f"layout {keys}", field=f"dataset.{part}_features")
        return [FeatureRef.parse(mapping.get(s.key, default.format(s.key))) for s in segments]

    def _check_schema(self) -> None:
        reader, emb = self.reader, self.embodiment
        if abs(reader.fps - emb.control_rate_hz) > 1e-6:
            raise DatasetError(f"{reader.root}: the dataset runs at {reader.fps:g} fps, the embodiment "
                               f"{emb.name!r} at control_rate_hz {emb.control_rate_hz:g}: one row must be one "
                               f"control step", field="fps")
        for part, segments, refs in (("state", emb.state, self.state_refs), ("action", emb.action, self.action_refs)):
            for seg, ref in zip(segments, refs):
                feature = reader.feature(ref, f"{part} key {seg.key!r}")
                if feature.is_visual or feature.dtype in ("string",):
                    raise DatasetError(f"feature {ref.name!r} ({feature.dtype}) is not numeric; the {part} key "
                                       f"{seg.key!r} needs {seg.size} numbers", field=ref.name)
                width = ref.width(feature.size)
                if width != seg.size:
                    raise DatasetError(f"{ref} has {width} value(s) per frame, the embodiment {emb.name!r} {part} "
                                       f"key {seg.key!r} has {seg.size} ({seg.source} joints); map a feature of the "
                                       f"right size with dataset.{part}_features", field=str(ref))
        for camera, key in self.camera_refs.items():
            feature = reader.feature(FeatureRef(key), "camera")
            if not feature.is_visual:
                raise DatasetError(f"feature {key!r} for camera {camera!r} is {feature.dtype}, not a video",
                                   field=key)
        if self.cfg.instruction != "task":
            reader.feature(FeatureRef(self.cfg.instruction), "instruction")

    def _selected_episodes(self) -> list[int]:
        available = sorted(self.reader.episodes)
        if not available:
            raise DatasetError(f"{self.reader.root}: the dataset has no episodes")
        wanted = self.cfg.episodes if self.cfg.episodes is not None else available
        for group, ids in (("episodes", wanted), ("val_episodes", self.cfg.val_episodes)):
            missing = sorted(set(ids) - set(available))
            if missing:
                raise DatasetError(f"{group} {missing} are not in the dataset (it has {len(available)} episodes, "
                                   f"indices {available[0]}..{available[-1]})", field=f"dataset.{group}")
        return sorted(set(wanted) | set(self.cfg.val_episodes))

    def _load_episode(self, index: int) -> Episode:
        reader, emb = self.reader, self.embodiment
        record = reader.episodes[index]
        table = reader.read_table(index)
        if len(table) != record.length:
            raise DatasetError(f"the data file has {len(table)} rows, the episodes table says length "
                               f"{record.length}", index, "length")
        if len(table) == 0:
            raise DatasetError("the episode has no rows", index, "length")
        state = np.concatenate([reader.column(table, r, index) for r in self.state_refs], axis=1)
        action = np.concatenate([reader.column(table, r, index) for r in self.action_refs], axis=1)
        arm, gripper = split(emb.state, state)
        if self.cfg.gripper_units == "joint":
            gripper = gripper_to_model(gripper, emb)
            state = assemble(emb.state, arm, gripper)
            a_arm, a_gripper = split(emb.action, action)
            action = assemble(emb.action, a_arm, gripper_to_model(a_gripper, emb))
        if self.cfg.instruction == "task":
            texts = reader.frame_tasks(table, index)
        else:
            texts = reader.strings(table, self.cfg.instruction, index)
        instruction = texts[0].strip()
        if not instruction:
            raise DatasetError("the instruction is empty", index, self.cfg.instruction)
        return Episode(index, len(table), instruction, state, arm, gripper, action)

    def _split(self) -> tuple[list[int], list[int]]:
        ids = sorted(self.episodes)
        if self.cfg.val_episodes:
            val = sorted(set(self.cfg.val_episodes))
        elif self.cfg.val_fraction > 0:
            n = max(1, round(len(ids) * self.cfg.val_fraction))
            val = ids[-n:] if n < len(ids) else []
        else:
            val = []
        train = [i for i in ids if i not in val]
        if not train:
            raise DatasetError("every episode is held out for validation; keep at least one for training",
                               field="dataset.val_episodes")
        return train, val

    def _samples(self, ids: list[int]) -> list[SampleRef]:
        out = []
        for i in ids:
            starts = self.geometry.starts(self.episodes[i].length, self.cfg.sample_stride, self.cfg.pad_episode_end)
            if not starts:
                log.warning("episode %d (%d steps) is too short for one sample; skipped", i, self.episodes[i].length)
            out += [SampleRef(i, s) for s in starts]
        return out

    # -- statistics ---------------------------------------------------------------------------------------------

    def _relative_actions(self, ep: Episode, start: int) -> np.ndarray:
        """[nb, T, A_emb] actions of one sample, relative dims minus each chunk's anchor (model units)."""
        g = self.geometry
        anchors = self.anchor_vectors(ep, g.anchor_steps(start, ep.length))  # [nb, A_emb]
        actions = ep.action[g.action_steps(start, ep.length)]  # [nb, T, A_emb]
        return to_relative(actions, anchors[:, None, :], relative_mask(self.embodiment.action))

    def anchor_vectors(self, ep: Episode, steps: np.ndarray) -> np.ndarray:
        """The state at `steps` in the action layout ([..., A_emb]): what relative actions are measured from."""
        return assemble(self.embodiment.action, ep.arm[steps], ep.gripper[steps])

    def _statistics(self) -> dict:
        emb = self.embodiment
        states = np.concatenate([self.episodes[i].state for i in self.train_ids])  # every training frame
        seen = {}
        for ref in self.train_samples:  # every chunk a training sample holds, each (anchor, step) pair once
            ep = self.episodes[ref.episode]
            anchors = self.geometry.anchor_steps(ref.start, ep.length)
            for anchor, rel in zip(anchors, self._relative_actions(ep, ref.start)):
                seen.setdefault((ref.episode, int(anchor)), rel)
        actions = np.concatenate(list(seen.values()))  # [M * T, A_emb]
        return {"state": _segment_stats(emb.state, states), "action": _segment_stats(emb.action, actions)}

    # -- per sample ----------------------------------------------------------------------------------------------

    def lowdim(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
        """-> normalised states [nb, max_state_dim] and actions [nb * T, action_dim], float32."""
        ep, g = self.episodes[ref.episode], self.geometry
        states = self.normalizer.state.normalize(ep.state[g.anchor_steps(ref.start, ep.length)])
        actions = self.normalizer.action.normalize(self._relative_actions(ep, ref.start))  # [nb, T, A]
        return states.astype(np.float32), actions.reshape(-1, self.action_dim).astype(np.float32)

    def action_mask(self) -> np.ndarray:
        """[action_dim] 1 on the embodiment's action dims, 0 on the padding."""
        mask = np.zeros(self.action_dim, np.float32)
        mask[:self.normalizer.action.size] = 1.0
        return mask

    def decode_views(self, episode: int) -> dict[str, np.ndarray]:
        """Every camera's frames of an episode, {camera: [N, h, w, 3]}; one frame per parquet row is required."""
        ep = self.episodes[episode]
        views = {}
        for camera, key in self.camera_refs.items():
            try:
                frames = self.reader.read_video(episode, key)
            except DatasetError as err:
                raise err.in_dataset(self.cfg.root) from None
            if len(frames) != ep.length:
                raise DatasetError(f"the video has {len(frames)} frames, the parquet data {ep.length} rows",
                                   episode, key, dataset=self.cfg.root)
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(f"frames of shape {list(frames.shape[1:])}, expected [H, W, 3] RGB", episode, key,
                                   dataset=self.cfg.root)
            views[camera] = frames
        return views

    def tiled_clip(self, views: dict[str, np.ndarray], ref: SampleRef) -> np.ndarray:
        """The sample's model frames [T, H, W, 3] uint8 (the runtime's VideoTransform on each frame set)."""
        steps = self.geometry.frame_steps(ref.start, self.episodes[ref.episode].length)
        return np.stack([self.video({c: v[t] for c, v in views.items()}) for t in steps])

    def prompt(self, episode: int) -> str:
        """The text the model is conditioned on: the embodiment's template around the episode's instruction."""
        return self.embodiment.prompt.format(self.episodes[episode].instruction)

    # -- checkpoint metadata ------------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """experiment_cfg/metadata.json content for this embodiment (read by statistics_from_metadata)."""
        emb, g = self.embodiment, self.geometry
        return {emb.metadata_key: {
            "statistics": self.statistics,
            "modalities": {
                "state": {s.key: {"shape": [s.size], "source": s.source} for s in emb.state},
                "action": {s.key: {"shape": [s.size], "source": s.source, "absolute": not s.relative}
                           for s in emb.action},
                "video": {c: {"feature": k} for c, k in self.camera_refs.items()},
            },
            "embodiment": emb.name,
            "sample": {"num_chunks": g.num_chunks, "action_horizon": g.action_horizon,
                       "frames_per_chunk": g.frames_per_chunk, "frame_stride": g.frame_stride,
                       "video_fps": self.reader.fps / g.frame_stride, "control_rate_hz": emb.control_rate_hz,
                       "video_hw": list(self.video.out_hw), "view_hw": list(self.video.view_hw),
                       "crop_fraction": self.video.crop_fraction},
            "dataset": {"root": str(Path(self.cfg.root).resolve()), "codebase_version": self.reader.version,
                        "train_episodes": self.train_ids, "val_episodes": self.val_ids,
                        "train_samples": len(self.train_samples)},
        }}


def _segment_stats(segments: tuple[Segment, ...], values: np.ndarray) -> dict:
    out, start = {}, 0
    for s in segments:
        v = values[:, start:start + s.size]
        start += s.size
        out[s.key] = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
                      "std": v.std(0).tolist(), "q01": np.quantile(v, 0.01, axis=0).tolist(),
                      "q99": np.quantile(v, 0.99, axis=0).tolist()}
    return out
