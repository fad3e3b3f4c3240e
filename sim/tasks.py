"""The task family: randomised tabletop scenes, each with a language instruction and a success test.

- reach: three cubes of different colours; "reach the red cube". Success: the TCP within 5 cm of the target's centre.
- push:  one cube and a flat coloured square; "push the red cube onto the blue square". Success: the cube's centre
         over the square (|dx|, |dy| < 4 cm).
- pick:  the target cube and a distractor; "pick up the red cube". Success: the target lifted 8 cm off the floor.

A task samples everything from the generator it is given (so a seed fixes the scene), builds its bodies into a
pybullet client and answers questions about them. Objects lie on the floor plane the robot stands on, in front of it.
In reach and pick, any cube of a scene can be the target (`target`: 0 is the seed's own choice, the others name another
cube of the same scene): recording each in turn gives the same images with different instructions.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

COLOURS = {  # name -> RGBA
    "red": (0.85, 0.12, 0.1, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.12, 0.3, 0.9, 1.0),
    "yellow": (0.95, 0.8, 0.1, 1.0),
}
CUBE_SIZE = 0.04  # m, edge; the open gripper spans 0.08 m
WORKSPACE_X = (0.38, 0.62)  # m, in front of the robot base
WORKSPACE_Y = (-0.2, 0.2)


class Task:
    """A randomised scene with an instruction and a success test; `max_steps` is the horizon in control steps."""

    name: ClassVar[str]
    max_steps: ClassVar[int]
    targets: ClassVar[int] = 1  # how many objects of a scene can be the target

    def __init__(self, rng: np.random.Generator, target: int = 0):
        self.target = self.check_target(target)
        self.instruction = ""
        self.bodies: dict[str, int] = {}  # object name -> pybullet body id, filled by build

    @classmethod
    def check_target(cls, target: int) -> int:
        """`target`, or ValueError when a scene of this task has no such object."""
        if not 0 <= target < cls.targets:
            raise ValueError(f"task {cls.name!r}: target {target} out of range (a scene has {cls.targets} "
                             f"possible target{'s' if cls.targets > 1 else ''}: 0..{cls.targets - 1})")
        return target

    def build(self, client) -> None:
        """Create this scene's bodies in `client`."""
        raise NotImplementedError

    def success(self, client, tcp: np.ndarray) -> bool:
        """Whether the task is solved now; `tcp` [3] is the grasp point between the fingertips (world)."""
        raise NotImplementedError

    def goal_distance(self, client, tcp: np.ndarray) -> float:
        """How far (m) the scene is from success now: a progress measure for policies that do not succeed yet."""
        raise NotImplementedError

    def pose(self, client, name: str) -> tuple[np.ndarray, float]:
        """(position [3], yaw) of object `name`."""
        position, quaternion = client.getBasePositionAndOrientation(self.bodies[name])
        return np.array(position), client.getEulerFromQuaternion(quaternion)[2]

    def info(self, client) -> dict:
        """JSON-ready description: task, instruction and each object's colour and pose."""
        objects = {}
        for name, body in self.bodies.items():
            position, yaw = self.pose(client, name)
            objects[name] = {"position": [round(float(v), 5) for v in position], "yaw": round(float(yaw), 5)}
        return {"task": self.name, "instruction": self.instruction, "max_steps": self.max_steps, "objects": objects}

    def _add_cube(self, client, name: str, colour: str, xy: np.ndarray, yaw: float, mass: float) -> None:
        half = [CUBE_SIZE / 2] * 3
        body = client.createMultiBody(
            baseMass=mass,
            baseCollisionShapeIndex=client.createCollisionShape(client.GEOM_BOX, halfExtents=half),
            baseVisualShapeIndex=client.createVisualShape(client.GEOM_BOX, halfExtents=half, rgbaColor=COLOURS[colour]),
            basePosition=[float(xy[0]), float(xy[1]), CUBE_SIZE / 2],
            baseOrientation=client.getQuaternionFromEuler([0.0, 0.0, yaw]))
        client.changeDynamics(body, -1, lateralFriction=1.0, spinningFriction=0.001, rollingFriction=0.0)
        self.bodies[name] = body


def _target_first(values, target: int):
    """`values` (sequence or array, one entry per object) with entry `target` moved to the front."""
    order = [target] + [i for i in range(len(values)) if i != target]
    return [values[i] for i in order] if isinstance(values, list) else values[order]


def _sample_points(rng: np.random.Generator, n: int, min_distance: float,
                   x_range=WORKSPACE_X, y_range=WORKSPACE_Y) -> np.ndarray:
    """n points [n, 2] uniform in the workspace, pairwise at least `min_distance` apart (rejection sampling)."""
    while True:
        points = np.column_stack([rng.uniform(*x_range, n), rng.uniform(*y_range, n)])
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(n) * 1e9
        if gaps.min() >= min_distance:
            return points


