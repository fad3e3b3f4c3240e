"""rclpy backend: the same interface on a real ROS 2 node (rclpy is imported lazily, only here).

Messages still cross this layer as rosbags dataclasses and CDR bytes, never as rclpy message objects:
- publishers publish CDR bytes (`rclpy.publisher.Publisher.publish(bytes)` -> `publish_raw`);
- subscriptions are created with `raw=True` (the callback receives the serialized CDR bytes) and decoded by rosbags;
- services convert through `rclpy.serialization.serialize_message` / `deserialize_message` at the boundary;
- action clients (rclpy.action.ActionClient) convert goals, feedback and results the same way. Action servers are
  not offered here (a ROS install has the real controllers; the sim serves its action on the dds backend).
The ROS message classes (e.g. `sensor_msgs.msg.JointState`) are imported from the sourced ROS install only to give
rclpy the type support; dreamzero_msgs must be built (colcon) for its types.

Executor: a `SingleThreadedExecutor` that only this node is added to; `spin_once()` / `spin()` / `spin_background()`
drive it, so every callback runs on one thread (see base.py). With `node=` an existing node (for instance the
lifecycle node of `dreamzero_policy.node`) is adopted instead of creating one; `shutdown()` then leaves the node and
its context to their owner.

Not testable here: no ROS 2 install exists on the development machine, so this file is written against the rclpy API
(Humble/Jazzy) and only its import guard is exercised by the test suite.
"""
from __future__ import annotations

import importlib
import threading
import time
from typing import Any, Callable

from .. import msgs
from .base import (ActionClient, ClientGoalHandle, GoalStatus, Middleware, MiddlewareError, Publisher, ServiceClient,
                   ServiceServer, Subscription, Timer, log)
from .naming import resolve_name
from .qos import QoS

try:    # the only place (with the node entry) that imports rclpy
    import rclpy
    from rclpy.action import ActionClient as _RosActionClient
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message, serialize_message
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:     # pragma: no cover - depends on the machine
    rclpy = None
    _IMPORT_ERROR = exc


def _require_rclpy() -> None:
    if rclpy is None:
        raise MiddlewareError(
            f"the rclpy backend needs a sourced ROS 2 install (import rclpy failed: {_IMPORT_ERROR}); "
            f"use backend='dds' to run without ROS")


def ros_class(typename: str) -> type:
    """The rclpy message/service class for `pkg/msg/Type` or `pkg/srv/Srv` (imported from the ROS install)."""
    pkg, kind, name = typename.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise MiddlewareError(f"ROS type {typename!r} is not available in the sourced ROS install ({exc}); "
                              f"build and source the package that defines it") from exc


def rclpy_qos(qos: QoS) -> "QoSProfile":
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE,
    )


class _RclpyPublisher(Publisher):
    def __init__(self, mw: "RclpyMiddleware", topic: str, msgtype: str, qos: QoS):
        self.topic, self.msgtype, self.qos = topic, msgtype, qos
        self._mw = mw
        self._pub = mw._node.create_publisher(ros_class(msgtype), topic, rclpy_qos(qos))

    def publish(self, msg: Any) -> None:
        self._pub.publish(bytes(msgs.typestore().serialize_cdr(msg, self.msgtype)))

    def publish_raw(self, cdr) -> None:
        self._pub.publish(bytes(cdr))       # rclpy takes the bytes path only for `bytes` instances

    def subscription_count(self) -> int:
        return self._pub.get_subscription_count()

    def destroy(self) -> None:
        self._mw._node.destroy_publisher(self._pub)


class _RclpySubscription(Subscription):
    def __init__(self, mw: "RclpyMiddleware", topic: str, msgtype: str, callback: Callable, qos: QoS, raw: bool):
        self.topic, self.msgtype, self.qos, self.raw = topic, msgtype, qos, raw
        self._mw, self._callback = mw, callback
        self._sub = mw._node.create_subscription(ros_class(msgtype), topic, self._on_data, rclpy_qos(qos), raw=True)

    def _on_data(self, data: bytes) -> None:
        if self.raw:
            arg = data
        else:
            try:
                arg = msgs.typestore().deserialize_cdr(data, self.msgtype)
            except Exception:
                self._mw.callback_errors += 1
                log.exception("could not decode a %s on %s (%d bytes); dropped", self.msgtype, self.topic, len(data))
                return
        self._mw._run_callback(self.topic, self._callback, arg)

    def publisher_count(self) -> int:
        return self._mw._node.count_publishers(self.topic)

    def destroy(self) -> None:
        self._mw._node.destroy_subscription(self._sub)


