"""Scripted experts: privileged-state policies that act like the model, in 24-step joint-position chunks at 15 Hz.

Each expert plans the grasp point (TCP) in Cartesian space, top-down, as a list of segments (target position, hand
yaw, gripper, number of control steps), follows each segment on a minimum-jerk profile and turns every waypoint into
joint targets with pybullet's calculateInverseKinematics. IK runs on a private, never-stepped copy of the Panda,
seeded with the previous waypoint, so it never disturbs the simulation and consecutive solutions stay on one branch.

The experts read the scene from the env (`env.task`), not from images: they are the demonstrators and the reference
policies of the closed-loop evaluation, not learned policies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from sim import robot
from sim.env import FrankaSimEnv, SimObservation
from sim.rollout import CHUNK_LEN
from sim.tasks import CUBE_SIZE

IK_MARGIN = 1e-3  # rad kept from each joint limit, so expert chunks are never rejected


@dataclass(frozen=True)
class Segment:
    """Move the TCP to `position` [3] with hand yaw `yaw` over `steps` control steps, gripper held at `gripper`."""

    position: np.ndarray
    yaw: float
    gripper: float
    steps: int


class IKSolver:
    """Arm joint targets for a top-down TCP pose, on a private copy of the Panda."""

    def __init__(self):
        self.client = BulletClient(connection_mode=pybullet.DIRECT)
        self.client.setAdditionalSearchPath(pybullet_data.getDataPath())
        self.body = self.client.loadURDF("franka_panda/panda.urdf", useFixedBase=True)
        c = self.client
        joints = {c.getJointInfo(self.body, j)[1].decode(): j for j in range(c.getNumJoints(self.body))}
        links = {c.getJointInfo(self.body, j)[12].decode(): j for j in range(c.getNumJoints(self.body))}
        self.arm = [joints[robot.URDF_JOINT[n]] for n in robot.ARM_JOINTS]
        self.fingers = [joints[robot.URDF_JOINT[n]] for n in robot.FINGER_JOINTS]
        self.tcp = links[robot.TCP_LINK]
        # Null-space arrays cover every movable joint (7 arm + 2 fingers).
        self.lower = list(robot.ARM_LOWER) + [0.0, 0.0]
        self.upper = list(robot.ARM_UPPER) + [robot.FINGER_OPEN_M] * 2
        self.ranges = [u - l for l, u in zip(self.lower, self.upper)]

    def solve(self, position: np.ndarray, yaw: float, seed: np.ndarray) -> np.ndarray:
        """Joint targets [7] putting the TCP at `position` [3], pointing down with hand yaw `yaw`; starts from
        `seed` [7]."""
        c = self.client
        for index, value in zip(self.arm, seed):
            c.resetJointState(self.body, index, float(value))
        rest = list(robot.HOME) + [robot.FINGER_OPEN_M] * 2
        rest[6] = robot.HOME[6] + yaw - math.pi / 4  # joint 7 follows the yaw (home yaw is pi/4)
        solution = c.calculateInverseKinematics(
            self.body, self.tcp, [float(v) for v in position], c.getQuaternionFromEuler([math.pi, 0.0, yaw]),
            lowerLimits=self.lower, upperLimits=self.upper, jointRanges=self.ranges, restPoses=rest,
            maxNumIterations=100, residualThreshold=1e-5)
        return np.clip(np.array(solution[:7]), robot.ARM_LOWER + IK_MARGIN, robot.ARM_UPPER - IK_MARGIN)

    def tcp_position(self, q: np.ndarray) -> np.ndarray:
        """Forward kinematics: the grasp point [3] (world metres) with the arm at joint positions `q` [7]."""
        for index, value in zip(self.arm, q):
            self.client.resetJointState(self.body, index, float(value))
        return np.array(self.client.getLinkState(self.body, self.tcp, computeForwardKinematics=True)[4])

    def close(self) -> None:
        self.client.disconnect()


def grasp_yaw(object_yaw: float) -> float:
    """Hand yaw that closes the fingers across a cube's faces, nearest the home yaw pi/4: in [0, pi/2)."""
    return object_yaw % (math.pi / 2)


