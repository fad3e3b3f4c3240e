"""FrankaSimEnv: the in-process simulation bench (pybullet, DIRECT mode, TinyRenderer).

    env = FrankaSimEnv(task="reach", seed=0, image_hw=(180, 320), cameras=("wrist", "exterior_1", "exterior_2"))
    obs = env.reset(seed)                                        # SimObservation with images
    frames = env.execute_chunk(chunk, dt=1 / 15, observe_every=3)  # chunk [T, 8]; frames at 5 fps
    env.success(), env.task_info()

A chunk row is 7 absolute arm joint targets (rad) + the gripper in [0, 1] (0 open, 1 closed). It becomes two
JointTrajectory commands, as on the real robot: the arm's on `fr3_arm_controller` and the gripper's on
`fr3_gripper_controller` (joint `fr3_finger_joint1` in metres, 0.04 open .. 0 closed; the second finger mirrors it).
The step-wise API (`send_chunk` / `send_trajectory`, `step`, `observe`) lets a caller publish at its own rates while a
chunk runs; `execute_chunk` is the convenience loop over it.

Time is simulated: physics runs at 240 Hz and `now_ns` counts from 0 at reset. Everything (scene, physics, images)
is a function of the seed and the commands, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from sim import robot
from sim.cameras import CAMERA_SPECS, CAMERAS, render
from sim.controller import JointTrajectory, TrajectoryController, TrajectoryRejected
from sim.tasks import TASKS, Task, make_task

ARM_CONTROLLER = "fr3_arm_controller"
GRIPPER_CONTROLLER = "fr3_gripper_controller"


@dataclass(frozen=True)
class SimObservation:
    """What the robot's topics carry at one instant: joint states, camera images, the instruction."""

    stamp_ns: int
    joint_names: tuple[str, ...]  # robot.JOINT_NAMES: 7 arm joints + 2 fingers
    joint_positions: np.ndarray  # [9] rad (arm), m (fingers)
    images: dict[str, np.ndarray]  # camera -> [H, W, 3] uint8 RGB; empty when not rendered
    instruction: str
    joint_velocities: np.ndarray | None = None  # [9] rad/s, m/s
    joint_efforts: np.ndarray | None = None  # [9] N m, N

    @property
    def state(self) -> np.ndarray:
        """The model's state [8]: 7 arm joints + gripper in [0, 1] (from the first finger)."""
        return np.append(self.joint_positions[:7], robot.finger_to_gripper(self.joint_positions[7]))


def chunk_to_trajectories(positions: np.ndarray, dt: float) -> tuple[JointTrajectory, JointTrajectory]:
    """Chunk [T, 8] (7 arm targets + gripper [0, 1]) -> (arm, gripper) trajectories, point i at (i + 1) * dt.

    Gripper values outside [0, 1] map outside the finger's limits, so the controller rejects them.
    """
    try:
        positions = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError):
        raise TrajectoryRejected("chunk is not a numeric (T, 8) array: 7 arm joints + gripper") from None
    if positions.ndim != 2 or positions.shape[1] != 8:
        raise TrajectoryRejected(f"chunk has shape {positions.shape}, expected (T, 8): 7 arm joints + gripper")
    times = np.round(np.arange(1, len(positions) + 1) * dt * 1e9).astype(np.int64)  # [T]
    arm = JointTrajectory(robot.ARM_JOINTS, times, positions[:, :7])
    gripper = JointTrajectory(robot.FINGER_JOINTS[:1], times, robot.gripper_to_finger(positions[:, 7:]))
    return arm, gripper