class _RclpyTimer(Timer):
    def __init__(self, mw: "RclpyMiddleware", period_s: float, callback: Callable[[], None]):
        if not period_s > 0:
            raise ValueError(f"timer period must be > 0 s, got {period_s!r}")
        self.period_s = float(period_s)
        self._mw = mw
        self._timer = mw._node.create_timer(period_s, lambda: mw._run_callback("timer", callback))

    def cancel(self) -> None:
        self._timer.cancel()
        self._mw._node.destroy_timer(self._timer)


class _RclpyServiceServer(ServiceServer):
    def __init__(self, mw: "RclpyMiddleware", name: str, srvtype: str, handler: Callable[[Any], Any]):
        self.name, self.srvtype = name, srvtype
        self._mw, self._handler = mw, handler
        self._req_t, self._resp_t = msgs.service_types(srvtype)
        self._srv_cls = ros_class(srvtype)
        self._srv = mw._node.create_service(self._srv_cls, name, self._on_request, qos_profile=rclpy_qos(QoS.SERVICES))

    def _on_request(self, request, response):
        store = msgs.typestore()
        result: list = []
        ok = self._mw._run_callback(
            f"service {self.name}",
            lambda: result.append(self._handler(store.deserialize_cdr(serialize_message(request), self._req_t))))
        if not ok:
            return response      # rclpy must send something; the default response signals failure for Trigger
        return deserialize_message(bytes(store.serialize_cdr(result[0], self._resp_t)), self._srv_cls.Response)

    def destroy(self) -> None:
        self._mw._node.destroy_service(self._srv)


class _RclpyServiceClient(ServiceClient):
    def __init__(self, mw: "RclpyMiddleware", name: str, srvtype: str):
        self.name, self.srvtype = name, srvtype
        self._mw = mw
        self._req_t, self._resp_t = msgs.service_types(srvtype)
        self._srv_cls = ros_class(srvtype)
        self._client = mw._node.create_client(self._srv_cls, name, qos_profile=rclpy_qos(QoS.SERVICES))

    def wait_for_service(self, timeout_s: float) -> bool:
        return self._client.wait_for_service(timeout_sec=timeout_s)

    def call(self, request: Any, timeout_s: float) -> Any:
        store = msgs.typestore()
        ros_req = deserialize_message(bytes(store.serialize_cdr(request, self._req_t)), self._srv_cls.Request)
        future = self._client.call_async(ros_req)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._client.remove_pending_request(future)
                raise TimeoutError(f"service {self.name} ({self.srvtype}): no reply within {timeout_s} s")
            if self._mw._executor_busy():
                time.sleep(min(remaining, 0.005))     # another thread spins and will complete the future
            else:
                self._mw.spin_once(min(remaining, 0.05))
        return store.deserialize_cdr(serialize_message(future.result()), self._resp_t)

    def destroy(self) -> None:
        self._mw._node.destroy_client(self._client)


class _RclpyActionClient(ActionClient):
    """rclpy.action.ActionClient; its futures complete on the executor thread, where the handle is updated."""

    def __init__(self, mw: "RclpyMiddleware", name: str, action_type: str):
        self.name, self.action_type = name, action_type
        self._mw = mw
        self._types = msgs.action_types(action_type)
        self._cls = ros_class(action_type)
        self._client = _RosActionClient(mw._node, self._cls, name)
        self._ros_handles: dict[bytes, Any] = {}      # goal id -> rclpy ClientGoalHandle, until done

    def server_is_ready(self) -> bool:
        return self._client.server_is_ready()

    def wait_for_server(self, timeout_s: float) -> bool:
        return self._client.wait_for_server(timeout_sec=timeout_s)

    def send_goal(self, goal: Any, on_done=None, on_feedback=None) -> ClientGoalHandle:
        if not self.server_is_ready():
            raise MiddlewareError(f"action server {self.name} not available; goal not sent")
        store = msgs.typestore()
        handle = ClientGoalHandle(on_done, on_feedback)
        ros_goal = deserialize_message(bytes(store.serialize_cdr(goal, self._types.goal)), self._cls.Goal)
        feedback = None if on_feedback is None else lambda message: on_feedback(store.deserialize_cdr(
            serialize_message(message.feedback), self._types.feedback))
        uuid_cls = ros_class("unique_identifier_msgs/msg/UUID")
        future = self._client.send_goal_async(ros_goal, feedback_callback=feedback,
                                              goal_uuid=uuid_cls(uuid=list(handle.goal_id)))
        future.add_done_callback(lambda f: self._mw._run_callback(f"action {self.name} (goal response)",
                                                                  self._on_response, handle, f))
        return handle

    def _on_response(self, handle: ClientGoalHandle, future) -> None:
        ros_handle = future.result()
        if not ros_handle.accepted:
            handle._finish(self._mw, f"action {self.name} (goal rejected)", False, GoalStatus.UNKNOWN, None)
            return
        handle.accepted, handle.status = True, GoalStatus.ACCEPTED
        self._ros_handles[handle.goal_id] = ros_handle
        ros_handle.get_result_async().add_done_callback(
            lambda f: self._mw._run_callback(f"action {self.name} (result)", self._on_result, handle, f))
        if handle.cancel_requested:
            ros_handle.cancel_goal_async()

    def _on_result(self, handle: ClientGoalHandle, future) -> None:
        self._ros_handles.pop(handle.goal_id, None)
        response = future.result()
        result = msgs.typestore().deserialize_cdr(serialize_message(response.result), self._types.result)
        handle._finish(self._mw, f"action {self.name} (result)", True, response.status, result)

    def cancel(self, handle: ClientGoalHandle) -> None:
        if handle.done or handle.cancel_requested:
            return
        handle.cancel_requested = True
        ros_handle = self._ros_handles.get(handle.goal_id)
        if ros_handle is not None:        # else: not accepted yet, cancelled in _on_response
            ros_handle.cancel_goal_async()

    def destroy(self) -> None:
        self._client.destroy()


