"""A fake robot for the node tests (run as a subprocess; never imported by pytest).

    python3 tests/node/robot.py --embodiment EMBODIMENT --domain N [--width 320 --height 180] [--timeout S]

Publishes every camera of the embodiment at its rate (raw cameras as rgb8 or bgr8 Image, compressed ones as JPEG
CompressedImage) and the joint states at 30 Hz (embodiment joints plus one extra finger joint), stamped with the wall
clock. The joints follow the JointTrajectory messages received on the embodiment's controller topics, or the goals
of its follow_joint_trajectory action servers (linear interpolation between points), so the loop is closed. Goals
follow joint_trajectory_controller: a new goal cancels the running one, a cancel holds; each goal is printed as
{"event": "goal", "controller", "points", "hold", "rejected"}, each cancel as {"event": "cancel"}. Prints JSON
lines on stdout ({"event": "ready"} once running) and reads commands as JSON lines on stdin; exits on stdin EOF or
after --timeout seconds.

Commands: {"cmd": "stop_camera", "camera": NAME}, {"cmd": "start_camera", "camera": NAME},
{"cmd": "reject_goals", "reject": BOOL},
{"cmd": "bad", "kind": KIND} with KIND one of malformed_image, corrupt_compressed, nan_joint, missing_joint,
backwards_stamp, reordered_joints. Each bad input is published once, and answered with {"event": "sent", "kind"}.
"""
import argparse
import json
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dreamzero_policy import msgs  # noqa: E402
from dreamzero_policy.embodiment import load_embodiment  # noqa: E402
from dreamzero_policy.middleware import QoS, create_middleware  # noqa: E402

JOINT_RATE_HZ = 30.0
EXTRA_JOINT = "extra_finger_joint"
ACTION = "control_msgs/action/FollowJointTrajectory"
PREEMPTED = "Current goal cancelled due to new incoming action."


def emit(**kv) -> None:
    sys.stdout.write(json.dumps(kv) + "\n")
    sys.stdout.flush()


