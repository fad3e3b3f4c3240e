"""ROS-topic mode: the sim stands in for the robot on a ROS 2 graph, through `dreamzero_policy.middleware`.

    dreamzero-sim --task pick --seed 0 [--backend auto|dds|rclpy] [--image-hz 15] [--realtime 1.0]

Publishes the robot's topics (see sim.rosmsg): /joint_states at 30 Hz and /cameras/<camera>/image_raw at
`--image-hz` (sensor-data QoS), /dreamzero/instruction (latched), /clock (rosgraph_msgs/Clock, at the joint-state rate) and
/sim/task_info (std_msgs/String with the JSON of `env.task_info()`, latched, on reset and at 1 Hz).
Subscribes /fr3_arm_controller/joint_trajectory and /fr3_gripper_controller/joint_trajectory (reliable); a new
trajectory replaces the running one and starts when the sim receives it (header.stamp is not used for delayed
starts), a bad one is rejected with one log line, counted in task_info and the arm holds.
Serves the actions /fr3_{arm,gripper}_controller/follow_joint_trajectory (control_msgs/FollowJointTrajectory, dds
backend) like ros2_controllers' joint_trajectory_controller: a bad goal is rejected (the running trajectory goes
on); an accepted goal replaces the running trajectory and ends the previous goal CANCELED with INVALID_GOAL "Current
goal cancelled due to new incoming action."; a cancel holds the arm and ends the goal CANCELED; a goal SUCCEEDS when
its trajectory has run out (no tolerance checks); an episode reset aborts the running goals.
Service /sim/reset (std_srvs/Trigger) starts the next episode (next seed); its message is the new instruction.

Time: stamps are `wall clock at the episode's reset + sim time`. With `--realtime 1` the sim is paced to the wall
clock, so stamps follow it; when rendering cannot keep up (three 320x180 cameras at 15 Hz need ~1.2 s per simulated
second on a 2-core machine) the sim runs slower and nodes should follow /clock (use_sim_time).

Threading: the sim loop owns the env on the calling thread; middleware callbacks run on the executor thread and only
queue commands for it.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
import time

from dreamzero_policy import msgs
from dreamzero_policy.middleware import QoS, create_middleware
from dreamzero_policy.middleware.base import Middleware, MiddlewareError, ServerGoalHandle

from sim import rosmsg
from sim.cameras import CAMERAS
from sim.controller import TrajectoryRejected
from sim.env import FrankaSimEnv
from sim.tasks import TASKS

log = logging.getLogger("sim.serve")
JOINT_STATE_HZ = 30
RESET_SERVICE = "/sim/reset"
TASK_INFO = "/sim/task_info"
PREEMPTED = "Current goal cancelled due to new incoming action."  # joint_trajectory_controller's words


class SimServer:
    """Connects a FrankaSimEnv to the middleware; `run` drives the sim loop."""

    def __init__(self, env: FrankaSimEnv, mw: Middleware, seed: int = 0, image_hz: int = 15, realtime: float = 1.0):
        if image_hz < 1 or env.PHYSICS_HZ % image_hz:
            raise ValueError(f"image_hz {image_hz} must divide the physics rate {env.PHYSICS_HZ} Hz (e.g. 5, 10, 15)")
        if realtime < 0:
            raise ValueError(f"realtime must be >= 0 (0: as fast as possible), got {realtime}")
        self.env, self.mw, self.seed, self.realtime = env, mw, seed, realtime
        self.joint_period, self.image_period = env.PHYSICS_HZ // JOINT_STATE_HZ, env.PHYSICS_HZ // image_hz
        self.epoch_ns = 0  # wall clock at the episode's reset
        # ("trajectory", controller, msg), ("goal", controller, handle), ("cancel", handle), ("reset", done, reply)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._goals: dict[str, ServerGoalHandle] = {}  # controller -> its running goal (sim thread)
        self.joint_states = mw.create_publisher(rosmsg.JOINT_STATES, rosmsg.JOINT_STATE_TYPE, QoS.SENSOR_DATA)
        self.images = {camera: mw.create_publisher(rosmsg.camera_topic(camera), rosmsg.IMAGE_TYPE, QoS.SENSOR_DATA)
                       for camera in env.cameras}
        self.instruction = mw.create_publisher(rosmsg.INSTRUCTION, rosmsg.STRING_TYPE, QoS.LATCHED)
        self.task_info = mw.create_publisher(TASK_INFO, rosmsg.STRING_TYPE, QoS.LATCHED)
        self.clock = mw.create_publisher(rosmsg.CLOCK, rosmsg.CLOCK_TYPE, QoS.RELIABLE)
        for controller, topic in rosmsg.TRAJECTORY_TOPICS.items():
            mw.create_subscription(topic, rosmsg.TRAJECTORY_TYPE,
                                   lambda msg, c=controller: self._commands.put(("trajectory", c, msg)),
                                   QoS.RELIABLE)
        try:
            for controller, action in rosmsg.TRAJECTORY_ACTIONS.items():
                mw.create_action_server(action, rosmsg.TRAJECTORY_ACTION_TYPE,
                                        lambda handle, c=controller: self._on_goal(c, handle), self._on_cancel)
        except MiddlewareError as error:
            log.warning("%s; serving the joint_trajectory topics only", error)
        mw.create_service(RESET_SERVICE, "std_srvs/srv/Trigger", self._on_reset_request)

    def stamp(self) -> int:
        return self.epoch_ns + self.env.now_ns

    def run(self, stop: threading.Event) -> None:
        """Reset to `seed` and simulate until `stop` is set."""
        self._reset(self.seed)
        wall_start, sim_start = time.monotonic(), self.env.step_count
        while not stop.is_set():
            self._drain_commands()
            if self.env.step_count == 0:  # just reset: restart the pacing clock
                wall_start, sim_start = time.monotonic(), 0
            self.env.step()
            self._finish_goals()
            self._publish_sensors()
            if (self.env.step_count - sim_start) % (10 * self.env.PHYSICS_HZ) == 0:
                log.info("real-time factor %.2f", (self.env.step_count - sim_start) / self.env.PHYSICS_HZ / (
                    time.monotonic() - wall_start))
            if self.realtime > 0:
                ahead = (self.env.step_count - sim_start) / (self.env.PHYSICS_HZ * self.realtime) - (
                    time.monotonic() - wall_start)
                if ahead > 0:
                    time.sleep(ahead)

    def _reset(self, seed: int) -> None:
        for handle in self._goals.values():
            handle.abort(self._result(-1, "episode reset"))  # INVALID_GOAL
        self._goals.clear()
        self.env.reset(seed, render=False)
        self.seed = seed
        self.epoch_ns = time.time_ns()
        self.instruction.publish(rosmsg.string_msg(self.env.instruction))
        log.info("episode: task %s, seed %d, instruction %r", self.env.task_name, seed, self.env.instruction)
        self._publish_sensors()

    def _publish_sensors(self) -> None:
        env, stamp = self.env, self.stamp()
        if env.step_count % self.joint_period == 0:
            self.joint_states.publish(rosmsg.joint_state_msg(env.observe(render=False), stamp))
            self.clock.publish(rosmsg.clock_msg(stamp))
        if env.step_count % self.image_period == 0:
            for camera, publisher in self.images.items():
                publisher.publish(rosmsg.image_msg(env.render(camera), stamp, camera))
        if env.step_count % env.PHYSICS_HZ == 0:
            self.task_info.publish(rosmsg.string_msg(json.dumps(env.task_info())))

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            kind, *args = command
            if kind == "reset":
                done, reply = args
                self._reset(self.seed + 1)
                reply.append(self.env.instruction)
                done.set()
            elif kind == "trajectory":
                controller, msg = args
                try:
                    self.env.send_trajectory(controller, rosmsg.trajectory_from_msg(msg))
                except TrajectoryRejected as error:
                    log.warning("trajectory rejected (%d so far this episode), holding: %s",
                                self.env.rejected_count, error)
            elif kind == "goal":
                self._start_goal(*args)
            else:
                self._cancel_goal(*args)

    # --- FollowJointTrajectory (see the module docstring) ---
    @staticmethod
    def _result(error_code: int = 0, error_string: str = ""):
        return msgs.default_msg(f"{rosmsg.TRAJECTORY_ACTION_TYPE}_Result", error_code=error_code,
                                error_string=error_string)

    def _on_goal(self, controller: str, handle: ServerGoalHandle) -> bool:
        """Executor thread: check the goal (the controller's checks only read its fixed joints and limits)."""
        try:
            self.env.controllers[controller].validate(rosmsg.trajectory_from_msg(handle.goal.trajectory))
        except TrajectoryRejected as error:
            log.warning("goal rejected: %s", error)
            return False
        self._commands.put(("goal", controller, handle))
        return True

    def _on_cancel(self, handle: ServerGoalHandle) -> bool:
        self._commands.put(("cancel", handle))
        return True

    def _start_goal(self, controller: str, handle: ServerGoalHandle) -> None:
        try:
            self.env.send_trajectory(controller, rosmsg.trajectory_from_msg(handle.goal.trajectory))
        except TrajectoryRejected as error:  # checked at acceptance; the env holds
            handle.abort(self._result(-1, str(error)))
            return
        previous = self._goals.get(controller)
        if previous is not None:
            previous.canceled(self._result(-1, PREEMPTED))  # INVALID_GOAL, as joint_trajectory_controller
        self._goals[controller] = handle

    def _cancel_goal(self, handle: ServerGoalHandle) -> None:
        for controller, running in list(self._goals.items()):
            if running is handle:
                del self._goals[controller]
                self.env.controllers[controller].hold()
        handle.canceled(self._result())

    def _finish_goals(self) -> None:
        for controller, handle in list(self._goals.items()):
            if not self.env.controllers[controller].active:
                del self._goals[controller]
                handle.succeed(self._result())

    def _on_reset_request(self, request):
        """Trigger handler (executor thread): ask the sim loop to reset and wait for it."""
        done, reply = threading.Event(), []
        self._commands.put(("reset", done, reply))
        ok = done.wait(10.0)
        return msgs.msg_class("std_srvs/srv/Trigger_Response")(
            success=ok, message=reply[0] if ok else "the sim loop did not reset within 10 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamzero-sim", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="reach")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (/sim/reset: the next one)")
    parser.add_argument("--backend", choices=("auto", "dds", "rclpy"), default="auto")
    parser.add_argument("--node-name", default="dreamzero_sim")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS domain id (default: $ROS_DOMAIN_ID or 0)")
    parser.add_argument("--image-hz", type=int, default=15)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--cameras", default=",".join(CAMERAS), help="comma-separated subset of " + ",".join(CAMERAS))
    parser.add_argument("--realtime", type=float, default=1.0, help="sim seconds per wall second; 0: unpaced")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many wall seconds (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    env = FrankaSimEnv(task=args.task, seed=args.seed, image_hw=(args.height, args.width),
                       cameras=tuple(c for c in args.cameras.split(",") if c))
    mw = create_middleware(args.backend, node_name=args.node_name, domain_id=args.domain_id)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.duration > 0:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    try:
        server = SimServer(env, mw, seed=args.seed, image_hz=args.image_hz, realtime=args.realtime)
        mw.spin_background()
        server.run(stop)
    finally:
        mw.shutdown()
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
