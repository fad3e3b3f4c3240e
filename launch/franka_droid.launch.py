"""DreamZero policy for a Franka Research 3 in the DROID setup, as a managed (lifecycle) node.

    ros2 launch dreamzero_policy franka_droid.launch.py checkpoint:=/path/to/checkpoint
    ros2 launch dreamzero_policy franka_droid.launch.py checkpoint:=... device:=cuda autostart:=false

Arguments and autostart behaviour: dreamzero_policy/launch_description.py.
"""
from dreamzero_policy.launch_description import policy_launch_description

EMBODIMENT = "franka_droid"


def generate_launch_description():
    return policy_launch_description(EMBODIMENT)
