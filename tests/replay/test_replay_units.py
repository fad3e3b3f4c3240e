"""The replay's pieces on their own: the bag-time middleware, ground-truth timelines, metrics."""
from __future__ import annotations

import numpy as np
import pytest

from dreamzero_policy import msgs
from dreamzero_policy.middleware import MiddlewareError, QoS
from dreamzero_policy.replay.groundtruth import CommandTimeline, Timeline
from dreamzero_policy.replay.metrics import ErrorAccumulator, psnr, ssim
from dreamzero_policy.replay.middleware import BagClock, BagTimeMiddleware

S = 1_000_000_000


# --- middleware ---

def test_timers_fire_on_the_bag_clock_in_order():
    clock = BagClock(10 * S)
    fired = []
    mw = BagTimeMiddleware(clock)
    mw.create_timer(0.5, lambda: fired.append(("a", clock.now_ns())))
    b = mw.create_timer(0.25, lambda: fired.append(("b", clock.now_ns())))
    mw.run_timers_until(11 * S)
    assert fired == [("b", 10_250_000_000), ("a", 10_500_000_000), ("b", 10_500_000_000), ("b", 10_750_000_000),
                     ("a", 11 * S), ("b", 11 * S)]
    b.cancel()
    fired.clear()
    mw.run_timers_until(12 * S)
    assert fired == [("a", 11_500_000_000), ("a", 12 * S)] and clock.now_ns() == 12 * S


def test_a_long_silence_skips_ticks_instead_of_running_millions():
    clock = BagClock(0)
    mw = BagTimeMiddleware(clock)
    count = []
    mw.create_timer(0.001, lambda: count.append(1))
    mw.run_timers_until(3600 * S)  # an hour of silence at 1 kHz
    assert len(count) == mw.MAX_CATCH_UP_TICKS + 1 and mw.ticks_skipped > 3_000_000


def test_subscriptions_publishers_and_services():
    clock = BagClock(5)
    published = []
    mw = BagTimeMiddleware(clock, node_name="policy", namespace="/robot",
                           sink=lambda *args: published.append(args))
    got = []
    sub = mw.create_subscription("joint_states", "sensor_msgs/msg/JointState", got.append, QoS.SENSOR_DATA)
    assert sub.topic == "/robot/joint_states" and mw.subscribed("/robot/joint_states")
    mw.create_subscription("/raw", "std_msgs/msg/String", got.append, QoS.RELIABLE, raw=True)
    text = msgs.msg_class("std_msgs/msg/String")(data="hi")
    assert mw.deliver("/raw", text) == 1 and bytes(got[-1]) == msgs.serialize(text)
    mw.create_subscription("/boom", "std_msgs/msg/String", lambda m: 1 / 0, QoS.RELIABLE)
    mw.deliver("/boom", text)  # a raising callback is counted, as on the other backends
    assert mw.callback_errors == 1
    pub = mw.create_publisher("~/out", "std_msgs/msg/String", QoS.RELIABLE)
    pub.publish(text)
    assert published == [("/robot/policy/out", "std_msgs/msg/String", text, 5)]
    mw.create_service("~/reset", "std_srvs/srv/Trigger", lambda request: "done")
    assert mw.call_service("~/reset", None) == "done"
    with pytest.raises(MiddlewareError):
        mw.create_client("/x", "std_srvs/srv/Trigger")
    mw.shutdown()
    with pytest.raises(MiddlewareError):
        pub.publish(text)


# --- ground truth ---

def _trajectory(stamp_ns: int, names, points, dt_ns=100_000_000):
    types = msgs.typestore().types
    point, duration = types["trajectory_msgs/msg/JointTrajectoryPoint"], types["builtin_interfaces/msg/Duration"]
    empty = np.zeros(0)
    return types["trajectory_msgs/msg/JointTrajectory"](header=msgs.header(stamp_ns), joint_names=list(names), points=[
        point(positions=np.asarray(p, float), velocities=empty, accelerations=empty, effort=empty,
              time_from_start=duration(sec=0, nanosec=(i + 1) * dt_ns)) for i, p in enumerate(points)])


