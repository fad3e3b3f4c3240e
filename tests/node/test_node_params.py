"""The parameter schema, the command line, the params YAML files and the launch files (parsed, never imported:
launch_ros is not installed here)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from dreamzero_policy import params
from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.errors import ConfigError
from dreamzero_policy.node import parse_command_line, parse_ros_args, split_ros_args

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAM_FILES = sorted((REPO / "config").glob("*.params.yaml"))


# --- the schema --------------------------------------------------------------------------------------------------

def test_defaults_validate_and_every_spec_is_consistent():
    checked = params.validate({})
    assert checked == params.defaults()
    for spec in params.PARAMS:
        assert spec.type in (bool, int, float, str) and spec.description.endswith(".")
        assert isinstance(spec.default, spec.type) and params.check_value(spec.name, spec.default) == spec.default


def test_validate_names_the_rule_and_the_value():
    with pytest.raises(ConfigError, match=r"parameter 'num_stepz': expected one of \["):
        params.validate({"num_stepz": 3})
    with pytest.raises(ConfigError, match=r"parameter num_steps: expected an int in \[0, 100\], got 101"):
        params.validate({"num_steps": 101})
    with pytest.raises(ConfigError, match=r"parameter flash: expected a bool, got 1 \(int\)"):
        params.validate({"flash": 1})
    with pytest.raises(ConfigError, match=r"parameter num_steps: .* got True \(bool\)"):
        params.validate({"num_steps": True})
    with pytest.raises(ConfigError, match=r"parameter middleware: expected one of \['auto', 'rclpy', 'dds'\]"):
        params.validate({"middleware": "zenoh"})
    with pytest.raises(ConfigError, match=r"parameter device: .*'gpu'"):
        params.validate({"device": "gpu"})
    with pytest.raises(ConfigError, match=r"cfg_scale: expected 0 \(the checkpoint's\) or >= 1, got 0.5"):
        params.validate({"cfg_scale": 0.5})
    assert params.validate({"cfg_scale": 3, "use_sim_time": True})["cfg_scale"] == 3.0  # int widened; ROS's own


def test_to_config_keeps_the_checkpoint_and_embodiment_values_behind_sentinels():
    config = params.to_config(params.validate({"checkpoint": "/ckpt"}))
    assert config.engine_overrides == {} and config.view_hw is None and config.control_rate_hz is None
    assert config.staleness_ms == {} and config.status_period_s == 1.0
    config = params.to_config(params.validate({
        "num_steps": 4, "cfg_scale": 1.0, "num_dit_runs": 0, "flash": True, "view_hw": "160x320",
        "control_rate_hz": 10.0, "camera_stale_ms": 300.0, "inference_delay_ms": 900.0, "status_rate_hz": 2.0}))
    assert config.engine_overrides == {"num_steps": 4, "cfg_scale": 1.0, "num_dit_runs": None, "flash": True}
    assert config.view_hw == (160, 320) and config.status_period_s == 0.5
    emb = params.apply_overrides(load_embodiment("franka_droid"), config)
    assert emb.control_rate_hz == 10.0 and emb.staleness.camera_ms == 300.0
    assert emb.staleness.inference_delay_ms == 900.0 and emb.staleness.joint_states_ms == 200.0
    too_slow = params.to_config(params.validate({"inference_delay_ms": 2000.0}))
    with pytest.raises(ConfigError, match=r"inference_delay_ms: expected < the chunk duration \(1600 ms\)"):
        params.apply_overrides(load_embodiment("franka_droid"), too_slow)


# --- command line -------------------------------------------------------------------------------------------------

def test_command_line_precedence_and_ros_arguments(tmp_path):
    file_a = tmp_path / "a.yaml"
    file_a.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"num_steps": 2, "device": "cpu"}},
                                      "other_node": {"ros__parameters": {"num_steps": 99}}}))
    file_b = tmp_path / "b.yaml"
    file_b.write_text(yaml.safe_dump({"/robot1/policy": {"ros__parameters": {"cfg_scale": 2.0, "num_steps": 3}}}))
    options = parse_command_line([
        "--checkpoint", "/ckpt", "--flash", "true", "--params-file", str(file_a), "--middleware", "dds",
        "--ros-args", "-r", "__node:=policy", "-r", "__ns:=/robot1", "--params-file", str(file_b),
        "-p", "num_steps:=5", "-p", "warmup:=false", "--log-level", "WARN"])
    assert options.node_name == "policy" and options.namespace == "/robot1" and options.middleware == "dds"
    assert options.autostart is True  # the dds backend starts itself by default
    values = options.values
    assert values["num_steps"] == 5  # -p beats both files
    assert values["cfg_scale"] == 2.0 and values["device"] == "cpu" and values["warmup"] is False
    assert values["checkpoint"] == "/ckpt" and values["flash"] is True
    assert options.flag_values == {"checkpoint": "/ckpt", "flash": True, "middleware": "dds"}
    assert options.ros_args[:2] == ["--params-file", str(file_a)]  # for rclpy: files first, then its own args
    assert parse_command_line(["--middleware", "dds", "--no-autostart"]).autostart is False
    with pytest.raises(ConfigError, match="parameter num_steps"):
        parse_command_line(["--num-steps", "four"])


def test_main_refuses_bad_flags_and_rclpy_without_ros(capsys):
    from dreamzero_policy.middleware import rclpy_available
    from dreamzero_policy.node import main

    assert main(["--num-steps", "four"]) == 2
    assert "parameter num_steps: expected an int" in capsys.readouterr().err
    if not rclpy_available():
        assert main(["--middleware", "rclpy"]) == 2


def test_split_and_parse_ros_args():
    own, ros = split_ros_args(["--a", "--ros-args", "-p", "x:=1", "--", "--b", "--ros-args", "-r", "__ns:=/n"])
    assert own == ["--a", "--b"] and ros == ["-p", "x:=1", "-r", "__ns:=/n"]
    files, values, remaps = parse_ros_args(["--params-file", "f.yaml", "-p", "dreamzero_policy:num_steps:=7",
                                            "-p", "unknown:=1", "-r", "chatter:=foo", "--log-level", "info"])
    assert files == ["f.yaml"] and values == {"num_steps": 7} and remaps == {}


# --- params YAML and launch files ------------------------------------------------------------------------------

def test_param_files_set_only_declared_parameters_with_their_exact_types():
    """rclpy refuses an int for a double parameter (and vice versa): types must match exactly, not just coerce."""
    assert {p.name for p in PARAM_FILES} == {"franka_droid.params.yaml", "agibot_g1.params.yaml"}
    for path in PARAM_FILES:
        document = yaml.safe_load(path.read_text())
        values = params.node_section(document)
        assert values, path
        assert set(document) == {"/**"}, f"{path.name}: sections {sorted(document)}"
        for name, value in values.items():
            assert name in params.SPECS, f"{path.name}: {name} is not declared by the node"
            assert type(value) is params.SPECS[name].type, f"{path.name}: {name}={value!r}"
        config = params.to_config(params.validate(values))
        assert load_embodiment(config.embodiment).name == path.name.split(".")[0]


def _launch_parameter_names(tree: ast.AST) -> set[str]:
    """Parameter names a launch file sets: keys of dict literals and dict comprehensions over a tuple of names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "parameters" and isinstance(node.value, ast.Name):
            assignment = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                              and any(isinstance(t, ast.Name) and t.id == node.value.id for t in n.targets))
            values = assignment.value
        elif isinstance(node, ast.keyword) and node.arg == "parameters":
            values = node.value
        else:
            continue
        for item in ast.walk(values):
            if isinstance(item, ast.Dict):
                names |= {k.value for k in item.keys if isinstance(k, ast.Constant)}
            elif isinstance(item, ast.DictComp):
                for generator in item.generators:
                    names |= {e.value for e in ast.walk(generator.iter) if isinstance(e, ast.Constant)}
    return names


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


