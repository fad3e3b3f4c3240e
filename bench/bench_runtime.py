"""The policy node's own overhead per chunk, without the model.

Replays synthetic camera and joint-state messages through the runtime stages the node uses (observation ->
block buffer (+ tiling) -> chunk -> execution -> safety) and prints milliseconds per chunk per stage, and the
preprocessing CPU as a percentage of one core, for raw rgb8 images and for CompressedImage JPEG.

One chunk = `action_horizon` control steps (DROID: 24 at 15 Hz = 1.6 s); in that time 3 cameras at 30 Hz deliver
48 frames each and /joint_states 48 messages. Targets: per-chunk path < 5 ms, preprocessing < 20% of one core.

    python bench/bench_runtime.py [--chunks 20] [--repeats 3] [--embodiment franka_droid] [--out-hw 352 640]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import cv2
import numpy as np

from dreamzero_policy.block_buffer import BlockBuffer
from dreamzero_policy.chunk import decode_chunk, trajectory_points
from dreamzero_policy.embodiment import Embodiment, load_embodiment
from dreamzero_policy.execution import ChunkBroker
from dreamzero_policy.observation import (JOINT_STATES, CameraFrame, decode_compressed, decode_image,
                                          joint_observation)
from dreamzero_policy.safety import SafetyFilter
from dreamzero_policy.transforms import Normalizer, VideoTransform

CAMERA_HZ, JOINT_HZ, IMAGE_HW = 30.0, 30.0, (180, 320)


class Timer:
    """Accumulates perf_counter time per stage name."""

    def __init__(self):
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def time(self, stage: str, fn, *args):
        start = time.perf_counter_ns()
        result = fn(*args)
        self.add(stage, time.perf_counter_ns() - start)
        return result

    def add(self, stage: str, ns: int) -> None:
        self.ns[stage] += ns
        self.calls[stage] += 1


class TimedVideo:
    """Wraps the VideoTransform so tiling is timed apart from the buffer's own bookkeeping."""

    def __init__(self, video: VideoTransform, timer: Timer):
        self.video, self.timer = video, timer

    def __call__(self, views):
        return self.timer.time("block buffer: tiling", self.video, views)


def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Scene-like RGB frames (smooth gradients, shapes, mild noise) so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    base = np.dstack([*np.meshgrid(np.linspace(40, 200, w), np.linspace(30, 180, h)), np.full((h, w), 90.0)])
    frames = []
    for k in range(n):
        img = base.astype(np.uint8)
        cv2.rectangle(img, (40 + 5 * k, 60), (120 + 5 * k, 140), (200, 40, 40), -1)
        cv2.circle(img, (220, 90 - 2 * k), 30, (30, 160, 60), -1)
        frames.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return frames


def statistics_for(embodiment: Embodiment) -> dict:
    def entry(segment):
        lo, hi = (-1.0, 1.0) if segment.source == "arm" else (0.0, 1.0)
        return {"q01": [lo] * segment.size, "q99": [hi] * segment.size}
    return {part: {s.key: entry(s) for s in getattr(embodiment, part)} for part in ("state", "action")}


