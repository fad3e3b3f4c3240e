"""FrankaSimEnv: observations, determinism, 5 fps frames while a chunk runs, tracking, limits, bad chunks."""
import numpy as np
import pytest

from sim import robot
from sim.controller import JointTrajectory, TrajectoryRejected
from sim.env import ARM_CONTROLLER, GRIPPER_CONTROLLER, FrankaSimEnv
from sim.tasks import COLOURS

TRACKING_TOL_RAD = 0.01  # arm joints at each control step of a smooth trajectory (measured max here: 6.5e-3)
# How far a joint may yield past a limit (pybullet's joint-limit constraint is soft); worst case measured here with
# full-speed jumps to the limits: 1.2e-3 rad.
LIMIT_TOL_RAD = 2e-3


@pytest.fixture(scope="module")
def env():
    with FrankaSimEnv(task="reach", seed=0, image_hw=(45, 80)) as env:
        yield env


def smooth_chunk(n=48, period_s=3.2) -> np.ndarray:
    """[n, 8]: every joint swings out and back from HOME from rest (1 - cos), the gripper closes and opens."""
    t = np.arange(1, n + 1) / 15
    wave = (1 - np.cos(2 * np.pi * t / period_s)) / 2  # [n]
    amplitude = np.array([0.5, 0.3, 0.5, 0.4, 0.6, 0.5, 0.8])
    return np.column_stack([robot.HOME + amplitude * wave[:, None], wave])


def test_reset_observation(env):
    obs = env.reset(3)
    assert obs.stamp_ns == 0
    assert obs.joint_names == robot.JOINT_NAMES == tuple(f"fr3_joint{i}" for i in range(1, 8)) + (
        "fr3_finger_joint1", "fr3_finger_joint2")
    assert obs.joint_positions.shape == obs.joint_velocities.shape == obs.joint_efforts.shape == (9,)
    np.testing.assert_allclose(obs.joint_positions, np.r_[robot.HOME, 0.04, 0.04], atol=1e-9)
    np.testing.assert_allclose(obs.state, np.r_[robot.HOME, 0.0], atol=1e-9)
    assert set(obs.images) == {"wrist", "exterior_1", "exterior_2"}
    for image in obs.images.values():
        assert image.shape == (45, 80, 3) and image.dtype == np.uint8 and image.std() > 5
    assert obs.instruction.startswith("reach the ") and obs.instruction.split()[2] in COLOURS
    info = env.task_info()
    assert info["seed"] == 3 and info["task"] == "reach" and not info["success"]


def test_default_resolution_and_camera_subset():
    with FrankaSimEnv(task="pick", seed=0, cameras=("wrist",)) as env:
        obs = env.reset()
        assert list(obs.images) == ["wrist"] and obs.images["wrist"].shape == (180, 320, 3)


def test_bad_construction_names_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown task 'stack'; valid tasks: \['pick', 'push', 'reach'\]"):
        FrankaSimEnv(task="stack")
    with pytest.raises(ValueError, match="unknown cameras \\['head'\\]"):
        FrankaSimEnv(cameras=("head",))


def test_same_seed_same_trajectory_and_images_bit_exact(env):
    chunk = smooth_chunk(24)
    env.reset(11)
    env.execute_chunk(smooth_chunk(24)[::-1])  # a different episode first: nothing may leak into the next one
    runs = []
    for sim in (env, FrankaSimEnv(task="reach", seed=0, image_hw=(45, 80))):
        first = sim.reset(7)
        frames = sim.execute_chunk(chunk, observe_every=12)
        runs.append([first] + frames)
    for a, b in zip(*runs):
        assert a.stamp_ns == b.stamp_ns
        np.testing.assert_array_equal(a.joint_positions, b.joint_positions)
        np.testing.assert_array_equal(a.joint_velocities, b.joint_velocities)
        for camera in a.images:
            np.testing.assert_array_equal(a.images[camera], b.images[camera])


def test_different_seeds_give_different_scenes(env):
    scenes = set()
    for seed in range(5):
        env.reset(seed, render=False)
        info = env.task_info()
        scenes.add((info["instruction"], tuple(info["objects"]["target"]["position"])))
    assert len(scenes) == 5


@pytest.mark.parametrize("task", ["reach", "pick"])
def test_every_object_of_a_scene_can_be_the_target(task):
    """The same scene (same objects, colours, poses, first images) with another object as the target."""
    from sim.experts import make_expert
    from sim.rollout import run_episode
    from sim.tasks import TASKS

    with FrankaSimEnv(task=task, image_hw=(45, 80)) as env:
        default = env.reset(11)
        scenes = []
        for target in range(TASKS[task].targets):
            obs = env.reset(11, target=target)
            objects = env.task_info()["objects"]
            colour = obs.instruction.split(" the ")[1].split()[0]
            assert colour == env.task.colours[0] and env.task.target == target
            scenes.append(sorted((tuple(o["position"]), o["yaw"]) for o in objects.values()))
            for camera, image in obs.images.items():
                np.testing.assert_array_equal(image, default.images[camera])
            if target == 0:
                assert obs.instruction == default.instruction
        assert all(scene == scenes[0] for scene in scenes)
        instructions = set()
        for target in range(TASKS[task].targets):
            episode = run_episode(env, make_expert(env), 11, target=target)
            assert episode.success and episode.target == target
            instructions.add(episode.instruction)
        assert len(instructions) == TASKS[task].targets
        with pytest.raises(ValueError, match=f"target {TASKS[task].targets} out of range"):
            env.reset(11, target=TASKS[task].targets)
        with pytest.raises(ValueError, match="target 1 out of range"):
            TASKS["push"].check_target(1)


