"""The FR3 as the team names it, mapped onto pybullet's Panda URDF (pybullet_data/franka_panda/panda.urdf).

The sim speaks the real robot's names and limits: joints `fr3_joint1..7` and `fr3_finger_joint1/2`, FR3 position and
velocity limits (franka_description, see docs reference ROBOTS_AND_ROS.md section 1), the DROID reset pose and the
model's gripper convention (0 open, 1 closed). The Panda URDF supplies geometry, masses and effort limits; its own
position limits are wider than the FR3's everywhere except joint 6 above 3.8223 rad (FR3: 4.5169), which the Panda
model cannot reach.
"""
from __future__ import annotations

import math

import numpy as np

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("fr3_finger_joint1", "fr3_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS  # the order of /joint_states and SimObservation.joint_positions

# Team name -> Panda URDF joint name.
URDF_JOINT = {**{f"fr3_joint{i}": f"panda_joint{i}" for i in range(1, 8)},
              "fr3_finger_joint1": "panda_finger_joint1", "fr3_finger_joint2": "panda_finger_joint2"}
HAND_LINK = "panda_hand"  # the wrist camera is mounted here
TCP_LINK = "panda_grasptarget"  # between the fingertips, 0.105 m below the hand flange

# FR3 limits [7] (rad, rad/s).
ARM_LOWER = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
ARM_UPPER = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
ARM_MAX_VELOCITY = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
ARM_MAX_EFFORT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])  # N m, Panda URDF
# rad/s^2: Franka's published joint acceleration limits (the controller's setpoints respect them).
ARM_MAX_ACCELERATION = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])

FINGER_OPEN_M = 0.04  # each finger travels 0 (closed) .. 0.04 m (open)
FINGER_MAX_VELOCITY = 0.2  # m/s, Panda URDF
FINGER_MAX_EFFORT = 20.0  # N, Panda URDF
FINGER_MAX_ACCELERATION = 10.0  # m/s^2, no published value; high enough not to slow the gripper noticeably

HOME = np.array([0.0, -math.pi / 5, 0.0, -4 * math.pi / 5, 0.0, 3 * math.pi / 5, 0.0])  # DROID reset pose [7]


def gripper_to_finger(gripper: np.ndarray | float) -> np.ndarray:
    """Model gripper command in [0, 1] (0 open, 1 closed) -> finger joint position in metres."""
    return FINGER_OPEN_M * (1.0 - np.asarray(gripper, dtype=np.float64))


def finger_to_gripper(finger_m: np.ndarray | float) -> np.ndarray:
    """Finger joint position in metres -> model gripper value in [0, 1] (clipped)."""
    return np.clip(1.0 - np.asarray(finger_m, dtype=np.float64) / FINGER_OPEN_M, 0.0, 1.0)
