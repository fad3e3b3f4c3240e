"""LeRobot dataset readers, v2.1 and v3.0 (ROBOTS_AND_ROS.md section 4), with PyAV video decoding.

v2.1 (one episode per file):
    meta/info.json  meta/episodes.jsonl  meta/tasks.jsonl  [meta/stats.json]
    data/chunk-XXX/episode_XXXXXX.parquet            (info.json `data_path`)
    videos/chunk-XXX/<key>/episode_XXXXXX.mp4        (info.json `video_path`)
v3.0 (many episodes per file):
    meta/info.json  meta/tasks.parquet  meta/episodes/chunk-XXX/file-XXX.parquet  [meta/stats.json]
    data/chunk-XXX/file-XXX.parquet                  (rows of several episodes; `episode_index` column)
    videos/<key>/chunk-XXX/file-XXX.mp4              (episodes back to back; `videos/<key>/from_timestamp` ..
                                                      `to_timestamp` in the episodes table locate each one)

`open_dataset(root)` picks the reader from `codebase_version`. Both give the same interface: `episodes` (index ->
EpisodeRecord), `features`, `fps`, `read_table(episode)` (that episode's rows, in frame order), `column(...)`
(a numeric feature as float64 [N, k]) and `read_video(episode, key)` (uint8 RGB [N, H, W, 3]). Every problem is one
DatasetError naming the dataset, the episode and the field. Videos may be any codec PyAV's FFmpeg decodes (AV1
through libdav1d); where PyAV is not installed (it is the `train` extra), OpenCV's own FFmpeg decodes them instead
(same frames for H.264; fewer codecs, and a truncated file may end early instead of failing). `image` features
(PNG/JPEG bytes in the parquet) decode with OpenCV.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model_core.training.errors import DatasetError

V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
_FEATURE_SPEC = re.compile(r"^(?P<name>[^\[\]]+?)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # float32, int64, bool, string, video, image, ...
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def is_visual(self) -> bool:
        return self.dtype in ("video", "image")


@dataclass(frozen=True)
class EpisodeRecord:
    index: int
    length: int
    tasks: tuple[str, ...]
    extra: dict = field(default_factory=dict, compare=False)  # v3: file locations and video spans


@dataclass(frozen=True)
class FeatureRef:
    """A dataset feature, optionally sliced along its last axis: 'observation.state[0:7]'."""

    name: str
    start: int | None = None
    stop: int | None = None

    @classmethod
    def parse(cls, spec: str) -> FeatureRef:
        m = _FEATURE_SPEC.match(spec.strip())
        if m is None:
            raise DatasetError(f"cannot parse feature spec {spec!r}; expected 'name' or 'name[start:stop]'")
        start, stop = m.group("start"), m.group("stop")
        return cls(m.group("name"), int(start) if start else None, int(stop) if stop else None)

    def __str__(self) -> str:
        if self.start is None and self.stop is None:
            return self.name
        return f"{self.name}[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"

    def width(self, full: int) -> int:
        return len(range(full)[slice(self.start, self.stop)])


def open_dataset(root: str | Path) -> LeRobotDataset:
    """The reader for the dataset at `root` (v2.0/v2.1 or v3.0, from meta/info.json)."""
    root = Path(root)
    info_file = root / "meta" / "info.json"
    if not info_file.is_file():
        raise DatasetError(f"{root}: no meta/info.json (not a LeRobot dataset)")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{info_file}: invalid JSON ({err})") from err
    version = str(info.get("codebase_version", ""))
    if version.startswith("v2"):
        return LeRobotV21(root, info)
    if version.startswith("v3"):
        return LeRobotV30(root, info)
    raise DatasetError(f"{info_file}: codebase_version {version!r} is not supported (v2.0, v2.1 or v3.0)")


class LeRobotDataset:
    """Common part of the readers: info.json, features, numeric columns, video decoding."""

    version = ""

    def __init__(self, root: Path, info: dict):
        self.root, self.info = root, info
        if "fps" not in info or "features" not in info:
            raise DatasetError(f"{root}/meta/info.json: needs 'fps' and 'features'")
        self.fps = float(info["fps"])
        self.features: dict[str, Feature] = {}
        for name, spec in info["features"].items():
            shape = tuple(int(s) for s in spec.get("shape") or ())
            self.features[name] = Feature(name, str(spec.get("dtype", "")), shape)
        self.episodes: dict[int, EpisodeRecord] = {}
        self.tasks: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"LeRobot {self.version} dataset at {self.root} ({len(self.episodes)} episodes, {self.fps:g} fps)"

    # -- features ---------------------------------------------------------------------------------------------

    def feature(self, ref: FeatureRef, role: str) -> Feature:
        if ref.name not in self.features:
            numeric = sorted(k for k, f in self.features.items() if not f.is_visual)
            visual = sorted(k for k, f in self.features.items() if f.is_visual)
            known = visual if role == "camera" else numeric
            raise DatasetError(f"{self.root}: no feature {ref.name!r} for the {role}; the dataset has {known}",
                               field=ref.name)
        return self.features[ref.name]

    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_visual]

    # -- rows -------------------------------------------------------------------------------------------------

    def read_table(self, episode: int) -> pa.Table:
        raise NotImplementedError

    def column(self, table: pa.Table, ref: FeatureRef, episode: int) -> np.ndarray:
        """A numeric feature of one episode's table as float64 [N, k] (sliced per `ref`)."""
        if ref.name not in table.column_names:
            raise DatasetError(f"the data file has no column {ref.name!r} (info.json lists it)", episode, ref.name)
        arr = table.column(ref.name).combine_chunks()
        if arr.null_count:
            raise DatasetError(f"{arr.null_count} missing (null) value(s)", episode, ref.name)
        t = arr.type
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
            if not pa.types.is_fixed_size_list(t):
                lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
                if len(lengths) and (lengths != lengths[0]).any():
                    raise DatasetError("rows have different lengths", episode, ref.name)
            flat = arr.flatten()
            if flat.null_count:
                raise DatasetError(f"{flat.null_count} missing (null) value(s)", episode, ref.name)
            values = flat.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(arr), -1)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            values = arr.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 1)
        else:
            raise DatasetError(f"column type {t} is not numeric", episode, ref.name)
        values = values[:, slice(ref.start, ref.stop)]
        if values.shape[1] == 0:
            raise DatasetError(f"slice {ref} selects no values (the feature has {arr.type})", episode, ref.name)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argwhere(bad.any(axis=1))[0, 0])
            raise DatasetError(f"{int(bad.sum())} NaN/Inf value(s), first in frame {row}", episode, ref.name)
        return values

    def strings(self, table: pa.Table, name: str, episode: int) -> list[str]:
        if name not in table.column_names:
            raise DatasetError(f"no column {name!r} for the instruction", episode, name)
        return [str(v) for v in table.column(name).to_pylist()]

    def frame_tasks(self, table: pa.Table, episode: int) -> list[str]:
        """The task (instruction) of every frame: `task_index` through the tasks table, else the episode's task."""
        record = self.episodes[episode]
        if "task_index" in table.column_names and self.tasks:
            out = []
            for i in table.column("task_index").to_pylist():
                if i not in self.tasks:
                    raise DatasetError(f"task_index {i} is not in the tasks table", episode, "task_index")
                out.append(self.tasks[i])
            return out
        if not record.tasks:
            raise DatasetError("no task: neither a task_index column nor tasks in the episodes table", episode,
                               "tasks")
        return [record.tasks[0]] * len(table)

    # -- video ------------------------------------------------------------------------------------------------

    def read_video(self, episode: int, key: str) -> np.ndarray:
        raise NotImplementedError

    def _image_column(self, table: pa.Table, key: str, episode: int) -> np.ndarray:
        import cv2

        frames = []
        for i, cell in enumerate(table.column(key).to_pylist()):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            img = None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"frame {i}: image bytes do not decode", episode, key)
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return np.stack(frames)


