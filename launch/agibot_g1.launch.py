"""DreamZero policy for an AgiBot G1 (two 7-DoF arms, grippers) through its /joint_command interface, as a managed
(lifecycle) node.

    ros2 launch dreamzero_policy agibot_g1.launch.py checkpoint:=/path/to/checkpoint
    ros2 launch dreamzero_policy agibot_g1.launch.py checkpoint:=... device:=cuda autostart:=false

Arguments and autostart behaviour: dreamzero_policy/launch_description.py.
"""
from dreamzero_policy.launch_description import policy_launch_description

EMBODIMENT = "agibot_g1"


def generate_launch_description():
    return policy_launch_description(EMBODIMENT)