def test_a_newer_trajectory_replaces_the_rest_of_the_older_one_after_a_hold():
    builder = CommandTimeline(["a", "b"])
    builder.add(0, "trajectory_msgs/msg/JointTrajectory", _trajectory(S, ["b", "a"], [[10, 1], [20, 2], [30, 3]]))
    # Starts at 1.15 s (stamped): replaces the point due at 1.2 s and later.
    builder.add(5, "trajectory_msgs/msg/JointTrajectory", _trajectory(1_150_000_000, ["a"], [[7], [8]]))
    timeline = builder.timeline()
    values, valid = timeline.sample(np.array([1_100_000_000, 1_150_000_000, 1_250_000_000, 1_350_000_000,
                                              1_300_000_000, 2 * S]))
    np.testing.assert_allclose(values[:4, 0], [1.0, 1.0, 7.0, 8.0])  # holds 1 until the new start, then moves
    np.testing.assert_allclose(values[[0, 1, 2, 4], 1], [10, 15, 25, 30])  # joint b keeps its own trajectory
    assert not valid[3, 1] and not valid[5].any()  # after the last point: no ground truth (never extrapolated)
    # Unstamped (0): the trajectory starts when it was received.
    builder = CommandTimeline(["a"])
    builder.add(3 * S, "trajectory_msgs/msg/JointTrajectory", _trajectory(0, ["a"], [[1], [2]]))
    assert builder.timeline().span("a") == (3_100_000_000, 3_200_000_000)


def test_setpoint_commands_and_joint_states():
    types = msgs.typestore().types
    builder = CommandTimeline(["a", "b"])
    builder.add(S, "std_msgs/msg/Float64MultiArray", types["std_msgs/msg/Float64MultiArray"](
        layout=types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=np.array([1.0, 2.0])),
        joint_order=["b", "a"])
    builder.add(2 * S, "sensor_msgs/msg/JointState", types["sensor_msgs/msg/JointState"](
        header=msgs.header(0), name=["a", "b"], position=np.array([4.0, 6.0]), velocity=np.zeros(0),
        effort=np.zeros(0)))
    values, valid = builder.timeline().sample(np.array([S, 1_500_000_000, 2 * S]))
    np.testing.assert_allclose(values, [[2, 1], [3, 3.5], [4, 6]])
    assert valid.all()
    state = types["sensor_msgs/msg/JointState"](header=msgs.header(7 * S), name=["x", "a"],
                                                position=np.array([0.0, 5.0]), velocity=np.zeros(0),
                                                effort=np.zeros(0))
    timeline = Timeline.from_joint_states(["a", "b"], [(9 * S, state)])
    assert timeline.span("a") == (7 * S, 7 * S) and timeline.span("b") is None
    assert Timeline.from_joint_states(["a"], [(9 * S, state)], use_log_time=True).span("a") == (9 * S, 9 * S)


# --- metrics ---

def test_accumulators_pool_exactly():
    rng = np.random.default_rng(0)
    joints, horizon = ["j1", "j2", "g"], 4
    parts = [ErrorAccumulator(joints, horizon, ["g"]) for _ in range(2)]
    errors = []
    for acc in parts:
        for _ in range(3):
            pred, truth = rng.normal(size=(horizon, 3)), rng.normal(size=(horizon, 3))
            valid = rng.random((horizon, 3)) > 0.2
            acc.add(pred, truth, valid, (pred[:, 2:] > 0, truth[:, 2:] > 0))
            errors.append(np.where(valid, pred - truth, np.nan))
    pooled = ErrorAccumulator(joints, horizon, ["g"])
    for acc in parts:
        pooled.merge(acc)
    e = np.stack(errors)  # [chunks, T, K]
    summary = pooled.summary(["j1", "j2"])
    assert summary["chunks"] == 6
    for k, joint in enumerate(joints):
        assert summary["per_joint"][joint]["mae"] == pytest.approx(np.nanmean(np.abs(e[..., k])))
        assert summary["per_joint"][joint]["rmse"] == pytest.approx(np.sqrt(np.nanmean(e[..., k] ** 2)))
        assert summary["per_joint"][joint]["final_step_error"] == pytest.approx(np.nanmean(np.abs(e[:, -1, k])))
    assert summary["arm"]["mae"] == pytest.approx(np.nanmean(np.abs(e[..., :2])))
    assert summary["per_step"]["mae"][1] == pytest.approx(np.nanmean(np.abs(e[:, 1, :2])))


def test_psnr_and_ssim():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert psnr(image, image) == float("inf") and ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image.astype(int) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    assert 30 < psnr(image, noisy) < 40 and 0.5 < ssim(image, noisy) < 1.0
    assert ssim(image, 255 - image) < 0.0 < ssim(image, noisy)