def _decode(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a video file (RGB uint8 [N, H, W, 3]) and their times in seconds [N]."""
    p = Path(path)
    stat = p.stat()
    return _decode_cached(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _decode_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`_decode`, keeping the last 2 files (v3 files hold many episodes); the key includes mtime and size."""
    try:
        import av
    except ImportError:
        return _decode_opencv(path)
    frames, times = [], []
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate))
    except (OSError, av.FFmpegError, IndexError) as err:
        raise DatasetError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise DatasetError(f"video {path} holds no frames")
    return np.stack(frames), np.asarray(times)


def _decode_opencv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """`_decode` through OpenCV's FFmpeg backend (for machines without PyAV)."""
    import cv2

    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames, times = [], []
    try:
        if not capture.isOpened():
            raise DatasetError(f"cannot decode video {path}: OpenCV's FFmpeg backend cannot open it")
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise DatasetError(f"video {path} holds no frames")
    return np.stack(frames), np.asarray(times)


class LeRobotV21(LeRobotDataset):
    version = "v2.1"

    def __init__(self, root: Path, info: dict):
        super().__init__(root, info)
        self.version = str(info.get("codebase_version", "v2.1"))
        self.chunks_size = int(info.get("chunks_size", 1000))
        self.data_path = info.get("data_path") or V21_DATA_PATH
        self.video_path = info.get("video_path") or V21_VIDEO_PATH
        for record in _jsonl(root / "meta" / "episodes.jsonl"):
            try:
                index, length = int(record["episode_index"]), int(record["length"])
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(f"{root}/meta/episodes.jsonl: record {record} needs episode_index and "
                                   f"length") from err
            self.episodes[index] = EpisodeRecord(index, length, tuple(record.get("tasks") or ()))
        tasks_file = root / "meta" / "tasks.jsonl"
        if tasks_file.is_file():
            self.tasks = {int(r["task_index"]): str(r["task"]) for r in _jsonl(tasks_file)}

    def _format(self, template: str, episode: int, key: str | None = None) -> Path:
        chunk = episode // self.chunks_size
        return self.root / template.format(episode_chunk=chunk, episode_index=episode, video_key=key,
                                           chunk_index=chunk, file_index=episode)

    def read_table(self, episode: int) -> pa.Table:
        path = self._format(self.data_path, episode)
        if not path.is_file():
            raise DatasetError(f"data file {path} does not exist", episode)
        table = pq.read_table(path)
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        return table

    def read_video(self, episode: int, key: str) -> np.ndarray:
        if self.features[key].dtype == "image":
            return self._image_column(self.read_table(episode), key, episode)
        path = self._format(self.video_path, episode, key)
        if not path.is_file():
            raise DatasetError(f"video file {path} does not exist", episode, key)
        frames, _ = _decode(str(path))
        return frames