SHARED_LAUNCH = REPO / "dreamzero_policy" / "launch_description.py"


def test_shared_launch_description_sets_declared_parameters_and_declares_its_arguments():
    tree = ast.parse(SHARED_LAUNCH.read_text(), filename=str(SHARED_LAUNCH))
    names = _launch_parameter_names(tree)
    assert names == {"checkpoint", "embodiment", "device", "middleware"}, names
    assert names <= set(params.SPECS)
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration") if isinstance(c.args[0], ast.Constant)}
    used |= names  # the parameters come from LaunchConfiguration(name) of the same names
    assert used <= declared, f"LaunchConfiguration without DeclareLaunchArgument: {used - declared}"
    assert {"checkpoint", "embodiment", "device", "middleware", "params_file", "autostart"} <= declared
    checkpoint = next(c for c in _calls(tree, "DeclareLaunchArgument") if c.args[0].value == "checkpoint")
    assert "default_value" not in {k.arg for k in checkpoint.keywords}  # required
    assert {c.func.id for c in ast.walk(tree) if isinstance(c, ast.Call) and hasattr(c.func, "id")} >= {
        "LifecycleNode", "OnStateTransition", "ChangeState", "EmitEvent", "RegisterEventHandler"}
    executables = {k.value.value for c in _calls(tree, "LifecycleNode") + _calls(tree, "Node")
                   for k in c.keywords if k.arg == "executable"}
    setup = (REPO / "setup.py").read_text()
    assert executables == {"policy_node"} and "policy_node = dreamzero_policy.node:main" in setup


@pytest.mark.parametrize("path", [p for p in LAUNCH_FILES if p.name != "replay.launch.py"], ids=lambda p: p.name)
def test_embodiment_launch_file_uses_the_shared_description(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    embodiment = next(n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", "") == "EMBODIMENT")
    assert path.name == f"{embodiment}.launch.py" and (REPO / "config" / f"{embodiment}.params.yaml").is_file()
    load_embodiment(embodiment)
    assert [c.args[0].id for c in _calls(tree, "policy_launch_description")] == ["EMBODIMENT"]
    assert "generate_launch_description" in {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}


def test_ros2_ws_links_the_packages_and_stops_crawlers():
    ws = REPO / "ros2_ws"
    assert (ws / "COLCON_IGNORE").is_file()
    for name, target in (("dreamzero_policy", "../.."), ("dreamzero_msgs", "../../dreamzero_msgs")):
        link = ws / "src" / name
        assert link.is_symlink() and str(Path(link.readlink())) == target  # relative: works wherever cloned
        assert (link / "package.xml").is_file()
    assert "--base-paths src" in (ws / "README.md").read_text()
