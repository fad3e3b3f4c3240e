"""A second DDS process for the middleware tests (run as a subprocess; never imported by pytest).

    python3 tests/middleware/peer.py MODE --domain N [--timeout S]

Every mode prints JSON lines on stdout ({"event": ...}), prints {"event": "ready"} once its entities exist, and
exits when stdin closes (the test ends) or after --timeout seconds, whichever comes first.

Modes:
  echo      subscribe raw to /rt_test/{joint_states,image,compressed} (QoS.RELIABLE) and republish every payload
            unchanged on /echo/<same name>; prints {"event": "recv", "topic", "len", "sha256"} per message.
  latched   publish std_msgs/String "pick up the red cup" on /instruction with QoS.LATCHED, then wait.
  sensor    publish a JointState on /sensor_js with QoS.SENSOR_DATA every 20 ms.
  services  serve /reset (std_srvs/Trigger) and /set_instruction (dreamzero_msgs/SetInstruction).
  action    serve /arm/follow_joint_trajectory (control_msgs/FollowJointTrajectory): a goal without points is
            rejected; a goal whose first position is negative is aborted (PATH_TOLERANCE_VIOLATED); others get one
            feedback and succeed after 0.5 s unless cancelled (a cancel is accepted and ends the goal CANCELED).
            Prints {"event": "goal", "points", "joints"} and {"event": "cancel"}.
  stock     the stock cyclonedds binding only (no dreamzero code): a hand-written std_msgs String IDL type;
            reads rt/chatter and prints {"event": "recv", "data"}; writes "hello from stock" on rt/chatter_stock.
"""
import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ECHO_TOPICS = {
    "joint_states": "sensor_msgs/msg/JointState",
    "image": "sensor_msgs/msg/Image",
    "compressed": "sensor_msgs/msg/CompressedImage",
}


def emit(**kv) -> None:
    sys.stdout.write(json.dumps(kv) + "\n")
    sys.stdout.flush()


def wait_for_end(timeout_s: float) -> None:
    """Return when stdin reaches EOF or after timeout_s."""
    done = threading.Event()

    def reader():
        try:
            sys.stdin.read()
        finally:
            done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout_s)


def run_dreamzero_mode(mode: str, domain: int, timeout_s: float) -> None:
    from dreamzero_policy import msgs
    from dreamzero_policy.middleware import QoS, create_middleware

    store = msgs.typestore()
    mw = create_middleware("dds", node_name=f"peer_{mode}", domain_id=domain)
    try:
        if mode == "echo":
            for name, msgtype in ECHO_TOPICS.items():
                pub = mw.create_publisher(f"/echo/{name}", msgtype, QoS.RELIABLE)

                def on_data(data: bytes, pub=pub, name=name):
                    pub.publish_raw(data)
                    emit(event="recv", topic=name, len=len(data), sha256=hashlib.sha256(data).hexdigest())

                mw.create_subscription(f"/rt_test/{name}", msgtype, on_data, QoS.RELIABLE, raw=True)
        elif mode == "latched":
            pub = mw.create_publisher("/instruction", "std_msgs/msg/String", QoS.LATCHED)
            pub.publish(store.types["std_msgs/msg/String"](data="pick up the red cup"))
        elif mode == "sensor":
            pub = mw.create_publisher("/sensor_js", "sensor_msgs/msg/JointState", QoS.SENSOR_DATA)
            js = store.types["sensor_msgs/msg/JointState"]
            import numpy as np

            def tick():
                pub.publish(js(header=msgs.header(mw.now_ns()), name=["j1"], position=np.zeros(1),
                               velocity=np.zeros(0), effort=np.zeros(0)))

            mw.create_timer(0.02, tick)
        elif mode == "services":
            trigger_resp = store.types["std_srvs/srv/Trigger_Response"]
            set_resp = store.types["dreamzero_msgs/srv/SetInstruction_Response"]
            calls = {"n": 0}

            def on_reset(_req):
                calls["n"] += 1
                emit(event="reset", n=calls["n"])
                return trigger_resp(success=True, message=f"reset #{calls['n']}")

            def on_set(req):
                emit(event="set_instruction", instruction=req.instruction, reset=bool(req.reset))
                if not req.instruction.strip():
                    return set_resp(success=False, message="empty instruction")
                return set_resp(success=True, message=f"instruction set: {req.instruction}")

            mw.create_service("/reset", "std_srvs/srv/Trigger", on_reset)
            mw.create_service("/set_instruction", "dreamzero_msgs/srv/SetInstruction", on_set)
        elif mode == "action":
            serve_trajectory_action(mw)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        mw.spin_background()
        emit(event="ready", pid=os.getpid())
        wait_for_end(timeout_s)
    finally:
        mw.shutdown()


def serve_trajectory_action(mw) -> None:
    from dreamzero_policy import msgs

    action = "control_msgs/action/FollowJointTrajectory"
    result = lambda code=0, text="": msgs.default_msg(f"{action}_Result", error_code=code, error_string=text)  # noqa

    def on_goal(handle):
        trajectory = handle.goal.trajectory
        emit(event="goal", points=len(trajectory.points), joints=list(trajectory.joint_names))
        if not trajectory.points:
            return False
        if trajectory.points[0].positions[0] < 0:
            threading.Timer(0.05, handle.abort, (result(-4, "path tolerance violated"),)).start()
            return True
        handle.publish_feedback(msgs.default_msg(f"{action}_Feedback", joint_names=list(trajectory.joint_names)))
        threading.Timer(0.5, handle.succeed, (result(),)).start()
        return True

    def on_cancel(handle):
        emit(event="cancel")
        threading.Timer(0.05, handle.canceled, (result(),)).start()
        return True

    mw.create_action_server("/arm/follow_joint_trajectory", action, on_goal, on_cancel)


def stock_string_type():
    """std_msgs/String as a hand-written IDL struct for the stock binding (module level: the binding resolves
    annotations through the defining module)."""
    global String_
    from dataclasses import dataclass

    from cyclonedds.idl import IdlStruct

    @dataclass
    class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
        data: str

    return String_


def run_stock_mode(domain: int, timeout_s: float) -> None:
    """Only the stock cyclonedds binding, as a non-ROS DDS application written by hand would use it."""
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.qos import Policy, Qos
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from cyclonedds.util import duration

    String_ = stock_string_type()
    dp = DomainParticipant(domain)
    qos = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10))
    reader = DataReader(dp, Topic(dp, "rt/chatter", String_), qos=qos)
    writer = DataWriter(dp, Topic(dp, "rt/chatter_stock", String_), qos=qos)
    emit(event="ready", pid=os.getpid())
    end = threading.Event()
    threading.Thread(target=lambda: (wait_for_end(timeout_s), end.set()), daemon=True).start()
    while not end.is_set():
        for sample in reader.take(N=16):
            emit(event="recv", data=sample.data)
        if writer.get_matched_subscriptions():
            writer.write(String_(data="hello from stock"))
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--domain", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=40.0)
    args = ap.parse_args()
    if args.mode == "stock":
        run_stock_mode(args.domain, args.timeout)
    else:
        run_dreamzero_mode(args.mode, args.domain, args.timeout)


if __name__ == "__main__":
    main()
