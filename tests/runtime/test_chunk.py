"""chunk.py: decoding a normalised chunk into robot units, and trajectory points."""
import numpy as np
import pytest

from dreamzero_policy.chunk import decode_chunk, trajectory_points
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import ChunkError
from dreamzero_policy.observation import JointObservation, example_observation
from dreamzero_policy.transforms import Normalizer, gripper_to_model, relative_mask, to_relative

FRANKA = load_embodiment("franka_droid")
AGIBOT = load_embodiment("agibot_g1")


def statistics(embodiment, arm_range):
    def entry(segment):
        lo = -arm_range if segment.source == "arm" else 0.0
        hi = arm_range if segment.source == "arm" else 1.0
        return {"q01": [lo] * segment.size, "q99": [hi] * segment.size}
    return {part: {s.key: entry(s) for s in getattr(embodiment, part)} for part in ("state", "action")}


def test_droid_chunk_round_trips_through_the_training_transforms():
    norm = Normalizer.from_statistics(statistics(FRANKA, 0.3), FRANKA)
    anchor = JointObservation(5, FRANKA.home + 0.1, None, np.array([0.03]))
    rng = np.random.default_rng(0)
    targets = anchor.positions + np.cumsum(rng.uniform(-0.01, 0.01, (24, 7)), axis=0)  # [T, J] absolute
    gripper = np.linspace(0.04, 0.0, 24)[:, None]  # closing, metres
    # what training does: absolute robot values -> model layout -> relative -> normalised, padded
    model_actions = np.concatenate([targets, gripper_to_model(gripper, FRANKA)], axis=1)
    anchor_vector = np.concatenate([anchor.positions, gripper_to_model(anchor.gripper, FRANKA)])
    normalized = norm.action.normalize(to_relative(model_actions, anchor_vector, relative_mask(FRANKA.action)))
    assert normalized.shape == (24, 32)

    chunk = decode_chunk(normalized, anchor, norm, FRANKA)
    assert chunk.positions.shape == (24, 7) and chunk.gripper.shape == (24, 1) and len(chunk) == 24
    np.testing.assert_allclose(chunk.positions, targets, atol=1e-12)
    np.testing.assert_allclose(chunk.gripper, gripper, atol=1e-12)
    assert chunk.t_obs_ns == 5 and chunk.dt_ns == FRANKA.dt_ns


def test_relative_joints_follow_the_anchor_and_the_gripper_does_not():
    norm = Normalizer.from_statistics(statistics(FRANKA, 0.3), FRANKA)
    normalized = np.zeros((24, 32))
    normalized[:, 7] = 1.0  # gripper at q99 = 1 = closed
    for offset in (0.0, 0.5):
        anchor = JointObservation(1, FRANKA.home + offset, None, np.array([0.04]))
        chunk = decode_chunk(normalized, anchor, norm, FRANKA)
        np.testing.assert_allclose(chunk.positions, np.tile(anchor.positions, (24, 1)))  # zero offsets
        np.testing.assert_allclose(chunk.gripper, 0.0)  # closed fingers


def test_agibot_actions_are_absolute():
    norm = Normalizer.from_statistics(statistics(AGIBOT, 2.0), AGIBOT)
    normalized = np.zeros((24, 32))
    normalized[:, :14] = 0.5  # 0.5 in [-1, 1] -> 1.0 rad with q01/q99 = -/+2
    chunk = decode_chunk(normalized, example_observation(AGIBOT), norm, AGIBOT)
    np.testing.assert_allclose(chunk.positions, 1.0)
    np.testing.assert_allclose(chunk.gripper, 0.785 / 2)  # 0 -> 0.5 -> half closed


@pytest.mark.parametrize("shape", [(24, 8), (24,), (0, 32), (24, 33)])
def test_wrong_chunk_shape(shape):
    norm = Normalizer.from_statistics(statistics(FRANKA, 0.3), FRANKA)
    with pytest.raises(ChunkError, match="chunk shape"):
        decode_chunk(np.zeros(shape), example_observation(FRANKA), norm, FRANKA)


def test_trajectory_points():
    dt = 1 / 15
    start = np.zeros(2)
    positions = np.outer(np.arange(1, 6), [0.1, -0.2])  # a constant-velocity ramp from start
    points = trajectory_points(positions, dt, start)
    np.testing.assert_allclose(points.time_from_start_s, (np.arange(5) + 1) * dt)
    np.testing.assert_allclose(points.velocities[:-1], np.tile([0.1 / dt, -0.2 / dt], (4, 1)))
    np.testing.assert_array_equal(points.velocities[-1], 0.0)  # comes to rest at the end
    # the first velocity uses the current state as the point before
    points = trajectory_points(positions, dt, np.array([0.3, 0.3]))
    np.testing.assert_allclose(points.velocities[0], (positions[1] - [0.3, 0.3]) / (2 * dt))
