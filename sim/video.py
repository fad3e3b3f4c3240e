"""mp4 video in and out with PyAV: H.264 when PyAV's FFmpeg build has an encoder for it, else MPEG-4 part 2."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

import av
import numpy as np


@lru_cache(maxsize=1)
def video_codec() -> str:
    """"h264" when PyAV can encode it (libx264 / openh264 builds), else "mpeg4"."""
    try:
        av.codec.Codec("h264", "w")
        return "h264"
    except Exception:  # PyAV raises UnknownCodecError (or FFmpegError on older builds)
        return "mpeg4"


def tile(images: Iterable[np.ndarray]) -> np.ndarray:
    """Side-by-side tiling of equally tall images [H, W_i, 3] -> [H, sum W_i, 3]."""
    return np.concatenate(list(images), axis=1)


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: int) -> str:
    """Encode RGB frames [H, W, 3] uint8 (all one size) to `path`, yuv420p; returns the codec used.

    Odd sizes are padded by one edge row/column (yuv420p needs even sizes).
    """
    codec = video_codec()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if codec == "h264":
                    stream.options = {"crf": "18", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)
    return codec


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of a video as [N, H, W, 3] uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
