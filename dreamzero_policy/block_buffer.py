"""Block buffer stage: synchronise cameras and joint states, sample at the model's video rate, emit blocks.

Camera frames (15-60 Hz each) and joint states arrive on middleware threads. Sample times follow a fixed grid at
the model's video rate (e.g. 5 fps for DROID: 8 frames per 24-action chunk at 15 Hz). A frame set for sample time
t is formed once every stream has data at or past t: each camera's frame and the joint state nearest to t are
taken, and the set is complete only if each stamp is within the sync tolerance of t and of each other; complete sets
are tiled into one model frame right away (after a gap, a stall or a clock jump the grid skips straight to the
first sample time the data can fill). A block is the newest `frames_per_block` sets not yet handed out, or a
single set right after a reset (the model's initial frame). A camera that stops stalls the grid, so no block
completes (and the safety watchdog holds the arm).

Memory is bounded: per-stream ring buffers of about `history_s` of data and at most `frames_per_block` tiled sets;
newest data wins (a slow consumer gets the newest sets, the older ones are counted as dropped).

Threading: one lock (a Condition) guards all state. `add_frame` / `add_joints` (middleware threads) hold it while
they append and, when a sample time completes, while they tile the set (about 1 ms, 5-10 times per second);
`next_block` (the session's worker thread) waits on it and copies the frames out after releasing it.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from dreamzero_policy.embodiment import Embodiment
from dreamzero_policy.errors import ConfigError, ObservationError
from dreamzero_policy.observation import JOINT_STATES, CameraFrame, JointObservation, StampOrder
from dreamzero_policy.transforms import VideoTransform


@dataclass(frozen=True)
class Block:
    index: int  # 0 = the single initial frame after a reset, then 1, 2, ...
    frames: np.ndarray  # [T, H, W, 3] uint8 tiled model frames (T = 1 at a reset, else frames_per_block)
    stamps_ns: np.ndarray  # [T] int64 sample times
    joint: JointObservation  # the joint state at the last frame

    @property
    def is_reset(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class _FrameSet:
    stamp_ns: int
    frame: np.ndarray  # [H, W, 3] tiled
    joint: JointObservation


class BlockBuffer:
    def __init__(self, embodiment: Embodiment, video: VideoTransform, frames_per_block: int,
                 fps: float | None = None, history_s: float = 1.0, joint_history: int = 512):
        """`fps` defaults to the embodiment's video rate for `frames_per_block` (one block spans one chunk)."""
        assert frames_per_block >= 1, frames_per_block
        self.video = video
        self.frames_per_block = frames_per_block
        self.period_ns = round(1e9 / (fps or embodiment.video_fps(frames_per_block)))
        self.tolerance_ns = round(embodiment.video.sync_tolerance_ms * 1e6)
        self._cameras = {c.name: deque(maxlen=max(4, math.ceil(c.rate_hz * history_s) + 1))
                         for c in embodiment.cameras}
        self._joints: deque[JointObservation] = deque(maxlen=joint_history)
        self._order = StampOrder()
        self._cond = threading.Condition()
        self._sets: deque[_FrameSet] = deque(maxlen=frames_per_block)
        self._next_due_ns: int | None = None
        self._fresh = 0  # sets formed since the last block
        self._initial = True  # the next block is the single initial frame
        self._index = 0
        self._closed = False
        self._stats = {"frame_sets": 0, "incomplete_sets": 0, "dropped_sets": 0, "blocks": 0}

    # --- producers (middleware threads) ---
    def add_frame(self, frame: CameraFrame) -> None:
        """Add a decoded camera frame. Raises ObservationError for an unknown camera, OutOfOrderStamp when the
        camera's stamps do not increase (the frame is dropped)."""
        with self._cond:
            if frame.camera not in self._cameras:
                raise ObservationError("camera", f"one of {sorted(self._cameras)}", repr(frame.camera))
            self._order.check(frame.camera, frame.stamp_ns)
            self._cameras[frame.camera].append(frame)
            self._sample()

    def add_joints(self, joint: JointObservation) -> None:
        """Add a joint observation. Raises OutOfOrderStamp when stamps do not increase (it is dropped)."""
        with self._cond:
            self._order.check(JOINT_STATES, joint.stamp_ns)
            self._joints.append(joint)
            self._sample()

    # --- consumer (session worker thread) ---
    def next_block(self, timeout_s: float | None = 0.0) -> Block | None:
        """The next complete block, waiting up to `timeout_s` (None: until one completes or `close`)."""
        with self._cond:
            if not self._cond.wait_for(self._ready, timeout_s) or self._closed:
                return None
            sets = [self._sets[-1]] if self._initial else list(self._sets)
            self._stats["dropped_sets"] += self._fresh - len(sets)
            self._fresh, self._initial = 0, False
            index, self._index = self._index, self._index + 1
            self._stats["blocks"] += 1
        return Block(index, np.stack([s.frame for s in sets]), np.array([s.stamp_ns for s in sets], np.int64),
                     sets[-1].joint)

    def reset(self) -> None:
        """Start a new episode: forget all data (a simulator may restart its clock) and stamp order; the next
        block is one initial frame from data received after the reset."""
        with self._cond:
            for queue in (*self._cameras.values(), self._joints, self._sets):
                queue.clear()
            self._order.reset()
            self._next_due_ns = None
            self._fresh, self._initial, self._index = 0, True, 0

    def close(self) -> None:
        """Wake and release a waiting consumer (`next_block` returns None from now on)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- monitoring (any thread) ---
    def last_stamps(self) -> dict[str, int | None]:
        """{camera name or JOINT_STATES: newest stamp (None if nothing yet)} for the safety watchdog."""
        with self._cond:
            stamps = {name: (q[-1].stamp_ns if q else None) for name, q in self._cameras.items()}
            stamps[JOINT_STATES] = self._joints[-1].stamp_ns if self._joints else None
            return stamps

    def latest_joints(self) -> JointObservation | None:
        with self._cond:
            return self._joints[-1] if self._joints else None

    def stats(self) -> dict[str, int]:
        """Counters: frame_sets (complete), incomplete_sets, dropped_sets (overtaken before use), blocks."""
        with self._cond:
            return dict(self._stats)

    # --- internals (lock held) ---
    def _ready(self) -> bool:
        return self._closed or self._fresh >= (1 if self._initial else self.frames_per_block)

    def _sample(self) -> None:
        """Form the frame sets of every sample time that all streams have reached."""
        if not self._joints or not all(self._cameras.values()):
            return
        streams = {**self._cameras, JOINT_STATES: self._joints}
        reached = min(q[-1].stamp_ns for q in streams.values())
        if self._next_due_ns is None:
            self._next_due_ns = reached
        formed = False
        while self._next_due_ns <= reached:
            t = self._next_due_ns
            picks, resume, gap = {}, t + self.period_ns, False
            for name, q in streams.items():
                before, after = _around(q, t)
                picks[name] = pick = min((x for x in (before, after) if x is not None),
                                         key=lambda x: abs(x.stamp_ns - t))
                if abs(pick.stamp_ns - t) > self.tolerance_ns:  # a gap in this stream: no set until `after`
                    gap, resume = True, max(resume, after.stamp_ns - self.tolerance_ns)
            steps = -(-(resume - t) // self.period_ns)  # >= 1; more after a gap, a stall or a clock jump
            self._next_due_ns = t + steps * self.period_ns
            stamps = [p.stamp_ns for p in picks.values()]
            if gap or max(stamps) - min(stamps) > self.tolerance_ns:
                self._stats["incomplete_sets"] += steps
                continue
            joint = picks.pop(JOINT_STATES)
            tiled = self.video({name: f.rgb for name, f in picks.items()})
            self._sets.append(_FrameSet(t, tiled, joint))
            self._fresh += 1
            self._stats["frame_sets"] += 1
            formed = True
        if formed:
            self._cond.notify_all()


def _around(items: deque, t: int) -> tuple:
    """(newest item with stamp_ns <= t, oldest item with stamp_ns > t) of a stamp-ordered deque; either may be
    None. Scans from the newest item, so recent sample times cost a few steps."""
    after = None
    for item in reversed(items):
        if item.stamp_ns <= t:
            return item, after
        after = item
    return None, after


def block_video_fps(embodiment: Embodiment, frames_per_block: int, lead_ms: float) -> float:
    """Video rate at which a block closes `lead_ms` before the chunk computed from the previous block runs out.

    One block normally spans one chunk (24 actions at 15 Hz = 1.6 s, 8 frames at 5 fps), so the next chunk can only
    start once the current one has ended and the arm waits one inference latency. Sampling the block over
    (chunk duration - lead) lets the next chunk arrive while the current one still runs; the model then sees video
    slightly faster than its training rate. lead_ms = 0 keeps the training rate.
    """
    horizon_s = embodiment.action_horizon / embodiment.control_rate_hz
    period_s = horizon_s - lead_ms / 1000.0
    if lead_ms < 0 or period_s < 0.5 * horizon_s:
        raise ConfigError("parameter block_lead_ms", f"0 .. {500 * horizon_s:.0f} ms (half the chunk duration)",
                          lead_ms)
    return frames_per_block / period_s
