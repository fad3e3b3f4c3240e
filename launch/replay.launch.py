"""Play a bag into the DreamZero policy node under ROS 2 and record what the node publishes.

    ros2 launch dreamzero_policy replay.launch.py bag:=/path/to/bag checkpoint:=/path/to/checkpoint
    ros2 launch dreamzero_policy replay.launch.py bag:=... checkpoint:=... embodiment:=agibot_g1 rate:=0.5 \\
        out:=/tmp/replay_record play_delay_s:=60 instruction:="pick up the cup"

The node is started exactly as on the robot (the shared policy launch description with the embodiment's
parameter file), with use_sim_time: `ros2 bag play --clock` publishes the bag's time. Only the observation topics
(cameras, joint states) and the instruction are played, not the recorded controller commands, so the node's own
commands are the only ones on those topics. `ros2 bag record --use-sim-time` writes the played topics and the node's
outputs (~/action_chunk, ~/status, /diagnostics, the controller commands) to `out`. Playback starts `play_delay_s`
after launch (configuring loads the checkpoint and warms up); when it ends, everything shuts down and the recording
is finalised.

This replay is paced by the wall clock (`rate`); `dreamzero-replay` instead runs the same node code in bag time, as
fast as the model allows, deterministically, and computes the metrics. Use this one to watch the node in rviz or
PlotJuggler, or to check a ROS 2 graph end to end.
"""
from pathlib import Path

PACKAGE = "dreamzero_policy"
NODE_NAME = "dreamzero_policy"
INSTRUCTION_TOPIC = "/dreamzero/instruction"


def replay_topics(embodiment, namespace: str = "") -> tuple[list[str], list[str]]:
    """(topics to play from the bag, topics the node publishes) for an Embodiment and a node namespace."""
    played = [camera.subscribed_topic for camera in embodiment.cameras]
    played += [embodiment.joint_states_topic, INSTRUCTION_TOPIC]
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    outputs = [f"{ns}/{NODE_NAME}/action_chunk", f"{ns}/{NODE_NAME}/status", "/diagnostics"]
    outputs += [c.name for c in (embodiment.controller, embodiment.gripper_controller) if c is not None]
    return played, outputs


def _launch_setup(context):
    from launch.actions import (EmitEvent, ExecuteProcess, GroupAction, IncludeLaunchDescription,
                                RegisterEventHandler, TimerAction)
    from launch.conditions import IfCondition
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.launch_description_source import LaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import SetParameter

    from dreamzero_policy.embodiment import load_embodiment
    from dreamzero_policy.launch_description import policy_launch_description

    embodiment = LaunchConfiguration("embodiment").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    name = Path(embodiment).stem if embodiment.endswith((".yaml", ".yml")) else embodiment
    played, outputs = replay_topics(load_embodiment(embodiment), namespace)

    policy_arguments = {"checkpoint": LaunchConfiguration("checkpoint"), "embodiment": embodiment,
                        "device": LaunchConfiguration("device"), "namespace": namespace, "middleware": "rclpy",
                        "autostart": "true"}
    params_file = LaunchConfiguration("params_file").perform(context)
    if params_file:
        policy_arguments["params_file"] = params_file
    policy = GroupAction([
        SetParameter(name="use_sim_time", value=True),  # the node's clock is the bag's (/clock from the player)
        IncludeLaunchDescription(LaunchDescriptionSource(policy_launch_description(name)),
                                 launch_arguments=policy_arguments.items()),
    ])
    record = ExecuteProcess(
        cmd=["ros2", "bag", "record", "--use-sim-time", "--storage", LaunchConfiguration("storage"),
             "-o", LaunchConfiguration("out"), *played, *outputs],
        output="screen", name="record")
    instruction = ExecuteProcess(
        cmd=["ros2", "topic", "pub", "--once", "--qos-durability", "transient_local", "--qos-reliability",
             "reliable", INSTRUCTION_TOPIC, "std_msgs/msg/String",
             ["{data: '", LaunchConfiguration("instruction"), "'}"]],
        output="screen", name="instruction",
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("instruction"), "' != ''"])))
    play = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate"),
             "--topics", *played],
        output="screen", name="play")
    return [
        policy,
        record,
        TimerAction(period=LaunchConfiguration("play_delay_s"), actions=[instruction, play]),
        RegisterEventHandler(OnProcessExit(target_action=play, on_exit=[
            EmitEvent(event=Shutdown(reason="the bag has been played"))])),
    ]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription([
        DeclareLaunchArgument("bag", description="the bag to play (rosbag2 directory, or a file ros2 bag reads)"),
        DeclareLaunchArgument("checkpoint", description="checkpoint directory for the policy node"),
        DeclareLaunchArgument("embodiment", default_value="franka_droid",
                              description="embodiment name (config/embodiments/<name>.yaml) or YAML path"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("params_file", default_value="",
                              description="node parameter YAML (default: config/<embodiment>.params.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("instruction", default_value="",
                              description="publish this instruction (latched) when the bag has none"),
        DeclareLaunchArgument("out", default_value="dreamzero_replay_record",
                              description="output bag directory of ros2 bag record (must not exist)"),
        DeclareLaunchArgument("storage", default_value="mcap", choices=["mcap", "sqlite3"],
                              description="storage of the recorded bag"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate (bag seconds per second)"),
        DeclareLaunchArgument("play_delay_s", default_value="30.0",
                              description="seconds to wait before playing (the node loads and warms up)"),
        OpaqueFunction(function=_launch_setup),
    ])