def run(embodiment: Embodiment, compressed: bool, chunks: int, out_hw: tuple[int, int],
        view_hw: tuple[int, int] | None) -> tuple[Timer, float]:
    """Replay `chunks` chunks of messages; returns the timer and the chunk duration in ms."""
    timer = Timer()
    video = TimedVideo(VideoTransform.from_embodiment(embodiment, out_hw, view_hw), timer)
    buffer = BlockBuffer(embodiment, video, frames_per_block=8)
    normalizer = Normalizer.from_statistics(statistics_for(embodiment), embodiment)
    broker, safety = ChunkBroker(embodiment.dt_ns), SafetyFilter(embodiment)
    images = synthetic_images(8)
    raw = [img.reshape(-1) for img in images]
    jpeg = [cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
            for img in images]
    names = embodiment.joint_names + embodiment.gripper_joints
    positions = np.concatenate([embodiment.home, embodiment.gripper_open])
    rng = np.random.default_rng(1)

    chunk_ns = embodiment.action_horizon * embodiment.dt_ns
    t0 = 1_000_000_000
    events = sorted([(t0 + round(k * 1e9 / CAMERA_HZ) + 3_000_000 * i, c.name)
                     for i, c in enumerate(embodiment.cameras) for k in range(int(chunks * chunk_ns * CAMERA_HZ / 1e9))]
                    + [(t0 + round(k * 1e9 / JOINT_HZ), JOINT_STATES)
                       for k in range(int(chunks * chunk_ns * JOINT_HZ / 1e9))])
    h, w = IMAGE_HW
    for n, (stamp, stream) in enumerate(events):
        if stream == JOINT_STATES:
            joint = timer.time("observation: joint states", joint_observation, names, positions, [], stamp,
                               embodiment)
            timer.time("block buffer: sync + ring buffers", buffer.add_joints, joint)
        else:
            if compressed:
                rgb = timer.time("observation: decode JPEG", decode_compressed, "rgb8; jpeg compressed bgr8",
                                 jpeg[n % len(jpeg)])
            else:
                rgb = timer.time("observation: decode rgb8", decode_image, "rgb8", h, w, 3 * w, False,
                                 raw[n % len(raw)])
            timer.time("block buffer: sync + ring buffers", buffer.add_frame, CameraFrame(stream, stamp, rgb))
        start = time.perf_counter_ns()
        block = buffer.next_block()  # the node blocks on this once per block; the bench polls
        if block is None or block.is_reset:
            continue
        timer.add("block buffer: next_block", time.perf_counter_ns() - start)
        # The model's place: a chunk for this block, ready 300 ms after its last observation.
        now = block.joint.stamp_ns + 300_000_000
        normalized = rng.uniform(-0.1, 0.1, (embodiment.action_horizon, normalizer.action.dim))
        chunk = timer.time("chunk: decode_chunk", decode_chunk, normalized, block.joint, normalizer, embodiment)
        plan = timer.time("execution: splice (submit)", broker.submit, chunk, now)
        stamps = {**{c.name: now - 10_000_000 for c in embodiment.cameras}, JOINT_STATES: now - 5_000_000}
        command = timer.time("safety: apply", safety.apply, plan, block.joint, now, stamps)
        timer.time("chunk: trajectory_points", trajectory_points, command.positions, embodiment.dt_s,
                   block.joint.positions)
        for tick in range(len(plan)):  # a streaming node re-checks every control step
            t = now + tick * embodiment.dt_ns
            tick_plan = timer.time("control ticks: plan", broker.plan, t)
            timer.time("control ticks: safety", safety.apply, tick_plan, block.joint, t,
                       {name: t - 10_000_000 for name in stamps})
    # add_frame/add_joints tile inside the buffer: report the buffer's own work without the tiling
    timer.ns["block buffer: sync + ring buffers"] -= timer.ns["block buffer: tiling"]
    return timer, chunk_ns / 1e6


# Stage groups for the totals.
PREPROCESSING = ("observation:", "block buffer: sync", "block buffer: tiling")
CHUNK_PATH = ("block buffer: next_block", "chunk:", "execution:", "safety:")


def print_table(title: str, timer: Timer, chunk_ms: float, replayed_chunks: int) -> None:
    """Preprocessing per chunk duration of replayed messages; the other stages per model call."""
    calls = timer.calls["chunk: decode_chunk"]
    print(f"\n{title}: {replayed_chunks} chunks of {chunk_ms:.0f} ms replayed, {calls} model calls")
    print(f"{'stage':40s} {'calls/chunk':>11s} {'ms/chunk':>9s} {'% core':>7s}")
    totals = {"preprocessing": 0.0, "per-chunk path": 0.0, "control ticks": 0.0}
    for stage in sorted(timer.ns):
        group = ("preprocessing" if stage.startswith(PREPROCESSING) else
                 "per-chunk path" if stage.startswith(CHUNK_PATH) else "control ticks")
        per = replayed_chunks if group == "preprocessing" else max(calls, 1)
        ms = timer.ns[stage] / 1e6 / per
        print(f"{stage:40s} {timer.calls[stage] / per:11.1f} {ms:9.3f} {100 * ms / chunk_ms:6.2f}%")
        totals[group] += ms
    for name, ms in totals.items():
        target = {"preprocessing": " (target < 20% of one core)", "per-chunk path": " (target < 5 ms)"}.get(name, "")
        print(f"{'TOTAL ' + name:40s} {'':11s} {ms:9.3f} {100 * ms / chunk_ms:6.2f}%{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embodiment", default="franka_droid")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="replays; each stage reports its fastest")
    parser.add_argument("--out-hw", type=int, nargs=2, default=(352, 640), help="model frame size (14B: 352 640)")
    parser.add_argument("--view-hw", type=int, nargs=2, default=None, help="per-view size (5B: 160 320)")
    args = parser.parse_args()
    embodiment = load_embodiment(args.embodiment)
    print(f"{embodiment.name}: {len(embodiment.cameras)} cameras {IMAGE_HW[1]}x{IMAGE_HW[0]} at {CAMERA_HZ:g} Hz, "
          f"joint states at {JOINT_HZ:g} Hz, model frame {args.out_hw[0]}x{args.out_hw[1]}, "
          f"{embodiment.video_fps(8):g} fps video, cv2 threads {cv2.getNumThreads()}")
    for compressed in (False, True):
        runs = [run(embodiment, compressed, args.chunks, tuple(args.out_hw),
                    tuple(args.view_hw) if args.view_hw else None) for _ in range(args.repeats)]
        timer, chunk_ms = runs[0]
        for other, _ in runs[1:]:  # per stage, the fastest replay: the least disturbed by other processes
            for stage, ns in other.ns.items():
                timer.ns[stage] = min(timer.ns[stage], ns)
        print_table("CompressedImage JPEG" if compressed else "Image rgb8", timer, chunk_ms, args.chunks)


if __name__ == "__main__":
    main()
