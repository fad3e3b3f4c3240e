"""safety.py: every rule, the watchdog, the latched hold, counters and rate-limited logging."""
import logging

import numpy as np
import pytest

from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import SafetyRefusal
from dreamzero_policy.execution import Plan
from dreamzero_policy.observation import JOINT_STATES, example_observation
from dreamzero_policy.safety import SafetyFilter, Watchdog, hold_trajectory

FRANKA = load_embodiment("franka_droid")
DT = FRANKA.dt_ns
MS = 1_000_000
NOW = 100_000 * MS
CURRENT = example_observation(FRANKA, NOW - 10 * MS)
FRESH = {**{c.name: NOW - 20 * MS for c in FRANKA.cameras}, JOINT_STATES: NOW - 10 * MS}


def plan_from(positions, gripper=None, delay_ms=300):
    positions = np.atleast_2d(positions)
    gripper = np.full((len(positions), 1), 0.02) if gripper is None else gripper
    return Plan(NOW - DT // 2, DT, positions, gripper, NOW - delay_ms * MS, delay_ms * MS, 4)


def small_steps(n=5, step=0.01):
    return CURRENT.positions + step * (np.arange(n) + 1)[:, None]  # [n, 7]


def test_a_clean_plan_passes_unchanged():
    plan = plan_from(small_steps())
    command = SafetyFilter(FRANKA).apply(plan, CURRENT, NOW, FRESH)
    assert not command.held and command.reasons == ()
    np.testing.assert_array_equal(command.positions, plan.positions)
    np.testing.assert_array_equal(command.gripper, plan.gripper)
    assert (command.start_ns, command.dt_ns) == (plan.start_ns, plan.dt_ns)


def test_targets_are_clamped_to_position_limits():
    current = example_observation(FRANKA, NOW)
    current = type(current)(NOW, np.array([2.7, 0, 0, -1.0, 0, 2.0, 0]), None, current.gripper)
    target = current.positions + [0.1, 0, 0, 0, 0, 0, 0]  # j1 beyond +2.7437
    command = SafetyFilter(FRANKA).apply(plan_from(target), current, NOW, FRESH)
    assert command.reasons == (SafetyRefusal.POSITION_LIMIT,) and not command.held
    assert command.positions[0, 0] == pytest.approx(2.7437)


def test_gripper_is_clamped_to_its_range():
    command = SafetyFilter(FRANKA).apply(plan_from(small_steps(1), gripper=np.array([[0.07]])), CURRENT, NOW, FRESH)
    assert command.gripper[0, 0] == 0.04 and SafetyRefusal.POSITION_LIMIT in command.reasons


def test_step_limit_where_max_step_binds():
    # j5: max_velocity 5.26 rad/s * 1/15 s = 0.35 rad > max_step 0.2 rad, so the 0.2 rad step limit binds
    target = CURRENT.positions.copy()
    target[4] += 0.5
    command = SafetyFilter(FRANKA).apply(plan_from(np.tile(target, (3, 1))), CURRENT, NOW, FRESH)
    assert command.reasons == (SafetyRefusal.STEP_LIMIT,)
    np.testing.assert_allclose(command.positions[:, 4] - CURRENT.positions[4], [0.2, 0.4, 0.5])


def test_velocity_limit_where_it_binds_first():
    # j1: 2.62 rad/s * 1/15 s = 0.1747 rad per step < 0.2 rad
    target = CURRENT.positions.copy()
    target[0] += 0.3
    command = SafetyFilter(FRANKA).apply(plan_from(np.tile(target, (2, 1))), CURRENT, NOW, FRESH)
    assert command.reasons == (SafetyRefusal.VELOCITY_LIMIT,)
    np.testing.assert_allclose(command.positions[:, 0] - CURRENT.positions[0], [2.62 / 15, 0.3])
    assert np.abs(np.diff(np.vstack([CURRENT.positions, command.positions]), axis=0)).max() <= 0.2 + 1e-12


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets_hold(bad):
    targets = small_steps()
    targets[3, 2] = bad
    command = SafetyFilter(FRANKA).apply(plan_from(targets), CURRENT, NOW, FRESH)
    assert command.held and command.reasons == (SafetyRefusal.NON_FINITE,)
    np.testing.assert_array_equal(command.positions, CURRENT.positions[None])
    assert command.gripper is None


def test_stale_chunk_holds():
    command = SafetyFilter(FRANKA).apply(plan_from(small_steps(), delay_ms=1200), CURRENT, NOW, FRESH)
    assert command.held and command.reasons == (SafetyRefusal.STALE_CHUNK,)


def test_empty_or_missing_plan_holds():
    safety = SafetyFilter(FRANKA)
    assert safety.apply(None, CURRENT, NOW, FRESH).reasons == (SafetyRefusal.NO_TARGETS,)
    assert safety.apply(plan_from(np.zeros((0, 7)), np.zeros((0, 1))), CURRENT, NOW, FRESH).held


@pytest.mark.parametrize("stream,reason", [("exterior_2", SafetyRefusal.STALE_CAMERA),
                                           (JOINT_STATES, SafetyRefusal.STALE_JOINTS)])
def test_stale_streams_hold(stream, reason):
    stamps = {**FRESH, stream: NOW - 2000 * MS}
    command = SafetyFilter(FRANKA).apply(plan_from(small_steps()), CURRENT, NOW, stamps)
    assert command.held and command.reasons == (reason,)


def test_watchdog_reports_ages_and_streams_never_seen():
    watchdog = Watchdog(FRANKA)
    assert watchdog.stale(NOW, FRESH) == {}
    stale = watchdog.stale(NOW, {**FRESH, "wrist": NOW - 600 * MS, JOINT_STATES: None})
    assert stale == {"wrist": pytest.approx(600.0), JOINT_STATES: float("inf")}
    assert set(watchdog.stale(NOW, {})) == {"wrist", "exterior_1", "exterior_2", JOINT_STATES}


def test_hold_is_latched_until_targets_flow_again():
    safety = SafetyFilter(FRANKA)
    first = safety.apply(None, CURRENT, NOW, FRESH)
    drifted = type(CURRENT)(NOW, CURRENT.positions - 0.05, None, CURRENT.gripper)  # e.g. sagging under load
    second = safety.apply(None, drifted, NOW + DT, FRESH)
    np.testing.assert_array_equal(second.positions, first.positions)
    assert not safety.apply(plan_from(small_steps()), CURRENT, NOW, FRESH).held
    np.testing.assert_array_equal(safety.apply(None, drifted, NOW, FRESH).positions, drifted.positions[None])


def test_hold_trajectory():
    command = hold_trajectory(CURRENT.positions, NOW, DT)
    assert command.positions.shape == (1, 7) and command.held and command.gripper is None
    assert command.start_ns == NOW and command.dt_ns == DT


def test_counters_and_rate_limited_logging(caplog):
    safety = SafetyFilter(FRANKA, log_period_s=1.0)
    with caplog.at_level(logging.INFO, logger="dreamzero_policy.safety"):
        for t in NOW + np.arange(10) * 50 * MS:  # 10 refusals within 0.5 s -> logged once
            safety.apply(None, CURRENT, int(t), {s: int(t) - 10 * MS for s in FRESH})
        later = NOW + 1100 * MS  # after the period: logged again with the count
        safety.apply(None, CURRENT, later, {s: later - 10 * MS for s in FRESH})
    records = [r for r in caplog.records if "NO_TARGETS" in r.getMessage()]
    assert len(records) == 2 and records[0].levelno == logging.WARNING
    assert "10 time(s) since the last report" in records[1].getMessage()
    counters = safety.counters()
    assert counters["NO_TARGETS"] == 11 and counters["NON_FINITE"] == 0
    assert set(counters) == {reason.name for reason in SafetyRefusal}


def test_refusal_reasons_have_codes_and_messages():
    assert len({r.code for r in SafetyRefusal}) == len(SafetyRefusal)
    assert SafetyRefusal.STALE_CHUNK.holds and not SafetyRefusal.STEP_LIMIT.holds
    assert all(r.message for r in SafetyRefusal)
