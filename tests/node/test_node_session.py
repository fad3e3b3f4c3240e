"""Session and Commander with the tiny random-weight engine: reset rules, newest block wins, checkpoint misfits."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from dreamzero_policy.block_buffer import BlockBuffer
from dreamzero_policy.chunk import ActionChunk
from dreamzero_policy.embodiment import load_embodiment, parse_embodiment
from dreamzero_policy.errors import ConfigError, InstructionError, SafetyRefusal
from dreamzero_policy.execution import ChunkBroker
from dreamzero_policy.observation import JOINT_STATES, JointObservation
from dreamzero_policy.params import PolicyConfig
from dreamzero_policy.safety import SafetyFilter
from dreamzero_policy.session import Commander, LatencyStats, Session, load_model, warm_up
from nodetest_util import feed_sets

FRANKA = load_embodiment("franka_droid")
T0 = 1_000_000_000_000


def config(checkpoint, **kw) -> PolicyConfig:
    return PolicyConfig(checkpoint=str(checkpoint), embodiment="franka_droid", device="cpu", backend="eager",
                        middleware="dds", engine_overrides={"num_steps": 1, "cfg_scale": 1.0}, **kw)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(config(tiny_checkpoint), FRANKA)


@pytest.fixture
def session(model):
    model.engine.reset()
    buffer = BlockBuffer(FRANKA, model.video, model.frames_per_block)
    return Session(model, buffer, log_period_s=0.0)


# --- load_model: a checkpoint that does not fit the embodiment is one clear error ----------------------------------

def test_loaded_model_fits_franka(model):
    assert model.frames_per_block == 8 and model.engine.action_horizon == FRANKA.action_horizon
    assert model.normalizer.state.size == 8 and model.normalizer.action.size == 8
    assert model.engine.config.num_steps == 1 and model.engine.config.cfg_scale == 1.0  # parameter overrides
    assert model.video.out_hw == (64, 128)
    assert warm_up(model) > 0 and model.engine.current_start_frame == 0


def test_misfit_statistics_is_one_config_error(misfit_checkpoint):
    with pytest.raises(ConfigError) as err:
        load_model(config(misfit_checkpoint), FRANKA)
    message = str(err.value)
    assert "\n" not in message
    assert str(misfit_checkpoint) in message and "franka_droid" in message
    assert "statistics.state" in message and "'gripper_position'" in message


def test_wrong_statistics_size_and_missing_metadata(tmp_path, tiny_checkpoint):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    meta_file = ckpt / "experiment_cfg" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["oxe_droid"]["statistics"]["action"]["joint_position"]["q99"] = [0.3] * 6
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"statistics\.action\.joint_position\.q99: expected 7 values, got 6"):
        load_model(config(ckpt), FRANKA)
    meta_file.write_text(json.dumps({"agibot": meta["oxe_droid"]}))
    with pytest.raises(ConfigError, match=r"an entry 'oxe_droid' with 'statistics'.*agibot"):
        load_model(config(ckpt), FRANKA)
    with pytest.raises(ConfigError, match="parameter checkpoint"):
        load_model(config(""), FRANKA)
    with pytest.raises(ConfigError, match="existing checkpoint directory"):
        load_model(config(tmp_path / "nowhere"), FRANKA)


def test_action_horizon_mismatch(tiny_checkpoint):
    data = FRANKA.model_dump()
    data.update(action_horizon=16)
    data["staleness"]["inference_delay_ms"] = 500
    with pytest.raises(ConfigError, match=r"action_horizon: expected 24"):
        load_model(config(tiny_checkpoint), parse_embodiment(data))


# --- the session -----------------------------------------------------------------------------------------------------

def test_reset_on_instruction_change(session):
    assert session.run_once() is None  # no block yet
    assert session.set_instruction("Pick up  the cup") is True
    t = feed_sets(session.buffer, FRANKA, T0, 1)
    first = session.run_once()
    assert first.reset_reason == "instruction changed" and first.session_call == 0
    assert first.current_start_frame == 1 and first.block_index == 0 and first.instruction == "Pick up the cup"
    assert first.raw_actions.shape == (24, 8) and len(first.chunk) == 24
    assert np.isfinite(first.chunk.positions).all()
    t = feed_sets(session.buffer, FRANKA, t, 8)
    second = session.run_once()
    assert second.reset_reason is None and second.session_call == 1 and second.current_start_frame == 3

    assert session.set_instruction("pick up the CUP") is False  # same prompt after normalisation: no reset
    assert session.set_instruction("stack the blocks") is True
    t = feed_sets(session.buffer, FRANKA, t, 1)
    third = session.run_once()
    assert third.reset_reason == "instruction changed" and third.session_call == 0
    assert third.current_start_frame == 1 and third.block_index == 0 and third.instruction == "stack the blocks"
    assert third.index == 2

    session.request_reset("reset requested")
    feed_sets(session.buffer, FRANKA, t, 1)
    fourth = session.run_once()
    assert fourth.reset_reason == "reset requested" and fourth.session_call == 0
    assert session.resets_by_reason() == {"instruction changed": 2, "reset requested": 1}
    with pytest.raises(InstructionError):
        session.set_instruction("   ")
    for stage in ("inference", "normalize_state", "decode_chunk", "engine.denoise", "engine.total"):
        assert session.latency.percentiles(stage)[0] > 0, stage


def test_no_instruction_no_model_call(session):
    feed_sets(session.buffer, FRANKA, T0, 1)
    assert session.run_once() is None
    assert session.stats()["blocks_without_instruction"] == 1 and session.stats()["chunks"] == 0


def test_newest_block_wins(session):
    session.set_instruction("pick up the cup")
    t = feed_sets(session.buffer, FRANKA, T0, 1)
    session.run_once()
    # inference was "slow": three blocks' worth of frame sets arrived meanwhile
    t_end = feed_sets(session.buffer, FRANKA, t, 24)
    result = session.run_once()
    assert result.chunk.anchor.stamp_ns == t_end - 200_000_000  # built from the newest sets
    assert session.stats()["blocks_skipped"] == 2
    assert session.buffer.stats()["dropped_sets"] == 16
    assert session.run_once() is None  # nothing queued behind it


def test_chunk_of_a_reset_episode_is_discarded(session):
    session.set_instruction("pick up the cup")
    feed_sets(session.buffer, FRANKA, T0, 1)
    real_step = session.model.engine.step

    def step_then_reset(*args, **kw):  # an instruction arrives while the model runs
        out = real_step(*args, **kw)
        session.set_instruction("open the drawer")
        return out

    session.model.engine.step = step_then_reset
    try:
        assert session.run_once() is None
    finally:
        del session.model.engine.step
    assert session.stats()["chunks_discarded"] == 1 and session.stats()["chunks"] == 0


def test_worker_thread_hands_chunks_on(session):
    got: list = []
    done = threading.Event()
    session.on_chunk = lambda r: (got.append(r), done.set())
    session.set_instruction("pick up the cup")
    session.start()
    try:
        feed_sets(session.buffer, FRANKA, T0, 1)
        assert done.wait(30), "no chunk from the worker thread"
    finally:
        assert session.stop(timeout_s=30)
    assert got[0].reset_reason == "instruction changed" and not session.running


# --- the commander ---------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: int):
        self.t = t

    def __call__(self) -> int:
        return self.t


def make_commander(streaming: bool = False):
    clock = Clock(T0)
    current = JointObservation(T0, FRANKA.home, None, FRANKA.gripper_open)
    stamps = {name: T0 for name in [c.name for c in FRANKA.cameras] + [JOINT_STATES]}
    sent, holds = [], []
    commander = Commander(FRANKA, ChunkBroker(FRANKA.dt_ns), SafetyFilter(FRANKA, log_period_s=60),
                          current=lambda: current, stream_stamps=lambda: stamps,
                          send=lambda cmd, cur: sent.append(cmd), now_ns=clock, streaming=streaming,
                          on_hold=holds.append, latency=LatencyStats())
    commander.enable()
    return commander, clock, stamps, sent, holds


def small_chunk(t_obs: int) -> ActionChunk:
    anchor = JointObservation(t_obs, FRANKA.home, None, FRANKA.gripper_open)
    steps = np.linspace(0.0, 0.2, 24)[:, None] * np.ones(7)  # a slow, smooth motion
    return ActionChunk(anchor, FRANKA.home + steps, np.repeat(FRANKA.gripper_open[None], 24, 0), FRANKA.dt_ns)


def test_commander_sends_a_trajectory_per_chunk_and_holds_once_when_stale():
    commander, clock, stamps, sent, holds = make_commander()
    clock.t = T0 + 3 * FRANKA.dt_ns + 1000  # three actions already due on arrival
    stamps.update({name: clock.t - 10_000_000 for name in stamps})
    cmd = commander.submit(small_chunk(T0))
    assert not cmd.held and len(cmd.positions) == 21 and sent == [cmd]
    assert commander.tick() is None and len(sent) == 1  # the controller executes; nothing re-sent
    clock.t += 600_000_000  # every stream silent for 600 ms > the camera (500) and joint (200) limits
    hold = commander.tick()
    assert hold.held and len(hold.positions) == 1 and sent[-1] is hold
    assert set(holds[0]) == {"STALE_CAMERA", "STALE_JOINTS"}
    for _ in range(5):
        clock.t += FRANKA.dt_ns
        commander.tick()
    assert len(sent) == 2  # the hold is sent once; then nothing
    counts = commander.safety.counters()
    assert counts["STALE_CAMERA"] == 6 and counts["STALE_JOINTS"] == 6  # counted on every tick while stale


def test_commander_holds_when_the_plan_runs_out_and_on_deactivate():
    commander, clock, stamps, sent, holds = make_commander()
    commander.submit(small_chunk(T0))
    clock.t = T0 + 25 * FRANKA.dt_ns
    for name in stamps:
        stamps[name] = clock.t
    hold = commander.tick()
    assert hold.held and hold.reasons == (SafetyRefusal.NO_TARGETS,)
    assert commander.tick() is None and len(sent) == 2
    commander.submit(small_chunk(clock.t))
    assert not commander.holding and len(sent) == 3
    final = commander.disable()
    assert final.held and len(sent) == 4
    assert commander.submit(small_chunk(clock.t + 1)) is None and len(sent) == 4  # disabled: nothing sent


def test_commander_streams_setpoints():
    commander, clock, stamps, sent, _ = make_commander(streaming=True)
    commander.submit(small_chunk(T0))
    for _ in range(3):
        clock.t += FRANKA.dt_ns
        for name in stamps:
            stamps[name] = clock.t
        assert not commander.tick().held
    assert len(sent) == 4 and len(sent[-1].positions) == 21