class FrankaSimEnv:
    """A Franka on a floor with a randomised task scene, the DROID cameras and trajectory controllers.

    Not thread-safe: one thread drives it.
    """

    PHYSICS_HZ = 240
    CONTROL_HZ = 15

    def __init__(self, task: str = "reach", seed: int = 0, image_hw: tuple[int, int] = (180, 320),
                 cameras: tuple[str, ...] = CAMERAS):
        unknown = [c for c in cameras if c not in CAMERA_SPECS]
        if unknown:
            raise ValueError(f"unknown cameras {unknown}; valid cameras: {list(CAMERAS)}")
        if len(image_hw) != 2 or min(image_hw) < 1:
            raise ValueError(f"image_hw must be (height, width) with positive sizes, got {image_hw}")
        make_task(task, np.random.default_rng(seed))  # fail early on an unknown task name
        self.task_name = task
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.cameras = tuple(cameras)
        self.seed = seed
        self.client = BulletClient(connection_mode=pybullet.DIRECT)
        self.controllers = {
            ARM_CONTROLLER: TrajectoryController(ARM_CONTROLLER, robot.ARM_JOINTS, robot.ARM_LOWER, robot.ARM_UPPER,
                                                 robot.ARM_MAX_VELOCITY, robot.ARM_MAX_ACCELERATION),
            GRIPPER_CONTROLLER: TrajectoryController(GRIPPER_CONTROLLER, robot.FINGER_JOINTS[:1], [0.0],
                                                     [robot.FINGER_OPEN_M], [robot.FINGER_MAX_VELOCITY],
                                                     [robot.FINGER_MAX_ACCELERATION]),
        }
        self.task: Task | None = None
        self.step_count = 0
        self.rejected_count = 0  # rejected trajectories since reset
        self.last_rejection = ""

    # ---------------------------------------------------------------- episode
    def reset(self, seed: int | None = None, render: bool = True, target: int = 0) -> SimObservation:
        """Rebuild the world for a new episode (seed None: the next seed after the last one) and observe it.
        `target`: which object of the seed's scene is the target (sim.tasks; 0: the seed's own choice)."""
        TASKS[self.task_name].check_target(target)  # before the world is touched
        if seed is not None:
            self.seed = seed
        elif self.task is not None:
            self.seed += 1
        c = self.client
        c.resetSimulation()
        c.setPhysicsEngineParameter(fixedTimeStep=1.0 / self.PHYSICS_HZ, deterministicOverlappingPairs=1)
        c.setGravity(0.0, 0.0, -9.81)
        c.setAdditionalSearchPath(pybullet_data.getDataPath())
        c.loadURDF("plane.urdf")
        self.robot_id = c.loadURDF("franka_panda/panda.urdf", useFixedBase=True)
        joint_index = {c.getJointInfo(self.robot_id, j)[1].decode(): j for j in range(c.getNumJoints(self.robot_id))}
        link_index = {c.getJointInfo(self.robot_id, j)[12].decode(): j for j in range(c.getNumJoints(self.robot_id))}
        self.joint_indices = [joint_index[robot.URDF_JOINT[n]] for n in robot.JOINT_NAMES]  # [9]
        self.hand_link, self.tcp_link = link_index[robot.HAND_LINK], link_index[robot.TCP_LINK]
        for index, lower, upper in zip(self.joint_indices, robot.ARM_LOWER, robot.ARM_UPPER):
            # The FR3's limits become the physics engine's hard joint limits (the Panda URDF's are wider).
            c.changeDynamics(self.robot_id, index, jointLowerLimit=float(lower), jointUpperLimit=float(upper))
        for finger in self.joint_indices[7:]:
            c.changeDynamics(self.robot_id, finger, lateralFriction=1.5)
        start = np.concatenate([robot.HOME, [robot.FINGER_OPEN_M] * 2])  # [9]
        for index, value in zip(self.joint_indices, start):
            c.resetJointState(self.robot_id, index, float(value))
        self.controllers[ARM_CONTROLLER].reset(start[:7])
        self.controllers[GRIPPER_CONTROLLER].reset(start[7:8])
        self.task = make_task(self.task_name, np.random.default_rng(self.seed), target)
        self.task.build(c)
        self.step_count = 0
        self.rejected_count = 0
        self.last_rejection = ""
        return self.observe(render)

    @property
    def instruction(self) -> str:
        return self.task.instruction

    @property
    def max_steps(self) -> int:
        """The episode horizon in control steps."""
        return self.task.max_steps

    @property
    def now_ns(self) -> int:
        """Simulated time since reset."""
        return self.step_count * 1_000_000_000 // self.PHYSICS_HZ

    def success(self) -> bool:
        return self.task.success(self.client, self.tcp_position())

    def goal_distance(self) -> float:
        """The task's distance from success now (m; see Task.goal_distance)."""
        return self.task.goal_distance(self.client, self.tcp_position())

    def task_info(self) -> dict:
        """JSON-ready: task, seed, instruction, object poses, success now, rejected trajectories."""
        return {**self.task.info(self.client), "seed": self.seed, "success": self.success(),
                "rejected_trajectories": self.rejected_count}

    # ---------------------------------------------------------------- commands
    def send_trajectory(self, controller: str, traj: JointTrajectory) -> None:
        """Command one controller (ARM_CONTROLLER or GRIPPER_CONTROLLER); a bad trajectory holds the arm, is counted
        and raises TrajectoryRejected."""
        if controller not in self.controllers:
            raise ValueError(f"unknown controller {controller!r}; valid controllers: {sorted(self.controllers)}")
        try:
            self.controllers[controller].command(traj)
        except TrajectoryRejected as error:
            self._count_rejection(error)
            raise

    def send_chunk(self, positions: np.ndarray, dt: float = 1.0 / CONTROL_HZ) -> None:
        """Command a chunk [T, 8] (absolute arm targets + gripper [0, 1]), both controllers or neither."""
        try:
            arm, gripper = chunk_to_trajectories(positions, dt)
            checked = [(self.controllers[ARM_CONTROLLER], self.controllers[ARM_CONTROLLER].validate(arm)),
                       (self.controllers[GRIPPER_CONTROLLER], self.controllers[GRIPPER_CONTROLLER].validate(gripper))]
        except TrajectoryRejected as error:
            self._count_rejection(error)
            raise
        for controller, validated in checked:
            controller.start(*validated)

    def _count_rejection(self, error: TrajectoryRejected) -> None:
        """Hold both controllers and count the rejection (the caller re-raises)."""
        for controller in self.controllers.values():
            controller.hold()
        self.rejected_count += 1
        self.last_rejection = str(error)

    def step(self, n: int = 1) -> None:
        """Advance physics by n steps of 1/240 s; the controllers update before each step."""
        c, dt = self.client, 1.0 / self.PHYSICS_HZ
        arm, gripper = self.controllers[ARM_CONTROLLER], self.controllers[GRIPPER_CONTROLLER]
        for _ in range(n):
            arm_target, finger_target = arm.update(dt), gripper.update(dt)
            c.setJointMotorControlArray(self.robot_id, self.joint_indices[:7], c.POSITION_CONTROL,
                                        targetPositions=arm_target, targetVelocities=arm.setpoint_velocity,
                                        forces=robot.ARM_MAX_EFFORT)
            c.setJointMotorControlArray(self.robot_id, self.joint_indices[7:], c.POSITION_CONTROL,
                                        targetPositions=[finger_target[0]] * 2,
                                        targetVelocities=[gripper.setpoint_velocity[0]] * 2,
                                        forces=[robot.FINGER_MAX_EFFORT] * 2)
            c.stepSimulation()
            self.step_count += 1

    def execute_chunk(self, positions: np.ndarray, dt: float = 1.0 / CONTROL_HZ, observe_every: int | None = None,
                      render: bool = True) -> list[SimObservation]:
        """Send a chunk [T, 8] and run it for T * dt; return an observation after every `observe_every` control
        steps (3 at 15 Hz: the model's 5 fps), images only if `render`. Rejected chunks raise before anything runs."""
        if round(dt * self.PHYSICS_HZ) < 1:
            raise ValueError(f"dt {dt} s is shorter than a physics step (1/{self.PHYSICS_HZ} s)")
        self.send_chunk(positions, dt)
        observations = []
        for k in range(1, len(positions) + 1):
            self.step(round(k * dt * self.PHYSICS_HZ) - round((k - 1) * dt * self.PHYSICS_HZ))
            if observe_every and k % observe_every == 0:
                observations.append(self.observe(render))
        return observations

    # ---------------------------------------------------------------- sensing
    def observe(self, render: bool = True) -> SimObservation:
        """Joint states now, and camera images if `render`."""
        states = self.client.getJointStates(self.robot_id, self.joint_indices)
        return SimObservation(
            stamp_ns=self.now_ns, joint_names=robot.JOINT_NAMES,
            joint_positions=np.array([s[0] for s in states]),
            images={camera: self.render(camera) for camera in self.cameras} if render else {},
            instruction=self.task.instruction,
            joint_velocities=np.array([s[1] for s in states]),
            joint_efforts=np.array([s[3] for s in states]))

    def render(self, camera: str) -> np.ndarray:
        """One camera's image now, [H, W, 3] uint8 RGB."""
        hand = self.client.getLinkState(self.robot_id, self.hand_link, computeForwardKinematics=True)
        return render(self.client, CAMERA_SPECS[camera], self.image_hw, (np.array(hand[4]), hand[5]))

    def tcp_position(self) -> np.ndarray:
        """The grasp point between the fingertips [3], world metres."""
        return np.array(self.client.getLinkState(self.robot_id, self.tcp_link, computeForwardKinematics=True)[4])

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position [3], quaternion xyzw [4]) of the grasp point."""
        state = self.client.getLinkState(self.robot_id, self.tcp_link, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client = None

    def __enter__(self) -> FrankaSimEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