def push_yaw(direction: np.ndarray) -> float:
    """Hand yaw that puts both closed fingers side by side across the push `direction` [2], nearest pi/4."""
    yaw = math.atan2(direction[1], direction[0])
    return (yaw - math.pi / 4 + math.pi / 2) % math.pi + math.pi / 4 - math.pi / 2


def _min_jerk(s: np.ndarray) -> np.ndarray:
    return 10 * s ** 3 - 15 * s ** 4 + 6 * s ** 5


class ScriptedExpert:
    """Base expert: plans segments (`plan`), follows them through IK and hands out CHUNK_LEN-step chunks.

    Satisfies the `sim.policy.Policy` protocol; it must act on the env it was built with.
    """

    replan_every_chunk = False  # False: plan once per episode; True: replan from the measured state every chunk

    def __init__(self, env: FrankaSimEnv):
        self.env = env
        self.ik = IKSolver()
        self._queue: np.ndarray | None = None  # [N, 8] planned actions not yet handed out; None: not planned
        self._yaw = math.pi / 4  # the hand yaw the plan ends with (home: pi/4)

    def reset(self, instruction: str) -> None:
        self._queue = None
        self._yaw = math.pi / 4

    def act(self, obs: SimObservation) -> np.ndarray:
        """The next chunk [CHUNK_LEN, 8]: absolute arm targets + gripper in [0, 1]."""
        if self._queue is None or self.replan_every_chunk:
            self._queue = self._follow(self.plan(self.env.tcp_position()), obs.state, self.env.tcp_position())
        if len(self._queue) < CHUNK_LEN:  # the plan ends within this chunk: hold its last action
            last = self._queue[-1:] if len(self._queue) else obs.state[None]
            self._queue = np.vstack([self._queue, np.repeat(last, CHUNK_LEN - len(self._queue), axis=0)])
        chunk, self._queue = self._queue[:CHUNK_LEN], self._queue[CHUNK_LEN:]
        return chunk

    def plan(self, tcp: np.ndarray) -> list[Segment]:
        """Segments from the TCP position `tcp` [3] onwards; may read the scene through `self.env`."""
        raise NotImplementedError

    def _follow(self, segments: list[Segment], start: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        """Segments -> actions [N, 8], starting from action `start` [8] with the TCP at `tcp` [3]."""
        rows, q, position, yaw = [], start[:7], tcp, self._yaw
        for segment in segments:
            for s in _min_jerk(np.arange(1, segment.steps + 1) / segment.steps):
                q = self.ik.solve(position + s * (segment.position - position), yaw + s * (segment.yaw - yaw), q)
                rows.append(np.append(q, segment.gripper))
            position, yaw = segment.position, segment.yaw
        self._yaw = yaw
        return np.array(rows).reshape(-1, 8)

    def close(self) -> None:
        self.ik.close()


class ReachExpert(ScriptedExpert):
    """Look, approach, descend: one chunk each, replanned from the measured pose at every chunk boundary.

    1. to a lookout above the workspace (the same chunk in every scene; hand yaw 0, the wrist image's long side along
       the workspace's): from there the wrist camera sees every cube at ~6x7 pixels of a 64x128 model frame,
       against 1-2 pixels in the home pose's views;
    2. to 10 cm above the target cube, aimed `miss_m` metres off at most (uniform in a disc; 0: on target);
    3. from wherever chunk 2 ended, down to 3 cm above the target's centre, then hold.
    With `miss_m` > 0 the demonstrations show recoveries: chunk 3 starts off target, with the cube large in the
    wrist view, and corrects. The miss is a function of the scene's seed and target, so episodes stay reproducible.
    """

    LOOKOUT = np.array([0.47, 0.0, 0.26])  # m, TCP
    APPROACH_Z, REACH_Z = 0.10, 0.03  # m above the target's centre
    replan_every_chunk = True

    def __init__(self, env: FrankaSimEnv, miss_m: float = 0.0):
        super().__init__(env)
        if miss_m < 0:
            raise ValueError(f"miss_m must be >= 0, got {miss_m}")
        self.miss_m = miss_m
        self._chunk = 0

    def reset(self, instruction: str) -> None:
        super().reset(instruction)
        self._chunk = 0

    def plan(self, tcp: np.ndarray) -> list[Segment]:
        target, yaw = self.env.task.pose(self.env.client, "target")
        hand_yaw = grasp_yaw(yaw)
        phase, self._chunk = self._chunk, self._chunk + 1
        if phase == 0:
            return [Segment(self.LOOKOUT, 0.0, 0.0, CHUNK_LEN)]
        if phase == 1:
            return [Segment(target + np.append(self._miss(), self.APPROACH_Z), hand_yaw, 0.0, CHUNK_LEN)]
        return [Segment(target + [0.0, 0.0, self.REACH_Z], hand_yaw, 0.0, CHUNK_LEN * 2 // 3)]

    def _miss(self) -> np.ndarray:
        """[2] horizontal aim offset, uniform in the disc of radius miss_m."""
        rng = np.random.default_rng([self.env.seed, self.env.task.target])
        radius, angle = self.miss_m * math.sqrt(rng.uniform()), rng.uniform(0.0, 2 * math.pi)
        return radius * np.array([math.cos(angle), math.sin(angle)])


class PickExpert(ScriptedExpert):
    """Above the target, down around it, close, lift."""

    GRASP_Z = 0.025  # m, TCP height at the grasp: fingertips ~1.4 cm above the floor

    def plan(self, tcp: np.ndarray) -> list[Segment]:
        target, yaw = self.env.task.pose(self.env.client, "target")
        hand_yaw = grasp_yaw(yaw)
        above = np.array([target[0], target[1], 0.15])
        grasp = np.array([target[0], target[1], self.GRASP_Z])
        lifted = np.array([target[0], target[1], 0.22])
        return [Segment(above, hand_yaw, 0.0, 20), Segment(grasp, hand_yaw, 0.0, 14),
                Segment(grasp, hand_yaw, 1.0, 8), Segment(lifted, hand_yaw, 1.0, 16)]


class PushExpert(ScriptedExpert):
    """Closed loop, one chunk at a time: get behind the cube on the line to the goal, then push along it."""

    replan_every_chunk = True
    PUSH_Z = 0.025  # m, TCP height while pushing
    CLEAR_Z = 0.10  # m, TCP height while moving around the cube
    CONTACT = CUBE_SIZE / 2 + 0.013  # m, TCP to cube centre when the closed fingers touch the cube
    MAX_PUSH = 0.12  # m per chunk (0.075 m/s)

    def plan(self, tcp: np.ndarray) -> list[Segment]:
        cube = self.env.task.pose(self.env.client, "cube")[0][:2]
        goal = self.env.task.goal_xy
        direction = (goal - cube) / max(np.linalg.norm(goal - cube), 1e-6)  # [2] unit
        yaw = push_yaw(direction)
        relative = tcp[:2] - cube
        along = relative @ direction
        lateral = abs(relative[0] * direction[1] - relative[1] * direction[0])
        if tcp[2] < 0.045 and -2.5 * self.CONTACT < along < -0.8 * self.CONTACT and lateral < 0.012:
            end = goal - direction * self.CONTACT
            step = end - tcp[:2]
            step *= min(1.0, self.MAX_PUSH / max(np.linalg.norm(step), 1e-9))
            return [Segment(np.append(tcp[:2] + step, self.PUSH_Z), yaw, 1.0, CHUNK_LEN)]
        behind = cube - direction * 2 * self.CONTACT
        return [Segment(np.append(tcp[:2], max(tcp[2], self.CLEAR_Z)), self._yaw, 1.0, 6),
                Segment(np.append(behind, self.CLEAR_Z), yaw, 1.0, 10),
                Segment(np.append(behind, self.PUSH_Z), yaw, 1.0, 8)]


EXPERTS: dict[str, type[ScriptedExpert]] = {"reach": ReachExpert, "push": PushExpert, "pick": PickExpert}


def make_expert(env: FrankaSimEnv, miss_m: float = 0.0) -> ScriptedExpert:
    """The scripted expert for the env's task; `miss_m`: the reach expert's approach misses by up to this much."""
    if env.task_name == "reach":
        return ReachExpert(env, miss_m)
    if miss_m:
        raise ValueError(f"miss_m: only the reach expert aims off target on purpose (task {env.task_name!r})")
    return EXPERTS[env.task_name](env)