class Robot:
    def __init__(self, embodiment, width: int, height: int, mw):
        self.emb, self.mw = embodiment, mw
        self.names = embodiment.joint_names + embodiment.gripper_joints
        self.position = np.concatenate([embodiment.home, embodiment.gripper_open])  # [J + G]
        self.trajectories: dict[str, tuple] = {}  # controller -> (t0_ns, start [K], times [P], targets [P, K], cols)
        self.lock = threading.Lock()
        self.stopped: set[str] = set()
        self.width, self.height = width, height
        self.frame_count = 0
        self.last_joint_stamp = 0
        self.goals: dict[str, object] = {}  # controller -> running goal
        self.reject_goals = False
        types = msgs.typestore().types
        self.Image, self.Compressed = types["sensor_msgs/msg/Image"], types["sensor_msgs/msg/CompressedImage"]
        self.JointState = types["sensor_msgs/msg/JointState"]
        self.joint_pub = mw.create_publisher(embodiment.joint_states_topic, "sensor_msgs/msg/JointState",
                                             QoS.SENSOR_DATA)
        self.camera_pubs = {}
        for i, cam in enumerate(embodiment.cameras):
            pub = mw.create_publisher(cam.subscribed_topic, cam.message_type, QoS.SENSOR_DATA)
            self.camera_pubs[cam.name] = (cam, pub, "bgr8" if i % 2 else "rgb8")
            mw.create_timer(1.0 / cam.rate_hz, lambda name=cam.name: self.publish_camera(name))
        mw.create_timer(1.0 / JOINT_RATE_HZ, self.publish_joints)
        for ctrl in (embodiment.controller, embodiment.gripper_controller):
            if ctrl is not None and ctrl.interface == "joint_trajectory":
                mw.create_subscription(ctrl.name, "trajectory_msgs/msg/JointTrajectory",
                                       lambda msg, c=ctrl: self.on_trajectory(c, msg), QoS.RELIABLE)
            elif ctrl is not None and ctrl.interface == "follow_joint_trajectory":
                mw.create_action_server(ctrl.name, ACTION, lambda handle, c=ctrl: self.on_goal(c, handle),
                                        self.on_cancel)

    # --- commands in ---
    def on_trajectory(self, ctrl, msg) -> None:
        now = time.time_ns()
        cols = [self.names.index(j) for j in msg.joint_names]
        stamp = msgs.time_to_ns(msg.header.stamp)
        t0 = stamp if stamp > 0 else now
        times = np.array([msgs.time_to_ns(p.time_from_start) for p in msg.points], np.int64)
        targets = np.array([p.positions for p in msg.points], np.float64)
        with self.lock:
            self.advance(now)
            self.trajectories[ctrl.name] = (t0, self.position[cols].copy(), times, targets, cols)

    @staticmethod
    def result(code: int = 0, text: str = ""):
        return msgs.default_msg(f"{ACTION}_Result", error_code=code, error_string=text)

    def on_goal(self, ctrl, handle) -> bool:
        trajectory = handle.goal.trajectory
        hold = len(trajectory.points) == 1 and msgs.time_to_ns(trajectory.header.stamp) == 0
        emit(event="goal", controller=ctrl.name, points=len(trajectory.points), hold=hold, rejected=self.reject_goals)
        if self.reject_goals:
            return False
        self.on_trajectory(ctrl, trajectory)
        previous, self.goals[ctrl.name] = self.goals.get(ctrl.name), handle
        if previous is not None:
            previous.canceled(self.result(-1, PREEMPTED))
        return True

    def on_cancel(self, handle) -> bool:
        emit(event="cancel")
        for name, running in list(self.goals.items()):
            if running is handle:
                with self.lock:
                    self.advance(time.time_ns())
                    self.trajectories.pop(name, None)  # hold where it is
                del self.goals[name]
        threading.Timer(0.01, handle.canceled, (self.result(),)).start()
        return True

    def advance(self, now: int) -> None:
        for t0, start, times, targets, cols in self.trajectories.values():
            t = np.concatenate([[0], times]) + t0
            values = np.vstack([start[None], targets])
            self.position[cols] = [np.interp(now, t, values[:, k]) for k in range(len(cols))]

    # --- sensors out ---
    def image(self, name: str) -> np.ndarray:
        """A moving pattern, different per camera (cheap to make)."""
        shift = (self.frame_count * 3 + hash(name) % 97) % self.width
        x = (np.arange(self.width, dtype=np.uint16) + shift) % 256
        row = np.stack([x, (x * 2) % 256, 255 - x], axis=-1).astype(np.uint8)  # [W, 3]
        return np.ascontiguousarray(np.broadcast_to(row, (self.height, self.width, 3)))

    def publish_camera(self, name: str, stamp_ns: int | None = None, corrupt: bool = False) -> None:
        if name in self.stopped and not corrupt:
            return
        cam, pub, encoding = self.camera_pubs[name]
        self.frame_count += 1
        header = msgs.header(stamp_ns or time.time_ns(), name)
        rgb = self.image(name)
        if cam.transport == "compressed":
            data = np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8) if corrupt else \
                cv2.imencode(".jpg", rgb[..., ::-1])[1].reshape(-1)
            pub.publish(self.Compressed(header=header, format="rgb8; jpeg compressed bgr8", data=data))
            return
        pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
        data = np.ascontiguousarray(pixels).reshape(-1)
        if corrupt:
            data = data[:-7]  # step * height != len(data)
        pub.publish(self.Image(header=header, height=self.height, width=self.width, encoding=encoding,
                               is_bigendian=0, step=self.width * 3, data=data))

    def publish_joints(self, names=None, positions=None, stamp_ns=None) -> None:
        now = time.time_ns()
        with self.lock:
            self.advance(now)
            position = self.position.copy()
        if names is None:
            names, positions = self.names + [EXTRA_JOINT], np.concatenate([position, [0.02]])
        stamp = stamp_ns or now
        self.joint_pub.publish(self.JointState(header=msgs.header(stamp), name=list(names),
                                               position=np.ascontiguousarray(positions, np.float64),
                                               velocity=np.zeros(0), effort=np.zeros(0)))
        if stamp_ns is None:
            self.last_joint_stamp = stamp

    def bad(self, kind: str) -> None:
        raw = next(n for n, (c, _, _) in self.camera_pubs.items() if c.transport == "raw")
        with self.lock:
            position = self.position.copy()
        if kind == "malformed_image":
            self.publish_camera(raw, corrupt=True)
        elif kind == "corrupt_compressed":
            name = next(n for n, (c, _, _) in self.camera_pubs.items() if c.transport == "compressed")
            self.publish_camera(name, corrupt=True)
        elif kind == "nan_joint":
            bad = position.copy()
            bad[2] = np.nan
            self.publish_joints(self.names, bad)
        elif kind == "missing_joint":
            keep = [i for i in range(len(self.names)) if i != 3]
            self.publish_joints([self.names[i] for i in keep], position[keep])
        elif kind == "backwards_stamp":
            self.publish_joints(self.names, position, stamp_ns=self.last_joint_stamp - 50_000_000)
        elif kind == "reordered_joints":
            self.publish_joints(self.names[::-1], position[::-1])
        else:
            raise ValueError(kind)
        emit(event="sent", kind=kind)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embodiment", required=True)
    parser.add_argument("--domain", type=int, required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    mw = create_middleware("dds", node_name="fake_robot", domain_id=args.domain)
    robot = Robot(load_embodiment(args.embodiment), args.width, args.height, mw)
    done = threading.Event()

    def commands():
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                if cmd["cmd"] == "stop_camera":
                    robot.stopped.add(cmd["camera"])
                elif cmd["cmd"] == "start_camera":
                    robot.stopped.discard(cmd["camera"])
                elif cmd["cmd"] == "reject_goals":
                    robot.reject_goals = bool(cmd["reject"])
                elif cmd["cmd"] == "bad":
                    robot.bad(cmd["kind"])
                emit(event="ack", cmd=cmd["cmd"])
            except Exception as e:
                emit(event="error", error=f"{type(e).__name__}: {e}")
        done.set()

    threading.Thread(target=commands, daemon=True).start()
    timer = threading.Timer(args.timeout, done.set)
    timer.daemon = True
    timer.start()
    mw.spin_background()
    emit(event="ready")
    done.wait()
    mw.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
