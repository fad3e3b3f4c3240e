"""observation.py: image decoding (every encoding, every malformed field), joint states, stamp order."""
import cv2
import numpy as np
import pytest

from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import BadJointState, MalformedImage, OutOfOrderStamp
from dreamzero_policy.observation import (SUPPORTED_ENCODINGS, StampOrder, decode_compressed, decode_image,
                                          example_observation, joint_observation, stamp_to_ns)

FRANKA = load_embodiment("franka_droid")
AGIBOT = load_embodiment("agibot_g1")
RNG = np.random.default_rng(0)


def _rgb(h=6, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, pad: int) -> tuple[int, np.ndarray]:
    """Row-major bytes of [H, W, C] pixels with `pad` extra bytes per row -> (step, data)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    data = np.concatenate([rows, np.full((rows.shape[0], pad), 77, np.uint8)], axis=1)
    return data.shape[1], data.reshape(-1)


@pytest.mark.parametrize("pad", [0, 4])
def test_rgb8_is_a_zero_copy_view(pad):
    rgb = _rgb()
    step, data = _padded(rgb, pad)
    out = decode_image("rgb8", 6, 10, step, False, data)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    assert np.shares_memory(out, data)
    np.testing.assert_array_equal(out, rgb)


def test_bytes_input_is_accepted():
    rgb = _rgb()
    np.testing.assert_array_equal(decode_image("rgb8", 6, 10, 30, False, rgb.tobytes()), rgb)


@pytest.mark.parametrize("encoding,make", [
    ("bgr8", lambda rgb: rgb[..., ::-1]),
    ("8UC3", lambda rgb: rgb[..., ::-1]),
    ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])),
    ("bgra8", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])),
    ("8UC4", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings(encoding, make, pad):
    rgb = _rgb()
    step, data = _padded(np.ascontiguousarray(make(rgb)), pad)
    np.testing.assert_array_equal(decode_image(encoding, 6, 10, step, False, data), rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_is_replicated_to_rgb(encoding):
    gray = RNG.integers(0, 256, (6, 10), dtype=np.uint8)
    out = decode_image(encoding, 6, 10, 10, False, gray.reshape(-1))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_16bit_keeps_the_high_byte(encoding, bigendian):
    gray = RNG.integers(0, 65536, (6, 10), dtype=np.uint16)
    data = gray.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(-1)
    out = decode_image(encoding, 6, 10, 20, bigendian, data)
    np.testing.assert_array_equal(out[..., 1], (gray >> 8).astype(np.uint8))


@pytest.mark.parametrize("encoding,pattern", [
    ("bayer_rggb8", "RGGB"), ("bayer_bggr8", "BGGR"), ("bayer_gbrg8", "GBRG"), ("bayer_grbg8", "GRBG")])
def test_bayer_patterns_demosaic_to_the_right_colour(encoding, pattern):
    colour = {"R": 200, "G": 100, "B": 30}
    mosaic = np.zeros((8, 8), np.uint8)
    for (dy, dx), ch in zip([(0, 0), (0, 1), (1, 0), (1, 1)], pattern):
        mosaic[dy::2, dx::2] = colour[ch]
    out = decode_image(encoding, 8, 8, 8, False, mosaic.reshape(-1))
    np.testing.assert_array_equal(out[4, 4], [200, 100, 30])


@pytest.mark.parametrize("encoding,group", [("yuv422", [128, 120, 128, 120]),  # UYVY: U Y0 V Y1
                                            ("yuv422_yuy2", [120, 128, 120, 128])])  # YUY2: Y0 U Y1 V
def test_yuv422_gray(encoding, group):
    data = np.tile(np.array(group, np.uint8), 4 * 8 // 2)
    out = decode_image(encoding, 4, 8, 16, False, data)
    assert out.shape == (4, 8, 3)
    assert np.ptp(out.astype(int), axis=2).max() <= 1  # U = V = 128 is gray: R == G == B


@pytest.mark.parametrize("kwargs,field", [
    (dict(encoding="rgb16"), "encoding"),
    (dict(encoding="jpeg"), "encoding"),
    (dict(step=20), "step"),  # < 10 px x 3 B
    (dict(height=7), "data"),  # 7 x 30 bytes expected, 180 given
    (dict(step=32), "data"),
    (dict(height=0), "height x width"),
    (dict(width=-1), "height x width"),
])
def test_malformed_images_name_the_field(kwargs, field):
    fields = dict(encoding="rgb8", height=6, width=10, step=30, is_bigendian=False, data=_rgb().reshape(-1))
    fields.update(kwargs)
    with pytest.raises(MalformedImage) as err:
        decode_image(**fields)
    assert err.value.field == field
    assert "expected" in str(err.value) and "got" in str(err.value)


def test_malformed_data_array():
    with pytest.raises(MalformedImage, match="1-D uint8"):
        decode_image("rgb8", 6, 10, 30, False, np.zeros(180, np.float32))
    with pytest.raises(MalformedImage) as err:
        decode_image("yuv422", 2, 3, 6, False, np.zeros(12, np.uint8))
    assert err.value.field == "width"


def test_every_supported_encoding_decodes_to_rgb():
    for encoding in SUPPORTED_ENCODINGS:
        channels = {"rgb8": 3, "bgr8": 3, "8UC3": 3, "rgba8": 4, "bgra8": 4, "8UC4": 4, "yuv422": 2,
                    "yuv422_yuy2": 2, "mono16": 2, "16UC1": 2}.get(encoding, 1)
        out = decode_image(encoding, 4, 6, 6 * channels, False, np.zeros(4 * 6 * channels, np.uint8))
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, encoding


def test_compressed_png_is_exact_and_jpeg_close():
    rgb = np.zeros((36, 64, 3), np.uint8)
    rgb[:, :32] = (220, 30, 40)
    rgb[:, 32:] = (20, 200, 60)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    png = cv2.imencode(".png", bgr)[1].reshape(-1)
    np.testing.assert_array_equal(decode_compressed("png", png), rgb)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    out = decode_compressed("rgb8; jpeg compressed bgr8", jpeg)
    assert np.abs(out[:, 4:28].astype(int) - rgb[:, 4:28]).max() < 12


@pytest.mark.parametrize("fmt,data", [("jpeg", b"not an image"), ("jpeg", b""),
                                      ("16UC1; compressedDepth png", b"\x89PNG")])
def test_compressed_errors(fmt, data):
    with pytest.raises(MalformedImage):
        decode_compressed(fmt, data)


# --- joint states ---

def _franka_msg():
    names = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]
    positions = [0.1 * i for i in range(1, 8)] + [0.03, 0.03]
    return names, positions


def test_joint_state_in_order_with_extra_joint_ignored():
    names, positions = _franka_msg()
    obs = joint_observation(names, positions, [0.0] * 9, 42, FRANKA)
    np.testing.assert_allclose(obs.positions, [0.1 * i for i in range(1, 8)])
    np.testing.assert_allclose(obs.gripper, [0.03])
    np.testing.assert_allclose(obs.velocities, np.zeros(7))
    assert obs.stamp_ns == 42


def test_joint_state_reordered_by_name():
    names, positions = _franka_msg()
    perm = RNG.permutation(len(names))
    obs = joint_observation([names[i] for i in perm], np.array(positions)[perm], [], 1, FRANKA)
    np.testing.assert_allclose(obs.positions, [0.1 * i for i in range(1, 8)])
    assert obs.velocities is None


def test_agibot_interleaved_arms_are_reordered():
    left = [f"idx2{i}_arm_l_joint{i}" for i in range(1, 8)]
    right = [f"idx6{i}_arm_r_joint{i}" for i in range(1, 8)]
    names = [n for pair in zip(left, right) for n in pair]
    names += ["idx11_head_joint1", "idx41_gripper_l_outer_joint1", "idx81_gripper_r_outer_joint1"]
    values = {n: float(k) for k, n in enumerate(left + right)}
    positions = [values.get(n, 0.5) for n in names]
    obs = joint_observation(names, positions, None, 1, AGIBOT)
    np.testing.assert_allclose(obs.positions, np.arange(14.0))
    np.testing.assert_allclose(obs.gripper, [0.5, 0.5])


@pytest.mark.parametrize("drop", ["fr3_joint4", "fr3_finger_joint1"])
def test_missing_joint_is_named(drop):
    names, positions = _franka_msg()
    keep = [i for i, n in enumerate(names) if n != drop]
    with pytest.raises(BadJointState, match=drop):
        joint_observation([names[i] for i in keep], [positions[i] for i in keep], [], 1, FRANKA)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_position_names_the_joint(bad):
    names, positions = _franka_msg()
    positions[2] = bad
    with pytest.raises(BadJointState) as err:
        joint_observation(names, positions, [], 1, FRANKA)
    assert err.value.field == "position[fr3_joint3]"


def test_non_finite_position_of_an_unused_joint_is_ignored():
    names, positions = _franka_msg()
    positions[-1] = np.nan  # fr3_finger_joint2 is not used
    assert joint_observation(names, positions, [], 1, FRANKA).gripper[0] == 0.03


def test_bad_joint_state_arrays():
    names, positions = _franka_msg()
    with pytest.raises(BadJointState, match="9 values"):
        joint_observation(names, positions[:-1], [], 1, FRANKA)
    with pytest.raises(BadJointState, match="velocity"):
        joint_observation(names, positions, [0.0] * 3, 1, FRANKA)
    with pytest.raises(BadJointState, match="twice"):
        joint_observation(names + ["fr3_joint1"], positions + [0.0], [], 1, FRANKA)


def test_non_finite_velocities_become_none():
    names, positions = _franka_msg()
    obs = joint_observation(names, positions, [np.nan] * 9, 1, FRANKA)
    assert obs.velocities is None


def test_example_observation_is_the_home_pose():
    obs = example_observation(FRANKA)
    np.testing.assert_allclose(obs.positions, FRANKA.home)
    np.testing.assert_allclose(obs.gripper, [0.04])


# --- stamps ---

def test_stamp_to_ns():
    assert stamp_to_ns(3, 250) == 3_000_000_250


def test_stamp_order_per_stream():
    order = StampOrder()
    order.check("wrist", 10)
    order.check("exterior_1", 5)  # other streams are independent
    order.check("wrist", 11)
    with pytest.raises(OutOfOrderStamp) as err:
        order.check("wrist", 9)
    assert err.value.field == "wrist stamp" and "> 11" in str(err.value)
    with pytest.raises(OutOfOrderStamp):
        order.check("wrist", 11)  # a repeated stamp is a duplicate
    order.check("joint_states", 0)  # simulated time starts at 0
    with pytest.raises(OutOfOrderStamp):
        order.check("joint_states", 0)  # ... but a stamp left unset repeats 0
    with pytest.raises(OutOfOrderStamp, match=">= 0"):
        order.check("exterior_2", -1)
    order.reset()
    order.check("wrist", 1)
