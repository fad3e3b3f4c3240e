"""The policy node's launch description, shared by launch/<embodiment>.launch.py (launch_ros imported lazily).

Arguments: checkpoint (required), embodiment (the launch file's, or a path to an embodiment YAML), device (auto, cpu,
cuda, cuda:N), middleware (rclpy, or dds to run the node on its built-in DDS backend), params_file (default
config/<embodiment>.params.yaml of this package), autostart (true), namespace ('').

autostart:=true configures the node, then activates it once configuring has reached 'inactive' (a later manual
deactivate is not undone). autostart:=false leaves it unconfigured; then, by hand:
    ros2 lifecycle set /dreamzero_policy configure
    ros2 lifecycle set /dreamzero_policy activate
middleware:=dds starts the same executable without rclpy (no lifecycle services; it activates itself unless
autostart:=false, and offers ~/configure, ~/activate, ... as std_srvs/Trigger services instead).
"""
PACKAGE = "dreamzero_policy"


def policy_launch_description(embodiment: str):
    """The lifecycle policy node for `embodiment`, its launch arguments and the autostart handlers."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
    from launch.conditions import IfCondition, UnlessCondition
    from launch.events import matches_action
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
    from launch_ros.actions import LifecycleNode, Node
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from launch_ros.parameter_descriptions import ParameterValue
    from launch_ros.substitutions import FindPackageShare
    from lifecycle_msgs.msg import Transition

    arguments = [
        DeclareLaunchArgument("checkpoint", description="checkpoint directory (config.json, model.safetensors, "
                              "experiment_cfg/metadata.json)"),
        DeclareLaunchArgument("embodiment", default_value=embodiment,
                              description="embodiment name (config/embodiments/<name>.yaml) or YAML path"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("middleware", default_value="rclpy", choices=["rclpy", "dds"],
                              description="rclpy: a ROS 2 lifecycle node; dds: the built-in DDS backend"),
        DeclareLaunchArgument("params_file", description="node parameter YAML",
                              default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config",
                                                                  f"{embodiment}.params.yaml"])),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the node automatically"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    middleware = LaunchConfiguration("middleware")
    autostart = LaunchConfiguration("autostart")
    parameters = [
        LaunchConfiguration("params_file"),
        {name: ParameterValue(LaunchConfiguration(name), value_type=str)
         for name in ("checkpoint", "embodiment", "device", "middleware")},
    ]
    use_dds = PythonExpression(["'", middleware, "' == 'dds'"])
    node = LifecycleNode(package=PACKAGE, executable="policy_node", name=PACKAGE,
                         namespace=LaunchConfiguration("namespace"), parameters=parameters, output="screen",
                         condition=UnlessCondition(use_dds))
    autostart_flag = PythonExpression(["'--autostart' if '", autostart, "' == 'true' else '--no-autostart'"])
    dds_node = Node(package=PACKAGE, executable="policy_node", name=PACKAGE,
                    namespace=LaunchConfiguration("namespace"), parameters=parameters, output="screen",
                    arguments=["--middleware", "dds", autostart_flag], condition=IfCondition(use_dds))
    drive = IfCondition(PythonExpression(["'", autostart, "' == 'true' and '", middleware, "' != 'dds'"]))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE), condition=drive)
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                          entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                                transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=drive)
    return LaunchDescription([*arguments, node, dds_node, activate_when_configured, configure])
