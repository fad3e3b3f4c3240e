"""sim: a Franka simulation bench that speaks the robot's ROS 2 topics.

pybullet (DIRECT mode, TinyRenderer) with its Panda URDF standing in for an FR3 in the DROID setup: two exterior
cameras and a wrist camera, joint states, joint-trajectory controllers at the real joint names and limits, and a small
family of language-conditioned tasks with scripted experts. It produces demonstrations (bags, LeRobot datasets) and is
the closed loop in which a policy is judged.

Modules, lower ones used by higher ones:

    robot.py       FR3 joint names, limits, reset pose, gripper convention, mapping onto the Panda URDF
    controller.py  JointTrajectory + TrajectoryController (checks, interpolation, velocity/acceleration limits)
    cameras.py     the DROID camera set and TinyRenderer rendering
    tasks.py       reach / push / pick: randomised scenes, instructions, success tests
    env.py         FrankaSimEnv, SimObservation: the in-process API
    experts.py     scripted IK experts that act in 24-step chunks, like the model
    rollout.py     the Policy protocol, ReplayPolicy, run_episode (the loop shared by evaluation and recording)
    rosmsg.py      topic names and sim <-> rosbags message conversions
    bags.py, lerobot.py, video.py   rosbag2 / LeRobot v2.1 / mp4 writers and readers
    record.py      dreamzero-sim-record        evaluate.py  dreamzero-sim-eval        serve.py  dreamzero-sim
"""
from sim.controller import JointTrajectory, TrajectoryRejected
from sim.env import ARM_CONTROLLER, GRIPPER_CONTROLLER, FrankaSimEnv, SimObservation
from sim.experts import make_expert
from sim.rollout import Episode, FrameObserver, Policy, ReplayPolicy, run_episode
from sim.tasks import TASKS

__all__ = ["FrankaSimEnv", "SimObservation", "JointTrajectory", "TrajectoryRejected", "ARM_CONTROLLER",
           "GRIPPER_CONTROLLER", "Policy", "FrameObserver", "ReplayPolicy", "Episode", "run_episode", "make_expert",
           "TASKS"]
