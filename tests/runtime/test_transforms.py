"""transforms.py: tiling layouts pixel by pixel, q01/q99 round trip, relative/absolute, gripper mapping."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import ConfigError, ObservationError
from dreamzero_policy.observation import example_observation
from dreamzero_policy.transforms import (Normalizer, QuantileNormalizer, VideoTransform, assemble, center_crop,
                                         gripper_to_joint, gripper_to_model, observation_vector, relative_mask,
                                         resize, split, statistics_from_metadata, tile_views, to_absolute,
                                         to_relative)

FRANKA = load_embodiment("franka_droid")
AGIBOT = load_embodiment("agibot_g1")
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(colour, hw=(180, 320)):
    return np.full((*hw, 3), colour, np.uint8)


def assert_region(img, rows, cols, colour):
    region = img[rows[0]:rows[1], cols[0]:cols[1]]
    assert region.size and (region == np.array(colour, np.uint8)).all(), (rows, cols, colour)


def test_center_crop_is_a_centred_view():
    img = np.arange(180 * 320 * 3, dtype=np.uint32).reshape(180, 320, 3)
    crop = center_crop(img, 0.95)
    assert crop.shape == (171, 304, 3) and np.shares_memory(crop, img)
    np.testing.assert_array_equal(crop[0, 0], img[4, 8])
    assert center_crop(img, 1.0).shape == img.shape


def test_resize_is_a_no_op_at_the_same_size():
    img = solid(RED)
    assert resize(img, (180, 320)) is img
    assert resize(img, (90, 160)).shape == (90, 160, 3) and resize(img, (200, 400)).shape == (200, 400, 3)


def test_droid_tiling_at_352x640_is_pixel_exact():
    video = VideoTransform.from_embodiment(FRANKA, (352, 640))
    frame = video({"wrist": solid(RED), "exterior_1": solid(GREEN), "exterior_2": solid(BLUE)})
    assert frame.shape == (352, 640, 3) and frame.dtype == np.uint8
    assert_region(frame, (0, 176), (0, 640), RED)  # wrist 176x640 on top
    assert_region(frame, (176, 352), (0, 320), GREEN)  # exterior_1 bottom-left 176x320
    assert_region(frame, (176, 352), (320, 640), BLUE)  # exterior_2 bottom-right


def test_droid_wrist_view_is_widened_2x():
    wrist = solid(RED)
    wrist[:, 160:] = WHITE  # left half red, right half white
    frame = VideoTransform.from_embodiment(FRANKA, (352, 640))(
        {"wrist": wrist, "exterior_1": solid(GREEN), "exterior_2": solid(BLUE)})
    assert_region(frame, (0, 176), (0, 316), RED)  # the split stays at the centre: 320 of 640
    assert_region(frame, (0, 176), (324, 640), WHITE)


def test_agibot_2x2_grid_with_a_black_cell():
    video = VideoTransform.from_embodiment(AGIBOT, (352, 640))
    views = {"head": solid(RED, (800, 1280)), "hand_left": solid(GREEN, (480, 848)),
             "hand_right": solid(BLUE, (480, 848))}
    frame = video(views)
    assert_region(frame, (0, 176), (0, 320), RED)  # v0 head: top-left
    assert_region(frame, (0, 176), (320, 640), BLUE)  # v2 hand_right: top-right
    assert_region(frame, (176, 352), (0, 320), GREEN)  # v1 hand_left: bottom-left
    assert_region(frame, (176, 352), (320, 640), (0, 0, 0))  # black


def test_5b_style_tiles_at_view_size_then_resizes():
    video = VideoTransform.from_embodiment(FRANKA, (160, 320), view_hw=(160, 320))
    frame = video({"wrist": solid(RED), "exterior_1": solid(GREEN), "exterior_2": solid(BLUE)})
    assert frame.shape == (160, 320, 3)
    assert_region(frame, (0, 80), (0, 320), RED)
    assert_region(frame, (80, 160), (0, 160), GREEN)
    assert_region(frame, (80, 160), (160, 320), BLUE)


@pytest.mark.parametrize("out_hw", [(64, 128), (32, 64), (61, 97), (160, 320)])
def test_tiling_works_for_any_model_frame_size(out_hw):
    frame = VideoTransform.from_embodiment(FRANKA, out_hw)(
        {"wrist": solid(RED), "exterior_1": solid(GREEN), "exterior_2": solid(BLUE)})
    h, w = out_hw
    assert frame.shape == (h, w, 3)
    np.testing.assert_array_equal(frame[h // 4, w // 2], RED)
    np.testing.assert_array_equal(frame[3 * h // 4, w // 4], GREEN)
    np.testing.assert_array_equal(frame[3 * h // 4, 3 * w // 4], BLUE)


def test_tile_views_with_a_missing_view_names_the_camera():
    with pytest.raises(ObservationError, match="exterior_2"):
        tile_views({"wrist": solid(RED), "exterior_1": solid(GREEN)}, FRANKA.video.layout, (352, 640))


# --- normalisation ---

def droid_statistics(seed=1):
    rng = np.random.default_rng(seed)

    def entry(n, lo, hi):
        q01 = rng.uniform(lo, hi / 2, n)
        return {"q01": q01.tolist(), "q99": (q01 + rng.uniform(0.1, hi, n)).tolist(), "mean": [0.0] * n}
    return {"state": {"joint_position": entry(7, -2.0, 2.0), "gripper_position": {"q01": [0.0], "q99": [1.0]}},
            "action": {"joint_position": entry(7, -0.3, 0.3), "gripper_position": {"q01": [0.0], "q99": [1.0]}}}


def test_q01_q99_round_trip_is_exact():
    norm = Normalizer.from_statistics(droid_statistics(), FRANKA)
    rng = np.random.default_rng(2)
    for quantiles in (norm.state, norm.action):
        x = quantiles.q01 + rng.uniform(0, 1, (24, quantiles.size)) * quantiles.range  # [T, N] inside [q01, q99]
        y = quantiles.normalize(x)
        assert y.shape == (24, quantiles.dim) and (np.abs(y) <= 1).all()
        assert (y[:, quantiles.size:] == 0).all()  # padding
        np.testing.assert_allclose(quantiles.unnormalize(y), x, rtol=0, atol=1e-12)
    assert (norm.state.dim, norm.action.dim) == (64, 32)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=3, max_size=3), st.lists(st.floats(0.01, 5), min_size=3, max_size=3),
       st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_round_trip_property(q01, width, u):
    quantiles = QuantileNormalizer(np.array(q01), np.array(q01) + np.array(width), 8)
    x = quantiles.q01 + np.array(u) * quantiles.range
    np.testing.assert_allclose(quantiles.unnormalize(quantiles.normalize(x)), x, rtol=0, atol=1e-12)


def test_normalize_maps_quantiles_to_the_unit_interval_and_clips():
    quantiles = QuantileNormalizer(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 4.0, 2.0]), 4)
    np.testing.assert_allclose(quantiles.normalize(np.array([-1.0, 0.0, 2.0])), [-1, -1, 0, 0])
    np.testing.assert_allclose(quantiles.normalize(np.array([1.0, 4.0, 5.0])), [1, 1, 0, 0])
    np.testing.assert_allclose(quantiles.normalize(np.array([0.0, 2.0, 2.0])), [0, 0, 0, 0])
    np.testing.assert_allclose(quantiles.normalize(np.array([9.0, -9.0, 2.0])), [1, -1, 0, 0])  # clipped
    np.testing.assert_allclose(quantiles.unnormalize(np.zeros(4)), [0.0, 2.0, 2.0])  # constant dim -> q01


def test_statistics_errors_name_the_key():
    stats = droid_statistics()
    del stats["action"]["gripper_position"]
    with pytest.raises(ConfigError, match="gripper_position") as err:
        Normalizer.from_statistics(stats, FRANKA)
    assert "joint_position" in str(err.value)  # lists what is there
    stats = droid_statistics()
    stats["state"]["joint_position"]["q99"] = [1.0] * 6
    with pytest.raises(ConfigError) as err:
        Normalizer.from_statistics(stats, FRANKA)
    assert err.value.field == "statistics.state.joint_position.q99"
    stats = droid_statistics()
    stats["action"]["gripper_position"] = {"q01": [1.0], "q99": [0.0]}
    with pytest.raises(ConfigError, match="q01 <= q99"):
        Normalizer.from_statistics(stats, FRANKA)
    with pytest.raises(ConfigError, match="at most 4"):
        Normalizer.from_statistics(droid_statistics(), FRANKA, action_dim=4)


def test_statistics_from_metadata():
    stats = droid_statistics()
    assert statistics_from_metadata({"oxe_droid": {"statistics": stats}}, "oxe_droid") is stats
    assert statistics_from_metadata({"statistics": stats}, "oxe_droid") is stats
    with pytest.raises(ConfigError, match="agibot"):
        statistics_from_metadata({"agibot": {"statistics": stats}}, "oxe_droid")


# --- layout, relative/absolute, gripper ---

def test_relative_dims_add_the_anchor_and_absolute_dims_do_not():
    relative = relative_mask(FRANKA.action)
    assert relative.tolist() == [True] * 7 + [False]
    actions = np.random.default_rng(3).normal(size=(24, 8))
    anchor = np.arange(8.0)
    absolute = to_absolute(actions, anchor, relative)
    np.testing.assert_allclose(absolute[:, :7], actions[:, :7] + anchor[:7])
    np.testing.assert_array_equal(absolute[:, 7], actions[:, 7])
    np.testing.assert_allclose(to_relative(absolute, anchor, relative), actions, atol=1e-12)


def test_franka_gripper_mapping():
    np.testing.assert_allclose(gripper_to_joint(np.array([[0.0], [0.5], [1.0], [1.2]]), FRANKA),
                               [[0.04], [0.02], [0.0], [0.0]])
    np.testing.assert_allclose(gripper_to_model(np.array([[0.04], [0.01], [0.0]]), FRANKA), [[0.0], [0.75], [1.0]])


def test_agibot_gripper_mapping_and_layout_round_trip():
    np.testing.assert_allclose(gripper_to_joint(np.array([0.0, 1.0]), AGIBOT), [0.0, 0.785])
    arm, gripper = np.arange(14.0), np.array([0.2, 0.8])
    vector = assemble(AGIBOT.state, arm, gripper)
    assert vector.shape == (16,)
    back_arm, back_gripper = split(AGIBOT.state, vector)
    np.testing.assert_array_equal(back_arm, arm)
    np.testing.assert_array_equal(back_gripper, gripper)


def test_observation_vector_uses_model_gripper_units():
    vector = observation_vector(FRANKA.state, example_observation(FRANKA), FRANKA)
    np.testing.assert_allclose(vector, list(FRANKA.home) + [0.0])  # open gripper = 0