class ReachTask(Task):
    """Reach the cube of the named colour among three."""

    name = "reach"
    max_steps = 72  # 4.8 s at 15 Hz
    targets = 3
    SUCCESS_RADIUS = 0.05

    def __init__(self, rng: np.random.Generator, target: int = 0):
        super().__init__(rng, target)
        colours = [str(c) for c in rng.choice(list(COLOURS), size=3, replace=False)]
        xy, yaw = _sample_points(rng, 3, min_distance=0.12), rng.uniform(-math.pi / 4, math.pi / 4, 3)  # [3, 2], [3]
        self.colours, self.xy, self.yaw = (_target_first(v, target) for v in (colours, xy, yaw))  # target first
        self.instruction = f"reach the {self.colours[0]} cube"

    def build(self, client) -> None:
        for i, colour in enumerate(self.colours):
            # Static cubes: touching one must not change the scene.
            self._add_cube(client, "target" if i == 0 else f"distractor_{i}", colour, self.xy[i], self.yaw[i], 0.0)

    def success(self, client, tcp: np.ndarray) -> bool:
        return self.goal_distance(client, tcp) < self.SUCCESS_RADIUS

    def goal_distance(self, client, tcp: np.ndarray) -> float:
        """The grasp point's distance to the target cube's centre."""
        return float(np.linalg.norm(tcp - self.pose(client, "target")[0]))


class PushTask(Task):
    """Push a cube onto a flat coloured square."""

    name = "push"
    max_steps = 240  # 16 s at 15 Hz
    GOAL_HALF = 0.04  # m, half the goal square's side

    def __init__(self, rng: np.random.Generator, target: int = 0):
        super().__init__(rng, target)
        self.cube_colour, self.goal_colour = (str(c) for c in rng.choice(list(COLOURS), size=2, replace=False))
        while True:
            self.cube_xy = np.array([rng.uniform(0.42, 0.58), rng.uniform(-0.15, 0.15)])
            angle, distance = rng.uniform(-math.pi, math.pi), rng.uniform(0.12, 0.18)
            self.goal_xy = self.cube_xy + distance * np.array([math.cos(angle), math.sin(angle)])
            x, y = self.goal_xy
            if WORKSPACE_X[0] <= x <= WORKSPACE_X[1] and WORKSPACE_Y[0] <= y <= WORKSPACE_Y[1]:
                break
        self.cube_yaw = rng.uniform(-math.pi / 4, math.pi / 4)
        self.instruction = f"push the {self.cube_colour} cube onto the {self.goal_colour} square"

    def build(self, client) -> None:
        self._add_cube(client, "cube", self.cube_colour, self.cube_xy, self.cube_yaw, 0.1)
        # The goal is drawn, not felt: a visual shape with no collision shape.
        half = [self.GOAL_HALF, self.GOAL_HALF, 0.001]
        self.bodies["goal"] = client.createMultiBody(
            baseMass=0.0, baseCollisionShapeIndex=-1,
            baseVisualShapeIndex=client.createVisualShape(client.GEOM_BOX, halfExtents=half,
                                                          rgbaColor=COLOURS[self.goal_colour]),
            basePosition=[float(self.goal_xy[0]), float(self.goal_xy[1]), 0.001])

    def success(self, client, tcp: np.ndarray) -> bool:
        offset = self.pose(client, "cube")[0][:2] - self.goal_xy
        return bool(np.all(np.abs(offset) < self.GOAL_HALF))

    def goal_distance(self, client, tcp: np.ndarray) -> float:
        """The cube's (x, y) distance to the goal square's centre."""
        return float(np.linalg.norm(self.pose(client, "cube")[0][:2] - self.goal_xy))


class PickTask(Task):
    """Pick up the cube of the named colour (one distractor)."""

    name = "pick"
    max_steps = 120  # 8 s at 15 Hz
    targets = 2
    LIFT_M = 0.08

    def __init__(self, rng: np.random.Generator, target: int = 0):
        super().__init__(rng, target)
        colours = [str(c) for c in rng.choice(list(COLOURS), size=2, replace=False)]
        xy, yaw = _sample_points(rng, 2, min_distance=0.15), rng.uniform(-math.pi / 4, math.pi / 4, 2)  # [2, 2], [2]
        self.colours, self.xy, self.yaw = (_target_first(v, target) for v in (colours, xy, yaw))  # target first
        self.instruction = f"pick up the {self.colours[0]} cube"

    def build(self, client) -> None:
        for i, colour in enumerate(self.colours):
            self._add_cube(client, "target" if i == 0 else "distractor", colour, self.xy[i], self.yaw[i], 0.05)

    def success(self, client, tcp: np.ndarray) -> bool:
        return bool(self.pose(client, "target")[0][2] > CUBE_SIZE / 2 + self.LIFT_M)

    def goal_distance(self, client, tcp: np.ndarray) -> float:
        """The grasp point's distance to the target cube plus the height the cube still has to rise."""
        position = self.pose(client, "target")[0]
        return float(np.linalg.norm(tcp - position) + max(0.0, CUBE_SIZE / 2 + self.LIFT_M - position[2]))


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ReachTask, PushTask, PickTask)}


def make_task(name: str, rng: np.random.Generator, target: int = 0) -> Task:
    """Sample a scene of task `name` with object `target` as the target; an unknown name or target raises
    ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name](rng, target)
