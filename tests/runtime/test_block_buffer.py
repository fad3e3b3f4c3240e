"""block_buffer.py: timestamp sync, video-rate sampling, reset, newest-wins, a camera that stops, threads."""
import threading

import numpy as np
import pytest

from dreamzero_policy.block_buffer import BlockBuffer
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import ObservationError, OutOfOrderStamp
from dreamzero_policy.observation import JOINT_STATES, CameraFrame, JointObservation
from dreamzero_policy.transforms import VideoTransform

FRANKA = load_embodiment("franka_droid")
AGIBOT = load_embodiment("agibot_g1")
MS = 1_000_000
T0 = 10_000 * MS
OUT_HW = (32, 64)  # a small model frame keeps the tests light


def make_buffer(embodiment=FRANKA, frames_per_block=8):
    return BlockBuffer(embodiment, VideoTransform.from_embodiment(embodiment, OUT_HW), frames_per_block)


def events(embodiment, start_s, end_s, camera_hz=30.0, joint_hz=100.0, gaps=None):
    """Sorted (stamp_ns, stream) events; cameras have different phases; gaps: {stream: (from_s, to_s)}."""
    gaps = gaps or {}
    out = []
    streams = [(c.name, camera_hz, 3 * MS * k) for k, c in enumerate(embodiment.cameras)]
    for name, hz, phase in streams + [(JOINT_STATES, joint_hz, 0)]:
        period = round(1e9 / hz)
        first = -(-(round(start_s * 1e9) - phase) // period)  # ceil
        for k in range(first, int((end_s * 1e9 - phase) // period) + 1):
            t = k * period + phase
            lo, hi = gaps.get(name, (np.inf, np.inf))
            if not lo * 1e9 <= t < hi * 1e9:
                out.append((T0 + t, name))
    return sorted(out)


def play(buffer, embodiment, evts, consume=True):
    """Feed events in stamp order; poll for blocks after each one (like a fast consumer)."""
    colours = {c.name: 40 * (k + 1) for k, c in enumerate(embodiment.cameras)}
    blocks = []
    for stamp, name in evts:
        if name == JOINT_STATES:
            buffer.add_joints(JointObservation(stamp, embodiment.home, None, embodiment.gripper_open))
        else:
            buffer.add_frame(CameraFrame(name, stamp, np.full((18, 32, 3), colours[name], np.uint8)))
        if consume and (block := buffer.next_block()) is not None:
            blocks.append(block)
    return blocks


def test_blocks_follow_the_video_rate_after_one_initial_frame():
    buffer = make_buffer()
    blocks = play(buffer, FRANKA, events(FRANKA, 0, 3.4))
    assert [b.index for b in blocks] == [0, 1, 2]
    assert blocks[0].is_reset and blocks[0].frames.shape == (1, *OUT_HW, 3)
    for block in blocks[1:]:
        assert block.frames.shape == (8, *OUT_HW, 3) and block.frames.dtype == np.uint8
        np.testing.assert_array_equal(np.diff(block.stamps_ns), 200 * MS)  # 5 fps for DROID
    # consecutive blocks continue the grid: 1 initial + 8 + 8 frames, no frame used twice or skipped
    all_stamps = np.concatenate([b.stamps_ns for b in blocks])
    np.testing.assert_array_equal(np.diff(all_stamps), 200 * MS)
    for block in blocks:
        assert abs(block.joint.stamp_ns - block.stamps_ns[-1]) <= FRANKA.video.sync_tolerance_ms * MS
    frame = blocks[1].frames[-1]  # tiled: wrist on top, exterior_1 | exterior_2 below
    assert (frame[:16] == 40).all() and (frame[16:, :32] == 80).all() and (frame[16:, 32:] == 120).all()
    assert buffer.stats() == {"frame_sets": 17, "incomplete_sets": 0, "dropped_sets": 0, "blocks": 3}


def test_agibot_samples_at_10_fps():
    buffer = make_buffer(AGIBOT)
    blocks = play(buffer, AGIBOT, events(AGIBOT, 0, 1.0))
    assert [len(b.stamps_ns) for b in blocks] == [1, 8]
    np.testing.assert_array_equal(np.diff(blocks[1].stamps_ns), 100 * MS)
    assert (blocks[1].frames[0][16:, 32:] == 0).all()  # the black cell


def test_a_camera_that_stops_makes_blocks_incomplete():
    buffer = make_buffer()
    blocks = play(buffer, FRANKA, events(FRANKA, 0, 6.0, gaps={"exterior_2": (1.0, 99)}))
    assert [b.index for b in blocks] == [0]  # block 1 needs frames up to 1.6 s
    stamps = buffer.last_stamps()
    assert stamps["exterior_2"] < T0 + 1000 * MS and stamps["wrist"] > T0 + 5900 * MS  # for the watchdog
    assert stamps[JOINT_STATES] == T0 + 6000 * MS


@pytest.mark.parametrize("streams", [["exterior_1"], ["wrist", "exterior_1", "exterior_2", JOINT_STATES]])
def test_a_gap_drops_only_the_sets_it_covers(streams):
    buffer = make_buffer()
    blocks = play(buffer, FRANKA, events(FRANKA, 0, 4.0, gaps={s: (1.05, 1.55) for s in streams}))
    assert buffer.stats()["incomplete_sets"] == 2  # the sets at 1.2 s and 1.4 s
    stamps = np.concatenate([b.stamps_ns for b in blocks]) - T0
    assert 1200 * MS not in stamps and 1400 * MS not in stamps
    assert len(blocks) == 3  # the stream recovers


def test_a_clock_jump_skips_the_sample_times_in_between():
    buffer = make_buffer()
    play(buffer, FRANKA, events(FRANKA, 0, 1.0))
    blocks = play(buffer, FRANKA, events(FRANKA, 10_000.0, 10_002.0))  # e.g. a paused simulation resumes
    assert [len(b.stamps_ns) for b in blocks] == [8]
    assert buffer.stats()["incomplete_sets"] == pytest.approx(5 * 9999, abs=10)


def test_slow_consumer_gets_the_newest_sets():
    buffer = make_buffer()
    assert len(play(buffer, FRANKA, events(FRANKA, 0, 0.1))) == 1  # the initial frame
    play(buffer, FRANKA, events(FRANKA, 0.11, 4.0), consume=False)  # 19 sets, nobody consumes
    block = buffer.next_block()
    np.testing.assert_array_equal(block.stamps_ns - T0, np.arange(12, 20) * 200 * MS)  # the newest 8
    assert buffer.stats()["dropped_sets"] == 11
    assert buffer.next_block() is None


def test_reset_gives_one_fresh_initial_frame():
    buffer = make_buffer()
    play(buffer, FRANKA, events(FRANKA, 0, 2.0))
    buffer.reset()
    assert buffer.next_block() is None and buffer.last_stamps()["wrist"] is None  # all data forgotten
    blocks = play(buffer, FRANKA, events(FRANKA, 2.01, 2.5))
    assert blocks[0].index == 0 and blocks[0].frames.shape[0] == 1
    assert blocks[0].stamps_ns[0] >= T0 + 2010 * MS  # from data received after the reset


def test_reset_accepts_a_restarted_clock():
    buffer = make_buffer()
    play(buffer, FRANKA, events(FRANKA, 0, 2.0))
    buffer.reset()  # a simulator episode restarts its clock
    blocks = play(buffer, FRANKA, events(FRANKA, 0, 1.7))
    assert [len(b.stamps_ns) for b in blocks] == [1, 8]


def test_backwards_stamps_and_unknown_cameras_are_rejected():
    buffer = make_buffer()
    frame = np.zeros((18, 32, 3), np.uint8)
    buffer.add_frame(CameraFrame("wrist", T0, frame))
    with pytest.raises(OutOfOrderStamp, match="wrist"):
        buffer.add_frame(CameraFrame("wrist", T0 - MS, frame))
    buffer.add_joints(JointObservation(T0, FRANKA.home, None, FRANKA.gripper_open))
    with pytest.raises(OutOfOrderStamp, match=JOINT_STATES):
        buffer.add_joints(JointObservation(T0, FRANKA.home, None, FRANKA.gripper_open))
    with pytest.raises(ObservationError, match="wrist_left"):
        buffer.add_frame(CameraFrame("wrist_left", T0, frame))
    assert buffer.last_stamps()["wrist"] == T0


def test_producer_and_consumer_threads():
    """The producer streams on while the consumer holds the initial block (taken after the first 0.5 s: a producer
    that finished first would leave only the newest set, one initial frame, and no later block)."""
    buffer = make_buffer()
    taken = threading.Event()

    def produce():
        play(buffer, FRANKA, events(FRANKA, 0, 0.5), False)
        taken.wait(timeout=30)
        play(buffer, FRANKA, [e for e in events(FRANKA, 0, 3.4) if e[0] > T0 + 500 * MS], False)

    producer = threading.Thread(target=produce)
    producer.start()
    first = buffer.next_block(timeout_s=5.0)
    taken.set()
    producer.join(timeout=60)  # a loaded machine: the producer is plain Python, not paced
    assert not producer.is_alive()
    assert first is not None and first.index == 0
    later = buffer.next_block(timeout_s=1.0)
    assert later is not None and later.frames.shape[0] == 8

    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(buffer.next_block(timeout_s=None)))
    waiter.start()
    buffer.close()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and waiter_result == [None]


def test_block_lead_raises_the_video_rate_so_chunks_overlap():
    from dreamzero_policy.block_buffer import block_video_fps
    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.errors import ConfigError

    emb = load_embodiment("franka_droid")
    assert block_video_fps(emb, 8, 0.0) == pytest.approx(5.0)  # the training rate: one block per 1.6 s chunk
    fps = block_video_fps(emb, 8, 300.0)
    assert 8 / fps == pytest.approx(1.3)  # the next block closes 300 ms before the chunk ends
    with pytest.raises(ConfigError, match="block_lead_ms"):
        block_video_fps(emb, 8, 1000.0)