class RclpyMiddleware(Middleware):
    """Middleware on an rclpy node with its own SingleThreadedExecutor (see the module docstring)."""

    backend = "rclpy"

    def __init__(self, node_name: str = "dreamzero_policy", domain_id: int | None = None, namespace: str = "/",
                 node: Any = None):
        _require_rclpy()
        super().__init__()
        self._owns_node = node is None
        if node is None:
            self._context = Context()
            init_kwargs = {"context": self._context}
            if domain_id is not None:
                init_kwargs["domain_id"] = domain_id
            rclpy.init(**init_kwargs)
            self._node = rclpy.create_node(node_name, namespace=namespace, context=self._context)
        else:
            self._node = node
            self._context = node.context
        self.node_name = self._node.get_name()
        self.namespace = self._node.get_namespace()
        self.domain_id = self._context.get_domain_id()
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._spin_lock = threading.Lock()
        self._closed = False
        self._callbacks_run = 0

    @property
    def node(self):
        """The underlying rclpy Node (for parameters, logging, lifecycle)."""
        return self._node

    def _resolve(self, name: str) -> str:
        return resolve_name(name, self.node_name, self.namespace)

    def _check_open(self) -> None:
        if self._closed:
            raise MiddlewareError("the middleware is shut down")

    def _executor_busy(self) -> bool:
        return self._spin_lock.locked()

    def _run_callback(self, what: str, fn: Callable, *args) -> bool:
        self._callbacks_run += 1        # only ever touched on the executor thread
        return super()._run_callback(what, fn, *args)

    # -- entities ------------------------------------------------------------------------------------------------
    def create_publisher(self, topic: str, msgtype: str, qos: QoS) -> Publisher:
        self._check_open()
        return _RclpyPublisher(self, self._resolve(topic), msgtype, qos)

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None], qos: QoS,
                            raw: bool = False) -> Subscription:
        self._check_open()
        return _RclpySubscription(self, self._resolve(topic), msgtype, callback, qos, raw)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Timer:
        self._check_open()
        return _RclpyTimer(self, period_s, callback)

    def create_service(self, name: str, srvtype: str, handler: Callable[[Any], Any]) -> ServiceServer:
        self._check_open()
        return _RclpyServiceServer(self, self._resolve(name), srvtype, handler)

    def create_client(self, name: str, srvtype: str) -> ServiceClient:
        self._check_open()
        return _RclpyServiceClient(self, self._resolve(name), srvtype)

    def create_action_client(self, name: str, action_type: str) -> ActionClient:
        self._check_open()
        return _RclpyActionClient(self, self._resolve(name), action_type)

    # -- time and execution -------------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return self._node.get_clock().now().nanoseconds

    @property
    def closed(self) -> bool:
        return self._closed

    def spin_once(self, timeout_s: float) -> int:
        if not self._spin_lock.acquire(blocking=False):
            raise MiddlewareError("another thread is already spinning this middleware (one executor thread only)")
        try:
            if self._closed:
                return 0
            before = self._callbacks_run
            self._executor.spin_once(timeout_sec=timeout_s)
            return self._callbacks_run - before
        finally:
            self._spin_lock.release()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_background()
        with self._spin_lock:
            self._executor.shutdown()
            if self._owns_node:
                self._node.destroy_node()
                rclpy.try_shutdown(context=self._context)
