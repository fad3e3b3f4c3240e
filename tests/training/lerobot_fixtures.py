"""Tiny LeRobot v2.1 / v3.0 datasets written for the training tests (pyarrow + PyAV), with optional defects.

Episodes look like the sim's Franka reach demos in the DROID LeRobot port's feature names: 7 joints moving smoothly
from the home pose, a gripper in [0, 1], absolute joint targets as actions, three cameras whose pictures follow the
arm (a bright block at a position set by joints 1 and 2), 15 fps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HOME = np.array([0.0, -0.6283, 0.0, -2.5133, 0.0, 1.885, 0.0])
CAMERAS = ("wrist_left", "exterior_1_left", "exterior_2_left")
COLOURS = {"wrist_left": (230, 40, 40), "exterior_1_left": (40, 220, 60), "exterior_2_left": (50, 80, 240)}
TASKS = ("reach the red cube", "reach the green cube")
FPS = 15


@dataclass
class EpisodeData:
    states: np.ndarray  # [N, 8]
    actions: np.ndarray  # [N, 8]
    images: dict[str, np.ndarray]  # camera -> [N, h, w, 3]
    task: str
    extra_columns: dict[str, np.ndarray] = field(default_factory=dict)


def make_episode(seed: int, length: int, image_hw=(32, 64), task: str | None = None) -> EpisodeData:
    rng = np.random.default_rng(seed)
    t = np.arange(length + 1) / FPS
    amp, freq, phase = rng.uniform(0.1, 0.4, 7), rng.uniform(0.2, 0.6, 7), rng.uniform(0, np.pi, 7)
    q = HOME + amp * np.sin(2 * np.pi * freq * t[:, None] + phase)  # [N + 1, 7]
    grip = (t > t[-1] / 2).astype(np.float64)[:, None]  # closes half way
    states = np.concatenate([q[:-1], grip[:-1]], axis=1)
    actions = np.concatenate([q[1:], grip[1:]], axis=1)  # target = the next state
    h, w = image_hw
    images = {}
    for cam in CAMERAS:
        frames = np.full((length, h, w, 3), 40, np.uint8)
        for i in range(length):
            y = int((q[i, 1] - HOME[1] + 0.5) * (h - 8)) // 8 * 8
            x = int((q[i, 0] + 0.5) * (w - 16)) // 8 * 8
            frames[i, max(0, y):max(0, y) + 8, max(0, x):max(0, x) + 16] = COLOURS[cam]
        images[cam] = frames
    return EpisodeData(states.astype(np.float32), actions.astype(np.float32), images,
                       task or TASKS[seed % len(TASKS)])


def _features(image_hw) -> dict:
    joints = [f"joint_{i}" for i in range(7)]
    f = {
        "observation.state": {"dtype": "float32", "shape": [8], "names": {"axes": joints + ["gripper"]}},
        "observation.state.joint_position": {"dtype": "float32", "shape": [7], "names": {"axes": joints}},
        "observation.state.gripper_position": {"dtype": "float32", "shape": [1], "names": {"axes": ["gripper"]}},
        "action": {"dtype": "float32", "shape": [8], "names": {"axes": joints + ["gripper"]}},
        "action.joint_position": {"dtype": "float32", "shape": [7], "names": {"axes": joints}},
        "action.gripper_position": {"dtype": "float32", "shape": [1], "names": {"axes": ["gripper"]}},
        "language_instruction": {"dtype": "string", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    for cam in CAMERAS:
        f[f"observation.images.{cam}"] = {"dtype": "video", "shape": [*image_hw, 3],
                                         "names": ["height", "width", "channels"]}
    return f


def _vector(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _table(ep: EpisodeData, episode: int, first_index: int, task_index: int) -> pa.Table:
    n = len(ep.states)
    cols = {
        "observation.state": _vector(ep.states), "observation.state.joint_position": _vector(ep.states[:, :7]),
        "observation.state.gripper_position": pa.array(ep.states[:, 7], pa.float32()),
        "action": _vector(ep.actions), "action.joint_position": _vector(ep.actions[:, :7]),
        "action.gripper_position": pa.array(ep.actions[:, 7], pa.float32()),
        "language_instruction": pa.array([ep.task] * n),
        "timestamp": pa.array(np.arange(n) / FPS, pa.float32()), "frame_index": pa.array(np.arange(n)),
        "episode_index": pa.array(np.full(n, episode)), "index": pa.array(first_index + np.arange(n)),
        "task_index": pa.array(np.full(n, task_index)),
    }
    for name, values in ep.extra_columns.items():
        cols[name] = _vector(values) if np.ndim(values) == 2 else pa.array(values)
    return pa.table(cols)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 (near-lossless) when available, else MPEG-4 at high quality; pts = frame number / fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        av.codec.Codec("h264", "w")
        codec = "h264"
    except Exception:
        codec = "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "1", "preset": "ultrafast"} if codec == "h264" else {"qscale": "1"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _info(version: str, episodes: list[EpisodeData], image_hw, data_path: str, video_path: str, tasks) -> dict:
    return {"codebase_version": version, "robot_type": "Franka", "total_episodes": len(episodes),
            "total_frames": int(sum(len(e.states) for e in episodes)), "total_tasks": len(tasks),
            "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": data_path, "video_path": video_path, "features": _features(image_hw)}


def write_v21(root: Path, episodes: list[EpisodeData], video_lengths: dict[int, int] | None = None,
              drop_features: tuple[str, ...] = ()) -> Path:
    """A v2.1 dataset; `video_lengths` {episode: frames} truncates videos, `drop_features` removes columns/features."""
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tasks = sorted({e.task for e in episodes})
    image_hw = next(iter(episodes[0].images.values())).shape[1:3]
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    index = 0
    with open(root / "meta" / "episodes.jsonl", "w") as f:
        for i, ep in enumerate(episodes):
            table = _table(ep, i, index, tasks.index(ep.task))
            table = table.drop_columns([c for c in drop_features if c in table.column_names])
            path = root / data_path.format(episode_chunk=0, episode_index=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            for cam, frames in ep.images.items():
                n = (video_lengths or {}).get(i, len(frames))
                write_video(root / video_path.format(episode_chunk=0, video_key=f"observation.images.{cam}",
                                                     episode_index=i), frames[:n])
            f.write(json.dumps({"episode_index": i, "tasks": [ep.task], "length": len(ep.states)}) + "\n")
            index += len(ep.states)
    with open(root / "meta" / "tasks.jsonl", "w") as f:
        for i, task in enumerate(tasks):
            f.write(json.dumps({"task_index": i, "task": task}) + "\n")
    info = _info("v2.1", episodes, image_hw, data_path, video_path, tasks)
    for name in drop_features:
        info["features"].pop(name, None)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    return root


def write_v30(root: Path, episodes: list[EpisodeData]) -> Path:
    """A v3.0 dataset: all episodes in one data file and one video file per camera (back to back)."""
    root = Path(root)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    tasks = sorted({e.task for e in episodes})
    image_hw = next(iter(episodes[0].images.values())).shape[1:3]
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    tables, rows, index = [], [], 0
    for i, ep in enumerate(episodes):
        n = len(ep.states)
        tables.append(_table(ep, i, index, tasks.index(ep.task)))
        row = {"episode_index": i, "tasks": [ep.task], "length": n, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": index, "dataset_to_index": index + n,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        for cam in CAMERAS:
            key = f"observation.images.{cam}"
            row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": index / FPS, f"videos/{key}/to_timestamp": (index + n) / FPS}
        rows.append(row)
        index += n
    path = root / data_path.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), path)
    for cam in CAMERAS:
        frames = np.concatenate([ep.images[cam] for ep in episodes])
        write_video(root / video_path.format(video_key=f"observation.images.{cam}", chunk_index=0, file_index=0),
                    frames)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(tasks))), "task": tasks}), root / "meta" / "tasks.parquet")
    (root / "meta" / "info.json").write_text(json.dumps(
        _info("v3.0", episodes, image_hw, data_path, video_path, tasks), indent=1))
    return root


DROID_CAMERAS = {"wrist": "observation.images.wrist_left", "exterior_1": "observation.images.exterior_1_left",
                 "exterior_2": "observation.images.exterior_2_left"}


def train_config(dataset_root: Path, output: Path, **sections) -> dict:
    """A tiny-preset training config (as a parsed YAML mapping) over a fixture dataset; `sections` update it."""
    cfg = {
        "run": {"output_dir": str(output), "seed": 0, "device": "cpu", "precision": "fp32", "progress": False},
        "model": {"preset": "tiny", "encoders": "tiny", "engine": {"num_steps": 2, "cfg_scale": 1.0}},
        "embodiment": "franka_droid",
        "dataset": {"root": str(dataset_root), "camera_features": DROID_CAMERAS, "num_chunks": 2, "sample_stride": 6,
                    "pad_episode_end": False},
        "objective": {"mode": "full"},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "batch_size": 2, "grad_clip": 1.0},
        "schedule": {"max_steps": 4, "log_every": 1, "save_every": 1000, "val_every": 1000, "val_batches": 1,
                     "val_sampling_steps": 2},
    }
    for name, update in sections.items():
        cfg[name] = {**cfg.get(name, {}), **update} if isinstance(update, dict) else update
    return cfg
