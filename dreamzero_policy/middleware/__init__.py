"""The middleware layer: ROS 2 topics, timers and services for the node, with or without a ROS install.

    from dreamzero_policy.middleware import create_middleware, QoS
    mw = create_middleware(backend="auto", node_name="dreamzero_policy")
    pub = mw.create_publisher("/joint_states", "sensor_msgs/msg/JointState", QoS.SENSOR_DATA)
    sub = mw.create_subscription("/camera/image_raw", "sensor_msgs/msg/Image", on_image, QoS.SENSOR_DATA)
    mw.create_timer(0.1, on_tick)
    arm = mw.create_action_client("/arm/follow_joint_trajectory", "control_msgs/action/FollowJointTrajectory")
    handle = arm.send_goal(goal, on_done=lambda h: print(h.status, h.result))   # never blocks
    mw.spin_background()          # or mw.spin(stop_event) on a thread of your own
    ...
    mw.shutdown()

Backends:
- "dds":   built-in, ROS 2 wire-compatible Cyclone DDS backend (dds_backend.py); needs no ROS install.
- "rclpy": rclpy node (rclpy_backend.py); rclpy is imported only when this backend is created.
- "auto":  "rclpy" when rclpy imports, else "dds".

Threading: all callbacks run on one executor thread (the thread in spin()/spin_once(), or the one spin_background()
starts); see base.py for the full contract. Messages are rosbags dataclasses (dreamzero_policy.msgs.typestore());
on the wire they are CDR bytes.
"""
from __future__ import annotations

import importlib.util

from .base import (ActionClient, ActionServer, ClientGoalHandle, GoalStatus, Middleware, MiddlewareError, Publisher,
                   ServerGoalHandle, ServiceClient, ServiceServer, Subscription, Timer)
from .naming import dds_topic_name, dds_type_name, resolve_name
from .qos import Durability, QoS, Reliability

BACKENDS = ("auto", "dds", "rclpy")

__all__ = ["create_middleware", "QoS", "Reliability", "Durability", "Middleware", "MiddlewareError", "Publisher",
           "Subscription", "Timer", "ServiceServer", "ServiceClient", "ActionClient", "ActionServer",
           "ClientGoalHandle", "ServerGoalHandle", "GoalStatus", "BACKENDS", "rclpy_available",
           "resolve_name", "dds_topic_name", "dds_type_name"]


def rclpy_available() -> bool:
    """True when rclpy can be imported (a sourced ROS 2 install)."""
    return importlib.util.find_spec("rclpy") is not None


def create_middleware(backend: str = "auto", node_name: str = "dreamzero_policy", domain_id: int | None = None,
                      namespace: str = "/", **kwargs) -> Middleware:
    """A middleware instance of `backend` ("dds", "rclpy" or "auto") for one node.

    domain_id: ROS domain id; None uses $ROS_DOMAIN_ID (default 0). The rclpy backend also takes `node=` (an
    existing rclpy Node, e.g. a lifecycle node, whose context and executor it then uses).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown middleware backend {backend!r}; valid: {list(BACKENDS)}")
    if backend == "auto":
        backend = "rclpy" if rclpy_available() else "dds"
    if backend == "rclpy":
        from .rclpy_backend import RclpyMiddleware
        return RclpyMiddleware(node_name=node_name, domain_id=domain_id, namespace=namespace, **kwargs)
    if kwargs:
        raise TypeError(f"the dds backend takes no extra arguments, got {sorted(kwargs)}")
    from .dds_backend import DdsMiddleware
    return DdsMiddleware(node_name=node_name, domain_id=domain_id, namespace=namespace)
