"""launch/replay.launch.py, parsed (launch_ros is not installed here) and its pure helper run."""
from __future__ import annotations

import ast
import importlib.util

from dreamzero_policy import params
from dreamzero_policy.embodiment import load_embodiment
from replaytest_util import REPO

LAUNCH = REPO / "launch" / "replay.launch.py"


def _tree() -> ast.AST:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_launch_configuration_is_declared_and_bag_and_checkpoint_are_required():
    tree = _tree()
    declared = {c.args[0].value: c for c in _calls(tree, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert used <= set(declared), f"LaunchConfiguration without DeclareLaunchArgument: {used - set(declared)}"
    assert {"bag", "checkpoint", "embodiment", "device", "params_file", "namespace", "out", "rate", "storage",
            "play_delay_s", "instruction"} <= set(declared)
    for required in ("bag", "checkpoint"):
        assert _keyword(declared[required], "default_value") is None, required
    assert _strings(_keyword(declared["storage"], "choices")) == ["mcap", "sqlite3"]


def test_it_plays_the_bag_with_its_clock_and_records_with_sim_time():
    tree = _tree()
    commands, lists = {}, {}
    for call in _calls(tree, "ExecuteProcess"):
        cmd = _keyword(call, "cmd")
        words = [e.value for e in cmd.elts if isinstance(e, ast.Constant)]
        name = _keyword(call, "name").value
        commands[name], lists[name] = words, cmd.elts
        assert words[:1] == ["ros2"], words
    assert commands["play"][:3] == ["ros2", "bag", "play"] and "--clock" in commands["play"]
    last = lists["play"][-2:]  # --topics takes the rest of the line: the played topics come last
    assert last[0].value == "--topics" and isinstance(last[1], ast.Starred) and last[1].value.id == "played"
    assert commands["record"][:3] == ["ros2", "bag", "record"] and "--use-sim-time" in commands["record"]
    assert {"--storage", "-o"} <= set(commands["record"])
    assert commands["instruction"][:4] == ["ros2", "topic", "pub", "--once"]
    assert "transient_local" in commands["instruction"]  # the node's instruction subscription is latched
    # The node: the shared description (as on the robot), inside a group that sets use_sim_time.
    assert [c.args[0].func.id for c in _calls(tree, "LaunchDescriptionSource")] == ["policy_launch_description"]
    (set_param,) = _calls(tree, "SetParameter")
    assert _keyword(set_param, "name").value == "use_sim_time" and _keyword(set_param, "value").value is True
    assert "use_sim_time" in params.ROS_BUILTIN_PARAMS  # the node accepts it (and ignores it in its own schema)
    # When playback ends, launch shuts down (ros2 bag record finalises its bag on SIGINT).
    (handler,) = _calls(tree, "OnProcessExit")
    assert _keyword(handler, "target_action").id == "play"
    assert _calls(tree, "Shutdown") and _calls(tree, "TimerAction")
    functions = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    # No launch / launch_ros import at module level (this file is importable without ROS).
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(not (getattr(n, "module", "") or "").startswith("launch") for n in top_imports)


def test_replay_topics_follow_the_embodiment():
    spec = importlib.util.spec_from_file_location("replay_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    played, outputs = module.replay_topics(load_embodiment("franka_droid"))
    assert played == ["/cameras/wrist/image_raw", "/cameras/exterior_1/image_raw", "/cameras/exterior_2/image_raw",
                      "/joint_states", params.DEFAULT_INSTRUCTION_TOPIC]
    assert outputs == ["/dreamzero_policy/action_chunk", "/dreamzero_policy/status", "/diagnostics",
                       "/fr3_arm_controller/joint_trajectory", "/fr3_gripper_controller/joint_trajectory"]
    assert module.NODE_NAME == params.NODE_NAME and module.INSTRUCTION_TOPIC == params.DEFAULT_INSTRUCTION_TOPIC
    played, outputs = module.replay_topics(load_embodiment("agibot_g1"), namespace="/robot1")
    assert "/robot1/dreamzero_policy/action_chunk" in outputs and "/joint_states" in played
    assert not set(played) & set(outputs)  # recorded commands are never played back into the graph
