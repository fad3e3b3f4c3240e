"""execution.py: measured inference delay, dropping (never padding), seam continuity of the splice."""
import numpy as np
import pytest

from dreamzero_policy.chunk import ActionChunk
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import ChunkError, OutOfOrderStamp
from dreamzero_policy.execution import ChunkBroker
from dreamzero_policy.observation import JointObservation

FRANKA = load_embodiment("franka_droid")
DT = FRANKA.dt_ns
MAX_STEP = 0.2  # DROID's per-step limit (rad)
T_OBS = 1_000 * DT


def ramp_chunk(t_obs, start, velocity=0.05, offset=0.0, gripper=0.04, n=24):
    """A chunk moving every joint by `velocity` rad per step from `start` (+ a constant `offset`)."""
    anchor = JointObservation(t_obs, np.full(7, start), None, np.array([gripper]))
    positions = start + offset + velocity * (np.arange(n) + 1)[:, None] * np.ones(7)  # [T, 7]
    return ActionChunk(anchor, positions, np.full((n, 1), gripper), DT)


def test_first_chunk_drops_the_actions_due_during_inference():
    broker = ChunkBroker(DT, crossfade_steps=0)
    assert broker.plan(T_OBS) is None
    chunk = ramp_chunk(T_OBS, 0.0)
    plan = broker.submit(chunk, now_ns=T_OBS + 3 * DT + DT // 2)  # 3.5 steps of inference
    assert plan.delay_steps == 3 and plan.delay_ns == 3 * DT + DT // 2
    assert len(plan) == 21 and plan.start_ns == T_OBS + 3 * DT  # never zero-padded
    np.testing.assert_allclose(plan.positions, chunk.positions[3:])
    assert plan.gripper.shape == (21, 1) and plan.t_obs_ns == T_OBS


def test_plan_advances_with_time_and_runs_out():
    broker = ChunkBroker(DT)
    broker.submit(ramp_chunk(T_OBS, 0.0), T_OBS)
    assert len(broker.plan(T_OBS + 10 * DT)) == 14
    assert broker.plan(T_OBS + 10 * DT).start_ns == T_OBS + 10 * DT
    assert len(broker.plan(T_OBS + 30 * DT)) == 0


def test_a_chunk_older_than_its_horizon_leaves_nothing():
    broker = ChunkBroker(DT)
    plan = broker.submit(ramp_chunk(T_OBS, 0.0), T_OBS + 30 * DT)
    assert len(plan) == 0 and plan.delay_steps == 24
    # the next chunk fades in from its own anchor
    plan = broker.submit(ramp_chunk(T_OBS + 31 * DT, 1.0), T_OBS + 31 * DT)
    assert abs(plan.positions[0, 0] - 1.0) < 0.05 + 1e-9


def seam_jumps(broker, old_chunk, new_chunk, now_ns):
    """Largest per-step change along [old targets up to now | new plan] for the arm joints."""
    executed = broker.plan(now_ns)
    before = old_chunk.positions[:len(old_chunk) - len(executed)][-1:]  # the last old target already due
    plan = broker.submit(new_chunk, now_ns)
    path = np.vstack([before, plan.positions])
    return np.abs(np.diff(path, axis=0)).max()


@pytest.mark.parametrize("offset", [0.3, -0.3, 0.15])
def test_seam_is_continuous_within_the_step_limit(offset):
    broker = ChunkBroker(DT, crossfade_steps=4)
    old = ramp_chunk(T_OBS, 0.0)
    broker.submit(old, T_OBS + 2 * DT)
    # the next chunk was computed 10 steps later and disagrees with the executing one by `offset`
    t_obs2 = T_OBS + 10 * DT
    new = ramp_chunk(t_obs2, 0.5, offset=offset)
    jump = seam_jumps(broker, old, new, now_ns=t_obs2 + 3 * DT + 1000)
    assert jump <= MAX_STEP, jump


def test_without_a_crossfade_the_same_seam_jumps():
    broker = ChunkBroker(DT, crossfade_steps=0)
    old = ramp_chunk(T_OBS, 0.0)
    broker.submit(old, T_OBS + 2 * DT)
    t_obs2 = T_OBS + 10 * DT
    jump = seam_jumps(broker, old, ramp_chunk(t_obs2, 0.5, offset=0.3), now_ns=t_obs2 + 3 * DT + 1000)
    assert jump > MAX_STEP  # the cross-fade is what keeps the seam smooth


def test_splice_ends_on_the_new_chunk_and_fades_the_gripper():
    broker = ChunkBroker(DT, crossfade_steps=4)
    broker.submit(ramp_chunk(T_OBS, 0.0, gripper=0.04), T_OBS)
    new = ramp_chunk(T_OBS + 8 * DT, 0.4, offset=0.2, gripper=0.0)
    plan = broker.submit(new, T_OBS + 8 * DT)
    np.testing.assert_allclose(plan.positions[4:], new.positions[4:])  # after the fade: the new chunk exactly
    assert 0.0 < plan.gripper[0, 0] < 0.04 and plan.gripper[4, 0] == 0.0
    assert np.all(np.diff(plan.gripper[:, 0]) <= 0)  # closes monotonically


def test_old_chunks_and_wrong_dt_are_rejected():
    broker = ChunkBroker(DT)
    broker.submit(ramp_chunk(T_OBS, 0.0), T_OBS)
    with pytest.raises(OutOfOrderStamp, match="chunk t_obs"):
        broker.submit(ramp_chunk(T_OBS - DT, 0.0), T_OBS)
    chunk = ramp_chunk(T_OBS + DT, 0.0)
    with pytest.raises(ChunkError, match="dt_ns"):
        broker.submit(ActionChunk(chunk.anchor, chunk.positions, chunk.gripper, DT // 2), T_OBS)
    broker.clear()
    assert broker.plan(T_OBS) is None
    broker.submit(ramp_chunk(T_OBS - DT, 0.0), T_OBS)  # after clear any chunk starts afresh
