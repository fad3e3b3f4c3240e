"""LeRobot v2.1 datasets of sim episodes, with the feature names of the public DROID LeRobot port.

Layout (ROBOTS_AND_ROS.md section 4):

    meta/info.json  meta/episodes.jsonl  meta/episodes_stats.jsonl  meta/tasks.jsonl  meta/stats.json
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/observation.images.<camera>/episode_000000.mp4

One row per control step (15 fps): the observation at the start of the step and the action commanded for it.
`action` = 7 absolute joint targets (rad) + gripper in [0, 1], as in DROID (the model makes joints relative itself).
`stats.json` holds min/max/mean/std/count and q01/q99 per feature over the whole dataset (images: per channel, in
[0, 1], shape [3, 1, 1]); `episodes_stats.jsonl` the same per episode (v2.1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.video import read_mp4, video_codec, write_mp4

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000  # episodes per chunk folder
CAMERA_KEYS = {  # sim camera -> DROID LeRobot feature
    "wrist": "observation.images.wrist_left",
    "exterior_1": "observation.images.exterior_1_left",
    "exterior_2": "observation.images.exterior_2_left",
}
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

_JOINTS = [f"joint_{i}" for i in range(7)]
# Numeric and text features: name -> (dtype, shape, axis names or None). Shape [1] is stored as a scalar column.
FEATURES = {
    "observation.state": ("float32", [8], _JOINTS + ["gripper"]),
    "observation.state.joint_position": ("float32", [7], _JOINTS),
    "observation.state.gripper_position": ("float32", [1], ["gripper"]),
    "observation.state.cartesian_position": ("float32", [6], ["x", "y", "z", "roll", "pitch", "yaw"]),
    "action": ("float32", [8], _JOINTS + ["gripper"]),
    "action.joint_position": ("float32", [7], _JOINTS),
    "action.gripper_position": ("float32", [1], ["gripper"]),
    "language_instruction": ("string", [1], None),
    "is_first": ("bool", [1], None),
    "is_last": ("bool", [1], None),
    "is_terminal": ("bool", [1], None),
    "is_episode_successful": ("bool", [1], None),
    "reward": ("float32", [1], None),
    "discount": ("float32", [1], None),
    "timestamp": ("float32", [1], None),
    "frame_index": ("int64", [1], None),
    "episode_index": ("int64", [1], None),
    "index": ("int64", [1], None),
    "task_index": ("int64", [1], None),
}
_ARROW = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
_TEXT = ("language_instruction",)


def feature_stats(values: np.ndarray) -> dict:
    """min/max/mean/std/q01/q99 over axis 0 of [N, ...] values (as lists; [N] counts as [N, 1]) and the count N."""
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "q01": np.quantile(values, 0.01, axis=0).tolist(),
            "q99": np.quantile(values, 0.99, axis=0).tolist(), "count": [int(len(values))]}


def _image_samples(frames: np.ndarray) -> np.ndarray:
    """Pixels [M, 3] in [0, 1] sampled from frames [N, H, W, 3] (every 4th frame, every 8th pixel each way)."""
    return frames[::4, ::8, ::8].reshape(-1, 3).astype(np.float64) / 255.0


def _image_stats(samples: np.ndarray, n_frames: int) -> dict:
    """Per-channel stats shaped [3, 1, 1] as LeRobot keeps them for images; count = frames."""
    stats = {k: [[[c]] for c in v] for k, v in feature_stats(samples).items() if k != "count"}
    return stats | {"count": [n_frames]}


class LeRobotWriter:
    """Writes episodes into a new LeRobot v2.1 dataset at `root`; call `finish()` to write the metadata."""

    def __init__(self, root: str | Path, cameras: tuple[str, ...], image_hw: tuple[int, int], fps: int = 15,
                 robot_type: str = "Franka"):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"LeRobot dataset folder {self.root} exists and is not empty; choose a new one")
        unknown = [c for c in cameras if c not in CAMERA_KEYS]
        if unknown:
            raise ValueError(f"no LeRobot feature for cameras {unknown}; known: {list(CAMERA_KEYS)}")
        self.cameras, self.image_hw, self.fps, self.robot_type = tuple(cameras), tuple(image_hw), fps, robot_type
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, int] = {}
        self.n_episodes = 0
        self.n_frames = 0
        self._numeric: dict[str, list[np.ndarray]] = {}  # feature -> per-episode values, for stats.json
        self._pixels: dict[str, list[np.ndarray]] = {}  # video key -> per-episode pixel samples [M, 3]

    def add_episode(self, states: np.ndarray, actions: np.ndarray, cartesian: np.ndarray,
                    images: dict[str, np.ndarray], instruction: str, success: bool,
                    extra: dict | None = None) -> int:
        """Append one episode of N frames; returns its index.

        states [N, 8] and actions [N, 8]: 7 joints + gripper [0, 1]; cartesian [N, 6]: TCP x, y, z, roll, pitch, yaw;
        images: camera -> [N, H, W, 3] uint8; extra: more keys for the episodes.jsonl record (e.g. the sim seed).
        """
        n = len(states)
        if n == 0 or actions.shape != (n, 8) or states.shape != (n, 8) or cartesian.shape != (n, 6):
            raise ValueError(f"episode arrays disagree: states {states.shape}, actions {actions.shape}, "
                             f"cartesian {cartesian.shape}; expected (N, 8), (N, 8), (N, 6) with N > 0")
        for camera in self.cameras:
            if images[camera].shape != (n, *self.image_hw, 3):
                raise ValueError(f"camera {camera} frames have shape {images[camera].shape}, expected "
                                 f"{(n, *self.image_hw, 3)}")
        episode = self.n_episodes
        task_index = self.tasks.setdefault(instruction, len(self.tasks))
        frame = np.arange(n)
        last = frame == n - 1
        columns = {
            "observation.state": states, "observation.state.joint_position": states[:, :7],
            "observation.state.gripper_position": states[:, 7], "observation.state.cartesian_position": cartesian,
            "action": actions, "action.joint_position": actions[:, :7], "action.gripper_position": actions[:, 7],
            "language_instruction": [instruction] * n, "is_first": frame == 0, "is_last": last,
            "is_terminal": last & success, "is_episode_successful": np.full(n, success),
            "reward": (last & success).astype(np.float32), "discount": np.ones(n),
            "timestamp": frame / self.fps, "frame_index": frame, "episode_index": np.full(n, episode),
            "index": self.n_frames + frame, "task_index": np.full(n, task_index),
        }
        path = self.root / DATA_PATH.format(episode_chunk=episode // CHUNKS_SIZE, episode_index=episode)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({k: self._arrow(k, v) for k, v in columns.items()}), path)

        stats = {k: feature_stats(np.asarray(v)) for k, v in columns.items() if k not in _TEXT}
        for camera in self.cameras:
            key = CAMERA_KEYS[camera]
            write_mp4(self.root / VIDEO_PATH.format(episode_chunk=episode // CHUNKS_SIZE, video_key=key,
                                                    episode_index=episode), images[camera], self.fps)
            samples = _image_samples(images[camera])
            stats[key] = _image_stats(samples, n)
            self._pixels.setdefault(key, []).append(samples)
        for k, v in columns.items():
            if k not in _TEXT:
                self._numeric.setdefault(k, []).append(np.asarray(v))
        self._append_jsonl("episodes.jsonl",
                           {"episode_index": episode, "tasks": [instruction], "length": n, **(extra or {})})
        self._append_jsonl("episodes_stats.jsonl", {"episode_index": episode, "stats": stats})
        self.n_episodes += 1
        self.n_frames += n
        return episode

    def finish(self) -> Path:
        """Write info.json, tasks.jsonl and stats.json; returns the dataset root."""
        meta = self.root / "meta"
        with open(meta / "tasks.jsonl", "w") as f:
            for task, index in self.tasks.items():
                f.write(json.dumps({"task_index": index, "task": task}) + "\n")
        stats = {k: feature_stats(np.concatenate(v)) for k, v in self._numeric.items()}
        stats |= {k: _image_stats(np.concatenate(v), self.n_frames) for k, v in self._pixels.items()}
        (meta / "stats.json").write_text(json.dumps(stats, indent=1))
        (meta / "info.json").write_text(json.dumps(self.info(), indent=2))
        return self.root

    def info(self) -> dict:
        """The meta/info.json content."""
        features = {k: {"dtype": dtype, "shape": shape, "names": None if names is None else {"axes": names}}
                    for k, (dtype, shape, names) in FEATURES.items()}
        height, width = self.image_hw
        for camera in self.cameras:
            features[CAMERA_KEYS[camera]] = {
                "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": video_codec(),
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                         "video.channels": 3, "has_audio": False}}
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": self.n_episodes, "total_frames": self.n_frames, "total_tasks": len(self.tasks),
            "total_videos": self.n_episodes * len(self.cameras),
            "total_chunks": (self.n_episodes + CHUNKS_SIZE - 1) // CHUNKS_SIZE, "chunks_size": CHUNKS_SIZE,
            "fps": self.fps, "splits": {"train": f"0:{self.n_episodes}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
        }

    def _arrow(self, key: str, values) -> pa.Array:
        dtype, shape, _ = FEATURES[key]
        if key in _TEXT:
            return pa.array(values, type=pa.string())
        values = np.asarray(values)
        if shape == [1]:
            return pa.array(values.astype(dtype), type=_ARROW[dtype])
        flat = pa.array(values.astype(dtype).reshape(-1), type=_ARROW[dtype])
        return pa.FixedSizeListArray.from_arrays(flat, shape[0])

    def _append_jsonl(self, name: str, record: dict) -> None:
        with open(self.root / "meta" / name, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_episodes(root: str | Path) -> list[dict]:
    """The records of meta/episodes.jsonl."""
    lines = (Path(root) / "meta" / "episodes.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_episode(root: str | Path, episode_index: int) -> pa.Table:
    """One episode's frame table."""
    return pq.read_table(Path(root) / DATA_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE,
                                                       episode_index=episode_index))


def episode_actions(root: str | Path, episode_index: int) -> np.ndarray:
    """The `action` column of one episode, [N, 8] float64."""
    return np.array(read_episode(root, episode_index).column("action").to_pylist(), dtype=np.float64)


def read_episode_video(root: str | Path, episode_index: int, camera: str) -> np.ndarray:
    """One camera's frames of one episode, [N, H, W, 3] uint8."""
    return read_mp4(Path(root) / VIDEO_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE,
                                                   video_key=CAMERA_KEYS[camera], episode_index=episode_index))
