"""The trajectory controller: rejection of bad trajectories, interpolation, speed and position limits."""
import numpy as np
import pytest

from sim import robot
from sim.controller import JointTrajectory, TrajectoryController, TrajectoryRejected, _Spline

DT = 1.0 / 240


def arm_controller() -> TrajectoryController:
    controller = TrajectoryController("fr3_arm_controller", robot.ARM_JOINTS, robot.ARM_LOWER, robot.ARM_UPPER,
                                      robot.ARM_MAX_VELOCITY, robot.ARM_MAX_ACCELERATION)
    controller.reset(robot.HOME)
    return controller


def trajectory(positions, times_ns=None, names=robot.ARM_JOINTS, velocities=None) -> JointTrajectory:
    positions = np.asarray(positions, dtype=np.float64)
    if times_ns is None:
        times_ns = np.round(np.arange(1, len(positions) + 1) / 15 * 1e9).astype(np.int64)
    return JointTrajectory(tuple(names), np.asarray(times_ns), positions, velocities)


def near_home(n=3) -> np.ndarray:
    return robot.HOME + np.linspace(0.01, 0.05, n)[:, None]  # [n, 7]


BAD = {
    "unknown joint": (lambda: trajectory(near_home(), names=robot.ARM_JOINTS[:6] + ("panda_joint7",)),
                      "unknown joint names ['panda_joint7']"),
    "missing joint": (lambda: trajectory(near_home()[:, :6], names=robot.ARM_JOINTS[:6]), "exactly once"),
    "duplicate joint": (lambda: trajectory(near_home(), names=robot.ARM_JOINTS[:6] + ("fr3_joint1",)),
                        "exactly once"),
    "non-monotonic time": (lambda: trajectory(near_home(), times_ns=[66_666_667, 200_000_000, 133_333_333]),
                           "strictly increasing"),
    "repeated time": (lambda: trajectory(near_home(), times_ns=[66_666_667, 66_666_667, 133_333_333]),
                      "strictly increasing"),
    "zero time": (lambda: trajectory(near_home(), times_ns=[0, 66_666_667, 133_333_333]), "positive"),
    "NaN position": (lambda: trajectory(np.where(np.eye(3, 7, 2) > 0, np.nan, near_home())),
                     "positions of fr3_joint3 at point 0 is nan"),
    "inf position": (lambda: trajectory(np.where(np.eye(3, 7, 3) > 0, np.inf, near_home())), "must be finite"),
    "above limit": (lambda: trajectory(np.vstack([near_home(2), np.r_[robot.HOME[:3], -0.1, robot.HOME[4:]]])),
                    "fr3_joint4 at point 2 is -0.1000, outside its limits [-3.0421, -0.1518]"),
    "below limit": (lambda: trajectory(np.r_[robot.HOME[:5], 0.5, robot.HOME[6]][None]),
                    "fr3_joint6 at point 0 is 0.5000, outside its limits [0.5445, 4.5169]"),
    "NaN velocity": (lambda: trajectory(near_home(), velocities=np.full((3, 7), np.nan)), "velocities of"),
    "too fast": (lambda: trajectory(near_home(), velocities=np.full((3, 7), 3.0)), "beyond its limit 2.6200"),
    "ragged points": (lambda: JointTrajectory(robot.ARM_JOINTS, np.array([66_666_667, 133_333_333]),
                                              [robot.HOME, robot.HOME[:6]]), "unequal numbers of positions"),
    "wrong width": (lambda: JointTrajectory(robot.ARM_JOINTS, np.array([66_666_667]), np.zeros((1, 6))),
                    "expected (1, 7)"),
    "no points": (lambda: JointTrajectory(robot.ARM_JOINTS, np.zeros(0, np.int64), np.zeros((0, 7))), "no points"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_trajectory_is_rejected_with_one_message_and_the_arm_stops(case):
    make, message = BAD[case]
    controller = arm_controller()
    controller.command(trajectory(near_home()))  # a good trajectory is running ...
    for _ in range(10):
        controller.update(DT)
    before, velocity = controller.setpoint.copy(), controller.setpoint_velocity.copy()
    with pytest.raises(TrajectoryRejected) as error:
        controller.command(make())  # ... and a bad one stops it
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    for _ in range(60):  # braking at the acceleration limit takes a few steps
        controller.update(DT)
    assert not controller.active
    stopping_distance = velocity ** 2 / (2 * robot.ARM_MAX_ACCELERATION) + np.abs(velocity) * DT
    assert np.all(np.abs(controller.setpoint - before) <= stopping_distance + 1e-9)
    held = controller.setpoint.copy()
    for _ in range(100):
        np.testing.assert_array_equal(controller.update(DT), held)


def test_joint_order_is_mapped_by_name():
    controller = arm_controller()
    target = near_home(1)[0]
    order = [6, 5, 4, 3, 2, 1, 0]
    controller.command(trajectory(target[order][None], names=[robot.ARM_JOINTS[i] for i in order]))
    for _ in range(100):
        controller.update(DT)
    np.testing.assert_allclose(controller.setpoint, target, atol=1e-9)


def test_spline_interpolation():
    times, positions = np.array([0.0, 1.0, 2.0]), np.array([[0.0], [1.0], [3.0]])
    linear = _Spline(times, positions, None)
    assert linear(0.5)[0] == pytest.approx(0.5) and linear(1.5)[0] == pytest.approx(2.0)
    assert linear(5.0)[0] == 3.0 and linear(-1.0)[0] == 0.0  # holds the ends
    cubic = _Spline(times[:2], positions[:2], np.zeros((2, 1)))
    assert cubic(0.5)[0] == pytest.approx(0.5)  # symmetric ease in / ease out
    assert (cubic(1.0 - 1e-6)[0] - cubic(1.0 - 2e-6)[0]) / 1e-6 == pytest.approx(0.0, abs=1e-4)  # arrives at rest


def test_ramp_is_followed_closely_and_ends_on_the_point():
    controller = arm_controller()
    target = robot.HOME + 0.1
    controller.command(trajectory(target[None], times_ns=[1_000_000_000]))  # 0.1 rad/s, linear
    for _ in range(120):  # half way
        controller.update(DT)
    np.testing.assert_allclose(controller.setpoint, robot.HOME + 0.05, atol=2e-3)
    assert controller.active
    for _ in range(200):
        controller.update(DT)
    np.testing.assert_allclose(controller.setpoint, target, atol=1e-12)
    assert not controller.active


def test_speed_acceleration_and_position_limits_hold_for_a_jump():
    controller = arm_controller()
    target = np.clip(robot.HOME + np.array([3.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]), robot.ARM_LOWER, robot.ARM_UPPER)
    controller.command(trajectory(target[None], times_ns=[1]))  # "go there now"
    previous, too_sharp = controller.setpoint_velocity.copy(), np.zeros(7, int)
    for _ in range(1200):
        controller.update(DT)
        assert np.all(np.abs(controller.setpoint_velocity) <= robot.ARM_MAX_VELOCITY + 1e-9)
        too_sharp += np.abs(controller.setpoint_velocity - previous) > robot.ARM_MAX_ACCELERATION * DT + 1e-9
        assert np.all(controller.setpoint <= robot.ARM_UPPER) and np.all(controller.setpoint >= robot.ARM_LOWER)
        previous = controller.setpoint_velocity.copy()
    np.testing.assert_allclose(controller.setpoint, target, atol=1e-9)
    assert np.all(too_sharp <= 1), too_sharp  # only the landing step may brake harder (it ends exactly on target)
