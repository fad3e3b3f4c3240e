"""Helpers for the replay tests (a plain module: the tests import it by basename)."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dreamzero_policy.embodiment import load_embodiment

REPO = Path(__file__).resolve().parents[2]
REAL_BAGS = REPO / "tests" / "fixtures" / "real_bags"
ROSBAG2 = REAL_BAGS / "ros2_rosbag2_test_resources"
FRANKA_METADATA_KEY = "oxe_droid"


def franka_statistics() -> dict:
    """DROID-like q01/q99 statistics for the franka_droid state/action keys (arm 7 + gripper 1)."""
    emb = load_embodiment("franka_droid")
    q = lambda lo, hi: {"q01": [float(v) for v in lo], "q99": [float(v) for v in hi]}  # noqa: E731
    return {"state": {"joint_position": q(emb.lower * 0.8, emb.upper * 0.8), "gripper_position": q([0.0], [1.0])},
            "action": {"joint_position": q([-0.3] * 7, [0.3] * 7), "gripper_position": q([0.0], [1.0])}}


def write_tiny_checkpoint(directory: Path) -> Path:
    from model_core.factory import save_bundle, tiny_components

    dit, vae, text, image = tiny_components(seed=0)
    save_bundle(directory, dit, vae, text, image, video_hw=(64, 128),
                metadata={FRANKA_METADATA_KEY: {"statistics": franka_statistics()}})
    return directory


def node_params(checkpoint: Path, **extra: Any) -> dict[str, Any]:
    """The node's parameters for a fast replay with the tiny model (2 sampler steps, no guidance, no warm-up)."""
    return {"checkpoint": str(checkpoint), "num_steps": 2, "cfg_scale": 1.0, "warmup": False, **extra}


def cli_params(checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "-p", "num_steps:=2", "-p", "cfg_scale:=1.0", "-p", "warmup:=false",
            "--no-progress"]


def copy_fixture(name: str, tmp: Path) -> Path:
    """A real-bag fixture copied to `tmp` (sqlite may touch -shm/-wal files of what it opens)."""
    src = REAL_BAGS / name
    dst = tmp / src.name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def rewrite_bag(src: Path, dst: Path, storage: str = "mcap", transform: Callable[[str, Any], Any] | None = None,
                ros1: bool = False, compress: bool = False, log_offset_ns: int = 0) -> Path:
    """Copy a bag message by message: `transform(topic, msg) -> msg` edits messages; `ros1` writes a ROS 1 .bag
    (`dst` is the file); `compress` uses rosbag2 zstd file compression; `log_offset_ns` shifts the log times."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from dreamzero_policy import msgs

    store = msgs.typestore()
    with AnyReader([src], default_typestore=store) as reader:
        if ros1:
            from rosbags.convert.converter import migrate_bytes
            from rosbags.rosbag1 import Writer as Writer1
            from rosbags.typesys import Stores, get_typestore

            noetic, cache = get_typestore(Stores.ROS1_NOETIC), {}  # ROS 1 definitions (std_msgs/Header has seq)
            writer = Writer1(dst)
        else:
            writer = Writer(dst, version=9, storage_plugin={"mcap": StoragePlugin.MCAP,
                                                             "sqlite3": StoragePlugin.SQLITE3}[storage])
            if compress:
                writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
        writer.open()
        connections = {}
        for c in reader.connections:
            if (c.topic, c.msgtype) not in connections:
                if ros1:
                    connections[(c.topic, c.msgtype)] = writer.add_connection(c.topic, c.msgtype, typestore=noetic)
                else:
                    connections[(c.topic, c.msgtype)] = writer.add_connection(
                        c.topic, c.msgtype, typestore=store, offered_qos_profiles=c.ext.offered_qos_profiles)
        for c, t, raw in reader.messages():
            data = raw
            if transform is not None:
                msg = transform(c.topic, reader.deserialize(raw, c.msgtype))
                data = store.serialize_cdr(msg, c.msgtype)
            if ros1:
                data = migrate_bytes(store, noetic, c.msgtype, c.msgtype, cache, bytes(data), src_is2=True,
                                     dst_is2=False)
            writer.write(connections[(c.topic, c.msgtype)], t + log_offset_ns, bytes(data))
        writer.close()
    return dst


def split_bag(src: Path, dst: Path, parts: int = 2, metadata: bool = True) -> Path:
    """The same recording as `parts` MCAP files cut by log time, with a rosbag2 metadata.yaml listing them (as
    `ros2 bag record --max-bag-duration` writes) or, with metadata=False, the files alone."""
    from rosbags.highlevel import AnyReader

    with AnyReader([src]) as reader:
        start, end = reader.start_time, reader.end_time
    cuts = np.linspace(start, end, parts + 1).astype(np.int64)
    dst.mkdir(parents=True)
    infos = []
    for k in range(parts):
        tmp = dst.parent / f".{dst.name}_part{k}"
        piece = _time_slice(src, tmp, int(cuts[k]), int(cuts[k + 1]))
        info = yaml.safe_load((piece / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        name = f"{dst.name}_{k}.mcap"
        shutil.move(str(next(piece.glob("*.mcap"))), str(dst / name))
        infos.append((name, info))
        shutil.rmtree(piece)
    if metadata:
        merged = infos[0][1]
        merged["relative_file_paths"] = [n for n, _ in infos]
        merged["files"] = [{"path": n, "starting_time": i["starting_time"], "duration": i["duration"],
                            "message_count": i["message_count"]} for n, i in infos]
        merged["message_count"] = sum(i["message_count"] for _, i in infos)
        last = infos[-1][1]
        merged["duration"] = {"nanoseconds": last["starting_time"]["nanoseconds_since_epoch"]
                              + last["duration"]["nanoseconds"]
                              - merged["starting_time"]["nanoseconds_since_epoch"]}
        counts: dict[str, int] = {}
        for _, i in infos:
            for entry in i["topics_with_message_count"]:
                counts[entry["topic_metadata"]["name"]] = counts.get(entry["topic_metadata"]["name"], 0) \
                    + entry["message_count"]
        for entry in merged["topics_with_message_count"]:
            entry["message_count"] = counts[entry["topic_metadata"]["name"]]
        (dst / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": merged}))
    return dst


def _time_slice(src: Path, dst: Path, start: int, stop: int) -> Path:
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from dreamzero_policy import msgs

    with AnyReader([src]) as reader:
        writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        connections = {(c.topic, c.msgtype): writer.add_connection(c.topic, c.msgtype, typestore=msgs.typestore(),
                                                                  offered_qos_profiles=c.ext.offered_qos_profiles)
                       for c in reader.connections}
        for c, t, raw in reader.messages(start=start, stop=stop):
            writer.write(connections[(c.topic, c.msgtype)], t, raw)
        writer.close()
    return dst