def test_frames_at_5fps_while_a_chunk_runs(env):
    env.reset(0, render=False)
    frames = env.execute_chunk(smooth_chunk(24), dt=1 / 15, observe_every=3)
    assert len(frames) == 8
    assert [f.stamp_ns for f in frames] == [k * 200_000_000 for k in range(1, 9)]
    assert all(f.images["wrist"].shape == (45, 80, 3) for f in frames)
    assert env.now_ns == 1_600_000_000
    assert env.execute_chunk(smooth_chunk(24), observe_every=None) == []


def test_controller_tracks_a_joint_trajectory(env):
    env.reset(0, render=False)
    chunk = smooth_chunk(48)
    env.send_chunk(chunk)
    errors, gripper_errors = [], []
    for target in chunk:
        env.step(16)
        obs = env.observe(render=False)
        errors.append(np.abs(obs.joint_positions[:7] - target[:7]).max())
        gripper_errors.append(abs(obs.state[7] - target[7]))
    assert max(errors) < TRACKING_TOL_RAD, max(errors)
    assert max(gripper_errors) < 0.02, max(gripper_errors)


def test_joint_limits_are_never_exceeded(env):
    env.reset(0, render=False)
    at_limits = robot.HOME.copy()
    at_limits[[0, 3, 5, 6]] = robot.ARM_UPPER[0], robot.ARM_UPPER[3], robot.ARM_LOWER[5], robot.ARM_LOWER[6]
    env.send_chunk(np.column_stack([np.repeat(at_limits[None], 24, 0), np.ones(24)]))  # a jump to the limits
    for _ in range(24 * 16):
        env.step()
        q = env.observe(render=False).joint_positions[:7]
        assert np.all(q <= robot.ARM_UPPER + LIMIT_TOL_RAD) and np.all(q >= robot.ARM_LOWER - LIMIT_TOL_RAD), q
        setpoint = env.controllers[ARM_CONTROLLER].setpoint
        assert np.all(setpoint <= robot.ARM_UPPER) and np.all(setpoint >= robot.ARM_LOWER)
    np.testing.assert_allclose(env.observe(render=False).joint_positions[:7], at_limits, atol=LIMIT_TOL_RAD)


@pytest.mark.parametrize("case, message", [
    ("nan", "positions of fr3_joint2 at point 5 is nan"),
    ("beyond_limit", "fr3_joint1 at point 3 is 3.0000, outside its limits"),
    ("gripper_out_of_range", "fr3_finger_joint1 at point 0 is -0.0040, outside its limits [0.0000, 0.0400]"),
    ("wrong_shape", "chunk has shape (24, 7), expected (T, 8)"),
    ("ragged", "chunk is not a numeric (T, 8) array"),
])
def test_bad_chunk_is_rejected_counted_and_the_arm_holds(env, case, message):
    env.reset(0, render=False)
    env.execute_chunk(smooth_chunk(12))  # moving ...
    chunk = smooth_chunk(24)
    if case == "nan":
        chunk[5, 1] = np.nan
    elif case == "beyond_limit":
        chunk[3, 0] = 3.0
    elif case == "gripper_out_of_range":
        chunk[:, 7] = 1.1
    elif case == "wrong_shape":
        chunk = chunk[:, :7]
    else:
        chunk = [list(row) for row in chunk[:-1]] + [list(chunk[-1, :5])]
    before = env.observe(render=False).joint_positions
    with pytest.raises(TrajectoryRejected) as error:
        env.execute_chunk(chunk)
    assert message in str(error.value)
    assert env.rejected_count == 1 and message in env.last_rejection
    assert env.task_info()["rejected_trajectories"] == 1
    assert not any(c.active for c in env.controllers.values())
    env.step(240)  # one second later the arm is where it was
    np.testing.assert_allclose(env.observe(render=False).joint_positions, before, atol=0.02)


def test_ros_style_trajectory_commands(env):
    env.reset(0, render=False)
    target = robot.HOME + 0.1
    env.send_trajectory(ARM_CONTROLLER, JointTrajectory(robot.ARM_JOINTS, np.array([500_000_000, 1_000_000_000]),
                                                        np.stack([robot.HOME + 0.05, target]), np.zeros((2, 7))))
    env.send_trajectory(GRIPPER_CONTROLLER, JointTrajectory(("fr3_finger_joint1",), np.array([500_000_000]),
                                                            np.array([[0.01]])))
    env.step(360)
    obs = env.observe(render=False)
    np.testing.assert_allclose(obs.joint_positions[:7], target, atol=TRACKING_TOL_RAD)
    np.testing.assert_allclose(obs.joint_positions[7:], 0.01, atol=1e-3)
    with pytest.raises(TrajectoryRejected, match="unknown joint names"):
        env.send_trajectory(GRIPPER_CONTROLLER, JointTrajectory(("panda_finger_joint1",), np.array([1]),
                                                                np.array([[0.01]])))
    assert env.rejected_count == 1
    with pytest.raises(ValueError, match="unknown controller 'fr3_hand'"):
        env.send_trajectory("fr3_hand", JointTrajectory(("fr3_finger_joint1",), np.array([1]), np.array([[0.0]])))