class LeRobotV30(LeRobotDataset):
    version = "v3.0"

    def __init__(self, root: Path, info: dict):
        super().__init__(root, info)
        self.data_path = info.get("data_path") or V30_DATA_PATH
        self.video_path = info.get("video_path") or V30_VIDEO_PATH
        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (v3.0 episodes table)")
        for row in pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pylist():
            try:
                index, length = int(row["episode_index"]), int(row["length"])
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(f"{root}/meta/episodes: a row without episode_index/length: {row}") from err
            tasks = row.get("tasks") or ()
            self.episodes[index] = EpisodeRecord(index, length, tuple(tasks) if not isinstance(tasks, str)
                                                 else (tasks,), extra=row)
        tasks_file = root / "meta" / "tasks.parquet"
        if tasks_file.is_file():
            table = pq.read_table(tasks_file)
            names = [c for c in ("task", "__index_level_0__") if c in table.column_names]
            if "task_index" not in table.column_names or not names:
                raise DatasetError(f"{tasks_file}: needs columns task_index and task, has {table.column_names}")
            self.tasks = {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(),
                                                         table.column(names[0]).to_pylist())}

    def _location(self, episode: int, prefix: str) -> tuple[int, int]:
        row = self.episodes[episode].extra
        try:
            return int(row[f"{prefix}/chunk_index"]), int(row[f"{prefix}/file_index"])
        except (KeyError, TypeError) as err:
            raise DatasetError(f"episodes table has no {prefix}/chunk_index, {prefix}/file_index", episode,
                               prefix) from err

    def read_table(self, episode: int) -> pa.Table:
        chunk, file = self._location(episode, "data")
        path = self.root / self.data_path.format(chunk_index=chunk, file_index=file)
        if not path.is_file():
            raise DatasetError(f"data file {path} does not exist", episode)
        table = _read_parquet(str(path))
        if "episode_index" not in table.column_names:
            raise DatasetError(f"data file {path} has no episode_index column", episode, "episode_index")
        table = table.filter(pc.equal(table.column("episode_index"), episode))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        return table

    def read_video(self, episode: int, key: str) -> np.ndarray:
        if self.features[key].dtype == "image":
            return self._image_column(self.read_table(episode), key, episode)
        chunk, file = self._location(episode, f"videos/{key}")
        path = self.root / self.video_path.format(video_key=key, chunk_index=chunk, file_index=file)
        if not path.is_file():
            raise DatasetError(f"video file {path} does not exist", episode, key)
        row = self.episodes[episode].extra
        try:
            start, stop = float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"])
        except (KeyError, TypeError) as err:
            raise DatasetError(f"episodes table has no videos/{key}/from_timestamp, to_timestamp", episode,
                               key) from err
        frames, times = _decode(str(path))
        half = 0.5 / self.fps  # frames are selected by their presentation time, half a period of tolerance
        keep = (times >= start - half) & (times < stop - half)
        return frames[keep]


def _read_parquet(path: str) -> pa.Table:
    stat = Path(path).stat()
    return _read_parquet_cached(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _read_parquet_cached(path: str, mtime_ns: int, size: int) -> pa.Table:
    return pq.read_table(path)


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{n}: invalid JSON ({err})") from err
    return out
