"""embodiment.py: the shipped YAMLs load; a broken YAML names the field, the rule and the value."""
import copy
from pathlib import Path

import pytest
import yaml

from dreamzero_policy.embodiment import available_embodiments, load_embodiment, parse_embodiment
from dreamzero_policy.errors import ConfigError, InstructionError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "embodiments"
FRANKA_YAML = yaml.safe_load((CONFIG_DIR / "franka_droid.yaml").read_text())


def test_shipped_embodiments_load():
    assert {"franka_droid", "agibot_g1"} <= set(available_embodiments())
    for name in ("franka_droid", "agibot_g1"):
        assert load_embodiment(name).name == name
        assert load_embodiment(CONFIG_DIR / f"{name}.yaml").name == name


def test_franka_droid_contents():
    e = load_embodiment("franka_droid")
    assert e.joint_names == [f"fr3_joint{i}" for i in range(1, 8)]
    assert e.gripper_joints == ["fr3_finger_joint1"]
    assert (e.control_rate_hz, e.action_horizon, e.video_fps(8)) == (15, 24, 5.0)
    assert [(s.key, s.size, s.relative) for s in e.action] == [("joint_position", 7, True),
                                                               ("gripper_position", 1, False)]
    assert e.video.layout == (("wrist",), ("exterior_1", "exterior_2"))
    assert [c.subscribed_topic for c in e.cameras] == [
        "/cameras/wrist/image_raw", "/cameras/exterior_1/image_raw", "/cameras/exterior_2/image_raw"]
    assert e.controller.name == "/fr3_arm_controller/joint_trajectory"
    assert e.gripper_controller.joints == ("fr3_finger_joint1",)
    assert e.max_step.tolist() == [0.2] * 7
    assert e.gripper_open.tolist() == [0.04] and e.gripper_closed.tolist() == [0.0]


def test_agibot_contents():
    e = load_embodiment("agibot_g1")
    assert len(e.joints) == 14 and e.gripper_joints == ["idx41_gripper_l_outer_joint1",
                                                         "idx81_gripper_r_outer_joint1"]
    assert e.video.layout == (("head", "hand_right"), ("hand_left", None))
    assert e.controller.interface == "joint_state" and e.gripper_controller is None
    assert e.video_fps(8) == 10.0 and e.dt_ns == 33_333_333


def test_prompt_repeats_the_lower_cased_instruction():
    e = load_embodiment("franka_droid")
    prompt = e.prompt.format("  Put the Marker\nin the pot ")
    assert prompt.startswith("A multi-view video shows that a robot put the marker in the pot The video")
    assert prompt.endswith("The robot put the marker in the pot")
    assert "{" not in prompt and e.prompt.negative
    with pytest.raises(InstructionError):
        e.prompt.format("   ")


def test_compressed_transport_subscribes_to_the_compressed_topic():
    data = copy.deepcopy(FRANKA_YAML)
    data["cameras"][0]["transport"] = "compressed"
    camera = parse_embodiment(data).cameras[0]
    assert camera.subscribed_topic == "/cameras/wrist/image_raw/compressed"
    assert camera.message_type == "sensor_msgs/msg/CompressedImage"


def test_a_new_robot_is_a_new_yaml_file(tmp_path, monkeypatch):
    data = copy.deepcopy(FRANKA_YAML)
    data["name"] = "my_panda"
    for joint in data["joints"]:
        joint["name"] = joint["name"].replace("fr3", "panda")
    data["controller"]["joints"] = [j["name"] for j in data["joints"]]
    (tmp_path / "my_panda.yaml").write_text(yaml.safe_dump(data))
    assert load_embodiment(tmp_path / "my_panda.yaml").joint_names[0] == "panda_joint1"
    monkeypatch.setenv("DREAMZERO_EMBODIMENTS_DIR", str(tmp_path))
    assert load_embodiment("my_panda").name == "my_panda"


def _set(data, path, value):
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()
BROKEN = [  # (path to change, new value, field named in the error, text in the error)
    (["joints", 2, "max_step"], -0.1, "joints.2.max_step", "greater than 0"),
    (["joints", 0, "upper"], -3.0, "joints.0.upper", "> lower"),
    (["joints", 0, "home"], 3.0, "joints.0.home", "within"),
    (["joints", 1, "name"], "fr3_joint1", "joints", "twice"),
    (["control_rate_hz"], _DELETE, "control_rate_hz", "required field"),
    (["control_rate_hz"], "fast", "control_rate_hz", "number"),
    (["cameras", 0, "transport"], "h264", "cameras.0.transport", "'raw' or 'compressed'"),
    (["cameras", 0, "topic"], "cameras/wrist", "cameras.0.topic", "pattern"),
    (["video", "layout", 0, 0], "wrist_left", "video.layout", "camera names"),
    (["video", "layout", 1], ["exterior_1"], "video.layout", "every camera placed once"),
    (["video", "crop_fraction"], 1.5, "video.crop_fraction", "less than or equal to 1"),
    (["state", 0, "size"], 6, "state (arm sizes)", "a sum of 7"),
    (["state", 0, "relative"], True, "state.0.relative", "only actions"),
    (["grippers", 0, "closed"], 0.04, "grippers.0.closed", "!= open"),
    (["controller", "joints"], ["fr3_joint1"], "controller joints", "missing"),
    (["gripper_controller", "joints"], ["fr3_finger_joint2"], "gripper_controller.joints", "names from"),
    (["staleness", "inference_delay_ms"], 2000, "staleness.inference_delay_ms", "chunk duration"),
    (["prompt", "template"], "a robot {task}", "prompt.template", "{instruction}"),
    (["unexpected_field"], 1, "unexpected_field", "Extra inputs"),
]


@pytest.mark.parametrize("path,value,field,text", BROKEN, ids=[".".join(map(str, b[0])) for b in BROKEN])
def test_broken_yaml_names_the_field(tmp_path, path, value, field, text):
    data = copy.deepcopy(FRANKA_YAML)
    _set(data, path, value)
    file = tmp_path / "broken.yaml"
    file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_embodiment(file)
    assert err.value.field == f"broken.yaml: {field}", str(err.value)
    assert text in str(err.value)


def test_invalid_yaml_and_unknown_name(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_embodiment(file)
    with pytest.raises(ConfigError, match="franka_droid"):  # the error lists the valid names
        load_embodiment("franka_fr3_typo")
    with pytest.raises(ConfigError, match="readable"):
        load_embodiment(tmp_path / "missing.yaml")
